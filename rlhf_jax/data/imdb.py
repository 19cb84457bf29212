"""IMDb readers for the DPO paper's sentiment experiment (Rafailov et al. 2023, Fig. 2 left).

Each takes `policy` like every reader used as `corpus:NAME` and returns (records, LoadReport);
keyword arguments come from the spec (`corpus:imdb_reviews?split=test&limit=1000`).
The files list every negative review before every positive one, so each reader shuffles
with its `seed` before anything is cut: any prefix of the records is balanced. Review text
is cleaned of IMDb's `<br />` tags and runs of whitespace.

| reader               | split | records |
|----------------------|-------|---------|
| imdb_reviews         | train | {"text", "label"} (1 positive, 0 negative): the gold classifier's data (`split=test`: its held-out accuracy) |
| imdb_sft             | train | sft: prompt = the first 2-8 GPT-2 tokens, completion = the review's next tokens up to the last sentence end within 24 tokens (24 tokens if none) |
| imdb_prefixes        | test  | prompt: the first 2-8 GPT-2 tokens (rankings, PPO and evaluation prompts) |

The completions stop at a sentence end so the SFT policy learns to end a continuation with
EOS, as the reward model (read at the EOS) expects; a cut mid-sentence still ends in EOS.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from rlhf_jax.data.records import DataError, FieldError, LoadReport
from rlhf_jax.data.sources import iter_rows, validate_rows
from rlhf_jax.data.tokenize import gpt2_tokenizer
from rlhf_jax.paths import data_file

SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")
# characters tokenised per review: enough for 8 + 24 tokens (IMDb averages ~4.5 characters a token)
SFT_CHARS, PREFIX_CHARS = 400, 120


def clean(text: str) -> str:
    """IMDb text with its `<br />` line breaks and whitespace runs as single spaces."""
    return " ".join(text.replace("<br />", " ").replace("<br/>", " ").split())


def _shuffled(split: str, data_dir, seed: int, limit: int | None = None) -> tuple[str, list]:
    """(path, [(line, row or DataError)]) of the split's rows in an order fixed by `seed` (the
    first `limit` of that order)."""
    path = data_file(f"imdb/{split}.jsonl.gz", data_dir)
    rows = list(iter_rows(path))
    return str(path), [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))[:limit]]


def _review(source: str, line, row, chars: int | None = None) -> str:
    """The row's cleaned review text (of its first `chars` characters); a DataError naming the
    line when there is none."""
    if isinstance(row, DataError):
        raise row
    text = row.get("text") if isinstance(row, dict) else None
    text = clean(text[:chars]) if isinstance(text, str) else ""
    if not text:
        raise DataError(source, line, "text", "missing or empty", reason="empty_text")
    return text


def imdb_reviews(data_dir=None, *, split: str = "train", policy: str = "error", seed: int = 0,
                 limit: int | None = None):
    """Labelled reviews {"text", "label"} (label 1 positive, 0 negative), shuffled."""
    source, rows = _shuffled(split, data_dir, seed)
    report, out = LoadReport(source), []  # `limit` counts kept records
    for line, row in rows:
        if limit is not None and len(out) >= limit:
            break
        report.read += 1
        try:
            text = _review(source, line, row)
            label = row.get("label")
            if label not in (0, 1) or isinstance(label, bool):
                raise DataError(source, line, "label", f"{label!r} is not 0 or 1", reason="bad_label")
            out.append({"text": text, "label": int(label)})
        except DataError as e:
            if policy == "error":
                raise
            report.skip(e.reason or "malformed_" + e.field.strip("<>"), f"line {e.line}")
    report.kept = len(out)
    return out, report


def _prefix_length(rng, ids: list[int], min_tokens: int, max_tokens: int) -> int:
    n = int(rng.integers(min_tokens, max_tokens + 1))
    if len(ids) <= n:
        raise FieldError("text", f"has {len(ids)} tokens, too few for a {n}-token prefix and more",
                         reason="too_short")
    return n


def _sentence_cut(ends_sentence, ids: list[int], start: int, min_tokens: int, max_tokens: int) -> int:
    """The end (exclusive) of the completion ids[start:end]: just after the last sentence end
    among its tokens min_tokens..max_tokens, else start + max_tokens (or the review's end)."""
    end = min(len(ids), start + max_tokens)
    for j in range(end, start + min_tokens - 1, -1):
        if ends_sentence(ids[j - 1]):
            return j
    return end


def imdb_sft(data_dir=None, *, split: str = "train", policy: str = "error", tokenizer=None, seed: int = 0,
             min_prompt_tokens: int = 2, max_prompt_tokens: int = 8, min_completion_tokens: int = 4,
             max_completion_tokens: int = 24, limit: int | None = None):
    """SFT records {"prompt", "completion"} from reviews: a 2-8 token prefix and the tokens that
    follow it, up to the last sentence end within `max_completion_tokens` (see the module doc);
    `limit`: read only the first rows of the shuffled order."""
    tokenizer = tokenizer or gpt2_tokenizer(data_dir)
    source, rows = _shuffled(split, data_dir, seed, limit)
    rng = np.random.default_rng([seed, 1])
    ends_sentence = functools.lru_cache(maxsize=None)(lambda t: bool(SENTENCE_END.search(tokenizer.decode([t]))))

    def record(row):
        ids = row["_ids"]
        if len(row["text"]) > SFT_CHARS:  # the last token may be part of a word cut at SFT_CHARS
            ids = ids[:-1]
        n = _prefix_length(rng, ids, min_prompt_tokens, max_prompt_tokens)
        end = _sentence_cut(ends_sentence, ids, n, min_completion_tokens, max_completion_tokens)
        return {"prompt": tokenizer.decode(ids[:n]), "completion": tokenizer.decode(ids[n:end])}

    return validate_rows(_encoded(tokenizer, source, rows, SFT_CHARS), "sft", source, policy=policy,
                         transform=record)


def imdb_prefixes(data_dir=None, *, split: str = "test", policy: str = "error", tokenizer=None, seed: int = 0,
                  min_tokens: int = 2, max_tokens: int = 8, limit: int | None = None):
    """Prompts {"prompt"}: the first 2-8 GPT-2 tokens of each review, shuffled (`limit`: read only
    the first rows of that order)."""
    tokenizer = tokenizer or gpt2_tokenizer(data_dir)
    source, rows = _shuffled(split, data_dir, seed, limit)
    rng = np.random.default_rng([seed, 2])

    def record(row):
        ids = row["_ids"][:-1] if len(row["text"]) > PREFIX_CHARS else row["_ids"]
        return {"prompt": tokenizer.decode(ids[:_prefix_length(rng, ids, min_tokens, max_tokens)])}

    return validate_rows(_encoded(tokenizer, source, rows, PREFIX_CHARS), "prompt", source, policy=policy,
                         transform=record)


def _encoded(tokenizer, source: str, rows: list, chars: int) -> list:
    """(line, row with "_ids": the token ids of its first `chars` clean characters) for rows that
    hold review text (tokenised in one batch), (line, DataError) for the others."""
    checked = []
    for line, row in rows:
        try:  # cleaning 2 x chars is enough: cleaning only shortens the text
            checked.append((line, {"text": _review(source, line, row, 2 * chars)}))
        except DataError as e:
            checked.append((line, e))
    texts = [row["text"][:chars] for _, row in checked if isinstance(row, dict)]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    return [(line, {**row, "_ids": next(ids)} if isinstance(row, dict) else row) for line, row in checked]


READERS = {"imdb_reviews": imdb_reviews, "imdb_sft": imdb_sft, "imdb_prefixes": imdb_prefixes}

"""Records to token arrays: templates, prompt masks, truncation, padding, packing, caching.

- Prompts (strings, or chat messages rendered with the tokenizer's chat template or a named
  template) are never trained on; for chat, loss falls on assistant turns only.
- Truncation keeps the END of an over-long prompt (the question sits there) and cuts the
  response; `TruncationStats` counts both.
- Training batches are right-padded; generation batches left-padded.
- `pack` puts several SFT examples in one row with segment ids and positions restarting at 0,
  so attention never crosses examples.
- `cached` stores tokenised arrays under a key of (source fingerprint, tokenizer, settings, the
  data layer's code).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rlhf_jax.paths import cache_dir, data_file

# named templates: (role prefix, role suffix) rendered as text; the assistant prefix is the prompt
TEMPLATES = {
    "chatml": {"system": ("<|im_start|>system\n", "<|im_end|>\n"), "user": ("<|im_start|>user\n", "<|im_end|>\n"),
               "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n")},
    "hh": {"system": ("", ""), "user": ("\n\nHuman: ", ""), "assistant": ("\n\nAssistant: ", "")},
    "plain": {"system": ("", "\n"), "user": ("User: ", "\n"), "assistant": ("Assistant: ", "\n")},
}


def gpt2_tokenizer(data_dir: str | Path | None = None):
    """The GPT-2 byte-level BPE tokenizer from gpt2_tokenizer/{encoder.json, vocab.bpe} in the
    data directory (no hub); its one special token <|endoftext|> is EOS, BOS and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    root = data_file("gpt2_tokenizer", data_dir)
    bpe = models.BPE.from_file(str(root / "encoder.json"), str(root / "vocab.bpe"))
    core = Tokenizer(bpe)
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    max_len: int = 512
    max_prompt_len: int = 384  # prompts longer than this keep their last max_prompt_len tokens
    template: str | None = None  # None: the tokenizer's chat template; or a key of TEMPLATES
    add_eos: bool = True


class Unfinished(str):
    """The text of a sampled response that stopped at the length limit, before any EOS.

    Encoded without the EOS that `encode_example` appends to a finished response, so a reward
    model reads it at its last sampled token: the text judges then score what PPO's rewards and
    best-of-n score on the sampled tokens, not an EOS the policy never produced. It is a `str`
    everywhere else (an LLM judge, ROUGE, a JSON file see plain text)."""
    __slots__ = ()


@dataclasses.dataclass
class TruncationStats:
    examples: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _eos(tokenizer) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id; set one (the reward is read at the EOS)")
    return [tokenizer.eos_token_id]


def _render_named(messages, template: str, add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """(text, is_assistant_content) segments of a chat rendered with a named template."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r} is not one of {sorted(TEMPLATES)} (or None for the tokenizer's)")
    roles = TEMPLATES[template]
    segments = []
    for m in messages:
        pre, post = roles[m["role"]]
        segments += [(pre, False), (m["content"], m["role"] == "assistant"), (post, m["role"] == "assistant")]
    if add_generation_prompt:
        segments.append((roles["assistant"][0], False))
    return [(t, a) for t, a in segments if t]


def _chat_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: pass TokenizeConfig(template='chatml'|'hh'|'plain')")
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def encode_prompt(tokenizer, prompt, cfg: TokenizeConfig) -> list[int]:
    """Token ids of a prompt, ending where the response begins."""
    if isinstance(prompt, str):
        return _encode(tokenizer, prompt)
    if cfg.template is None:
        return _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    return [i for text, _ in _render_named(prompt, cfg.template, True) for i in _encode(tokenizer, text)]


def encode_chat(tokenizer, messages, cfg: TokenizeConfig) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a conversation; mask 1 on assistant turns (and their end markers)."""
    if cfg.template is not None:
        ids, mask = [], []
        for text, is_assistant in _render_named(messages, cfg.template, False):
            piece = _encode(tokenizer, text)
            ids += piece
            mask += [int(is_assistant)] * len(piece)
        if cfg.add_eos:
            ids, mask = ids + _eos(tokenizer), mask + [1]
        return ids, mask
    # tokenizer template: render growing prefixes; assistant tokens are what each turn adds
    ids, mask = [], []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _chat_ids(tokenizer, messages[:i], add_generation_prompt=True)
        after = _chat_ids(tokenizer, messages[:i + 1], add_generation_prompt=False)
        if after[:len(before)] != before or before[:len(ids)] != ids:
            raise ValueError("the chat template does not render conversations as growing prefixes; "
                             "pass a named template instead")
        mask += [0] * (len(before) - len(ids)) + [1] * (len(after) - len(before))
        ids = after
    return ids, mask


def response_ids(tokenizer, response: str, cfg: TokenizeConfig) -> list[int]:
    """A response's ids as the SFT loss and a reward model read them: its text, then EOS (unless
    the response is `Unfinished` or `cfg.add_eos` is off). Every encoder of responses uses this."""
    return _encode(tokenizer, response) + (_eos(tokenizer) if cfg.add_eos and not isinstance(response, Unfinished)
                                           else [])


def encode_example(tokenizer, prompt, response: str, cfg: TokenizeConfig,
                   stats: TruncationStats | None = None) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of prompt + `response_ids`, truncated by the policy above."""
    return truncate(encode_prompt(tokenizer, prompt, cfg), response_ids(tokenizer, response, cfg), cfg, stats)


def encode_split(tokenizer, prompt, response: str, cfg: TokenizeConfig) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of `encode_example`: the same tokens, cut where the loss mask starts."""
    ids, loss = encode_example(tokenizer, prompt, response, cfg)
    n = len(ids) - sum(loss)
    return ids[:n], ids[n:]


def truncate(prompt_ids, response_ids, cfg: TokenizeConfig, stats: TruncationStats | None = None):
    if stats is not None:
        stats.examples += 1
    if len(prompt_ids) > cfg.max_prompt_len or len(prompt_ids) >= cfg.max_len:
        keep = min(cfg.max_prompt_len, cfg.max_len - 1)
        prompt_ids = prompt_ids[-keep:]
        if stats is not None:
            stats.prompt_truncated += 1
    room = cfg.max_len - len(prompt_ids)
    if len(response_ids) > room:
        response_ids = response_ids[:room]
        if stats is not None:
            stats.response_truncated += 1
    return list(prompt_ids) + list(response_ids), [0] * len(prompt_ids) + [1] * len(response_ids)


def encode_sft(tokenizer, record: dict, cfg: TokenizeConfig, stats: TruncationStats | None = None):
    if "messages" in record:
        ids, mask = encode_chat(tokenizer, record["messages"], cfg)
        if len(ids) > cfg.max_len:
            ids, mask = ids[:cfg.max_len], mask[:cfg.max_len]
            if stats is not None:
                stats.response_truncated += 1
        if stats is not None:
            stats.examples += 1
        return ids, mask
    return encode_example(tokenizer, record["prompt"], record["completion"], cfg, stats)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None):
    """(tokens_BxT, mask_BxT) with every sequence flush left (training)."""
    length = length or max(len(s) for s in seqs)
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for row, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {row} has {len(s)} tokens, more than length={length}")
        tokens[row, :len(s)] = s
        mask[row, :len(s)] = 1
    return tokens, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None):
    """(tokens_BxT, mask_BxT) with every sequence flush right (generation)."""
    length = length or max(len(s) for s in seqs)
    tokens, mask = pad_right([list(s)[::-1] for s in seqs], pad_id, length)
    return tokens[:, ::-1].copy(), mask[:, ::-1].copy()


def decode(tokenizer, tokens_BxT, mask_BxT) -> list[str]:
    """The text of each row's real tokens (mask > 0), special tokens dropped."""
    return [tokenizer.decode([int(t) for t, m in zip(row, mrow) if m], skip_special_tokens=True)
            for row, mrow in zip(np.asarray(tokens_BxT), np.asarray(mask_BxT))]


def decode_sampled(tokenizer, response_BxN, mask_BxN) -> tuple[list[str], np.ndarray]:
    """(texts, ended_B) of sampled responses: `decode`'s texts, those with no EOS among their real
    tokens marked `Unfinished` (a reward model reads them at their last token, as on the tokens)."""
    response, mask = np.asarray(response_BxN), np.asarray(mask_BxN)
    ended = ((response == tokenizer.eos_token_id) & (mask > 0)).any(1)
    texts = decode(tokenizer, response, mask)
    return [t if e else Unfinished(t) for t, e in zip(texts, ended)], ended


def pad_values(seqs: Sequence[Sequence[int]], length: int, fill: int = 0) -> np.ndarray:
    out = np.full((len(seqs), length), fill, np.int32)
    for row, s in enumerate(seqs):
        out[row, :len(s)] = s
    return out


def pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]], row_len: int) -> dict[str, np.ndarray]:
    """Greedy in-order packing of (ids, loss_mask) examples into rows of `row_len`.

    Returns tokens, loss_mask, segment_ids (1, 2, ... per row; 0 = padding) and positions
    restarting at 0 in each segment. The first token of every segment carries no loss, so a
    segment never predicts across the boundary from the one before it.
    """
    rows: list[list[tuple[Sequence[int], Sequence[int]]]] = [[]]
    used = 0
    for ids, mask in examples:
        if len(ids) > row_len:
            raise ValueError(f"example of {len(ids)} tokens does not fit row_len={row_len}; truncate first")
        if used + len(ids) > row_len:
            rows.append([])
            used = 0
        rows[-1].append((ids, mask))
        used += len(ids)
    out = {k: np.zeros((len(rows), row_len), np.int32) for k in ("tokens", "loss_mask", "segment_ids", "positions")}
    for r, row in enumerate(rows):
        at = 0
        for seg, (ids, mask) in enumerate(row, start=1):
            n = len(ids)
            out["tokens"][r, at:at + n] = ids
            out["loss_mask"][r, at:at + n] = mask
            out["loss_mask"][r, at] = 0
            out["segment_ids"][r, at:at + n] = seg
            out["positions"][r, at:at + n] = np.arange(n)
            at += n
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    text += str(getattr(tokenizer, "chat_template", ""))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """The data layer's source (every module of rlhf_jax/data): arrays cached by one version of
    the code that reads and encodes records are not read back by another."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def cached(key: dict[str, Any], build: Callable[[], dict[str, np.ndarray]],
           directory: str | Path | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """(arrays, hit): load arrays stored under `key` and this version of the data layer's code
    (`code_fingerprint`), or build and store them."""
    directory = Path(directory) if directory is not None else cache_dir() / "tokenized"
    key = {**key, "data_code": code_fingerprint()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = directory / f"{digest}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}, True
    arrays = build()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays, False


# --- whole datasets to arrays --------------------------------------------------------------

def sft_arrays(records: Sequence[dict], tokenizer, cfg: TokenizeConfig, *, pack_rows: bool = False,
               cache_key: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """SFT records -> tokens, loss_mask, segment_ids, positions [N, max_len]; plus truncation stats.

    With `cache_key` (e.g. the source file's fingerprint) the arrays are cached on disk and a
    second call with the same records, tokenizer and settings does not tokenise again.
    """
    def build():
        stats = TruncationStats()
        examples = [encode_sft(tokenizer, r, cfg, stats) for r in records]
        if pack_rows:
            arrays = pack(examples, cfg.max_len)
        else:
            tokens, mask = pad_right([e[0] for e in examples], tokenizer.pad_token_id or 0, cfg.max_len)
            arrays = {"tokens": tokens, "loss_mask": pad_values([e[1] for e in examples], cfg.max_len) * mask,
                      "segment_ids": mask, "positions": np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)}
        return {**arrays, **{f"stats_{k}": np.asarray(v) for k, v in stats.as_dict().items()}}

    key = None if cache_key is None else {"kind": "sft", "records": cache_key, "tokenizer": tokenizer_fingerprint(
        tokenizer), "cfg": dataclasses.asdict(cfg), "pack": pack_rows}
    arrays, hit = cached(key, build) if key is not None else (build(), False)
    stats = {k[6:]: int(arrays.pop(k)) for k in list(arrays) if k.startswith("stats_")}
    return arrays, {**stats, "from_cache": hit}


def ranking_arrays(records: Sequence[dict], tokenizer, cfg: TokenizeConfig, k_max: int | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict]:
    """Pairs or K-wise rankings -> one batch element per prompt, every response one sequence.

    tokens/mask/loss_mask [N, K, T] (prompt + `response_ids`, right-padded; loss_mask marks the
    response), ranks [N, K] (0 best; -1 for empty slots), valid [N, K]. Pairs are K = 2 with
    ranks [0, 1]. The reward model scores each sequence once and forms all C(K, 2) pairs.
    """
    rows = [r if "responses" in r else {"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]],
                                        "ranks": [0, 1]} for r in records]
    k_max = k_max or max(len(r["responses"]) for r in rows)
    stats = TruncationStats()
    n, t = len(rows), cfg.max_len
    out = {"tokens": np.full((n, k_max, t), tokenizer.pad_token_id or 0, np.int32),
           "mask": np.zeros((n, k_max, t), np.int32), "loss_mask": np.zeros((n, k_max, t), np.int32),
           "ranks": np.full((n, k_max), -1, np.int32), "valid": np.zeros((n, k_max), np.int32)}
    for i, r in enumerate(rows):
        if len(r["responses"]) > k_max:
            raise ValueError(f"record {i} has {len(r['responses'])} responses, more than k_max={k_max}")
        prompt_ids = encode_prompt(tokenizer, r["prompt"], cfg)
        for j, (resp, rank) in enumerate(zip(r["responses"], r["ranks"])):
            ids, mask = truncate(prompt_ids, response_ids(tokenizer, resp, cfg), cfg, stats)
            out["tokens"][i, j, :len(ids)] = ids
            out["mask"][i, j, :len(ids)] = 1
            out["loss_mask"][i, j, :len(ids)] = mask
            out["ranks"][i, j] = rank
            out["valid"][i, j] = 1
    return out, stats.as_dict()


def prompt_arrays(records: Sequence[dict], tokenizer, cfg: TokenizeConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Prompt-only records -> left-padded tokens/mask [N, max_prompt_len] for generation."""
    stats = TruncationStats()
    seqs = []
    for r in records:
        ids = encode_prompt(tokenizer, r["prompt"], cfg)
        stats.examples += 1
        if len(ids) > cfg.max_prompt_len:
            ids = ids[-cfg.max_prompt_len:]
            stats.prompt_truncated += 1
        seqs.append(ids)
    tokens, mask = pad_left(seqs, tokenizer.pad_token_id or 0, cfg.max_prompt_len)
    return {"tokens": tokens, "mask": mask}, stats.as_dict()

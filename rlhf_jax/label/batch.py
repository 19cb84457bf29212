"""Batches of labelling items: read from a JSONL file, or sampled K per prompt from a checkpoint with
the project's sampler (`rlhf_jax.synth.generator`), then stored as tasks (`Store.create_batch`).

Item rows (one JSON object per line):
    sft:      {"prompt"}                                   a demonstration to write
    ranking:  {"prompt", "responses": [K strings]}         K = 2..9, all different
    rating:   {"prompt", "response"} (or "responses": [one])
    spans:    {"prompt", "response"} (or "responses": [one])
Any other keys of a row are kept in the item's meta (with "source": "FILE:LINE") as provenance. An
optional "ended": [one boolean per response] (false: cut at the length limit before any EOS; what
`--model` records for its samples) is checked here and carried by every export but sft.
Gold (screening) files hold the same rows plus "gold": the known answer, a label value in the row's
order (ranking {"ranks"}, rating {"scores"}, spans {"spans"}).
"""
from __future__ import annotations

import json
import logging
import types
from pathlib import Path
from typing import Callable, Sequence

from rlhf_jax.data.records import MAX_K, DataError, FieldError, ended_flags, mark_unfinished
from rlhf_jax.data.tokenize import Unfinished
from rlhf_jax.errors import UserError
from rlhf_jax.label import values as V
from rlhf_jax.label.store import ITEM_KINDS

log = logging.getLogger(__name__)
MAX_PROMPT = 20_000
RESAMPLE_TRIES = 3


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(str(path), n, "(line)", f"not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(str(path), n, "(line)", "expected a JSON object")
            out.append((n, row))
    if not out:
        raise UserError(f"{path}: holds no rows")
    return out


def _string(path, n, row, field, max_chars=MAX_PROMPT) -> str:
    v = row.get(field)
    if not isinstance(v, str):
        raise DataError(str(path), n, field, "missing" if v is None else f"expected a string, got {type(v).__name__}")
    if not v.strip():
        raise DataError(str(path), n, field, "is empty")
    if len(v) > max_chars:
        raise DataError(str(path), n, field, f"has {len(v)} characters, more than {max_chars}")
    return v


def item_from_row(path, n: int, row: dict, kind: str, meta: dict | None = None) -> dict:
    """A stored item {prompt, responses, meta} from one file row; DataError names file, line, field."""
    prompt = _string(path, n, row, "prompt")
    if kind == "sft":
        responses = []
    elif kind == "ranking":
        rs = row.get("responses")
        if not isinstance(rs, list) or not 2 <= len(rs) <= MAX_K:
            raise DataError(str(path), n, "responses", f"expected a list of 2..{MAX_K} strings")
        responses = [_string(path, n, {"r": r}, "r") for r in rs]
        if len(set(responses)) < len(responses):
            raise DataError(str(path), n, "responses", "contains the same response twice")
    else:
        if "response" in row:
            responses = [_string(path, n, row, "response")]
        else:
            rs = row.get("responses")
            if not isinstance(rs, list) or len(rs) != 1:
                raise DataError(str(path), n, "response", f"missing: a {kind} row holds one response")
            responses = [_string(path, n, {"response": rs[0]}, "response")]
    try:  # the records' own check of "ended" (kept in meta; the exports apply it)
        mark_unfinished(row, responses)
    except FieldError:
        raise DataError(str(path), n, "ended", f"expected a list of {len(responses)} booleans (false: the "
                                               "response was cut at the length limit before any EOS)") from None
    extra = {k: v for k, v in row.items() if k not in ("prompt", "responses", "response", "gold")}
    return {"prompt": prompt, "responses": responses, "meta": {**extra, **(meta or {}), "source": f"{path}:{n}"}}


def items_from_file(path, kind: str, meta: dict | None = None) -> list[dict]:
    _kind(kind)
    return [item_from_row(path, n, row, kind, meta) for n, row in _read_jsonl(path)]


def gold_from_file(path, kind: str, meta: dict | None = None) -> list[dict]:
    """Screening items: rows with a "gold" answer, validated as a label value of the row's kind."""
    _kind(kind)
    if kind == "sft":
        raise UserError("--gold: sft demonstrations have no known answer to screen against")
    out = []
    for n, row in _read_jsonl(path):
        item = item_from_row(path, n, row, kind, meta)
        if "gold" not in row:
            raise DataError(str(path), n, "gold", "missing: a screening item needs its known answer")
        try:
            item["gold"] = V.validate(kind, row["gold"], item["responses"], item["meta"])
        except V.LabelValueError as e:
            raise DataError(str(path), n, "gold" + e.field[len("value"):], e.message) from None
        out.append(item)
    return out


def prompts_from_file(path) -> list[tuple[int, str]]:
    return [(n, _string(path, n, row, "prompt")) for n, row in _read_jsonl(path)]


def _kind(kind: str) -> None:
    if kind not in ITEM_KINDS:
        raise UserError(f"--kind {kind}: unknown; valid: {', '.join(ITEM_KINDS)}")


def as_chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def sample_responses(complete: Callable[[list], list[str]], prompts: Sequence[str], k: int,
                     tries: int = RESAMPLE_TRIES, as_input: Callable = as_chat) -> tuple[list[list[str]], dict]:
    """K distinct non-empty responses per prompt from `complete([(messages, prefix), ...])`: duplicates
    (after stripping) and empty ones are resampled up to `tries` times; prompts that still lack K
    distinct responses are dropped and counted. A completion cut at the length limit (`tokenize.Unfinished`,
    from `synth.generator`) keeps that mark. Returns (responses per kept prompt or [] if
    dropped, stats)."""
    out: list[list[str]] = [[] for _ in prompts]
    need = list(range(len(prompts)))
    stats = {"sampled": 0, "resampled": 0, "dropped": 0}
    for attempt in range(tries + 1):
        if not need:
            break
        asks = [(i, k - len(out[i])) for i in need]
        batch = [(as_input(prompts[i]), "") for i, m in asks for _ in range(m)]
        texts = iter(complete(batch))
        stats["sampled" if attempt == 0 else "resampled"] += len(batch)
        for i, m in asks:
            for _ in range(m):
                c = next(texts)
                t = str(c).strip()  # str.strip drops the mark: put it back
                t = Unfinished(t) if isinstance(c, Unfinished) else t
                if t and t not in out[i]:
                    out[i].append(t)
        need = [i for i in need if len(out[i]) < k]
    for i in need:
        log.warning("prompt %d: only %d distinct responses of %d after %d resamples; dropped", i, len(out[i]), k, tries)
        out[i] = []
    stats["dropped"] = len(need)
    return out, stats


def items_from_model(model: str, prompts_path, kind: str, k: int, seed: int = 0, max_new_tokens: int = 128,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8) -> tuple[list[dict], dict]:
    """Items with responses sampled from a checkpoint (HF dir, GGUF, WORKDIR:STAGE): ranking items
    hold K responses per prompt; rating/spans items one response each (K items per prompt)."""
    _kind(kind)
    if kind == "sft":
        raise UserError("--model: sft items are prompts to write demonstrations for; use --prompts alone")
    if not (2 if kind == "ranking" else 1) <= k <= MAX_K:
        raise UserError(f"--k {k}: must be 2..{MAX_K} for ranking, 1..{MAX_K} otherwise")
    from rlhf_jax.synth.generator import Generator
    sampling = types.SimpleNamespace(batch_size=batch_size, temperature=temperature, top_p=top_p, top_k=0,
                                     sampler="gumbel", max_prompt_len=512, prompt_bucket=64)
    gen = Generator.load(model, sampling, seed=seed)
    rows = prompts_from_file(prompts_path)
    # a model with a chat template gets the prompt as a user turn; one without (a task-world policy,
    # a base model) gets the prompt's text as it was trained on, not a made-up chat format
    chat = bool(getattr(gen.tokenizer, "chat_template", None))
    per, stats = sample_responses(lambda b: gen.complete(b, max_new_tokens), [p for _, p in rows], k,
                                  as_input=as_chat if chat else str)
    prov = {"model": str(model), "seed": seed, "max_new_tokens": max_new_tokens, "temperature": temperature,
            "top_p": top_p, "prompt_format": "chat" if chat else "plain"}
    out = []
    for (n, prompt), responses in zip(rows, per):
        if not responses:
            continue
        src = {**prov, "source": f"{prompts_path}:{n}"}
        if kind == "ranking":  # "ended": which responses the export marks Unfinished (records.validate_ranking)
            out.append({"prompt": prompt, "responses": responses, "meta": dict(src, ended=ended_flags(responses))})
        else:
            out += [{"prompt": prompt, "responses": [r], "meta": dict(src, sample=j, ended=ended_flags([r]))}
                    for j, r in enumerate(responses)]
    stats.update(gen.stats.as_dict())
    return out, stats


def kind_meta(kind: str, criteria: Sequence[str] | None, categories: Sequence[str] | None) -> dict:
    """The meta every item of a batch carries: the rating criteria or the span categories."""
    if kind == "rating":
        return {"criteria": list(criteria or V.DEFAULT_CRITERIA)}
    if kind == "spans":
        return {"categories": list(categories or V.DEFAULT_CATEGORIES)}
    return {}

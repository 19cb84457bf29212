"""Canonical records of the InstructGPT recipe and their validation.

Kinds (each a plain dict once validated):
- "sft":      {"prompt", "completion"} or {"messages": [{"role", "content"}, ...]}
- "pair":     {"prompt", "chosen", "rejected"}; optional "ended": [2 bools] for (chosen, rejected), as below
- "ranking":  {"prompt", "responses": [K strings], "ranks": [K ints]}; 0 is best, equal ranks are ties;
              optional "ended": [K bools], False for a sampled response cut at the length limit
              before any EOS (it comes back as `tokenize.Unfinished`, encoded without an EOS)
  Every kind with responses ("sft" as prompt/completion, "pair", "ranking", "fine_grained",
  "rating", "binary") takes that optional "ended" list, one boolean per response in the record's
  order (an SFT completion cut at the limit is learned without an EOS: the model is not taught to
  stop there).
- "prompt":   {"prompt"} (PPO rollouts; optional "reference")
- "text":     {"text"} (pretraining text for the PPO-ptx term)
- "fine_grained": {"prompt", "response", "spans": [{"start", "end", "category"}], optional "pairs"}
- "rating":   {"prompt", "response", "scores": {criterion: number in [1, 5]}}: pointwise ratings (the
              labelling app's export; a consensus score may be a mean, so not only integers)
- "binary":   {"prompt", "response", "label": bool}: unpaired feedback (KTO), label True = desirable;
              the label may be true/false, 1/0 or "desirable"/"undesirable" (CSV: the same as text),
              and "completion" (TRL's name) stands for "response"
- "preference": a "pair" row or a "ranking" row, each checked by its own validator and returned in
                its own canonical form (a ranking row is one with "responses" or "ranks"), so one
                file of K-wise rankings, pairs, or both can train the reward model and DPO

A prompt is a string or a list of chat messages. Validators raise `FieldError(field, message)`;
readers (`sources.py`) turn it into a `DataError` naming file, line and field, or count it as a
skip under `policy="skip"` (see `LoadReport`).
"""
from __future__ import annotations

import collections
import dataclasses
import random
import reprlib
from typing import Any, Callable, Mapping

from rlhf_jax.data.tokenize import Unfinished
from rlhf_jax.errors import UserError

ROLES = ("system", "user", "assistant")
MAX_K = 9
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist = 2, 40, 40, 10


class FieldError(ValueError):
    def __init__(self, field: str, message: str, reason: str | None = None):
        super().__init__(f"field '{field}': {message}")
        self.field, self.message = field, message
        self.reason = reason or "invalid_" + field.split("[")[0].split(".")[0]


class DataError(UserError, ValueError):
    """A bad record: names the source file, the line (or row) and the field."""

    def __init__(self, source: str, line: int | str, field: str, message: str, reason: str | None = None):
        super().__init__(f"{source}:{line}: field '{field}': {message}")
        self.source, self.line, self.field, self.message = source, line, field, message
        self.reason = reason  # the skip reason under policy="skip"; default "malformed_<field>"


@dataclasses.dataclass
class LoadReport:
    """What loading did: rows read, rows kept, skips counted by reason (with first examples)."""

    source: str
    read: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    logged: bool = False  # its summary already went to the log (a reader's warning about skips)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.source}: {self.kept} of {self.read} rows kept"
        parts = ", ".join(f"{reason}={n} (first: {self.examples[reason]})"
                          for reason, n in sorted(self.skipped.items()))
        return f"{self.source}: {self.kept} of {self.read} rows kept; skipped {sum(self.skipped.values())}: {parts}"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "read": self.read, "kept": self.kept, "skipped": dict(self.skipped)}


def show(value: Any) -> str:
    """A short repr for error messages: bounded in depth and length, never raising (deeply nested
    lists would overflow the stack and integers over 4,300 digits refuse `repr`)."""
    try:
        return _SHOW.repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def _no_surrogates(field: str, value: str) -> None:
    """Lone surrogates ('\\ud800' from a JSON escape) are not text: they cannot be encoded as UTF-8
    and would crash the tokenizer later, far from the file that held them."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FieldError(field, f"contains a lone surrogate U+{ord(value[e.start]):04X} at character {e.start} "
                                "(not valid Unicode text)", reason="lone_surrogate") from None


def _text(row: Mapping, field: str, *, allow_empty: bool = False, max_chars: int | None = None) -> str:
    if field not in row or row[field] is None:
        raise FieldError(field, "missing", reason="missing_" + field)
    value = row[field]
    if not isinstance(value, str):
        raise FieldError(field, f"expected a string, got {type(value).__name__}", reason="wrong_type")
    _no_surrogates(field, value)
    if not allow_empty and not value.strip():
        raise FieldError(field, "is empty", reason="empty_" + field)
    if max_chars is not None and len(value) > max_chars:
        raise FieldError(field, f"has {len(value)} characters, more than max_chars={max_chars}",
                         reason="too_long")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _messages(value: Any, field: str, max_chars: int | None, need_assistant: bool) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise FieldError(field, "expected a non-empty list of {role, content} messages", reason="wrong_type")
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, Mapping):
            raise FieldError(where, f"expected an object, got {type(m).__name__}", reason="wrong_type")
        role = m.get("role")
        if role not in ROLES:
            raise FieldError(where + ".role", f"{show(role)} is not one of {ROLES}", reason="bad_role")
        try:
            content = _text(m, "content", max_chars=max_chars)
        except FieldError as e:
            raise FieldError(f"{where}.content", e.message, reason=e.reason) from None
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise FieldError(field, "has no assistant turn to learn from", reason="no_assistant_turn")
    return out


def _prompt(row: Mapping, max_chars: int | None) -> str | list[dict]:
    if isinstance(row.get("prompt"), list):
        return _messages(row["prompt"], "prompt", max_chars, need_assistant=False)
    return _text(row, "prompt", max_chars=max_chars)


def validate_sft(row: Mapping, max_chars: int | None = None) -> dict:
    if "messages" in row:
        if row.get("ended") is not None:
            raise FieldError("ended", "applies to prompt/completion rows, not to messages", reason="bad_ended")
        return {"messages": _messages(row["messages"], "messages", max_chars, need_assistant=True)}
    completion = _text(row, "completion", max_chars=max_chars)
    return {"prompt": _prompt(row, max_chars), "completion": mark_unfinished(row, [completion])[0]}


def mark_unfinished(row: Mapping, responses: list[str]) -> list[str]:
    """`responses` with each one the row's optional "ended" list marks false made `Unfinished`."""
    ended = row.get("ended")
    if ended is None:
        return responses
    if not isinstance(ended, list) or len(ended) != len(responses) or not all(isinstance(e, bool) for e in ended):
        raise FieldError("ended", f"{show(ended)} is not a list of {len(responses)} booleans", reason="bad_ended")
    return [r if e else Unfinished(r) for r, e in zip(responses, ended)]


def validate_pair(row: Mapping, max_chars: int | None = None) -> dict:
    out = {"prompt": _prompt(row, max_chars), "chosen": _text(row, "chosen", max_chars=max_chars),
           "rejected": _text(row, "rejected", max_chars=max_chars)}
    if out["chosen"] == out["rejected"]:
        raise FieldError("rejected", "is identical to chosen", reason="chosen_equals_rejected")
    out["chosen"], out["rejected"] = mark_unfinished(row, [out["chosen"], out["rejected"]])
    return out


def validate_ranking(row: Mapping, max_chars: int | None = None) -> dict:
    prompt = _prompt(row, max_chars)
    responses, ranks = row.get("responses"), row.get("ranks")
    if not isinstance(responses, list):
        raise FieldError("responses", "expected a list of strings", reason="wrong_type")
    if not 2 <= len(responses) <= MAX_K:
        raise FieldError("responses", f"has {len(responses)} responses; K must be 2..{MAX_K}", reason="bad_k")
    checked = []
    for i, r in enumerate(responses):
        try:
            checked.append(_text({"r": r}, "r", max_chars=max_chars))
        except FieldError as e:
            raise FieldError(f"responses[{i}]", e.message, reason=e.reason.replace("_r", "_response")) from None
    responses = checked
    if not isinstance(ranks, list) or len(ranks) != len(responses):
        raise FieldError("ranks", f"expected a list of {len(responses)} integers", reason="bad_ranks")
    if not all(_is_int(r) for r in ranks):
        raise FieldError("ranks", f"{show(ranks)} are not all integers", reason="bad_ranks")
    # a ranking with ties: dense values 0..m-1 (0 best); a strict ranking is a permutation of 0..K-1
    if sorted(set(ranks)) != list(range(len(set(ranks)))):
        raise FieldError("ranks", f"{show(ranks)} is not a permutation of 0..{len(ranks) - 1} "
                                  "(equal values mark ties, gaps are not allowed)", reason="bad_ranks")
    if len(set(ranks)) < 2:
        raise FieldError("ranks", "all responses are tied: no preference to learn", reason="all_tied")
    if len(set(responses)) < len(responses):
        raise FieldError("responses", "contains the same response twice", reason="duplicate_response")
    return {"prompt": prompt, "responses": mark_unfinished(row, responses), "ranks": list(ranks)}


def ended_flags(responses: list[str]) -> list[bool]:
    """A record's "ended" field: False for each `Unfinished` response (what a writer stores so
    that the validators give the mark back)."""
    return [not isinstance(r, Unfinished) for r in responses]


def validate_prompt(row: Mapping, max_chars: int | None = None) -> dict:
    out = {"prompt": _prompt(row, max_chars)}
    if row.get("reference") is not None:
        out["reference"] = _text(row, "reference", max_chars=max_chars)
    return out


def validate_text(row: Mapping, max_chars: int | None = None) -> dict:
    return {"text": _text(row, "text", max_chars=max_chars)}


def validate_fine_grained(row: Mapping, max_chars: int | None = None) -> dict:
    response = _text(row, "response", max_chars=max_chars)
    spans = row.get("spans", [])
    if not isinstance(spans, list):
        raise FieldError("spans", "expected a list", reason="wrong_type")
    clean = []
    for i, s in enumerate(spans):
        where = f"spans[{i}]"
        if not isinstance(s, Mapping) or not {"start", "end", "category"} <= set(s):
            raise FieldError(where, "expected {start, end, category}", reason="bad_span")
        start, end = s["start"], s["end"]
        if not (_is_int(start) and _is_int(end) and 0 <= start < end <= len(response)):
            raise FieldError(where, f"[{show(start)}, {show(end)}) is not inside the {len(response)}-character "
                                    "response", reason="bad_span")
        try:
            category = _text(s, "category", max_chars=max_chars)
        except FieldError as e:
            raise FieldError(f"{where}.category", e.message, reason="bad_span") from None
        clean.append({"start": start, "end": end, "category": category})
    return {"prompt": _prompt(row, max_chars), "response": mark_unfinished(row, [response])[0], "spans": clean}


def validate_preference(row: Mapping, max_chars: int | None = None) -> dict:
    """A pair or a ranking, whichever the row is; a row with "responses" or "ranks" is a ranking."""
    if "responses" in row or "ranks" in row:
        return validate_ranking(row, max_chars=max_chars)
    if "chosen" in row or "rejected" in row:
        return validate_pair(row, max_chars=max_chars)
    raise FieldError("chosen", "missing: a preference row holds chosen/rejected (a pair) or responses/ranks "
                               "(a ranking)", reason="missing_preference")


RATING_SCALE = (1, 5)


def validate_rating(row: Mapping, max_chars: int | None = None) -> dict:
    response = _text(row, "response", max_chars=max_chars)
    scores = row.get("scores")
    if not isinstance(scores, Mapping) or not scores:
        raise FieldError("scores", "expected a non-empty object {criterion: score}", reason="bad_scores")
    lo, hi = RATING_SCALE
    clean = {}
    for name, value in scores.items():
        if not isinstance(name, str) or not name.strip():
            raise FieldError("scores", f"criterion {show(name)} is not a non-empty string", reason="bad_scores")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise FieldError(f"scores.{name}", f"{show(value)} is not a number in [{lo}, {hi}]", reason="bad_scores")
        clean[name] = value
    return {"prompt": _prompt(row, max_chars), "response": mark_unfinished(row, [response])[0], "scores": clean}


LABELS = {True: True, False: False, 1: True, 0: False, "desirable": True, "undesirable": False,
          "true": True, "false": False, "1": True, "0": False}


def validate_binary(row: Mapping, max_chars: int | None = None) -> dict:
    """Unpaired binary feedback: a prompt, one response and whether it is desirable."""
    prompt = _prompt(row, max_chars)
    field = "completion" if "response" not in row and "completion" in row else "response"
    response = _text(row, field, max_chars=max_chars)
    label = row.get("label")
    key = label.strip().lower() if isinstance(label, str) else label
    if label is None:
        raise FieldError("label", "missing (true/false, 1/0 or 'desirable'/'undesirable')", reason="missing_label")
    if isinstance(key, float) or not isinstance(key, (str, int)) or key not in LABELS:
        raise FieldError("label", f"{show(label)} is not true/false, 1/0 or 'desirable'/'undesirable'",
                         reason="bad_label")
    return {"prompt": prompt, "response": mark_unfinished(row, [response])[0], "label": LABELS[key]}


VALIDATORS: dict[str, Callable[..., dict]] = {
    "sft": validate_sft, "pair": validate_pair, "ranking": validate_ranking, "prompt": validate_prompt,
    "text": validate_text, "fine_grained": validate_fine_grained, "preference": validate_preference,
    "binary": validate_binary, "rating": validate_rating,
}


def ranking_pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """(winner, loser) index pairs of a ranking; ties dropped. C(K,2) pairs for a strict ranking."""
    return [(i, j) if ranks[i] < ranks[j] else (j, i)
            for i in range(len(ranks)) for j in range(i + 1, len(ranks)) if ranks[i] != ranks[j]]


UNPAIR = ("both", "one")


def binary_from_preferences(records: list[dict], unpair: str = "both", seed: int = 0) -> list[dict]:
    """Pairs and rankings as binary feedback (KTO): a ranking's top-ranked responses (all tied at
    rank 0) are desirable, its bottom-ranked ones undesirable, the middle ranks dropped; a pair's
    chosen is desirable and its rejected undesirable. unpair="both" keeps both sides of every
    prompt (as separate examples; the data order later shuffles them apart); "one" keeps one
    response per prompt, desirable or undesirable by a seeded coin: the paper's one-y-per-x
    setting, where no prompt has both a desirable and an undesirable response."""
    if unpair not in UNPAIR:
        raise ValueError(f"unpair={unpair!r} must be one of {UNPAIR}")
    coin = random.Random(seed)
    out = []
    for r in records:
        if "responses" in r:
            top, bottom = min(r["ranks"]), max(r["ranks"])
            good = [y for y, k in zip(r["responses"], r["ranks"]) if k == top]
            bad = [y for y, k in zip(r["responses"], r["ranks"]) if k == bottom]
        else:
            good, bad = [r["chosen"]], [r["rejected"]]
        sides = [(good, True), (bad, False)]
        if unpair == "one":
            sides = [sides[coin.random() < 0.5]]
        out += [{"prompt": r["prompt"], "response": y, "label": label} for ys, label in sides for y in ys]
    return out

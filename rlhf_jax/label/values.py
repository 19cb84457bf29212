"""Label values: validation (messages "<field>: <message>") and the mapping between the display order
an annotator saw and the item order that is stored.

    sft:     {"completion": str}                     non-empty, at most MAX_COMPLETION characters
    ranking: {"ranks": [int, ...]}                   dense ranks, 0 best, equal = tie, one per response
    rating:  {"scores": {criterion: 1..5}, "comment": str}   every configured criterion scored
    spans:   {"spans": [{"start", "end", "category"}]}   inside the response, non-overlapping,
                                                          category from the item's list
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

MAX_COMPLETION = 20_000
MAX_COMMENT = 5_000
DEFAULT_CRITERIA = ("helpfulness", "honesty", "harmlessness")
DEFAULT_CATEGORIES = ("factual error", "irrelevant", "incoherent", "unsafe")


class LabelValueError(ValueError):
    """A bad label value; str() is "<field>: <message>"."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(kind: str, value: Any, responses: Sequence[str], meta: Mapping) -> dict:
    """A clean copy of `value` for an item of `kind` (order as given), or LabelValueError naming the field."""
    if not isinstance(value, Mapping):
        raise LabelValueError("value", f"expected an object, got {type(value).__name__}")
    if kind == "sft":
        c = value.get("completion")
        if not isinstance(c, str):
            raise LabelValueError("value.completion", "expected a string")
        if not c.strip():
            raise LabelValueError("value.completion", "is empty")
        if len(c) > MAX_COMPLETION:
            raise LabelValueError("value.completion", f"has {len(c)} characters, more than {MAX_COMPLETION}")
        return {"completion": c}
    if kind == "ranking":
        ranks = value.get("ranks")
        k = len(responses)
        if not isinstance(ranks, list) or len(ranks) != k:
            raise LabelValueError("value.ranks", f"expected a list of {k} integers, one rank per response")
        if not all(_int(r) for r in ranks):
            raise LabelValueError("value.ranks", "are not all integers")
        if sorted(set(ranks)) != list(range(len(set(ranks)))):
            raise LabelValueError("value.ranks", f"{ranks} are not dense ranks 0..m-1 (0 best, equal values tie)")
        if len(set(ranks)) < 2:
            raise LabelValueError("value.ranks", "all responses are tied")
        return {"ranks": list(ranks)}
    if kind == "rating":
        criteria = list(meta.get("criteria") or DEFAULT_CRITERIA)
        scores = value.get("scores")
        if not isinstance(scores, Mapping):
            raise LabelValueError("value.scores", "expected an object {criterion: 1..5}")
        unknown = sorted(set(scores) - set(criteria))
        if unknown:
            raise LabelValueError(f"value.scores.{unknown[0]}", f"unknown criterion; valid: {', '.join(criteria)}")
        for c in criteria:
            s = scores.get(c)
            if s is None:
                raise LabelValueError(f"value.scores.{c}", "missing: every criterion needs a score 1..5")
            if not _int(s) or not 1 <= s <= 5:
                raise LabelValueError(f"value.scores.{c}", f"{s!r} is not an integer 1..5")
        comment = value.get("comment", "")
        if comment is None:
            comment = ""
        if not isinstance(comment, str):
            raise LabelValueError("value.comment", "expected a string")
        if len(comment) > MAX_COMMENT:
            raise LabelValueError("value.comment", f"has {len(comment)} characters, more than {MAX_COMMENT}")
        return {"scores": {c: scores[c] for c in criteria}, "comment": comment}
    if kind == "spans":
        categories = list(meta.get("categories") or DEFAULT_CATEGORIES)
        spans = value.get("spans")
        n = len(responses[0]) if responses else 0
        if not isinstance(spans, list):
            raise LabelValueError("value.spans", "expected a list of {start, end, category}")
        out = []
        for i, s in enumerate(spans):
            where = f"value.spans[{i}]"
            if not isinstance(s, Mapping) or not {"start", "end", "category"} <= set(s):
                raise LabelValueError(where, "expected {start, end, category}")
            a, b = s["start"], s["end"]
            if not (_int(a) and _int(b) and 0 <= a < b <= n):
                raise LabelValueError(where, f"[{a!r}, {b!r}) is not inside the {n}-character response")
            if s["category"] not in categories:
                raise LabelValueError(f"{where}.category", f"{s['category']!r} is not one of: {', '.join(categories)}")
            out.append({"start": a, "end": b, "category": s["category"]})
        out.sort(key=lambda s: (s["start"], s["end"]))
        for x, y in zip(out, out[1:]):
            if y["start"] < x["end"]:
                raise LabelValueError("value.spans", f"[{x['start']}, {x['end']}) and [{y['start']}, {y['end']}) overlap")
        return {"spans": out}
    raise LabelValueError("kind", f"unknown {kind!r}")


def to_item_order(kind: str, value: dict, display: Sequence[int]) -> dict:
    """A validated display-order value in item order: ranks[display[s]] = shown_ranks[s]."""
    if kind != "ranking":
        return value
    ranks = [0] * len(display)
    for s, i in enumerate(display):
        ranks[i] = value["ranks"][s]
    return {"ranks": ranks}


def to_display_order(kind: str, value: dict, display: Sequence[int]) -> dict:
    if kind != "ranking":
        return value
    return {"ranks": [value["ranks"][i] for i in display]}

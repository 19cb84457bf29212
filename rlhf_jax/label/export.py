"""Export labels as the records the training stages read (`rlhf_jax.data.records`), one consensus
record per item, each with "provenance": {"item_id", "annotators", "agreement", ...}.

    --kind ranking      --consensus borda     {"prompt", "responses", "ranks"}          (RM, DPO family)
    --kind pairs        --consensus majority  {"prompt", "chosen", "rejected"} per won pair
                        (or borda: the pairs of the Borda ranking)
    --kind rating       --consensus mean      {"prompt", "response", "scores": {criterion: mean}}
    --kind fine_grained --consensus majority  {"prompt", "response", "spans"}: a character is in an
                        error span of a category when more than half the annotators marked it so
    --kind sft          --consensus all       {"prompt", "completion"}: every demonstration

A record also holds "ended" (one boolean per response) when its item recorded which responses
were cut at the length limit (`batch --model` does; a file row may).

Gold (screening) items are not exported; with --exclude-below T annotators whose gold accuracy on
the kind is below T are left out of the consensus (and named in the summary). The consensus rules
and gold accuracy are `rlhf_jax.label.quality`'s.
"""
from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

from rlhf_jax.data.records import (FieldError, ended_flags, ranking_pairs, validate_fine_grained, validate_pair,
                                    validate_ranking, validate_rating, validate_sft)
from rlhf_jax.errors import UserError

ITEM_KIND = {"ranking": "ranking", "pairs": "ranking", "rating": "rating", "fine_grained": "spans", "sft": "sft"}
RULES = {"ranking": ("borda",), "pairs": ("majority", "borda"), "rating": ("mean",), "fine_grained": ("majority",),
         "sft": ("all",)}


def _quality():
    try:
        from rlhf_jax.label import quality
    except ImportError:
        raise UserError("export needs rlhf_jax.label.quality (the consensus rules and gold accuracy), "
                        "which is not installed in this checkout") from None
    return quality


def check(kind: str, rule: str | None) -> str:
    """The rule to use (the kind's default for None); UserError listing the valid ones otherwise."""
    if kind not in RULES:
        raise UserError(f"--kind {kind}: unknown; valid: {', '.join(RULES)}")
    if rule is None:
        return RULES[kind][0]
    if rule not in RULES[kind]:
        raise UserError(f"--consensus {rule}: not a rule for --kind {kind}; valid: {', '.join(RULES[kind])}")
    return rule


def item_agreement(kind: str, values: list[dict]) -> float | None:
    """How far one item's annotators agree: rankings, the share of (pair, annotator pair) with the
    same strict preference (ties skipped); ratings, the share of (criterion, annotator pair) with the
    same score; spans, the mean pairwise character-level F1. None with fewer than two labels."""
    if len(values) < 2:
        return None
    same = n = 0
    if kind == "ranking":
        k = len(values[0]["ranks"])
        for i, j in itertools.combinations(range(k), 2):
            prefs = [(v["ranks"][i] > v["ranks"][j]) - (v["ranks"][i] < v["ranks"][j]) for v in values]
            for a, b in itertools.combinations([p for p in prefs if p], 2):
                same, n = same + (a == b), n + 1
    elif kind == "rating":
        for c in values[0]["scores"]:
            for a, b in itertools.combinations([v["scores"][c] for v in values], 2):
                same, n = same + (a == b), n + 1
    elif kind == "spans":
        f1 = _quality().span_f1
        pairs = list(itertools.combinations([v["spans"] for v in values], 2))
        return sum(f1(a, b) for a, b in pairs) / len(pairs)
    else:
        return None
    return same / n if n else None


def majority_spans(values: list[dict], length: int) -> list[dict]:
    """Spans covering the characters that more than half of the labels mark with one category."""
    votes: dict[str, list[int]] = defaultdict(lambda: [0] * length)
    for v in values:
        for s in v["spans"]:
            for c in range(s["start"], s["end"]):
                votes[s["category"]][c] += 1
    out = []
    for category in sorted(votes):
        start = None
        for c, n in enumerate(votes[category] + [0]):
            if 2 * n > len(values) and start is None:
                start = c
            elif 2 * n <= len(values) and start is not None:
                out.append({"start": start, "end": c, "category": category})
                start = None
    return sorted(out, key=lambda s: (s["start"], s["category"]))


def export(store, kind: str, rule: str | None = None, exclude_below: float | None = None,
           batch: str | None = None) -> tuple[list[dict], dict]:
    """(records, summary) of the labels of `kind`; summary counts items, records, skips, exclusions."""
    rule = check(kind, rule)
    rows = store.label_rows(kind=ITEM_KIND[kind], batch=batch)
    quality = _quality() if kind != "sft" or exclude_below is not None else None
    excluded: list[str] = []
    gold = {}
    if exclude_below is not None:
        if not 0.0 <= exclude_below <= 1.0:
            raise UserError(f"--exclude-below {exclude_below}: must be in [0, 1]")
        gold = quality.gold_accuracy(rows)
        excluded = sorted(a for a, g in gold.items() if g["accuracy"] is not None and g["accuracy"] < exclude_below)
    by_item: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        if r["gold"] is None and r["annotator"] not in excluded:
            by_item[r["item_id"]].append(r)
    summary = {"kind": kind, "consensus": rule, "labels": len(rows), "items": len(by_item), "records": 0,
               "skipped": {}, "excluded": excluded, "gold_accuracy": gold}
    cons = {}
    if kind in ("ranking", "pairs", "rating"):
        qrule = "borda" if kind == "pairs" and rule == "borda" else rule
        cons = quality.consensus([r for rs in by_item.values() for r in rs], qrule)
    records = []
    for item_id, rs in sorted(by_item.items()):
        first, values = rs[0], [r["value"] for r in rs]
        prov = {"item_id": item_id, "annotators": sorted(r["annotator"] for r in rs),
                "agreement": item_agreement(ITEM_KIND[kind], values), "batch": first["batch"],
                "consensus": rule, **{k: v for k, v in first["meta"].items() if k in ("source", "model")}}
        try:
            if kind == "sft":
                for r in rs:
                    rec = validate_sft({"prompt": r["prompt"], "completion": r["value"]["completion"]})
                    records.append({**rec, "provenance": dict(prov, annotators=[r["annotator"]], agreement=None)})
                continue
            ended = first["meta"].get("ended")  # which responses were cut at the length limit, when known
            if kind == "ranking":
                rec = validate_ranking({"prompt": first["prompt"], "responses": first["responses"],
                                        "ranks": cons[item_id]["ranks"], "ended": ended})
                records.append({**rec, **_ended(rec["responses"], ended), "provenance": prov})
            elif kind == "pairs":
                c = cons[item_id]
                won = c["pairs"] if rule == "majority" else [list(p) for p in ranking_pairs(c["ranks"])]
                votes = c.get("votes") or [None] * len(won)
                for (w, l), v in zip(won, votes):
                    rec = validate_pair({"prompt": first["prompt"], "chosen": first["responses"][w],
                                         "rejected": first["responses"][l],
                                         "ended": None if ended is None else [ended[w], ended[l]]})
                    records.append({**rec, **_ended([rec["chosen"], rec["rejected"]], ended),
                                    "provenance": dict(prov, pair=[w, l], votes=v)})
            elif kind == "rating":
                rec = validate_rating({"prompt": first["prompt"], "response": first["responses"][0],
                                       "scores": cons[item_id]["scores"], "ended": ended})
                records.append({**rec, **_ended([rec["response"]], ended), "provenance": prov})
            else:
                spans = majority_spans(values, len(first["responses"][0]))
                rec = validate_fine_grained({"prompt": first["prompt"], "response": first["responses"][0],
                                             "spans": spans, "ended": ended})
                records.append({**rec, **_ended([rec["response"]], ended), "provenance": prov})
        except FieldError as e:  # e.g. a consensus that ties every response: nothing to learn
            summary["skipped"][e.reason] = summary["skipped"].get(e.reason, 0) + 1
    summary["records"] = len(records)
    return records, summary


def _ended(responses: list[str], known) -> dict:
    """The exported record's "ended" field, when the item recorded which responses were cut."""
    return {} if known is None else {"ended": ended_flags(responses)}


def write_jsonl(path, records: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)

"""Annotator quality from stored labels: gold (screening) accuracy, agreement, consensus and a
bias audit. Pure functions over plain rows (no database, no HTTP), so the server's report page,
the `report` command and the export share one computation.

A label row is a dict
    {"item_id", "annotator", "kind", "value" (ITEM order), "gold": value | None,
     "responses": [str], "display": [int]}
with `display[s]` the index into `responses` of the response shown in slot s, and values as in
the label contract: ranking {"ranks": dense ranks, 0 best, equal = tie}; rating {"scores":
{criterion: 1..5}, "comment"}; spans {"spans": [{"start", "end", "category"}]}; sft {"completion"}.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np

from rlhf_jax.errors import ConfigError

CONSENSUS_RULES = {"borda": "ranking", "majority": "ranking", "mean": "rating"}
SCORED_KINDS = ("ranking", "rating", "spans")  # sft demonstrations have no gold answer to compare
SPAN_F1_CORRECT = 0.5  # a gold spans item counts as correct at character-level F1 >= this


def _finite(x) -> float | None:
    """A JSON-safe float: None for NaN/inf (JSON has neither)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _strict_pairs(ranks: list[int]) -> dict[tuple[int, int], int]:
    """{(i, j) with i < j: +1 if i is preferred, -1 if j is} for every untied pair."""
    return {(i, j): 1 if ranks[i] < ranks[j] else -1
            for i, j in itertools.combinations(range(len(ranks)), 2) if ranks[i] != ranks[j]}


def _span_chars(spans: list[dict]) -> set[tuple[int, str]]:
    return {(c, s["category"]) for s in spans for c in range(s["start"], s["end"])}


def span_f1(spans: list[dict], gold: list[dict]) -> float:
    """Character-level F1 of (offset, category) between two span lists; 1.0 when both are empty
    (agreeing that a response has no error is agreement)."""
    a, b = _span_chars(spans), _span_chars(gold)
    if not a and not b:
        return 1.0
    return 2 * len(a & b) / (len(a) + len(b))


# -- gold (screening) accuracy -------------------------------------------------------------------

def _gold_counts(kind: str, value: dict, gold: dict) -> tuple[int, int]:
    """(n, correct) one label contributes: ranking per strict gold pair (an annotator's tie on a
    strict gold pair is wrong), rating per criterion (exact score), spans per item (F1 >= 0.5)."""
    if kind == "ranking":
        mine, ref = _strict_pairs(value["ranks"]), _strict_pairs(gold["ranks"])
        return len(ref), sum(mine.get(p) == s for p, s in ref.items())
    if kind == "rating":
        ref = gold["scores"]
        return len(ref), sum(abs(value["scores"].get(c, -99) - s) <= 0 for c, s in ref.items())
    if kind == "spans":
        return 1, int(span_f1(value["spans"], gold["spans"]) >= SPAN_F1_CORRECT)
    return 0, 0


def gold_accuracy(rows: list[dict]) -> dict[str, dict]:
    """{annotator: {"n", "correct", "accuracy"}} over the rows of gold items (ranking: strict gold
    pairs; rating: criteria; spans: items). Annotators without a scored gold label are absent."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("gold") is None or r["kind"] not in SCORED_KINDS:
            continue
        n, correct = _gold_counts(r["kind"], r["value"], r["gold"])
        acc = out.setdefault(r["annotator"], {"n": 0, "correct": 0, "accuracy": None})
        acc["n"] += n
        acc["correct"] += correct
    for acc in out.values():
        acc["accuracy"] = acc["correct"] / acc["n"] if acc["n"] else None
    return out


def below_threshold(gold: dict[str, dict], threshold: float) -> list[str]:
    """Annotators whose gold accuracy is under `threshold` (unscreened ones are kept)."""
    return sorted(a for a, g in gold.items() if g["accuracy"] is not None and g["accuracy"] < threshold)


# -- agreement ------------------------------------------------------------------------------------

def _units(rows: list[dict], kind: str) -> dict[tuple, dict[str, float]]:
    """{unit: {annotator: value}}: ranking (item, response) -> rank; rating (item, criterion) ->
    score; spans (item, char) -> category code (0 = no span)."""
    units: dict[tuple, dict[str, float]] = defaultdict(dict)
    categories: dict[str, int] = {}
    for r in rows:
        if r["kind"] != kind:
            continue
        item, who, v = r["item_id"], r["annotator"], r["value"]
        if kind == "ranking":
            for i, rank in enumerate(v["ranks"]):
                units[(item, i)][who] = float(rank)
        elif kind == "rating":
            for c, s in v["scores"].items():
                units[(item, c)][who] = float(s)
        elif kind == "spans":
            marked = {c: categories.setdefault(cat, len(categories) + 1) for c, cat in _span_chars(v["spans"])}
            for c in range(len(r["responses"][0])):
                units[(item, c)][who] = float(marked.get(c, 0))
    return units


def krippendorff_alpha(rows: list[dict], kind: str) -> float | None:
    """Krippendorff's alpha of `kind` labels via the `krippendorff` package: ordinal on the rank
    of each (item, response) for rankings and on each (item, criterion) score for ratings, nominal
    on each (item, character)'s span category for spans. None when no unit has two labels or
    every label holds one value (alpha is undefined)."""
    if kind not in SCORED_KINDS:
        raise ConfigError(f"krippendorff_alpha: kind {kind!r} has no agreement measure; valid: {SCORED_KINDS}")
    import krippendorff
    units = {u: v for u, v in _units(rows, kind).items() if len(v) >= 2}  # a lone label carries no agreement
    coders = sorted({a for v in units.values() for a in v})
    if not units or len({x for v in units.values() for x in v.values()}) < 2:
        return None
    data = np.full((len(coders), len(units)), np.nan)
    index = {a: i for i, a in enumerate(coders)}
    for j, v in enumerate(units.values()):
        for a, x in v.items():
            data[index[a], j] = x
    level = "nominal" if kind == "spans" else "ordinal"
    return _finite(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def pairwise_counts(rows: list[dict]) -> dict:
    """Agreement on ranked pairs: over every (item, response pair, annotator pair) where both
    annotators state a strict preference, the fraction where it is the same. Comparisons where
    either annotator tied the pair are excluded and counted in "ties"."""
    by_item: dict = defaultdict(dict)
    for r in rows:
        if r["kind"] == "ranking":
            by_item[r["item_id"]][r["annotator"]] = r["value"]["ranks"]
    same = n = ties = 0
    for labels in by_item.values():
        for a, b in itertools.combinations(sorted(labels), 2):
            ra, rb = labels[a], labels[b]
            for i, j in itertools.combinations(range(len(ra)), 2):
                if ra[i] == ra[j] or rb[i] == rb[j]:
                    ties += 1
                    continue
                n += 1
                same += (ra[i] < ra[j]) == (rb[i] < rb[j])
    return {"agreement": same / n if n else None, "n": n, "same": same, "ties": ties}


def pairwise_agreement(rows: list[dict]) -> float | None:
    """The fraction of pairwise_counts; None without a comparable pair."""
    return pairwise_counts(rows)["agreement"]


# -- consensus ------------------------------------------------------------------------------------

def dense_ranks(scores: list[float], higher_is_better: bool = True) -> list[int]:
    """Dense ranks (0 best) of scores; equal scores share a rank."""
    keys = sorted(set(scores), reverse=higher_is_better)
    return [keys.index(s) for s in scores]


def borda_points(ranks: list[int]) -> list[float]:
    """One annotator's Borda points: responses ranked strictly below + half of those tied with it
    (a strict K-ranking gives K-1 .. 0)."""
    return [sum(1.0 if rj > ri else 0.5 if rj == ri else 0.0 for j, rj in enumerate(ranks) if j != i)
            for i, ri in enumerate(ranks)]


def _borda(labels: list[dict]) -> dict:
    total = np.sum([borda_points(v["ranks"]) for v in labels], axis=0)
    return {"ranks": dense_ranks([float(x) for x in total])}


def _majority(labels: list[dict]) -> dict:
    """Per response pair (i < j, item order): the side with more strict votes wins; equal votes
    (ties between annotators, or every annotator tying the pair) are reported in "ties"."""
    k = len(labels[0]["ranks"])
    pairs, votes, ties = [], [], []
    for i, j in itertools.combinations(range(k), 2):
        for_i = sum(v["ranks"][i] < v["ranks"][j] for v in labels)
        for_j = sum(v["ranks"][j] < v["ranks"][i] for v in labels)
        if for_i == for_j:
            ties.append([i, j])
        else:
            pairs.append([i, j] if for_i > for_j else [j, i])
            votes.append([max(for_i, for_j), min(for_i, for_j)])
    return {"pairs": pairs, "votes": votes, "ties": ties}


def _mean(labels: list[dict]) -> dict:
    criteria = sorted({c for v in labels for c in v["scores"]})
    return {"scores": {c: float(np.mean([v["scores"][c] for v in labels if c in v["scores"]])) for c in criteria},
            "n": len(labels)}


RULES = {"borda": _borda, "majority": _majority, "mean": _mean}


def consensus(rows: list[dict], rule: str, exclude=frozenset()) -> dict:
    """{item_id: consensus value} over the labels of annotators not in `exclude`.

    borda (ranking) -> {"ranks": dense ranks of summed Borda points, equal totals tied};
    majority (ranking) -> {"pairs": [[winner, loser]], "votes": [[for, against]], "ties": [[i, j]]};
    mean (rating) -> {"scores": {criterion: mean}, "n"}. Indices are in item order. Items left
    with no label after exclusion are absent."""
    if rule not in RULES:
        raise ConfigError(f"consensus rule {rule!r} is not one of {sorted(RULES)}")
    kind = CONSENSUS_RULES[rule]
    by_item: dict = defaultdict(list)
    for r in rows:
        if r["annotator"] in exclude:
            continue
        if r["kind"] != kind:
            raise ConfigError(f"consensus rule {rule!r} applies to {kind} labels; item {r['item_id']} is {r['kind']}")
        by_item[r["item_id"]].append(r["value"])
    return {item: RULES[rule](labels) for item, labels in by_item.items()}


# -- bias audit -----------------------------------------------------------------------------------

def _corr(x: list[float], y: list[float]) -> dict:
    from scipy import stats
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"spearman": None, "pearson": None, "n": len(x)}
    return {"spearman": _finite(stats.spearmanr(x, y).statistic), "pearson": _finite(stats.pearsonr(x, y).statistic),
            "n": len(x)}


def bias_audit(rows: list[dict]) -> dict:
    """Position and length bias of ranking and rating labels.

    chosen_shown_first (rankings): how often a top-ranked response was the one shown in slot 0,
    against chance (the mean share of top-ranked responses among the K shown); mean_rank_by_slot:
    the mean rank of the response shown in each slot (position bias shows as a slope).
    length_corr: Spearman/Pearson of preference against response length in words (ranking:
    preference (K-1-rank)/(K-1) per response; rating: the mean score over criteria);
    longer_preferred: over strict ranked pairs of unequal length, how often the longer won (0.5
    = no length preference within an item, where the correlation also mixes items)."""
    first, chance, slot_ranks = [], [], defaultdict(list)
    pref, length = [], []
    longer = n_longer = 0
    for r in rows:
        words = [len(t.split()) for t in r["responses"]]
        if r["kind"] == "ranking":
            ranks, display = r["value"]["ranks"], r["display"]
            top = min(ranks)
            first.append(ranks[display[0]] == top)
            chance.append(ranks.count(top) / len(ranks))
            for s, i in enumerate(display):
                slot_ranks[s].append(ranks[i])
            k = max(ranks)
            for i, rank in enumerate(ranks):
                pref.append((k - rank) / k if k else 0.0)
                length.append(words[i])
            for (i, j), s in _strict_pairs(ranks).items():
                if words[i] != words[j]:
                    n_longer += 1
                    longer += (s > 0) == (words[i] > words[j])
        elif r["kind"] == "rating":
            pref.append(float(np.mean(list(r["value"]["scores"].values()))))
            length.append(words[0])
    return {"chosen_shown_first": {"rate": _finite(np.mean(first)) if first else None,
                                   "chance": _finite(np.mean(chance)) if chance else None, "n": len(first)},
            "mean_rank_by_slot": [_finite(np.mean(slot_ranks[s])) for s in sorted(slot_ranks)],
            "length_corr": _corr(length, pref),
            "longer_preferred": {"rate": longer / n_longer if n_longer else None, "n": n_longer}}


# -- report ---------------------------------------------------------------------------------------

DEFAULT_RULE = {"ranking": "borda", "rating": "mean"}


def report(rows: list[dict], gold_threshold: float = 0.7) -> dict:
    """Everything above, per kind, as one JSON-able dict: {"gold_threshold", "kinds": {kind: {
    "n_labels", "n_items", "annotators", "gold", "excluded", "alpha", "alpha_kept", "pairwise",
    "bias", "consensus_rule", "consensus_items"}}}. Annotators below the threshold on a kind's
    gold items are named in "excluded" and left out of alpha_kept and the consensus."""
    if not 0.0 <= gold_threshold <= 1.0:
        raise ConfigError(f"gold_threshold={gold_threshold} must be in [0, 1]")
    kinds: dict[str, dict] = {}
    for kind in sorted({r["kind"] for r in rows}):
        these = [r for r in rows if r["kind"] == kind]
        gold = gold_accuracy(these)
        excluded = below_threshold(gold, gold_threshold)
        kept = [r for r in these if r["annotator"] not in excluded]
        entry = {"n_labels": len(these), "n_items": len({r["item_id"] for r in these}),
                 "annotators": sorted({r["annotator"] for r in these}), "gold": gold, "excluded": excluded}
        if kind in SCORED_KINDS:
            entry["alpha"] = krippendorff_alpha(these, kind)
            entry["alpha_kept"] = krippendorff_alpha(kept, kind)
        if kind == "ranking":
            entry["pairwise"] = pairwise_counts(these)
            entry["pairwise_kept"] = pairwise_counts(kept)
        if kind in ("ranking", "rating"):
            entry["bias"] = bias_audit(these)
        if kind in DEFAULT_RULE:
            entry["consensus_rule"] = DEFAULT_RULE[kind]
            entry["consensus_items"] = len(consensus(these, DEFAULT_RULE[kind], set(excluded)))
        kinds[kind] = entry
    return {"gold_threshold": gold_threshold, "kinds": kinds}

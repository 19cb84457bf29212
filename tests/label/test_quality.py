"""rlhf_jax.label.quality on hand-worked cases: gold accuracy, Krippendorff's alpha (worked from
the coincidence matrix, and an independent coincidence-matrix implementation against the
package on random data), pairwise agreement, the consensus rules, the bias audit and the report."""
import itertools
import json

import numpy as np
import pytest

from rlhf_jax.errors import ConfigError
from rlhf_jax.label import quality as Q


def rank_row(item, who, ranks, gold=None, display=None, responses=None):
    k = len(ranks)
    return {"item_id": item, "annotator": who, "kind": "ranking", "value": {"ranks": list(ranks)},
            "gold": None if gold is None else {"ranks": list(gold)},
            "responses": responses or [f"r{i}" for i in range(k)], "display": display or list(range(k))}


def rate_row(item, who, scores, gold=None, response="a b"):
    return {"item_id": item, "annotator": who, "kind": "rating", "value": {"scores": scores, "comment": ""},
            "gold": None if gold is None else {"scores": gold, "comment": ""}, "responses": [response],
            "display": [0]}


def span_row(item, who, spans, gold=None, response="1 2 3 4"):
    return {"item_id": item, "annotator": who, "kind": "spans", "value": {"spans": spans},
            "gold": None if gold is None else {"spans": gold}, "responses": [response], "display": [0]}


# -- gold accuracy ----------------------------------------------------------------------------------

def test_gold_accuracy_by_hand():
    rows = [
        # gold 0>1>2 has 3 strict pairs; [0,2,1] agrees on (0,1), (0,2), not (1,2): 2 of 3
        rank_row(1, "a", [0, 2, 1], gold=[0, 1, 2]),
        # a tie on a strict gold pair is wrong: [0,0,1] misses (0,1), gets (0,2), (1,2)
        rank_row(1, "b", [0, 0, 1], gold=[0, 1, 2]),
        rank_row(2, "b", [1, 0], gold=[0, 1]),  # 0 of 1
        rank_row(3, "a", [0, 1, 2]),  # not a gold item: not scored
    ]
    acc = Q.gold_accuracy(rows)
    assert acc == {"a": {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)},
                   "b": {"n": 4, "correct": 2, "accuracy": 0.5}}
    rating = Q.gold_accuracy([rate_row(1, "a", {"helpful": 4, "honest": 4}, gold={"helpful": 4, "honest": 5})])
    assert rating == {"a": {"n": 2, "correct": 1, "accuracy": 0.5}}


def test_span_f1_and_gold_spans_by_hand():
    # chars {0,1,2} against {1,2,3}: 2 shared of 3 + 3 -> F1 = 4/6
    assert Q.span_f1([{"start": 0, "end": 3, "category": "wrong"}],
                     [{"start": 1, "end": 4, "category": "wrong"}]) == pytest.approx(2 / 3)
    assert Q.span_f1([{"start": 1, "end": 4, "category": "extra"}], [{"start": 1, "end": 4, "category": "wrong"}]) == 0
    assert Q.span_f1([], []) == 1.0
    assert Q.span_f1([{"start": 0, "end": 1, "category": "x"}], []) == 0.0
    gold = [{"start": 2, "end": 3, "category": "wrong"}]
    rows = [span_row(1, "a", [{"start": 2, "end": 3, "category": "wrong"}], gold),
            span_row(2, "a", [{"start": 0, "end": 3, "category": "wrong"}], gold),  # F1 = 2/4 = 0.5: correct
            span_row(3, "a", [{"start": 0, "end": 5, "category": "wrong"}], gold)]  # F1 = 2/6: wrong
    assert Q.gold_accuracy(rows) == {"a": {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)}}


def test_sft_is_not_scored():
    row = {"item_id": 1, "annotator": "a", "kind": "sft", "value": {"completion": "x"},
           "gold": {"completion": "y"}, "responses": [], "display": []}
    assert Q.gold_accuracy([row]) == {}


# -- Krippendorff's alpha ---------------------------------------------------------------------------

def alpha_by_hand(units: list[list[float]], level: str) -> float:
    """Krippendorff's alpha from the coincidence matrix, written out independently of the package:
    units are lists of the values coders gave (missing ones left out)."""
    values = sorted({v for u in units for v in u})
    idx = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for u in units:
        if len(u) < 2:
            continue
        for a, b in itertools.permutations(range(len(u)), 2):
            o[idx[u[a]], idx[u[b]]] += 1 / (len(u) - 1)
    n_c = o.sum(1)
    n = n_c.sum()
    d = np.zeros_like(o)
    for c, k in itertools.product(range(len(values)), repeat=2):
        if level == "nominal":
            d[c, k] = float(c != k)
        else:  # ordinal: (sum of n_g from c to k - (n_c + n_k) / 2)^2
            lo, hi = min(c, k), max(c, k)
            d[c, k] = (n_c[lo:hi + 1].sum() - (n_c[c] + n_c[k]) / 2) ** 2
    d_o = (o * d).sum() / n
    d_e = (np.outer(n_c, n_c) * d).sum() / (n * (n - 1))
    return 1 - d_o / d_e


def test_alpha_ordinal_worked_by_hand():
    # Units (a, b): (1,1) (1,2) (2,2) (3,3). Coincidences o = [[2,1,0],[1,2,0],[0,0,2]], n = (3,3,2), n = 8.
    # Ordinal delta^2: d(1,2) = (3+3-3)^2 = 9, d(1,3) = (8-2.5)^2 = 30.25, d(2,3) = (5-2.5)^2 = 6.25.
    # D_o = 2*1*9/8 = 2.25; D_e = 2*(9*9 + 6*30.25 + 6*6.25)/(8*7) = 600/56; alpha = 1 - 2.25*56/600 = 0.79.
    pairs = [(1, 1), (1, 2), (2, 2), (3, 3)]
    rows = [rate_row(i, who, {"helpful": s}) for i, p in enumerate(pairs) for who, s in zip("ab", p)]
    assert Q.krippendorff_alpha(rows, "rating") == pytest.approx(0.79, abs=1e-12)
    assert alpha_by_hand([list(p) for p in pairs], "ordinal") == pytest.approx(0.79, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_alpha_matches_the_coincidence_matrix_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    rows, units = [], []
    for item in range(12):
        # 2..4 of 5 annotators label each item (missing data), K = 4 with ties now and then
        who = rng.choice(5, size=rng.integers(2, 5), replace=False)
        labels = {}
        for a in who:
            scores = rng.integers(0, 3 if rng.random() < 0.3 else 4, size=4)
            labels[a] = Q.dense_ranks([-float(s) for s in scores])
            if len(set(labels[a])) == 1:
                labels[a] = [0, 1, 1, 1]
            rows.append(rank_row(item, f"a{a}", labels[a]))
        units += [[float(labels[a][i]) for a in who] for i in range(4)]
    assert Q.krippendorff_alpha(rows, "ranking") == pytest.approx(alpha_by_hand(units, "ordinal"), abs=1e-9)


def test_alpha_spans_nominal_and_undefined_cases():
    # two annotators over the 3 characters of "a b": a marks char 0 "wrong", b marks nothing;
    # units per character (code 0 = unmarked): (1,0) (0,0) (0,0) -> nominal alpha by hand
    rows = [span_row(1, "a", [{"start": 0, "end": 1, "category": "wrong"}], response="a b"),
            span_row(1, "b", [], response="a b")]
    assert Q.krippendorff_alpha(rows, "spans") == pytest.approx(alpha_by_hand([[1, 0], [0, 0], [0, 0]], "nominal"))
    # o = [[4,1],[1,0]], n = (5, 1): D_o = 2/6, D_e = 2*5*1/30 -> alpha = 0
    assert Q.krippendorff_alpha(rows, "spans") == pytest.approx(0.0, abs=1e-12)
    assert Q.krippendorff_alpha([rank_row(1, "a", [0, 1])], "ranking") is None  # one coder
    assert Q.krippendorff_alpha([rate_row(1, "a", {"h": 3}), rate_row(1, "b", {"h": 3})], "rating") is None
    with pytest.raises(ConfigError, match="valid"):
        Q.krippendorff_alpha([], "sft")


# -- pairwise agreement -----------------------------------------------------------------------------

def test_pairwise_agreement_by_hand():
    rows = [rank_row(1, "a", [0, 1, 2]), rank_row(1, "b", [0, 2, 1]), rank_row(1, "c", [0, 0, 1]),
            rank_row(2, "a", [0, 1])]  # a lone label: nothing to compare
    # (a,b): 2 same of 3. (a,c): (0,1) tied by c, (0,2) (1,2) same. (b,c): (0,1) tied, (0,2) same,
    # (1,2) b prefers 2, c prefers 1. -> 5 same of 7 compared, 2 excluded as ties
    assert Q.pairwise_counts(rows) == {"agreement": pytest.approx(5 / 7), "n": 7, "same": 5, "ties": 2}
    assert Q.pairwise_agreement(rows) == pytest.approx(5 / 7)
    assert Q.pairwise_agreement([rank_row(1, "a", [0, 1])]) is None


# -- consensus --------------------------------------------------------------------------------------

def test_borda_by_hand_with_ties():
    assert Q.borda_points([0, 1, 2]) == [2, 1, 0]
    assert Q.borda_points([0, 0, 1]) == [1.5, 1.5, 0]
    # a [0,1,2] -> (2,1,0); b [1,0,2] -> (1,2,0); c [0,0,1] -> (1.5,1.5,0): totals (4.5, 4.5, 0): a tie at the top
    rows = [rank_row(7, "a", [0, 1, 2]), rank_row(7, "b", [1, 0, 2]), rank_row(7, "c", [0, 0, 1]),
            # (2,1,0) + (2,0,1) + (1,2,0) = (5,3,1)
            rank_row(8, "a", [0, 1, 2]), rank_row(8, "b", [0, 2, 1]), rank_row(8, "c", [1, 0, 2])]
    assert Q.consensus(rows, "borda") == {7: {"ranks": [0, 0, 1]}, 8: {"ranks": [0, 1, 2]}}
    # excluding c on item 8 leaves (4,1,1): responses 1 and 2 tie
    assert Q.consensus(rows, "borda", exclude={"c"})[8] == {"ranks": [0, 1, 1]}


def test_majority_by_hand_reports_ties():
    rows = [rank_row(8, "a", [0, 1, 2]), rank_row(8, "b", [0, 2, 1]), rank_row(8, "c", [1, 0, 2]),
            rank_row(9, "a", [0, 1]), rank_row(9, "b", [1, 0])]
    out = Q.consensus(rows, "majority")
    # (0,1): a, b for 0, c for 1; (0,2): all for 0; (1,2): a, c for 1, b for 2
    assert out[8] == {"pairs": [[0, 1], [0, 2], [1, 2]], "votes": [[2, 1], [3, 0], [2, 1]], "ties": []}
    assert out[9] == {"pairs": [], "votes": [], "ties": [[0, 1]]}


def test_mean_and_rule_errors():
    rows = [rate_row(1, "a", {"helpful": 4, "honest": 5}), rate_row(1, "b", {"helpful": 5, "honest": 2}),
            rate_row(1, "bad", {"helpful": 1, "honest": 1})]
    assert Q.consensus(rows, "mean", exclude={"bad"}) == {1: {"scores": {"helpful": 4.5, "honest": 3.5}, "n": 2}}
    assert Q.consensus(rows, "mean")[1]["scores"]["helpful"] == pytest.approx(10 / 3)
    with pytest.raises(ConfigError, match=r"\['borda', 'majority', 'mean'\]"):
        Q.consensus(rows, "plurality")
    with pytest.raises(ConfigError, match="applies to ranking"):
        Q.consensus(rows, "borda")


# -- bias audit -------------------------------------------------------------------------------------

def test_bias_audit_by_hand():
    long_short = ["a b c", "a"]
    rows = [rank_row(1, "a", [0, 1], display=[0, 1], responses=long_short),  # best shown first; longer won
            rank_row(2, "a", [0, 1], display=[1, 0], responses=long_short),  # worse shown first; longer won
            rank_row(3, "a", [1, 0], display=[1, 0], responses=long_short)]  # best shown first; shorter won
    out = Q.bias_audit(rows)
    assert out["chosen_shown_first"] == {"rate": pytest.approx(2 / 3), "chance": 0.5, "n": 3}
    # slot 0 showed ranks 0, 1, 0; slot 1 showed 1, 0, 1
    assert out["mean_rank_by_slot"] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert out["longer_preferred"] == {"rate": pytest.approx(2 / 3), "n": 3}
    # lengths (3,1,3,1,3,1) against preference (1,0,1,0,0,1): cov 1, variances 6 and 1.5 -> r = 1/3
    # (Spearman equals Pearson for two-valued variables)
    assert out["length_corr"]["pearson"] == pytest.approx(1 / 3)
    assert out["length_corr"]["spearman"] == pytest.approx(1 / 3)
    # a top tie of 2 of 3 shown first: chance is 2/3
    tie = Q.bias_audit([rank_row(1, "a", [0, 0, 1], display=[2, 0, 1])])["chosen_shown_first"]
    assert tie == {"rate": 0.0, "chance": pytest.approx(2 / 3), "n": 1}


# -- report -----------------------------------------------------------------------------------------

def test_report_excludes_the_annotator_below_threshold():
    rows = []
    for item in range(4):
        gold = [0, 1, 2] if item == 0 else None
        rows += [rank_row(item, "a", [0, 1, 2], gold=gold), rank_row(item, "b", [0, 2, 1], gold=gold),
                 rank_row(item, "bad", [2, 1, 0], gold=gold)]
    rows.append(rate_row(10, "a", {"helpful": 4}, gold={"helpful": 4}))
    out = Q.report(rows, gold_threshold=0.6)
    r = out["kinds"]["ranking"]
    assert r["gold"]["bad"] == {"n": 3, "correct": 0, "accuracy": 0.0}
    assert r["gold"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert r["excluded"] == ["bad"]
    assert r["n_items"] == 4 and r["n_labels"] == 12 and r["consensus_items"] == 4
    assert r["pairwise_kept"] == {"agreement": pytest.approx(2 / 3), "n": 12, "same": 8, "ties": 0}
    assert r["alpha_kept"] > r["alpha"]
    assert out["kinds"]["rating"]["excluded"] == []
    json.dumps(out, allow_nan=False)  # JSON-able, no NaN
    with pytest.raises(ConfigError):
        Q.report(rows, gold_threshold=1.5)

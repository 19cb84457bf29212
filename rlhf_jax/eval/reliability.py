"""How far a judge can be trusted: functions of its verdicts (and, for convenience, of a judge).

- position bias: how often the verdict flips when the two responses swap places, and how
  often the first-shown response wins (1/2 for an unbiased judge on random pairs).
- verbosity bias: agreement with "the longer one", and the gap between the raw and the
  length-controlled win rate (AlpacaEval 2's GLM, `length_control.length_controlled_win_rate`).
- self-preference: the win rate a judge gives its own model's outputs minus the win rate a
  neutral judge gives them on the same pairs (paired over prompts).
- agreement with humans: accuracy against the human "chosen" of HH-RLHF pairs and Cohen's
  kappa, with bootstrap intervals; `corpora.hh_rlhf()` provides the pairs, shown in a
  seeded random order so the human label is not always "a".

Verdicts are p(a better) in [0, 1] (1 a, 0 b, 1/2 tie, or a probability); a verdict is
decisive when it is not exactly 1/2.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from rlhf_jax.eval import length_control, stats
from rlhf_jax.eval.judges import both_orders


def _decision(p_N) -> np.ndarray:
    """+1 a preferred, -1 b preferred, 0 tie."""
    return np.sign(np.asarray(p_N, np.float64) - 0.5)


def position_bias(p_a_first_N, p_a_second_N, **kw) -> dict[str, Any]:
    """Position-bias measures from both orders' verdicts (each expressed as p(a better)).

    flip_rate: fraction of pairs whose decision differs between the orders (a tie in one
    order and a decision in the other counts as a flip). first_position_rate: how often the
    response shown first wins over all 2N single-order verdicts (ties 1/2). Both intervals
    resample the N pairs, each with both its orders: the two verdicts on one pair are not
    independent (a pure position bias makes them agree, a consistent judge makes them
    complementary), so resampling 2N verdicts would misstate the interval.
    """
    d1, d2 = _decision(p_a_first_N), _decision(p_a_second_N)
    if d1.shape != d2.shape or d1.ndim != 1:
        raise ValueError(f"verdicts of both orders must be 1-D of one length: {d1.shape}, {d2.shape}")
    first_wins_Nx2 = np.stack([(d1 > 0) + 0.5 * (d1 == 0), (d2 < 0) + 0.5 * (d2 == 0)], axis=1)
    return {"flip_rate": stats.mean((d1 != d2).astype(np.float64), **kw).to_dict(),
            "first_position_rate": stats.mean(first_wins_Nx2.mean(1), **kw).to_dict()}


def judge_position_bias(prefer_first: Callable, prompts, responses_a, responses_b, references=None,
                        **kw) -> dict[str, Any]:
    """`position_bias` of a single-order pairwise function (e.g. `LLMJudge.prefer_first`)."""
    return position_bias(*both_orders(prefer_first, prompts, responses_a, responses_b, references), **kw)


def verbosity_bias(verdicts_N, lengths_a_N, lengths_b_N, **kw) -> dict[str, Any]:
    """Agreement with "the longer one" and the raw vs length-controlled win rate of a over b.

    longer_agreement: over pairs of unequal length, the mean preference for the longer
    response (1 always the longer, 1/2 indifferent, 0 always the shorter). lc_gap: raw win
    rate minus LC win rate (positive when length inflates a's raw win rate).
    """
    v = np.asarray(verdicts_N, np.float64)
    la, lb = np.asarray(lengths_a_N, np.float64), np.asarray(lengths_b_N, np.float64)
    unequal = la != lb
    if not unequal.any():
        raise ValueError("all pairs have equal lengths: verbosity bias is not measurable")
    longer = np.where(la[unequal] > lb[unequal], v[unequal], 1.0 - v[unequal])
    lc = length_control.length_controlled_win_rate(v, la, lb, **kw)
    return {"longer_agreement": stats.mean(longer, **kw).to_dict(), "win_rate": lc["win_rate"],
            "lc_win_rate": lc["lc_win_rate"], "lc_gap": lc["win_rate"]["value"] - lc["lc_win_rate"]["value"],
            "n_unequal": int(unequal.sum())}


def self_preference(verdicts_self_judge_N, verdicts_neutral_judge_N, **kw) -> dict[str, Any]:
    """Self-preference of a judge for its own model's outputs (a = own model, b = the other).

    verdicts_*: p(a better) on the same pairs from the judge under study and from a neutral
    judge (a gold reward, a different model, humans). self_preference = the difference of the
    two win rates, with a paired bootstrap over prompts.
    """
    s, n = np.asarray(verdicts_self_judge_N, np.float64), np.asarray(verdicts_neutral_judge_N, np.float64)
    return {"win_rate_self_judge": stats.win_rate(s, **kw).to_dict(),
            "win_rate_neutral_judge": stats.win_rate(n, **kw).to_dict(),
            "self_preference": stats.paired_difference(s, n, **kw).to_dict()}


def human_agreement(verdicts_N, human_prefers_a_N, **kw) -> dict[str, Any]:
    """Judge vs human labels: accuracy (a judge tie counts 1/2) and Cohen's kappa on {a, tie, b}."""
    v = np.asarray(verdicts_N, np.float64)
    h = np.asarray(human_prefers_a_N).astype(bool)
    d = _decision(v)
    correct = np.where(d == 0, 0.5, (d > 0) == h).astype(np.float64)
    judge_labels = np.where(d > 0, "a", np.where(d < 0, "b", "tie"))
    human_labels = np.where(h, "a", "b")
    return {"accuracy": stats.accuracy(correct, **kw).to_dict(),
            "kappa": stats.cohen_kappa(judge_labels, human_labels, labels=["a", "tie", "b"], **kw).to_dict(),
            "judge_ties": int((d == 0).sum()), "n": int(len(v))}


def hh_pairs(records: Sequence[dict], n: int | None = None, seed: int = 0
             ) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(prompts, responses_a, responses_b, human_prefers_a_N) from `corpora.hh_rlhf()` pair records.

    The human-chosen reply is put in slot a or b by a seeded coin, so the label is balanced.
    """
    records = list(records)[:n] if n is not None else list(records)
    coin = np.random.default_rng(seed).random(len(records)) < 0.5
    a = [r["chosen"] if c else r["rejected"] for r, c in zip(records, coin)]
    b = [r["rejected"] if c else r["chosen"] for r, c in zip(records, coin)]
    return [r["prompt"] for r in records], a, b, coin


def judge_human_agreement(judge, records: Sequence[dict], n: int | None = None, seed: int = 0,
                          **kw) -> dict[str, Any]:
    """`human_agreement` of `judge.compare` on HH-RLHF pairs (first n records, seeded order)."""
    prompts, a, b, human = hh_pairs(records, n, seed)
    return human_agreement(judge.compare(prompts, a, b), human, **kw)

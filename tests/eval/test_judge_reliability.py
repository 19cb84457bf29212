"""reliability.py: judge bias measures on stub judges whose biases are known."""
import numpy as np
import pytest

from rlhf_jax.data import corpora
from rlhf_jax.eval import reliability, stats
from rlhf_jax.eval.judges import FunctionJudge


def always_first(prompts, first, second, refs=None):
    return np.ones(len(prompts))


def prefers_longer(prompts, first, second, refs=None):
    return np.array([1.0 if len(f) > len(s) else 0.0 if len(f) < len(s) else 0.5 for f, s in zip(first, second)])


def test_position_bias_of_a_judge_that_always_picks_the_first():
    a, b = ["x", "yy", "zzz", "w"], ["uu", "v", "www", "q"]
    out = reliability.judge_position_bias(always_first, ["p"] * 4, a, b, n_resamples=100)
    assert out["flip_rate"]["value"] == 1.0
    assert out["first_position_rate"]["value"] == 1.0


def test_position_bias_of_a_consistent_judge():
    a, b = ["x", "yy", "zzzz", "w"], ["uu", "v", "www", "qq"]
    out = reliability.judge_position_bias(prefers_longer, ["p"] * 4, a, b, n_resamples=100)
    assert out["flip_rate"]["value"] == 0.0
    # first-shown wins: order 1 -> a longer in 2 of 4; order 2 -> b longer in 2 of 4: 4 of 8
    assert out["first_position_rate"]["value"] == pytest.approx(0.5)


def test_position_bias_counts_a_tie_against_a_decision_as_a_flip():
    out = reliability.position_bias([1.0, 0.5, 0.0], [1.0, 0.0, 0.0], n_resamples=100)
    assert out["flip_rate"]["value"] == pytest.approx(1 / 3)


def _width(est):
    return est["high"] - est["low"]


def test_position_interval_resamples_pairs_not_single_verdicts():
    """A judge with a pure per-pair position preference: on 24 of 40 pairs it picks whichever response
    is shown first, on 16 the one shown second, so both verdicts of a pair agree about position and
    carry one pair's information. The pair bootstrap is then wider than the 2N-verdict one by about
    sqrt(2) (a mean of N, not 2N, independent values)."""
    first = np.r_[np.ones(24), np.zeros(16)]  # p(a better) with a shown first
    second = 1.0 - first  # with b shown first: the same position wins
    out = reliability.position_bias(first, second, n_resamples=2000, method="percentile")
    wins_2N = np.r_[first, 1.0 - second]  # first-position wins over the 2N single verdicts
    unpaired = stats.mean(wins_2N, n_resamples=2000, method="percentile")
    assert out["first_position_rate"]["value"] == unpaired.value == pytest.approx(0.6)
    assert out["first_position_rate"]["n"] == 40
    assert _width(out["first_position_rate"]) > 1.2 * (unpaired.high - unpaired.low)


def test_position_interval_of_a_consistent_judge_collapses():
    """A judge that never flips gives each pair one first-position win and one loss: every pair
    contributes exactly 1/2, so the pair bootstrap has nothing to vary (the 2N bootstrap would)."""
    verdict = np.r_[np.ones(15), np.zeros(15)]
    out = reliability.position_bias(verdict, verdict, n_resamples=500)
    rate = out["first_position_rate"]
    assert (rate["value"], rate["low"], rate["high"]) == (0.5, 0.5, 0.5)
    unpaired = stats.mean(np.r_[verdict, 1.0 - verdict], n_resamples=500, method="percentile")
    assert unpaired.high - unpaired.low > 0.2


def test_position_interval_is_a_percentile_bootstrap_over_pairs_by_hand():
    first = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0])
    second = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.0, 0.5, 0.0, 1.0])
    out = reliability.position_bias(first, second, n_resamples=400, method="percentile", seed=7)
    # per pair: mean of "first shown wins" in order (a, b) and in order (b, a); ties count 1/2
    per_pair = (first + (1.0 - second)) / 2
    idx = np.random.default_rng(7).integers(0, len(first), (400, len(first)))  # scipy's draw: seed 7
    low, high = np.percentile(per_pair[idx].mean(1), [2.5, 97.5])
    rate = out["first_position_rate"]
    assert rate["value"] == pytest.approx(per_pair.mean())
    assert (rate["low"], rate["high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    flips = (np.sign(first - 0.5) != np.sign(second - 0.5)).astype(float)
    low, high = np.percentile(flips[idx].mean(1), [2.5, 97.5])
    assert (out["flip_rate"]["low"], out["flip_rate"]["high"]) == (pytest.approx(low), pytest.approx(high))


def test_verbosity_bias_of_a_judge_that_prefers_the_longer():
    rng = np.random.default_rng(0)
    la, lb = rng.integers(10, 200, 300), rng.integers(10, 200, 300)
    verdicts = np.where(la > lb, 1.0, np.where(la < lb, 0.0, 0.5))
    out = reliability.verbosity_bias(verdicts, la, lb, n_resamples=100)
    assert out["longer_agreement"]["value"] == 1.0
    assert out["n_unequal"] == int((la != lb).sum())
    assert out["win_rate"]["value"] == pytest.approx(np.mean(verdicts))


def test_verbosity_bias_of_a_length_blind_judge_is_one_half():
    la, lb = np.array([10, 20, 30, 40]), np.array([20, 10, 40, 30])
    verdicts = np.array([1.0, 1.0, 0.0, 0.0])  # a wins on 2 of 4; the longer wins on 2 of 4
    out = reliability.verbosity_bias(verdicts, la, lb, n_resamples=100)
    assert out["longer_agreement"]["value"] == pytest.approx(0.5)


def test_self_preference_is_the_paired_win_rate_gap():
    mine = [1.0, 1.0, 1.0, 0.0]
    neutral = [1.0, 0.0, 0.0, 0.0]
    out = reliability.self_preference(mine, neutral, n_resamples=200)
    assert out["win_rate_self_judge"]["value"] == pytest.approx(0.75)
    assert out["win_rate_neutral_judge"]["value"] == pytest.approx(0.25)
    assert out["self_preference"]["value"] == pytest.approx(0.5)


@pytest.fixture
def hh_records(shared_data):
    records, report = corpora.hh_rlhf(shared_data, policy="skip")  # a few dialogues have an empty reply
    assert report.kept == 1992
    return records[:200]


def test_human_agreement_of_an_oracle_and_of_a_constant_judge(hh_records):
    chosen = {r["chosen"] for r in hh_records}
    oracle = FunctionJudge(lambda prompts, responses: [float(r in chosen) for r in responses])
    out = reliability.judge_human_agreement(oracle, hh_records, seed=0, n_resamples=200)
    assert out["accuracy"]["value"] == 1.0 and out["kappa"]["value"] == pytest.approx(1.0) and out["n"] == 200

    _, _, _, human_a = reliability.hh_pairs(hh_records, seed=0)
    assert 0.35 < human_a.mean() < 0.65  # the seeded coin balances the label
    constant = FunctionJudge(lambda prompts, responses: [0.0] * len(responses), temperature=0.0)
    always_a = type("AlwaysA", (), {"compare": lambda self, p, a, b, refs=None: np.ones(len(p))})()
    out = reliability.judge_human_agreement(always_a, hh_records, seed=0, n_resamples=200)
    assert out["accuracy"]["value"] == pytest.approx(human_a.mean())
    assert out["kappa"]["value"] == pytest.approx(0.0)  # p_o = P(human a) = p_e
    ties = reliability.judge_human_agreement(constant, hh_records, seed=0, n_resamples=200)
    assert ties["accuracy"]["value"] == 0.5 and ties["judge_ties"] == 200


def test_human_agreement_of_a_length_judge_on_hh_pairs(hh_records):
    longer = FunctionJudge(lambda prompts, responses: [len(r) for r in responses])
    out = reliability.judge_human_agreement(longer, hh_records, seed=1, n_resamples=200)
    expected = [1.0 if len(r["chosen"]) > len(r["rejected"]) else 0.5 if len(r["chosen"]) == len(r["rejected"])
                else 0.0 for r in hh_records]
    assert out["accuracy"]["value"] == pytest.approx(np.mean(expected))
    assert out["accuracy"]["low"] < out["accuracy"]["value"] < out["accuracy"]["high"]

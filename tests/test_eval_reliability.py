"""reliability.py: judge bias measures on stub judges whose biases are known."""
import numpy as np
import pytest

from rlhf_jax.data import corpora
from rlhf_jax.eval import reliability
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

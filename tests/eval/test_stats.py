"""stats.py: estimates with bootstrap intervals, checked against hand-computed values."""
import json

import numpy as np
import pytest

from rlhf_jax.eval import stats


def test_win_rate_counts_ties_as_half():
    est = stats.win_rate([1, 1, 1, 0, 0.5])
    assert est.value == pytest.approx(3.5 / 5)
    assert est.n == 5
    assert 0 <= est.low < est.value < est.high <= 1


def test_win_rate_interval_matches_the_normal_approximation_at_large_n():
    outcomes = np.array([1.0] * 1200 + [0.0] * 800)  # p = 0.6, n = 2000
    est = stats.win_rate(outcomes, n_resamples=4000)
    half = 1.959964 * np.sqrt(0.6 * 0.4 / 2000)  # 0.02147
    assert est.value == pytest.approx(0.6)
    assert est.low == pytest.approx(0.6 - half, abs=0.003)
    assert est.high == pytest.approx(0.6 + half, abs=0.003)


def test_all_wins_is_degenerate_not_nan():
    est = stats.win_rate(np.ones(10))
    assert (est.value, est.low, est.high, est.n, est.method) == (1.0, 1.0, 1.0, 10, "degenerate")


def test_paired_win_rate_from_scores():
    est = stats.paired_win_rate([3, 2, 1, 5], [1, 2, 4, 0])  # win, tie, loss, win
    assert est.value == pytest.approx(2.5 / 4)
    np.testing.assert_array_equal(stats.outcomes_from_scores([3, 2, 1], [1, 2, 4]), [1.0, 0.5, 0.0])


def test_paired_difference_removes_prompt_variance():
    rng = np.random.default_rng(0)
    b = rng.normal(0, 3, size=50)  # prompts differ a lot in difficulty
    a = b + 0.1  # policy a is better by exactly 0.1 on every prompt
    paired = stats.paired_difference(a, b)
    unpaired = stats.unpaired_difference(a, b)
    assert paired.value == pytest.approx(0.1)
    assert paired.low == pytest.approx(0.1, abs=1e-9) and paired.high == pytest.approx(0.1, abs=1e-9)
    assert unpaired.value == pytest.approx(0.1)
    assert unpaired.high - unpaired.low > 1.5  # about 2 * 1.96 * 3 * sqrt(2 / 50) = 2.35
    assert unpaired.n == 100


def test_cohen_kappa_on_a_hand_computed_table():
    # 20 items: both yes 8, both no 6, A yes / B no 4, A no / B yes 2
    a = ["y"] * 8 + ["n"] * 6 + ["y"] * 4 + ["n"] * 2
    b = ["y"] * 8 + ["n"] * 6 + ["n"] * 4 + ["y"] * 2
    # p_o = 14/20 = 0.7; p_e = 0.6 * 0.5 + 0.4 * 0.5 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    est = stats.cohen_kappa(a, b)
    assert est.value == pytest.approx(0.4)
    assert est.low < 0.4 < est.high
    assert est.n == 20


def test_cohen_kappa_single_shared_label_is_undefined():
    assert np.isnan(stats.cohen_kappa(["a"] * 5, ["a"] * 5).value)
    assert stats.cohen_kappa(["a"] * 5, ["a"] * 5, undefined=1.0).value == 1.0


def test_cohen_kappa_rejects_labels_outside_the_set():
    with pytest.raises(ValueError, match="not in labels"):
        stats.cohen_kappa(["a", "c"], ["a", "b"], labels=["a", "b"])


def test_estimate_serialises_to_json_and_back():
    est = stats.mean([1.0, 2.0, 3.0, 4.0], seed=1)
    assert est.value == pytest.approx(2.5)
    back = stats.Estimate.from_dict(json.loads(est.to_json()))
    assert back == est
    assert "n=4" in str(est)


def test_bootstrap_is_reproducible_with_a_seed():
    x = np.random.default_rng(3).normal(size=40)
    assert stats.mean(x, seed=7) == stats.mean(x, seed=7)
    assert stats.mean(x, seed=7).low != stats.mean(x, seed=8).low

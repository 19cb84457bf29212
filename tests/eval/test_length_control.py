"""length_control.py: AlpacaEval 2's length-controlled GLM on preferences generated from known parameters.

Soft preferences equal to the GLM's own probabilities make the true parameters the exact maximiser
of the unpenalised likelihood (its gradient sum_i (p_i - sigmoid(z_i)) x_i vanishes there), so the
fit must recover them to the solver's precision, not to a sampling tolerance.
"""
import numpy as np
import pytest
from scipy.special import expit

from rlhf_jax.eval import length_control as lc

N = 400
RNG = np.random.default_rng(0)
DELTA = RNG.normal(250.0, 400.0, N)  # characters: the model is usually longer than the baseline
GAMMA = RNG.normal(0.0, 1.0, N)
SCALE = DELTA.std(ddof=1)
UNPENALISED = 1e12  # C: the penalty 1/C vanishes next to the likelihood


def test_fit_recovers_known_parameters_with_the_instruction_term():
    theta, phi, psi = 0.4, 1.5, -0.8
    p = expit(theta + phi * np.tanh(DELTA / SCALE) + psi * GAMMA)
    fit = lc.fit_length_controlled(p, DELTA, GAMMA, C=UNPENALISED)
    assert fit.scale == pytest.approx(SCALE)
    assert (fit.intercept, fit.length_coef, fit.instruction_coef) == (
        pytest.approx(theta, abs=1e-6), pytest.approx(phi, abs=1e-6), pytest.approx(psi, abs=1e-6))
    out = lc.length_controlled_win_rate(p, DELTA, np.zeros(N), GAMMA, C=UNPENALISED, n_resamples=50)
    assert out["lc_win_rate"]["value"] == pytest.approx(np.mean(expit(theta + psi * GAMMA)), abs=1e-6)
    assert out["win_rate"]["value"] == pytest.approx(p.mean())
    assert out["instruction_term"] is True and out["fit"]["instruction_coef"] == pytest.approx(psi, abs=1e-6)


def test_a_length_only_advantage_has_lc_win_rate_one_half():
    p = expit(2.0 * np.tanh(DELTA / SCALE))  # the judge only rewards length
    out = lc.length_controlled_win_rate(p, DELTA + 100.0, np.full(N, 100.0), C=UNPENALISED, n_resamples=200)
    assert out["win_rate"]["value"] == pytest.approx(p.mean()) and p.mean() > 0.6  # raw: the longer model wins
    assert out["lc_win_rate"]["value"] == pytest.approx(0.5, abs=1e-6)
    assert out["fit"]["length_coef"] == pytest.approx(2.0, abs=1e-6)
    assert out["lc_win_rate"]["low"] <= 0.5 <= out["lc_win_rate"]["high"]
    # with difficulty given but irrelevant (psi = 0) the answer is the same
    with_gamma = lc.fit_length_controlled(p, DELTA, GAMMA, C=UNPENALISED)
    assert with_gamma.instruction_coef == pytest.approx(0.0, abs=1e-6)
    assert with_gamma.predict(DELTA, GAMMA, length_term=False).mean() == pytest.approx(0.5, abs=1e-6)


def test_newton_fit_matches_scikit_learn_with_a_penalty():
    """The default penalty (1/C on the slopes, none on the intercept) against scikit-learn's L2
    logistic regression on AlpacaEval's soft-label trick (each row twice, weighted p and 1 - p)."""
    from sklearn.linear_model import LogisticRegression
    p = expit(0.3 + 1.0 * np.tanh(DELTA / SCALE) + RNG.normal(0, 1.0, N))  # not a GLM probability
    x = np.tanh(DELTA / SCALE)
    ours = lc.fit_length_controlled(p, DELTA, C=2.0)
    X = np.r_[x, x][:, None]
    sk = LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000).fit(X, np.r_[np.ones(N), np.zeros(N)],
                                                                   sample_weight=np.r_[p, 1 - p])
    assert ours.intercept == pytest.approx(sk.intercept_[0], abs=1e-6)
    assert ours.length_coef == pytest.approx(sk.coef_[0, 0], abs=1e-6)


def test_instruction_difficulty_recovered_across_policies():
    """Three policies with their own strength and length preference on shared instructions: the
    fitted difficulty tracks the true one (shrunk by its prior, which the per-policy psi absorbs) and
    each policy's LC win rate lands near its true length-free win rate."""
    theta, phi = np.array([-0.5, 0.2, 0.9]), np.array([1.0, 0.0, 2.0])
    delta = RNG.normal(200.0, 300.0, (3, N))
    z = theta[:, None] + phi[:, None] * np.tanh(delta / delta.std(1, ddof=1, keepdims=True)) - GAMMA[None]
    p = expit(z)
    gamma = lc.instruction_difficulty(p, delta)
    assert gamma.mean() == pytest.approx(0.0, abs=1e-12)
    assert np.corrcoef(gamma, GAMMA)[0, 1] > 0.98
    for m in range(3):
        out = lc.length_controlled_win_rate(p[m], delta[m], np.zeros(N), gamma, n_resamples=50)
        assert out["fit"]["instruction_coef"] < 0  # harder instructions: fewer wins
        assert out["lc_win_rate"]["value"] == pytest.approx(np.mean(expit(theta[m] - GAMMA)), abs=0.01)
    with pytest.raises(ValueError, match=">= 2 policies"):
        lc.instruction_difficulty(p[:1], delta[:1])


def test_all_wins_give_an_infinite_intercept_and_lc_one():
    out = lc.length_controlled_win_rate(np.ones(10), np.arange(10.0), np.zeros(10), n_resamples=50)
    assert out["lc_win_rate"]["value"] == 1.0 and out["fit"]["intercept"] == np.inf
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lc.fit_length_controlled([1.5, 0.0], [1.0, 2.0])

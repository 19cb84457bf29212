"""AlpacaEval 2's length-controlled win rate (Dubois et al. 2024): a GLM of a judge's preference
for a model's output over a baseline's on each instruction x, predicted with no length difference.

    logit p(model preferred on x) = theta + phi * tanh(delta_x / sd(delta)) + psi * gamma_x
    LC win rate = mean over x of sigmoid(theta + psi * gamma_x)

theta = theta_model - theta_baseline and psi = psi_model - psi_baseline (with one baseline each
difference is one coefficient); delta_x = len(model output) - len(baseline output), in
characters as AlpacaEval measures it; sd(delta) its standard deviation (ddof 1) over the data
being fitted; gamma_x the instruction's difficulty.

Instruction difficulty. AlpacaEval reads gamma_x from a fit over its leaderboard's models (a
file on the hub). Offline, `instruction_difficulty` fits it over the M policies evaluated here
on the same instructions and the same judge:

    logit p_{m,x} = a_m + b_m * tanh(delta_{m,x} / sd_m) - gamma_x,    gamma_x ~ N(0, tau^2)

(the prior is an L2 penalty 1/tau^2; gamma is centred). gamma_x > 0: the policies win less on x
than their average. With M = 1 each instruction has one preference and gamma_x is not
identified: the term is then left out and the result says so. The per-model fit treats gamma_x
as a known covariate, so bootstrap intervals (prompts resampled, the GLM refitted on each
resample, gamma_x travelling with its prompt) do not include gamma's own uncertainty.

Fitting: soft labels p in [0, 1] by penalised maximum likelihood (Newton's method): the
cross-entropy of p against sigmoid(logit), plus an L2 penalty 1/C on phi and psi (theta is
not penalised). AlpacaEval fits an L1 penalty with a cross-validated C and regularises toward
its "gamed" baselines (leaderboard data); neither is used here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.special import expit

from rlhf_jax.eval import stats


def _objective(X, p, penalty, w):
    z = X @ w
    return float(np.sum(np.logaddexp(0.0, z) - p * z) + 0.5 * np.sum(penalty * w * w))


def fit_logistic(X_NxD, p_N, penalty_D, max_iter: int = 100) -> np.ndarray:
    """w_D minimising sum_i [log(1 + e^z_i) - p_i z_i] + 1/2 sum_j penalty_j w_j^2, z = X w.

    Soft labels p in [0, 1]; Newton steps with backtracking (the objective is convex). A
    coefficient whose penalty is 0 must be identified by the data (it diverges when p is all
    0 or all 1 on its column)."""
    X, p, penalty = np.asarray(X_NxD, np.float64), np.asarray(p_N, np.float64), np.asarray(penalty_D, np.float64)
    w = np.zeros(X.shape[1])
    f = _objective(X, p, penalty, w)
    for _ in range(max_iter):
        s = expit(X @ w)
        grad = X.T @ (s - p) + penalty * w
        hess = (X * (s * (1 - s))[:, None]).T @ X + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if decrement < 1e-14 * max(1.0, len(p)):  # the Newton decrement is at rounding level: converged
            break
        t = 1.0
        while t > 1e-8 and _objective(X, p, penalty, w - t * step) > f - 0.25 * t * decrement:
            t /= 2
        if t <= 1e-8:  # no decrease left to find in float64
            break
        w = w - t * step
        f = _objective(X, p, penalty, w)
    return w


@dataclasses.dataclass(frozen=True)
class LengthControlledFit:
    """logit p(model preferred) = intercept + length_coef * tanh(delta / scale) + instruction_coef * gamma."""

    intercept: float
    length_coef: float
    scale: float  # sd (ddof 1) of the length differences the fit standardised by
    instruction_coef: float = 0.0  # psi; 0 when no difficulty was given

    def predict(self, delta_len_N, difficulty_N=None, length_term: bool = True) -> np.ndarray:
        """p_N under the GLM; length_term=False gives the length-controlled preferences."""
        d = np.asarray(delta_len_N, np.float64)
        z = np.full(d.shape, self.intercept)
        if length_term:
            z = z + self.length_coef * np.tanh(d / self.scale)
        if difficulty_N is not None:
            z = z + self.instruction_coef * np.asarray(difficulty_N, np.float64)
        return expit(z)


def _scale(d) -> float:
    return float(d.std(ddof=1)) if len(d) > 1 and d.std() > 0 else 1.0


def fit_length_controlled(preferences_N, delta_len_N, difficulty_N=None, C: float = 100.0) -> LengthControlledFit:
    """The GLM of the module docstring fitted to soft preferences p(model preferred over baseline).

    delta_len_N = len(model output) - len(baseline output); difficulty_N = gamma_x or None
    (no instruction term). When every preference is 1 (or 0) the intercept is +inf (-inf).
    """
    p = np.asarray(preferences_N, np.float64)
    d = np.asarray(delta_len_N, np.float64)
    if p.shape != d.shape or p.ndim != 1:
        raise ValueError(f"preferences and length differences must be 1-D of one length: {p.shape}, {d.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("preferences must lie in [0, 1]")
    scale = _scale(d)
    if np.all(p >= 1.0) or np.all(p <= 0.0):  # one class only: the intercept is +-infinity
        return LengthControlledFit(float(np.inf if p[0] >= 1 else -np.inf), 0.0, scale)
    cols = [np.ones_like(d), np.tanh(d / scale)]
    if difficulty_N is not None:
        g = np.asarray(difficulty_N, np.float64)
        if g.shape != d.shape:
            raise ValueError(f"difficulty_N has shape {g.shape}, the preferences {d.shape}")
        cols.append(g)
    w = fit_logistic(np.stack(cols, 1), p, np.array([0.0] + [1.0 / C] * (len(cols) - 1)))
    return LengthControlledFit(float(w[0]), float(w[1]), scale, float(w[2]) if len(w) > 2 else 0.0)


def instruction_difficulty(preferences_MxN, delta_len_MxN, tau: float = 1.0, C: float = 100.0) -> np.ndarray:
    """gamma_N: each instruction's difficulty from M >= 2 policies' preferences over one baseline.

    Fits logit p_{m,x} = a_m + b_m tanh(delta_{m,x} / sd_m) - gamma_x with an L2 penalty
    1/tau^2 on gamma (a N(0, tau^2) prior: an instruction every policy wins gets a finite
    value) and 1/C on b; returns gamma centred to mean 0.
    """
    p = np.asarray(preferences_MxN, np.float64)
    d = np.asarray(delta_len_MxN, np.float64)
    if p.ndim != 2 or p.shape != d.shape:
        raise ValueError(f"preferences and length differences must be M x N of one shape: {p.shape}, {d.shape}")
    M, N = p.shape
    if M < 2:
        raise ValueError(f"instruction difficulty needs >= 2 policies on the same instructions, got {M}")
    X = np.zeros((M * N, 2 * M + N))
    for m in range(M):
        rows = slice(m * N, (m + 1) * N)
        X[rows, m] = 1.0
        X[rows, M + m] = np.tanh(d[m] / _scale(d[m]))
        X[rows, 2 * M:] = -np.eye(N)
    penalty = np.r_[np.zeros(M), np.full(M, 1.0 / C), np.full(N, 1.0 / tau ** 2)]
    gamma = fit_logistic(X, p.reshape(-1), penalty)[2 * M:]
    return gamma - gamma.mean()


def _lc_statistic(p, d, g=None, C=100.0):
    return float(fit_length_controlled(p, d, g, C).predict(d, g, length_term=False).mean())


def length_controlled_win_rate(preferences_N, lengths_model_N, lengths_baseline_N, difficulty_N=None,
                               C: float = 100.0, **bootstrap_kw) -> dict[str, Any]:
    """Raw and length-controlled win rates of a model over a baseline on the same prompts.

    preferences_N: p(model preferred) per prompt (1 win, 1/2 tie, 0 loss, or soft). Returns
    {"win_rate", "lc_win_rate": Estimate dicts (prompts resampled; the GLM refitted on each
    resample), "fit": {"intercept", "length_coef", "scale", "instruction_coef"},
    "instruction_term": whether gamma entered the fit, "n"}.
    """
    p = np.asarray(preferences_N, np.float64)
    d = np.asarray(lengths_model_N, np.float64) - np.asarray(lengths_baseline_N, np.float64)
    fit = fit_length_controlled(p, d, difficulty_N, C)
    bootstrap_kw.setdefault("n_resamples", 500)
    bootstrap_kw.setdefault("method", "percentile")
    samples = [p, d] if difficulty_N is None else [p, d, np.asarray(difficulty_N, np.float64)]
    lc = stats.bootstrap(lambda p_, d_, *g: _lc_statistic(p_, d_, g[0] if g else None, C), samples, paired=True,
                         **bootstrap_kw)
    raw = stats.win_rate(p, **{k: v for k, v in bootstrap_kw.items() if k != "method"})
    return {"win_rate": raw.to_dict(), "lc_win_rate": lc.to_dict(), "fit": dataclasses.asdict(fit),
            "instruction_term": difficulty_N is not None, "n": len(p)}

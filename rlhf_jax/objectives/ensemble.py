"""Aggregating the scores of k reward models (RLHF_NOTES section 6; Coste et al. 2023).

scores_KxB holds member i's score of sequence b. Aggregators: mean; min (worst-case
optimisation, WCO); uwo = mean - lambda * Var (uncertainty-weighted; the variance divisor is
k with ddof=0, as in the best-of-n code, or k - 1 with ddof=1, as in the PPO code); median;
mean_std = mean - lambda * std. Optional per-member z-normalisation with given statistics.
"""
from __future__ import annotations

import jax.numpy as jnp

AGGREGATORS = ("mean", "min", "uwo", "median", "mean_std")


def aggregate(scores_KxB, kind: str = "mean", lam: float = 0.0, ddof: int = 0, mean_K=None, std_K=None):
    s = scores_KxB
    if mean_K is not None:
        s = (s - mean_K[:, None]) / std_K[:, None]
    if kind == "mean":
        return s.mean(0)
    if kind == "min":
        return s.min(0)
    if kind == "uwo":
        return s.mean(0) - lam * s.var(0, ddof=ddof)
    if kind == "median":
        return jnp.median(s, axis=0)
    if kind == "mean_std":
        return s.mean(0) - lam * s.std(0, ddof=ddof)
    raise ValueError(f"aggregator {kind!r} must be one of {AGGREGATORS}")

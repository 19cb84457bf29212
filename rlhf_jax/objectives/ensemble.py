"""Aggregating the scores of k reward models (docs/rlhf_notes.md section 6; Coste et al. 2023).

scores_KxB holds member i's score of sequence b. Registered aggregators: mean; min
(worst-case optimisation, WCO); uwo = mean - lambda * Var (uncertainty-weighted; the variance
divisor is k with ddof=0, as in the best-of-n code, or k - 1 with ddof=1, as in the PPO code);
median; mean_std = mean - lambda * std. Optional per-member z-normalisation with given
statistics before aggregating.
"""
from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax.registry import Registry

# (scores_KxB, lam, ddof) -> scores_B
AGGREGATORS = Registry("reward aggregator")


@AGGREGATORS.register("mean")
def _mean(s, lam, ddof):
    return s.mean(0)


@AGGREGATORS.register("min")
def _worst_case(s, lam, ddof):
    return s.min(0)


@AGGREGATORS.register("uwo")
def _uncertainty_weighted(s, lam, ddof):
    return s.mean(0) - lam * s.var(0, ddof=ddof)


@AGGREGATORS.register("median")
def _median(s, lam, ddof):
    return jnp.median(s, axis=0)


@AGGREGATORS.register("mean_std")
def _mean_minus_std(s, lam, ddof):
    return s.mean(0) - lam * s.std(0, ddof=ddof)


def aggregate(scores_KxB, kind: str = "mean", lam: float = 0.0, ddof: int = 0, mean_K=None, std_K=None):
    """scores_B: the registered aggregator `kind` over members, after optional z-normalisation."""
    s = scores_KxB
    if mean_K is not None:
        s = (s - mean_K[:, None]) / std_K[:, None]
    return AGGREGATORS[kind](s, lam, ddof)

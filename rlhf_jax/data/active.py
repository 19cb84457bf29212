"""Active selection of the comparisons to send to annotators (docs/rlhf_notes.md section 12).

The candidates are comparisons (prompt p, response i, response j) among the K responses sampled
for each of P prompts (`candidate_pairs`: all K(K-1)/2 pairs of every prompt). The reward models'
scores arrive as `member_scores` [k, P, K]: k members of a vmapped ensemble
(`EnsembleReward.member_scores`, through `member_scores` below), k = 1 for a single RM. Each
member's score difference on candidate c is d[m, c] = s[m, p, i] - s[m, p, j], and a strategy in
`SELECTION_STRATEGIES` turns d into a selection score per candidate, larger picked earlier:

- `random`: every score 0, so the picks are uniform without replacement (ties, below);
- `uncertainty`: the Bradley-Terry probability P(i > j) = sigmoid(mean_m d[m, c]) closest to 1/2;
  the score is min(P, 1 - P) = sigmoid(-|mean_m d|), in (0, 1/2] (k = 1: the single RM);
- `disagreement` (query by committee): Var_m d[m, c] with divisor k (ddof 0); needs k >= 2;
- `diverse_disagreement`: disagreement, skipping a candidate once `per_cluster` comparisons of
  its prompt's cluster are chosen (`clusters` [P] ints; default one cluster per prompt). It
  returns fewer than `budget` comparisons when every cluster left is full.

Equal scores are ordered by a permutation of the candidates drawn from the numpy Generator
(one draw per call, for every strategy), so a seed fixes the selection. The core is numpy in
float64 on host arrays.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from rlhf_jax import signals
from rlhf_jax.registry import Registry

# (d_kxC, cluster_C, budget, rng, per_cluster) -> Selection
SELECTION_STRATEGIES = Registry("selection strategy")


class Selection(NamedTuple):
    """`chosen` [m]: indices into the candidate list, first pick first (m <= budget);
    `scores` [m]: each pick's selection score (the strategy's, larger picked earlier)."""
    chosen: np.ndarray
    scores: np.ndarray


def candidate_pairs(n_prompts: int, K: int) -> np.ndarray:
    """candidates [P * K(K-1)/2, 3] of (prompt, i, j), i < j: prompt by prompt, pairs in
    lexicographic order ((0, 1), (0, 2), ..., (K-2, K-1))."""
    i, j = np.triu_indices(K, 1)
    p = np.repeat(np.arange(n_prompts), len(i))
    return np.stack([p, np.tile(i, n_prompts), np.tile(j, n_prompts)], 1).astype(np.int64)


def _ranked(keys_C: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Candidate indices by descending key, equal keys in the order of a random permutation."""
    perm = rng.permutation(len(keys_C))
    return perm[np.argsort(-keys_C[perm], kind="stable")]


def _take(order: np.ndarray, budget: int, cluster_C=None, per_cluster: int | None = None) -> np.ndarray:
    """The first `budget` of `order`, at most `per_cluster` per cluster when a cap is given."""
    if per_cluster is None:
        return order[:budget]
    taken, counts = [], {}
    for c in order:
        if len(taken) == budget:
            break
        if counts.get(cluster_C[c], 0) < per_cluster:
            counts[cluster_C[c]] = counts.get(cluster_C[c], 0) + 1
            taken.append(c)
    return np.asarray(taken, np.int64)


def _by_score(scores_C, rng, budget, cluster_C=None, per_cluster=None, keys_C=None) -> Selection:
    order = _take(_ranked(scores_C if keys_C is None else keys_C, rng), budget, cluster_C, per_cluster)
    return Selection(order, scores_C[order])


@SELECTION_STRATEGIES.register("random")
def _random(d, cluster, budget, rng, per_cluster):
    return _by_score(np.zeros(d.shape[1]), rng, budget)


@SELECTION_STRATEGIES.register("uncertainty")
def _uncertainty(d, cluster, budget, rng, per_cluster):
    margin = np.abs(d.mean(0))
    # ranked by -|mean d| itself: sigmoid(-|x|) underflows to 0 for |x| > ~745, tying sure pairs
    return _by_score(1.0 / (1.0 + np.exp(margin)), rng, budget, keys_C=-margin)


def _variance(d):
    if d.shape[0] < 2:
        raise ValueError(f"disagreement needs an ensemble of k >= 2 reward models, got member_scores with "
                         f"k={d.shape[0]}; use 'uncertainty' for a single RM")
    return d.var(0, ddof=0)


@SELECTION_STRATEGIES.register("disagreement")
def _disagreement(d, cluster, budget, rng, per_cluster):
    return _by_score(_variance(d), rng, budget)


@SELECTION_STRATEGIES.register("diverse_disagreement")
def _diverse_disagreement(d, cluster, budget, rng, per_cluster):
    return _by_score(_variance(d), rng, budget, cluster, per_cluster)


def _check(candidates, scores, clusters, budget, per_cluster):
    if scores.ndim != 3:
        raise ValueError(f"member_scores must be [k, n_prompts, K], got shape {scores.shape} "
                         "(a single RM's [n_prompts, K] scores: pass scores[None])")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"member_scores hold {int(np.sum(~np.isfinite(scores)))} non-finite values")
    k, P, K = scores.shape
    if candidates.ndim != 2 or candidates.shape[1] != 3:
        raise ValueError(f"candidates must be [C, 3] rows of (prompt, i, j), got shape {candidates.shape}")
    bad = ((candidates[:, 0] < 0) | (candidates[:, 0] >= P) | (candidates[:, 1:] < 0).any(1)
           | (candidates[:, 1:] >= K).any(1) | (candidates[:, 1] == candidates[:, 2]))
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(f"candidates row {r} = {candidates[r].tolist()}: needs 0 <= prompt < {P}, "
                         f"0 <= i, j < {K} and i != j")
    if clusters.shape != (P,):
        raise ValueError(f"clusters must be one int per prompt, shape ({P},), got shape {clusters.shape}")
    if budget < 0:
        raise ValueError(f"budget={budget} must be >= 0")
    if per_cluster < 1:
        raise ValueError(f"per_cluster={per_cluster} must be >= 1")


def select(strategy: str, candidates, member_scores, budget: int, rng: np.random.Generator, clusters=None,
           per_cluster: int = 1) -> Selection:
    """The comparisons to label under the registered `strategy` (module docstring).

    candidates [C, 3] ints (prompt, i, j); member_scores [k, P, K] (numpy or jax); `budget` the
    number of comparisons wanted (all C when larger); `clusters` [P] ints and `per_cluster` are
    read by the capped strategy only.
    """
    fn = SELECTION_STRATEGIES[strategy]
    candidates = np.asarray(candidates, np.int64)
    scores = np.asarray(member_scores, np.float64)
    P = scores.shape[1] if scores.ndim == 3 else 0
    clusters = np.arange(P) if clusters is None else np.asarray(clusters)
    _check(candidates, scores, clusters, int(budget), int(per_cluster))
    p, i, j = candidates.T
    d = scores[:, p, i] - scores[:, p, j]  # [k, C]
    return fn(d, clusters[p], int(budget), rng, int(per_cluster))


def member_scores(score_members: Callable, params, tokens_PxKxT, mask_PxKxT, chunk: int = 256) -> np.ndarray:
    """scores [k, P, K] of the K responses of P prompts under k stacked reward models.

    `score_members(params, tokens_NxT, mask_NxT) -> [k, N]`, e.g. `EnsembleReward.member_scores`
    (the vmapped ensemble; a single RM is an ensemble of one), jitted here and run on chunks of
    `chunk` sequences (compiled at most twice).
    """
    P, K, T = np.shape(tokens_PxKxT)
    tokens = np.asarray(tokens_PxKxT).reshape(P * K, T)
    mask = np.asarray(mask_PxKxT).reshape(P * K, T)
    fn = jax.jit(score_members)
    out = []
    for a in range(0, P * K, chunk):
        signals.check("scoring")
        out.append(np.asarray(fn(params, tokens[a:a + chunk], mask[a:a + chunk])))
    return np.concatenate(out, 1).reshape(-1, P, K)


__all__ = ["SELECTION_STRATEGIES", "Selection", "candidate_pairs", "member_scores", "select"]

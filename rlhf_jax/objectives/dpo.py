"""The DPO family (RLHF_NOTES section 4) over pairs or K-wise rankings (all C(K, 2) pairs).

With h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]:
  dpo     -log sigmoid(beta h)
  cdpo    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)          (label smoothing)
  robust  [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)
  ipo     (h - 1 / (2 beta))^2                                               (beta plays tau)
Pairs are weighted as in the reward model: each prompt weighs 1, its pairs share it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.objectives.reward import pair_matrix

LOSSES = ("dpo", "cdpo", "robust", "ipo")


def sequence_logprobs(token_logp_BxT: jax.Array, mask_BxT: jax.Array, reduction: str = "sum") -> jax.Array:
    """Per-sequence log-prob of the response tokens: their sum (official DPO) or mean per token."""
    m = mask_BxT.astype(jnp.float32)
    total = (token_logp_BxT * m).sum(-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / jnp.maximum(m.sum(-1), 1.0)
    raise ValueError(f"logprob_reduction {reduction!r} must be 'sum' or 'mean'")


def pair_losses(h: jax.Array, beta: float, kind: str = "dpo", eps: float = 0.0) -> jax.Array:
    """The loss of each pair given h (log-ratio of chosen minus log-ratio of rejected)."""
    if kind == "dpo":
        return -jax.nn.log_sigmoid(beta * h)
    if kind == "cdpo":
        return -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    if kind == "robust":
        return (-(1 - eps) * jax.nn.log_sigmoid(beta * h) + eps * jax.nn.log_sigmoid(-beta * h)) / (1 - 2 * eps)
    if kind == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(f"DPO loss {kind!r} must be one of {LOSSES}")


def dpo_loss(policy_BxK: jax.Array, ref_BxK: jax.Array, ranks_BxK: jax.Array, valid_BxK: jax.Array,
             beta: float, kind: str = "dpo", eps: float = 0.0):
    """Loss and metrics from per-response sequence log-probs of the policy and the reference.

    Metrics: implicit rewards beta (log pi - log pi_ref) of chosen and rejected responses,
    reward accuracy (ties half) and margin, over all ranked pairs.
    """
    wins = pair_matrix(ranks_BxK, valid_BxK)
    ratio = policy_BxK - ref_BxK
    h = ratio[:, :, None] - ratio[:, None, :]
    n_pairs_B = wins.sum((1, 2))
    has_pairs = (n_pairs_B > 0).astype(jnp.float32)
    per_prompt = (pair_losses(h, beta, kind, eps) * wins).sum((1, 2)) / jnp.maximum(n_pairs_B, 1.0)
    loss = (per_prompt * has_pairs).sum() / jnp.maximum(has_pairs.sum(), 1.0)
    n = jnp.maximum(wins.sum(), 1.0)
    reward = beta * ratio
    metrics = {"reward_chosen": (reward[:, :, None] * wins).sum() / n,
               "reward_rejected": (reward[:, None, :] * wins).sum() / n,
               "reward_accuracy": (jnp.where(h > 0, 1.0, jnp.where(h == 0, 0.5, 0.0)) * wins).sum() / n,
               "reward_margin": (beta * h * wins).sum() / n, "pairs": wins.sum()}
    return loss, metrics

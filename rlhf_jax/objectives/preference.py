"""Preference losses over pairs or K-wise rankings (all C(K, 2) pairs): the DPO family, SimPO, ORPO.

Each loss is registered in `PREFERENCE_LOSSES` and maps the per-response log-probabilities
of the policy (and of the reference, if it needs one) to an implicit reward per response and
a loss per ordered pair (i preferred to j). With ratio = log pi(y) - log pi_ref(y) and
h = ratio_w - ratio_l (docs/rlhf_notes.md sections 4 and 10):

  dpo     -log sigmoid(beta h)
  cdpo    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)          (label smoothing)
  robust  [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)
  ipo     (h - 1 / (2 beta))^2                                               (beta plays tau)
  simpo   -log sigmoid(r_w - r_l - gamma), r = beta * mean token log pi      (no reference)
  orpo    -lambda log sigmoid(logodds_w - logodds_l) per pair,              (no reference)
          logodds = log P - log(1 - P), log P = mean token log pi; plus NLL(y_best) once per
          prompt: the SFT term goes to the top-ranked response only, not to every pair's winner
          (with K > 2 a middle response wins some pairs but is not the one to imitate)

The DPO family reads `logprob_reduction`: the sum over response tokens (official) or the
per-token mean. Pairs are weighted as in the reward model: each prompt weighs 1, its pairs
share it. A loss may also register `best_term` (loss_BxK of each response), added once per
prompt for its top-ranked response (the mean over responses tied at the top). A new loss is
one function plus one registration.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.objectives.reward import pair_matrix
from rlhf_jax.registry import Registry


class SequenceLogprobs(NamedTuple):
    """Per-response log-probabilities: their sum over response tokens and the token count."""
    sum_BxK: jax.Array
    count_BxK: jax.Array

    def reduce(self, reduction: str) -> jax.Array:
        if reduction == "sum":
            return self.sum_BxK
        if reduction == "mean":
            return self.sum_BxK / jnp.maximum(self.count_BxK, 1.0)
        raise ValueError(f"logprob_reduction {reduction!r} must be 'sum' or 'mean'")


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
    """fn(policy, reference or None, hp) -> (reward_BxK, pair_loss_BxKxK, margin_BxKxK), where
    margin[b, i, j] = reward_i - reward_j and hp holds the config's fields (beta, ...).
    best_term(policy, hp) -> loss_BxK, or None: a per-response loss counted once per prompt,
    for its best response (ORPO's NLL)."""
    fn: Callable
    needs_reference: bool
    best_term: Callable | None = None


PREFERENCE_LOSSES = Registry("preference loss")


def register(name: str, needs_reference: bool = True, best_term: Callable | None = None):
    def add(fn):
        PREFERENCE_LOSSES.register(name, PreferenceLoss(fn, needs_reference, best_term))
        return fn
    return add


def _log_ratio_diff(policy: SequenceLogprobs, reference: SequenceLogprobs, hp):
    """(ratio_BxK, h_BxKxK): the DPO family's log-ratios and their pairwise differences."""
    ratio = policy.reduce(hp.logprob_reduction) - reference.reduce(hp.logprob_reduction)
    return ratio, ratio[:, :, None] - ratio[:, None, :]


def pair_losses(h, beta: float, kind: str = "dpo", eps: float = 0.0) -> jax.Array:
    """The DPO family's loss of each pair given h (log-ratio of chosen minus log-ratio of rejected)."""
    if kind == "dpo":
        return -jax.nn.log_sigmoid(beta * h)
    if kind == "cdpo":
        return -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    if kind == "robust":
        return (-(1 - eps) * jax.nn.log_sigmoid(beta * h) + eps * jax.nn.log_sigmoid(-beta * h)) / (1 - 2 * eps)
    if kind == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(f"{kind!r} is not one of the DPO family ('dpo', 'cdpo', 'robust', 'ipo')")


def _dpo_family(kind: str):
    def loss(policy, reference, hp):
        ratio, h = _log_ratio_diff(policy, reference, hp)
        return hp.beta * ratio, pair_losses(h, hp.beta, kind, hp.label_smoothing), hp.beta * h
    loss.__doc__ = f"The {kind} loss of the DPO family (module docstring)."
    return loss


for _kind in ("dpo", "cdpo", "robust", "ipo"):
    register(_kind)(_dpo_family(_kind))


@register("simpo", needs_reference=False)
def simpo(policy, reference, hp):
    """Meng et al. 2024: reward beta * mean token log-prob, target margin gamma, no reference."""
    reward = hp.beta * policy.reduce("mean")
    margin = reward[:, :, None] - reward[:, None, :]
    return reward, -jax.nn.log_sigmoid(margin - hp.simpo_gamma), margin


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return jnp.where(x > -0.6931471805599453, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def orpo_nll(policy, hp):
    """ORPO's SFT term: each response's mean token NLL (counted for the best response only)."""
    return -policy.reduce("mean")


@register("orpo", needs_reference=False, best_term=orpo_nll)
def orpo(policy, reference, hp):
    """Hong et al. 2024: lambda * the odds-ratio loss per pair (the NLL is `orpo_nll`)."""
    log_p = policy.reduce("mean")
    log_odds = log_p - log1mexp(jnp.minimum(log_p, -1e-6))
    margin = log_odds[:, :, None] - log_odds[:, None, :]
    return log_odds, -hp.orpo_lambda * jax.nn.log_sigmoid(margin), margin


def preference_loss(kind: str, policy: SequenceLogprobs, reference: SequenceLogprobs | None,
                    ranks_BxK, valid_BxK, hp: Any):
    """(loss, metrics) of the registered loss `kind` over every ranked pair of each prompt.

    Metrics: implicit rewards of chosen and rejected responses, reward accuracy (ties half)
    and margin, over all ranked pairs. ranks_BxK: 0 is best; a prompt counts when it has a pair.
    """
    entry = PREFERENCE_LOSSES[kind]
    if entry.needs_reference and reference is None:
        raise ValueError(f"preference loss {kind!r} needs reference log-probs")
    reward, losses, margin = entry.fn(policy, reference, hp)
    wins = pair_matrix(ranks_BxK, valid_BxK)
    n_pairs_B = wins.sum((1, 2))
    has_pairs = (n_pairs_B > 0).astype(jnp.float32)
    per_prompt = (losses * wins).sum((1, 2)) / jnp.maximum(n_pairs_B, 1.0)
    if entry.best_term is not None:
        valid = valid_BxK.astype(bool)
        top_B = jnp.min(jnp.where(valid, ranks_BxK, ranks_BxK.max() + 1), axis=1)  # best valid rank
        best = (valid & (ranks_BxK == top_B[:, None])).astype(jnp.float32)
        per_prompt = per_prompt + (entry.best_term(policy, hp) * best).sum(1) / jnp.maximum(best.sum(1), 1.0)
    loss = (per_prompt * has_pairs).sum() / jnp.maximum(has_pairs.sum(), 1.0)
    n = jnp.maximum(wins.sum(), 1.0)
    metrics = {"reward_chosen": (reward[:, :, None] * wins).sum() / n,
               "reward_rejected": (reward[:, None, :] * wins).sum() / n,
               "reward_accuracy": (jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0)) * wins).sum() / n,
               "reward_margin": (margin * wins).sum() / n, "pairs": wins.sum()}
    return loss, metrics

"""PPO pieces for language models, as pure functions (docs/rlhf_notes.md section 3).

Shapes: B episodes, N response tokens; `mask_BxN` is 1 on response tokens (through the EOS).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.objectives.lm import token_entropy
from rlhf_jax.registry import Registry

# per-token estimators of KL(pi || pi_ref) from l = log pi(a) - log pi_ref(a) on the sampled token
KL_ESTIMATORS = Registry("KL estimator")
# (rewards_BxN, values_BxN, mask_BxN, gamma, lam) -> (advantages_BxN, returns_BxN)
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")


def masked_mean(x, mask, axis=None):
    mask = mask.astype(jnp.float32)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def masked_whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
    """Scale masked deviations to unit std; subtract the mean too if `shift_mean`.

    With shift_mean=False the batch mean is kept and only the spread is normalised, as in
    the N+ / TRL reward whitening.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


@KL_ESTIMATORS.register("k1")
def _k1(log_ratio):
    """l: unbiased, can be negative."""
    return log_ratio


@KL_ESTIMATORS.register("k2")
def _k2(log_ratio):
    """l^2 / 2: biased, low variance, >= 0."""
    return 0.5 * log_ratio ** 2


@KL_ESTIMATORS.register("k3")
def _k3(log_ratio):
    """exp(-l) - 1 + l: unbiased, >= 0."""
    return jnp.expm1(-log_ratio) + log_ratio


def kl_estimate(logp_BxN, ref_logp_BxN, kind: str = "k1"):
    """Per-token KL(pi || pi_ref) estimate on sampled tokens, with the registered estimator `kind`."""
    return KL_ESTIMATORS[kind](logp_BxN - ref_logp_BxN)


def at_last_token(mask_BxN):
    """One-hot [B, N] of each row's last response token."""
    last = mask_BxN.sum(1).astype(jnp.int32) - 1
    return jax.nn.one_hot(last, mask_BxN.shape[1], dtype=jnp.float32) * (last >= 0)[:, None]


def missing_eos_penalty(score, has_eos_B, mask_BxN, penalty: float):
    """A response without EOS gets `penalty` instead of its reward: a sequence score [B] is
    replaced, per-token rewards [B, N] become the penalty on the last token."""
    if score.ndim == 1:
        return jnp.where(has_eos_B, score, penalty)
    return jnp.where(has_eos_B[:, None], score, penalty * at_last_token(mask_BxN))


def token_rewards(score, kl_BxN, mask_BxN, kl_coef):
    """r_t = -beta * kl_t on every response token, plus the score: a sequence score [B] on the
    last token, or per-token rewards [B, N] already placed (fine-grained rewards)."""
    placed = score if score.ndim == 2 else score[:, None] * at_last_token(mask_BxN)
    return (-kl_coef * kl_BxN + placed) * mask_BxN


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(rewards_BxN, values_BxN, mask_BxN, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation as a reverse scan; returns (advantages, returns).

    The value after the last response token is 0 (the episode ends at the EOS or the cut).
    """
    mask = mask_BxN.astype(jnp.float32)
    next_values = jnp.concatenate([values_BxN[:, 1:] * mask[:, 1:], jnp.zeros_like(values_BxN[:, :1])], 1)
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], 1)
    deltas = rewards_BxN + gamma * next_values - values_BxN

    def step(carry_B, xs):
        delta_B, nmask_B = xs
        adv = delta_B + gamma * lam * nmask_B * carry_B
        return adv, adv

    _, adv_NxB = jax.lax.scan(step, jnp.zeros_like(values_BxN[:, 0]), (deltas.T, next_mask.T), reverse=True)
    advantages = adv_NxB.T * mask
    return advantages, (advantages + values_BxN) * mask


def policy_loss(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, clip_eps: float = 0.2):
    """Clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-eps, 1+eps))."""
    log_ratio = logp_BxN - old_logp_BxN
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages_BxN * ratio
    clipped = -advantages_BxN * jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask_BxN)
    metrics = {"clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask_BxN),
               "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask_BxN),
               "ratio_max": jnp.max(jnp.where(mask_BxN > 0, ratio, 0.0))}
    return loss, metrics


def value_loss(values_BxN, old_values_BxN, returns_BxN, mask_BxN, clip_eps: float = 0.2):
    """0.5 * mean max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    clipped = old_values_BxN + jnp.clip(values_BxN - old_values_BxN, -clip_eps, clip_eps)
    loss = 0.5 * masked_mean(jnp.maximum((values_BxN - returns_BxN) ** 2, (clipped - returns_BxN) ** 2), mask_BxN)
    return loss, {"vf_clipfrac": masked_mean((jnp.abs(values_BxN - old_values_BxN) > clip_eps).astype(jnp.float32),
                                             mask_BxN)}


def entropy(logits_BxNxV, mask_BxN):
    """Mean policy entropy over the masked tokens (`masked_entropy` of `token_entropy`)."""
    return masked_entropy(token_entropy(logits_BxNxV), mask_BxN)


def masked_entropy(entropy_BxN, mask_BxN):
    """Mean of per-token entropies over the masked tokens (e.g. from `chunked_token_logprobs`)."""
    return masked_mean(entropy_BxN, mask_BxN)


def adaptive_kl_update(kl_coef, observed_kl, target: float, horizon: float, n_steps: int):
    """Ziegler et al.: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon."""
    error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)

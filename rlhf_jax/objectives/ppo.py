"""PPO pieces for language models, as pure functions (docs/rlhf_notes.md sections 3 and 13).

Shapes: B episodes, N response tokens; `mask_BxN` is 1 on response tokens (through the EOS).
With group sampling the B episodes are B / G groups of G responses to one prompt, a group's
rows adjacent (rows g*G .. g*G + G - 1).

Three registries make the ablation menu of policy optimisation:
  KL_ESTIMATORS         per-token estimates of KL(pi || pi_ref)                 ppo.kl_estimator
  ADVANTAGE_ESTIMATORS  GAE with a value model, or a critic-free estimator     ppo.advantage_estimator
                        (GRPO, Dr. GRPO, RLOO, REINFORCE++, ReMax); each says
                        whether it needs a critic, where the KL penalty goes
                        (the reward or the loss) and what else it samples
  POLICY_LOSSES         the surrogate: which ratio is clipped (token or          ppo.policy_loss
                        sequence, GSPO) and how the loss is normalised (over the
                        batch's tokens as PPO and DAPO, per response as GRPO, by
                        a constant length as Dr. GRPO)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.objectives.lm import token_entropy
from rlhf_jax.registry import Registry

# per-token estimators of KL(pi || pi_ref) from l = log pi(a) - log pi_ref(a) on the sampled token
KL_ESTIMATORS = Registry("KL estimator")
# name -> Estimator: (AdvantageInputs, kl_coef, hp) -> (advantages_BxN, returns_BxN or None)
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
# name -> PolicyLoss
POLICY_LOSSES = Registry("policy loss")


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


def place(score, mask_BxN):
    """A reward on the response tokens [B, N]: a sequence score [B] on the last token, per-token
    rewards [B, N] (fine-grained) as they are, masked."""
    return score * mask_BxN if score.ndim == 2 else score[:, None] * at_last_token(mask_BxN)


def per_sequence(score):
    """A reward per response [B]: a sequence score as it is, per-token rewards [B, N] summed."""
    return score.sum(1) if score.ndim == 2 else score


def token_rewards(score, kl_BxN, mask_BxN, kl_coef):
    """r_t = -beta * kl_t on every response token, plus the score: a sequence score [B] on the
    last token, or per-token rewards [B, N] already placed (fine-grained rewards)."""
    return (-kl_coef * kl_BxN + place(score, mask_BxN)) * mask_BxN


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


def policy_loss(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, clip_eps: float = 0.2,
                clip_eps_high: float | None = None, kind: str = "ppo"):
    """The clipped surrogate of the registered policy loss `kind`: per token (or per sequence, GSPO)
    max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), normalised as the loss says. eps_high =
    `clip_eps_high` (DAPO's clip-higher) or, when None, `clip_eps`."""
    spec = POLICY_LOSSES[kind]
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp_BxN - old_logp_BxN
    if spec.ratio == "sequence":  # GSPO: the geometric mean of the token ratios, one per response
        seq_mask = (mask_BxN.sum(1) > 0).astype(jnp.float32)
        log_ratio_B = masked_mean(log_ratio, mask_BxN, axis=1)
        ratio = jnp.exp(log_ratio_B)
        adv_B = masked_mean(advantages_BxN, mask_BxN, axis=1)
        unclipped, clipped = -adv_B * ratio, -adv_B * jnp.clip(ratio, 1 - clip_eps, 1 + high)
        loss = masked_mean(jnp.maximum(unclipped, clipped), seq_mask)
        metrics = {"clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), seq_mask),
                   "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask_BxN),
                   "ratio_max": jnp.max(jnp.where(seq_mask > 0, ratio, 0.0))}
        return loss, metrics
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages_BxN * ratio
    clipped = -advantages_BxN * jnp.clip(ratio, 1 - clip_eps, 1 + high)
    loss = aggregate(jnp.maximum(unclipped, clipped), mask_BxN, spec.aggregate)
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


# --- policy losses -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    """ratio: "token" (PPO) or "sequence" (GSPO); aggregate: how per-token terms become the loss:
    "token" (mean over the batch's response tokens), "sequence" (each response's token mean, then
    the mean over responses) or "constant" (the sum over tokens / (B * N), N the sampled length)."""
    ratio: str
    aggregate: str
    doc: str


def aggregate(x_BxN, mask_BxN, how: str):
    """A per-token term reduced to the loss as a policy loss's `aggregate` says."""
    if how == "token":
        return masked_mean(x_BxN, mask_BxN)
    if how == "sequence":
        live = (mask_BxN.sum(1) > 0).astype(jnp.float32)
        return masked_mean(masked_mean(x_BxN, mask_BxN, axis=1), live)
    if how == "constant":
        return (x_BxN * mask_BxN).sum() / (x_BxN.shape[0] * x_BxN.shape[1])
    raise ValueError(f"aggregate {how!r} must be 'token', 'sequence' or 'constant'")


def aggregate_weight(mask_BxN, how: str):
    """What a slice of a minibatch weighs in its `aggregate` (gradient accumulation): its response
    tokens, its live responses or its rows, so that the weighted slices give the whole's loss."""
    if how == "token":
        return mask_BxN.sum()
    if how == "sequence":
        return (mask_BxN.sum(1) > 0).sum().astype(jnp.float32)
    return jnp.asarray(mask_BxN.shape[0], jnp.float32)


for _name, _ratio, _agg, _doc in (
        ("ppo", "token", "token", "PPO's clipped surrogate, the mean over the minibatch's response tokens"),
        ("grpo", "token", "sequence", "GRPO (Shao et al. 2024): each response's token mean (1/|o_i|), then the "
                                      "mean over responses"),
        ("dr_grpo", "token", "constant", "Dr. GRPO (Liu et al. 2025): the token sum over a constant, B x the "
                                         "sampled length, instead of 1/|o_i| (no length bias)"),
        ("dapo", "token", "token", "DAPO (Yu et al. 2025): token-level normalisation over the whole batch; its "
                                   "clip-higher is ppo.clip_eps_high, its dynamic sampling ppo.dynamic_sampling "
                                   "and its overlong shaping ppo.overlong_buffer"),
        ("gspo", "sequence", "sequence", "GSPO (Zheng et al. 2025): one ratio per response, the geometric mean of "
                                         "its token ratios, clipped per response")):
    POLICY_LOSSES.register(_name, PolicyLoss(_ratio, _agg, _doc))


# --- advantage estimators ------------------------------------------------------------------------

class AdvantageInputs(NamedTuple):
    """What an estimator reads. score_BxN: the reward placed on the tokens (a sequence score on
    the last token, or fine-grained per-token rewards), masked; kl_BxN: the per-token KL estimate;
    values_BxN: the critic's values (None without one); baseline_B: ReMax's greedy-response
    reward (None otherwise); group_size: G responses per prompt, adjacent rows."""
    score_BxN: jax.Array
    kl_BxN: jax.Array
    mask_BxN: jax.Array
    values_BxN: jax.Array | None
    baseline_B: jax.Array | None
    group_size: int


@dataclasses.dataclass(frozen=True)
class Estimator:
    """fn(inputs, kl_coef, hp) -> (advantages_BxN, returns_BxN or None). critic: a value model is
    built and trained; kl: where the KL penalty goes, "reward" (-beta * kl_t in the token
    rewards) or "loss" (beta * KL(pi || pi_ref) as a loss term, GRPO); min_group: the fewest
    responses per prompt it works with; greedy: it samples one greedy response per prompt."""
    fn: Callable
    critic: bool
    kl: str
    min_group: int = 1
    greedy: bool = False


def register_estimator(name: str, critic: bool = False, kl: str = "reward", min_group: int = 1,
                       greedy: bool = False):
    def add(fn):
        ADVANTAGE_ESTIMATORS.register(name, Estimator(fn, critic, kl, min_group, greedy))
        return fn
    return add


def sequence_return(inp: AdvantageInputs, kl_coef):
    """R_i = sum over response tokens of (score - beta * kl_t): the sequence reward with the KL
    penalty folded in."""
    return ((inp.score_BxN - kl_coef * inp.kl_BxN) * inp.mask_BxN).sum(1)


def per_token(adv_B, mask_BxN):
    """A sequence-level advantage on every token of its response."""
    return adv_B[:, None] * mask_BxN


def group_view(x_B, group_size: int):
    """[B] -> [B / G, G]: a group's responses are adjacent rows."""
    return x_B.reshape(-1, group_size)


def group_normalised(r_B, group_size: int, scale: bool = True, eps: float = 1e-6):
    """(r - group mean) / (group std + eps); the std is the unbiased (ddof 1) one, as TRL's and
    OpenRLHF's GRPO use; scale=False keeps r - group mean (Dr. GRPO)."""
    g = group_view(r_B, group_size)
    centred = g - g.mean(1, keepdims=True)
    if scale:
        centred = centred / (jnp.std(g, axis=1, ddof=1, keepdims=True) + eps)
    return centred.reshape(-1)


def leave_one_out(r_B, group_size: int):
    """r_i - (1 / (G - 1)) sum_{j != i} r_j over each group of G."""
    g = group_view(r_B, group_size)
    others = (g.sum(1, keepdims=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


@register_estimator("gae", critic=True)
def gae_estimator(inp: AdvantageInputs, kl_coef, hp):
    """InstructGPT's PPO: token rewards r_t = score (last token) - beta * kl_t, GAE(gamma, lambda)
    against the value model, the advantages z-scored over the batch with ppo.whiten_advantages
    (and the rewards' spread normalised first with ppo.whiten_rewards)."""
    rewards = token_rewards(inp.score_BxN, inp.kl_BxN, inp.mask_BxN, kl_coef)
    if hp.whiten_rewards:
        rewards = masked_whiten(rewards, inp.mask_BxN, shift_mean=False)
    advantages, returns = gae(rewards, inp.values_BxN, inp.mask_BxN, hp.gamma, hp.lam)
    if hp.whiten_advantages:
        advantages = masked_whiten(advantages, inp.mask_BxN)
    return advantages, returns


@register_estimator("grpo", kl="loss", min_group=2)
def grpo_estimator(inp: AdvantageInputs, kl_coef, hp):
    """GRPO (Shao et al. 2024): A_i = (r_i - mean(r_group)) / (std(r_group) + eps) on every token
    of response i, r the score alone (the KL is a loss term: ppo.kl_coef with ppo.kl_estimator,
    k3 in the paper); no value model."""
    return per_token(group_normalised(inp.score_BxN.sum(1), inp.group_size), inp.mask_BxN), None


@register_estimator("dr_grpo", kl="loss", min_group=2)
def dr_grpo_estimator(inp: AdvantageInputs, kl_coef, hp):
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean(r_group), no division by the group's std
    (its length normalisation is the policy loss "dr_grpo")."""
    return per_token(group_normalised(inp.score_BxN.sum(1), inp.group_size, scale=False), inp.mask_BxN), None


@register_estimator("rloo", min_group=2)
def rloo_estimator(inp: AdvantageInputs, kl_coef, hp):
    """RLOO (Ahmadian et al. 2024): A_i = R_i - (1 / (k - 1)) sum_{j != i} R_j over the k = G
    responses of a prompt, R the sequence reward with the KL penalty folded in. The update is the
    clipped surrogate (as TRL's RLOO); with one epoch of one minibatch it is REINFORCE exactly."""
    return per_token(leave_one_out(sequence_return(inp, kl_coef), inp.group_size), inp.mask_BxN), None


@register_estimator("reinforce_pp")
def reinforce_pp_estimator(inp: AdvantageInputs, kl_coef, hp):
    """REINFORCE++ (Hu 2025): PPO's token rewards (score on the last token, -beta * kl_t on every
    token), returns G_t = sum_{t' >= t} gamma^(t' - t) r_t' with no critic, z-scored over the whole
    batch (the global batch: under a sharded jit the mean and std are over every shard)."""
    rewards = token_rewards(inp.score_BxN, inp.kl_BxN, inp.mask_BxN, kl_coef)
    returns, _ = gae(rewards, jnp.zeros_like(rewards), inp.mask_BxN, hp.gamma, 1.0)
    return masked_whiten(returns, inp.mask_BxN), None


@register_estimator("remax", greedy=True)
def remax_estimator(inp: AdvantageInputs, kl_coef, hp):
    """ReMax (Li et al. 2023): A_i = R_i - r(x_i, y_greedy), R_i the sampled response's reward with
    the KL penalty folded in, the baseline the reward of the policy's greedy response to the same
    prompt (the reward alone), one extra greedy rollout per prompt; no value model."""
    return per_token(sequence_return(inp, kl_coef) - inp.baseline_B, inp.mask_BxN), None


def overlong_penalty(length_B, max_len: int, buffer: int):
    """DAPO's soft overlong punishment: 0 up to max_len - buffer tokens, then falling linearly to
    -1 at max_len: ((max_len - buffer) - |y|) / buffer, clipped to [-1, 0]."""
    return jnp.clip(((max_len - buffer) - length_B) / buffer, -1.0, 0.0)


def dynamic_sampling_order(score_B, group_size: int):
    """DAPO's dynamic sampling, as a fixed-shape selection: the groups in the order they are kept,
    those whose rewards differ first (in sampling order), the all-equal ones (zero advantage)
    after; and whether each group in that order differs. Take the first `groups` of the order."""
    g = group_view(score_B, group_size)
    differs = jnp.max(g, 1) > jnp.min(g, 1)
    order = jnp.argsort(~differs, stable=True)
    return order, differs[order]

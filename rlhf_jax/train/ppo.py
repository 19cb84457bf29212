"""PPO for language models: rollout, scoring, GAE and the clipped update in one jitted step.

Models by role: the policy (from SFT) and the value model (from the RM) are trained; the
reference (frozen SFT) and the reward are constants. Every setting is a field of the
config's `ppo` block (`hp` below), read as it is: there is no second copy of the defaults.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.models import forward as F
from rlhf_jax.objectives import ppo as P
from rlhf_jax.objectives.lm import next_token_loss, token_logprobs
from rlhf_jax.rewards import Reward
from rlhf_jax.train.state import PPOState
from rlhf_jax.train.step import apply_gradients


class PPOModels(NamedTuple):
    """What is static about each role: graph definitions (the reference shares the policy's)
    and the reward."""
    policy: Any
    value: Any
    reward: Reward


class Episodes(NamedTuple):
    """The sampled episodes of one iteration: what host-side monitors (gold reward, latents) read."""
    prompt_BxP: jax.Array
    prompt_mask_BxP: jax.Array
    response_BxN: jax.Array
    response_mask_BxN: jax.Array


class Rollout(NamedTuple):
    """One PPO batch after scoring: sequences, old log-probs and values, advantages, returns."""
    tokens_BxT: jax.Array
    mask_BxT: jax.Array
    positions_BxT: jax.Array
    response_BxN: jax.Array
    response_mask_BxN: jax.Array
    logp_BxN: jax.Array
    values_BxN: jax.Array
    advantages_BxN: jax.Array
    returns_BxN: jax.Array


def sampling_config(hp, tokenizer, temperature: float | None = None, max_new_tokens: int | None = None
                    ) -> SamplingConfig:
    """The rollout's sampling settings (the `ppo` block and the tokenizer's EOS / pad ids)."""
    return SamplingConfig(max_new_tokens=max_new_tokens or hp.max_new_tokens,
                          temperature=hp.temperature if temperature is None else temperature,
                          top_k=hp.top_k, top_p=hp.top_p, eos_token_ids=(tokenizer.eos_token_id,),
                          pad_token_id=tokenizer.pad_token_id or 0, sampler=hp.sampler)


def rollout(hp, sampling: SamplingConfig, models: PPOModels, state: PPOState, constants, batch, rng):
    """Sample, score and compute advantages: (Rollout, metrics)."""
    gen = generate(models.policy, state.params["policy"], batch["prompt"], batch["prompt_mask"], rng, sampling)
    return score_rollout(hp, sampling, models, state, constants, batch["prompt"], batch["prompt_mask"],
                         gen.tokens_BxN, gen.mask_BxN)


def score_rollout(hp, sampling: SamplingConfig, models: PPOModels, state: PPOState, constants, prompt, prompt_mask,
                  resp, resp_mask):
    """The scoring phase: policy, reference, value and reward forward passes, rewards, GAE."""
    P_len, N = prompt.shape[1], resp.shape[1]
    seq = F.sequence_inputs(prompt, prompt_mask, resp, resp_mask)
    # log-probs at the sampling temperature, for the policy and the reference alike
    logp = F.response_logprobs(models.policy, state.params["policy"], seq, P_len, N, hp.temperature)
    ref_logp = F.response_logprobs(models.policy, constants["reference"], seq, P_len, N, hp.temperature)
    values = F.response_values(models.value, state.params["value"], seq, P_len, N)
    maskf = resp_mask.astype(jnp.float32)
    has_eos = jnp.any((resp == sampling.eos_token_ids[0]) & (resp_mask > 0), axis=1)
    score = models.reward.rewards(constants["reward"], seq[0], seq[1], P_len)  # [B] or [B, N]
    if score.ndim == 2:
        score = score * maskf
    if hp.missing_eos_penalty is not None:
        score = P.missing_eos_penalty(score, has_eos, maskf, hp.missing_eos_penalty)
    if hp.reward_clip:
        score = jnp.clip(score, -hp.reward_clip, hp.reward_clip)
    logp, ref_logp, values = logp * maskf, ref_logp * maskf, values * maskf
    kl = P.kl_estimate(logp, ref_logp, hp.kl_estimator) * maskf
    rewards = P.token_rewards(score, kl, maskf, state.kl_coef)
    if hp.whiten_rewards:
        rewards = P.masked_whiten(rewards, maskf, shift_mean=False)
    advantages, returns = P.ADVANTAGE_ESTIMATORS[hp.advantage_estimator](rewards, values, maskf, hp.gamma, hp.lam)
    if hp.whiten_advantages:
        advantages = P.masked_whiten(advantages, maskf)
    seq_kl_k1 = ((logp - ref_logp) * maskf).sum(1)
    seq_score = score.sum(1) if score.ndim == 2 else score
    data = Rollout(seq[0], seq[1], seq[2], resp, maskf, logp, values, advantages, returns)
    metrics = {
        "score": seq_score.mean(), "kl": seq_kl_k1.mean(), "kl_estimator_sum": kl.sum(1).mean(),
        "reward": (seq_score - state.kl_coef * kl.sum(1)).mean(), "response_length": maskf.sum(1).mean(),
        "frac_no_eos": 1.0 - has_eos.mean(), "kl_coef": state.kl_coef,
        "advantage_mean": P.masked_mean(advantages, maskf), "return_mean": P.masked_mean(returns, maskf),
        "value_mean": P.masked_mean(values, maskf), "negative_kl_frac": (seq_kl_k1 < 0).mean(),
    }
    return data, metrics


def ppo_loss(hp, models: PPOModels, params, mb: Rollout, ptx):
    """Clipped policy loss + vf_coef * clipped value loss - ent_coef * entropy (+ ptx_coef * LM loss)."""
    N = mb.response_BxN.shape[1]
    P_len = mb.tokens_BxT.shape[1] - N
    seq = (mb.tokens_BxT, mb.mask_BxT, mb.positions_BxT)
    logits = F.response_logits(models.policy, params["policy"], seq, P_len, N) / hp.temperature
    logp = token_logprobs(logits, mb.response_BxN)
    values = F.response_values(models.value, params["value"], seq, P_len, N)
    mask = mb.response_mask_BxN
    pg, pg_m = P.policy_loss(logp, mb.logp_BxN, mb.advantages_BxN, mask, hp.clip_eps)
    vf, vf_m = P.value_loss(values, mb.values_BxN, mb.returns_BxN, mask, hp.vf_clip)
    ent = P.entropy(logits, mask)
    loss = pg + hp.vf_coef * vf - hp.ent_coef * ent
    metrics = {"policy_loss": pg, "value_loss": vf, "entropy": ent, **pg_m, **vf_m}
    if hp.ptx_coef and ptx is not None:
        ptx_logits = F.forward(models.policy, params["policy"], ptx["tokens"], positions_BxT=ptx["positions"],
                               segment_ids_BxT=ptx["segment_ids"])
        ptx_loss, _ = next_token_loss(ptx_logits, ptx["tokens"], ptx["loss_mask"])
        loss = loss + hp.ptx_coef * ptx_loss
        metrics["ptx_loss"] = ptx_loss
    return loss, metrics


PTX_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def update(hp, models: PPOModels, tx, params, opt_state, data: Rollout, batch, rng):
    """The update phase: `epochs` x `minibatches` clipped-PPO (+ ptx) steps as one scan."""
    B = data.tokens_BxT.shape[0]
    mb_size = B // hp.minibatches
    ptx = {k: batch[k] for k in PTX_KEYS if k in batch} or None
    if ptx is not None:
        ptx = jax.tree.map(lambda x: x.reshape(hp.minibatches, -1, *x.shape[1:]), ptx)
    perms = jax.vmap(lambda k: jax.random.permutation(k, B))(jax.random.split(rng, hp.epochs))
    order = perms.reshape(hp.epochs * hp.minibatches, mb_size)

    def minibatch(carry, xs):
        params, opt_state = carry
        idx, j = xs
        mb = jax.tree.map(lambda x: x[idx], data)
        ptx_mb = jax.tree.map(lambda x: x[j], ptx) if ptx is not None else None
        (loss, m), grads = jax.value_and_grad(lambda p: ppo_loss(hp, models, p, mb, ptx_mb), has_aux=True)(params)
        params, opt_state, grad_norm = apply_gradients(tx, params, opt_state, grads)
        return (params, opt_state), {**m, "loss": loss, "grad_norm": grad_norm}

    mb_ids = jnp.tile(jnp.arange(hp.minibatches), hp.epochs)
    (params, opt_state), upd = jax.lax.scan(minibatch, (params, opt_state), (order, mb_ids))
    return params, opt_state, upd


def make_ppo_step(hp, sampling: SamplingConfig, models: PPOModels, tx, schedule):
    """(state, batch, rng, constants) -> (state, metrics, episodes): one PPO iteration on device.

    batch: prompt, prompt_mask [B, P] (+ ptx tokens/loss_mask/segment_ids/positions [Bp, T]).
    constants: {"reference": params, "reward": params}, frozen.
    """
    def step(state: PPOState, batch, rng, constants):
        rng_gen, rng_perm = jax.random.split(rng)
        data, metrics = rollout(hp, sampling, models, state, constants, batch, rng_gen)
        B = data.tokens_BxT.shape[0]
        params, opt_state, upd = update(hp, models, tx, state.params, state.opt_state, data, batch, rng_perm)
        kl_coef = state.kl_coef
        if hp.adaptive_kl:
            kl_coef = P.adaptive_kl_update(kl_coef, metrics["kl"], hp.kl_target, hp.kl_horizon, B)
        ema = state.ema
        if hp.ema_decay:
            ema = jax.tree.map(lambda e, p: hp.ema_decay * e + (1 - hp.ema_decay) * p, ema, params["policy"])
        metrics = {**metrics, **{k: v.mean() for k, v in upd.items()}, "ratio_max": upd["ratio_max"].max(),
                   "lr": schedule(state.step)}
        episodes = Episodes(batch["prompt"], batch["prompt_mask"], data.response_BxN, data.response_mask_BxN)
        return PPOState(params, opt_state, state.step + 1, kl_coef, ema), metrics, episodes

    return step


def sequence_kl(graphdef, policy_params, ref_params, prompt, prompt_mask, response, response_mask, temperature):
    """Per-sequence sum of log pi - log pi_ref over the response (the k1 estimate of KL), with
    both log-probs at `temperature`: the temperature the response was sampled at."""
    seq = F.sequence_inputs(prompt, prompt_mask, response, response_mask)
    P_len, N = prompt.shape[1], response.shape[1]
    logp = F.response_logprobs(graphdef, policy_params, seq, P_len, N, temperature)
    ref = F.response_logprobs(graphdef, ref_params, seq, P_len, N, temperature)
    return ((logp - ref) * response_mask).sum(1)

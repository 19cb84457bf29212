"""PPO for language models: rollout, scoring and advantages, and the iteration (with the update phase
of `train.ppo_update`) as one jitted step.

Models by role: the policy (from SFT) and, when the advantage estimator needs a critic (GAE),
the value model (from the RM) are trained; the reference (frozen SFT) and the reward are
constants. The critic-free estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++, ReMax) build no value
model: `PPOModels.value` is None and the trained params are {"policy"} alone.

Batch semantics: `ppo.batch_size` is the number of sampled responses (episodes) per iteration,
whatever the estimator; they answer batch_size / `ppo.group_size` prompts, G responses each,
a group's rows adjacent. DAPO's dynamic sampling (`ppo.dynamic_sampling` = F > 0) samples F
times as many groups and keeps batch_size / G of them, those whose rewards differ first.
Every setting is a field of the config's `ppo` block (`hp` below), read as it is: there is no
second copy of the defaults.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.generate import SamplingConfig, ends_with_eos, generate
from rlhf_jax.models import forward as F
from rlhf_jax.objectives import ppo as P
from rlhf_jax.rewards import Reward
from rlhf_jax.train.ppo_update import (  # noqa: F401  (the update phase, named here for callers of train.ppo)
    PTX_KEYS, Outputs, minibatch_grads, one_pass, one_pass_update, ppo_loss, ppo_terms, ptx_loss,
    trained_outputs, update)
from rlhf_jax.train.state import PPOState


class PPOModels(NamedTuple):
    """What is static about each role: graph definitions (the reference shares the policy's),
    the reward, and the LoRA settings when the policy and value model train adapters (then the
    trainable params are `lora.split` parts over frozen bases: the reference, which is the
    policy with its adapters off, and `constants["value_base"]`)."""
    policy: Any
    value: Any  # None: no value model (a critic-free estimator)
    reward: Reward
    lora: Any = None

    def full(self, params, constants):
        """{"policy"[, "value"]}: the weights each model runs with."""
        if self.lora is None:
            return params
        from rlhf_jax.train import lora as lora_lib
        out = {"policy": lora_lib.view(constants["reference"], params["policy"], self.lora)}
        if "value" in params:
            out["value"] = lora_lib.view(constants["value_base"], params["value"], self.lora)
        return out

    def reference(self, constants):
        """The reference's weights: the frozen SFT policy, which with LoRA is the policy's own
        base with the adapters off (an int8 base, `lora_int8`, dequantised inside each layer), so that at
        step 0 the policy equals its reference and the KL penalty starts at 0."""
        from rlhf_jax.train import lora as lora_lib
        return lora_lib.lowrank_base(constants["reference"])


class Episodes(NamedTuple):
    """The sampled episodes of one iteration: what host-side monitors (gold reward, latents) read."""
    prompt_BxP: jax.Array
    prompt_mask_BxP: jax.Array
    response_BxN: jax.Array
    response_mask_BxN: jax.Array


class Rollout(NamedTuple):
    """One PPO batch after scoring: sequences, old log-probs and values, advantages, returns
    (values and returns None without a critic); the reference's log-probs when the KL is a loss
    term (GRPO), and the prompts the episodes answer."""
    tokens_BxT: jax.Array
    mask_BxT: jax.Array
    positions_BxT: jax.Array
    response_BxN: jax.Array
    response_mask_BxN: jax.Array
    logp_BxN: jax.Array
    values_BxN: jax.Array | None
    advantages_BxN: jax.Array
    returns_BxN: jax.Array | None
    ref_logp_BxN: jax.Array | None = None
    prompt_BxP: jax.Array | None = None
    prompt_mask_BxP: jax.Array | None = None


def sampling_config(sampling, tokenizer, temperature: float, max_new_tokens: int | None = None) -> SamplingConfig:
    """How to sample a policy: the config's `sampling` block (max_new_tokens, top_k, top_p, sampler),
    the use's temperature (PPO's rollouts: ppo.temperature) and the tokenizer's EOS / pad ids."""
    return SamplingConfig(max_new_tokens=max_new_tokens or sampling.max_new_tokens, temperature=temperature,
                          top_k=sampling.top_k, top_p=sampling.top_p, eos_token_ids=(tokenizer.eos_token_id,),
                          pad_token_id=tokenizer.pad_token_id or 0, sampler=sampling.sampler)


def estimator(hp) -> P.Estimator:
    return P.ADVANTAGE_ESTIMATORS[hp.advantage_estimator]


def rollout(hp, sampling: SamplingConfig, models: PPOModels, state: PPOState, constants, batch, rng, trained=None):
    """Sample G = ppo.group_size responses to each prompt of the batch (adjacent rows), score them
    and compute advantages: (Rollout, metrics). ReMax also decodes each prompt greedily once and
    scores that response as its baseline. `trained`: as in `score_rollout`."""
    G = hp.group_size
    repeat = (lambda x: jnp.repeat(x, G, axis=0)) if G > 1 else (lambda x: x)
    policy = models.full(state.params, constants)["policy"]
    prompt, prompt_mask = repeat(batch["prompt"]), repeat(batch["prompt_mask"])
    gen = generate(models.policy, policy, prompt, prompt_mask, rng, sampling)
    baseline = None
    if estimator(hp).greedy:
        greedy = generate(models.policy, policy, batch["prompt"], batch["prompt_mask"], jax.random.fold_in(rng, 1),
                          dataclasses.replace(sampling, temperature=0.0))
        score, _ = sequence_scores(hp, sampling, models, constants, batch["prompt"], batch["prompt_mask"],
                                   greedy.tokens_BxN, greedy.mask_BxN)
        baseline = repeat(P.per_sequence(score))
    return score_rollout(hp, sampling, models, state, constants, prompt, prompt_mask, gen.tokens_BxN, gen.mask_BxN,
                         baseline, trained)


def sequence_scores(hp, sampling: SamplingConfig, models: PPOModels, constants, prompt, prompt_mask, resp, resp_mask):
    """(score [B] or per-token [B, N], has_eos [B]): the reward of each response, with the
    missing-EOS penalty, DAPO's overlong penalty and the clip the config sets."""
    P_len = prompt.shape[1]
    seq = F.sequence_inputs(prompt, prompt_mask, resp, resp_mask)
    maskf = resp_mask.astype(jnp.float32)
    has_eos = ends_with_eos(resp, resp_mask, sampling)
    score = models.reward.rewards(constants["reward"], seq[0], seq[1], P_len)  # [B] or [B, N]
    if score.ndim == 2:
        score = score * maskf
    if hp.missing_eos_penalty is not None:
        score = P.missing_eos_penalty(score, has_eos, maskf, hp.missing_eos_penalty)
    if hp.overlong_buffer:
        penalty = P.overlong_penalty(maskf.sum(1), resp.shape[1], hp.overlong_buffer)
        score = score + (penalty if score.ndim == 1 else penalty[:, None] * P.at_last_token(maskf))
    if hp.reward_clip:
        score = jnp.clip(score, -hp.reward_clip, hp.reward_clip)
    return score, has_eos


def keep_groups(hp, score, arrays: dict):
    """DAPO's dynamic sampling: of the F x (B / G) sampled groups keep B / G, those whose rewards
    differ first; a kept group whose rewards are all equal (too few differed) is masked out of the
    loss. Returns (score, arrays, live_B, metrics)."""
    G = hp.group_size
    seq_score = P.per_sequence(score)
    groups = seq_score.shape[0] // G // hp.dynamic_sampling
    order, differs = P.dynamic_sampling_order(seq_score, G)
    rows = (order[:groups, None] * G + jnp.arange(G)).reshape(-1)
    live = jnp.repeat(differs[:groups], G).astype(jnp.float32)
    take = lambda x: x[rows]
    metrics = {"groups_differing": differs.mean(), "batch_filled": differs[:groups].mean()}
    return take(score), jax.tree.map(take, arrays), live, metrics


def score_rollout(hp, sampling: SamplingConfig, models: PPOModels, state: PPOState, constants, prompt, prompt_mask,
                  resp, resp_mask, baseline=None, trained=None):
    """The scoring phase: the reward, then policy, reference (and value) forward passes, the KL,
    and the registered advantage estimator. `trained` (optional): seq, P_len, N -> the trained
    models' `Outputs` on the batch, used for the policy's log-probs and the values instead of
    forward passes of their own (the one-pass update's forward, `make_ppo_step`)."""
    est = estimator(hp)
    score, has_eos = sequence_scores(hp, sampling, models, constants, prompt, prompt_mask, resp, resp_mask)
    extra = {}
    if hp.dynamic_sampling:
        score, kept, live, extra = keep_groups(hp, score, {"prompt": prompt, "prompt_mask": prompt_mask, "resp": resp,
                                                           "resp_mask": resp_mask, "has_eos": has_eos})
        prompt, prompt_mask, resp, has_eos = kept["prompt"], kept["prompt_mask"], kept["resp"], kept["has_eos"]
        resp_mask = kept["resp_mask"] * live[:, None].astype(kept["resp_mask"].dtype)
    P_len, N = prompt.shape[1], resp.shape[1]
    seq = F.sequence_inputs(prompt, prompt_mask, resp, resp_mask)
    # log-probs at the sampling temperature, for the policy and the reference alike
    maskf = resp_mask.astype(jnp.float32)
    if trained is None:
        full = models.full(state.params, constants)
        logp = F.response_logprobs(models.policy, full["policy"], seq, P_len, N, hp.temperature)
        values = F.response_values(models.value, full["value"], seq, P_len, N) * maskf if est.critic else None
    else:
        out = trained(seq, P_len, N)
        logp, values = out.logp_BxN, out.values_BxN * maskf if est.critic else None
    ref_logp = F.response_logprobs(models.policy, models.reference(constants), seq, P_len, N, hp.temperature)
    logp, ref_logp = logp * maskf, ref_logp * maskf
    kl = P.kl_estimate(logp, ref_logp, hp.kl_estimator) * maskf
    inputs = P.AdvantageInputs(P.place(score, maskf), kl, maskf, values, baseline, hp.group_size)
    advantages, returns = est.fn(inputs, state.kl_coef, hp)
    seq_kl_k1 = ((logp - ref_logp) * maskf).sum(1)
    seq_score = P.per_sequence(score)
    data = Rollout(seq[0], seq[1], seq[2], resp, maskf, logp, values, advantages, returns,
                   ref_logp if est.kl == "loss" else None, prompt, prompt_mask)
    in_reward = state.kl_coef if est.kl == "reward" else 0.0
    metrics = {
        "score": seq_score.mean(), "kl": seq_kl_k1.mean(), "kl_estimator_sum": kl.sum(1).mean(),
        "reward": (seq_score - in_reward * kl.sum(1)).mean(), "response_length": maskf.sum(1).mean(),
        "frac_no_eos": 1.0 - has_eos.mean(), "kl_coef": state.kl_coef,
        "advantage_mean": P.masked_mean(advantages, maskf), "negative_kl_frac": (seq_kl_k1 < 0).mean(), **extra,
    }
    if est.critic:
        metrics.update(return_mean=P.masked_mean(returns, maskf), value_mean=P.masked_mean(values, maskf))
    if baseline is not None:
        metrics["baseline_mean"] = baseline.mean()
    return data, metrics


def make_ppo_step(hp, sampling: SamplingConfig, models: PPOModels, tx, schedule, reuse_forward: bool | None = None):
    """(state, batch, rng, constants) -> (state, metrics, episodes): one PPO iteration on device.

    batch: prompt, prompt_mask [B, P] (+ ptx tokens/loss_mask/segment_ids/positions [Bp, T]).
    constants: {"reference": params, "reward": params (+ "value_base" with LoRA)}, frozen.
    `reuse_forward` (default: `one_pass(hp)`, the only settings it may be on): the update takes its
    gradient through the scoring's forward pass (`one_pass_update`) instead of a second one.
    """
    reuse = one_pass(hp) if reuse_forward is None else reuse_forward
    if reuse and not one_pass(hp):
        raise ValueError("reuse_forward needs ppo.epochs = ppo.minibatches = ppo.grad_accum = 1: later minibatches "
                         "and epochs run at updated parameters")

    def step(state: PPOState, batch, rng, constants):
        rng_gen, rng_perm = jax.random.split(rng)
        if reuse:
            pulled = {}

            def trained(seq, P_len, N):  # the scoring's forward pass, kept with its pullback for the update
                out, pulled["vjp"] = jax.vjp(lambda p: trained_outputs(hp, models, p, seq, P_len, N, constants),
                                             state.params)
                pulled["out"] = out
                return out
            data, metrics = rollout(hp, sampling, models, state, constants, batch, rng_gen, trained)
            params, opt_state, upd = one_pass_update(hp, models, tx, state.params, state.opt_state, data,
                                                     pulled["out"], pulled["vjp"], batch, constants)
        else:
            data, metrics = rollout(hp, sampling, models, state, constants, batch, rng_gen)
            params, opt_state, upd = update(hp, models, tx, state.params, state.opt_state, data, batch, rng_perm,
                                            constants)
        B = data.tokens_BxT.shape[0]
        kl_coef = state.kl_coef
        if hp.adaptive_kl:
            kl_coef = P.adaptive_kl_update(kl_coef, metrics["kl"], hp.kl_target, hp.kl_horizon, B)
        ema = state.ema
        if hp.ema_decay:
            ema = jax.tree.map(lambda e, p: hp.ema_decay * e + (1 - hp.ema_decay) * p, ema, params["policy"])
        metrics = {**metrics, **{k: v.mean() for k, v in upd.items()}, "ratio_max": upd["ratio_max"].max(),
                   "lr": schedule(state.step)}
        episodes = Episodes(data.prompt_BxP, data.prompt_mask_BxP, data.response_BxN, data.response_mask_BxN)
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

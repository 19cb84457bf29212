"""PPO for language models: rollout, scoring, advantages and the clipped update in one jitted step.

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
from rlhf_jax.objectives.lm import masked_nll, next_token_loss, token_entropy, token_logprobs
from rlhf_jax.rewards import Reward
from rlhf_jax.train.state import PPOState
from rlhf_jax.train.step import apply_gradients, combine_metrics, minibatch_order, split_microbatches


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


class Outputs(NamedTuple):
    """What the PPO loss reads from the trained models on a batch: the policy's log-probs of the
    response tokens at the sampling temperature, their entropies, the value model's values (None
    without a critic)."""
    logp_BxN: jax.Array
    entropy_BxN: jax.Array
    values_BxN: jax.Array | None


def trained_outputs(hp, models: PPOModels, params, seq, P_len: int, N: int, constants=None) -> Outputs:
    """`Outputs` of the trained params (LoRA: over their frozen bases in `constants`) on sequences
    `seq` = (tokens, mask, positions) whose responses are the N columns after P_len; chunked (no
    B x T x V logits) when the policy's `logits_chunk` > 0."""
    full = models.full(params, constants)
    chunked = F.model_config(models.policy, full["policy"]).logits_chunk > 0
    if chunked:
        logp, entropy_BxN = F.response_logprobs(models.policy, full["policy"], seq, P_len, N, hp.temperature,
                                                with_entropy=True)
    else:
        logits = F.response_logits(models.policy, full["policy"], seq, P_len, N) / hp.temperature
        logp, entropy_BxN = token_logprobs(logits, seq[0][:, P_len:P_len + N]), token_entropy(logits)
    values = F.response_values(models.value, full["value"], seq, P_len, N) if "value" in full else None
    return Outputs(logp, entropy_BxN, values)


def ppo_terms(hp, out: Outputs, mb: Rollout):
    """(loss, metrics) of the PPO terms on the trained models' outputs `out` for the rollout rows
    `mb`: the registered policy loss + vf_coef * clipped value loss (with a critic) + kl_coef * KL
    to the reference (estimators that put the KL in the loss, GRPO) - ent_coef * entropy."""
    mask = mb.response_mask_BxN
    pg, pg_m = P.policy_loss(out.logp_BxN, mb.logp_BxN, mb.advantages_BxN, mask, hp.clip_eps, hp.clip_eps_high,
                             hp.policy_loss)
    ent = P.masked_entropy(out.entropy_BxN, mask)
    loss = pg - hp.ent_coef * ent
    metrics = {"policy_loss": pg, "entropy": ent, **pg_m}
    if out.values_BxN is not None:
        vf, vf_m = P.value_loss(out.values_BxN, mb.values_BxN, mb.returns_BxN, mask, hp.vf_clip)
        loss = loss + hp.vf_coef * vf
        metrics.update(value_loss=vf, **vf_m)
    if mb.ref_logp_BxN is not None:  # the KL as a loss term, normalised as the policy loss is
        kl_loss = P.aggregate(P.kl_estimate(out.logp_BxN, mb.ref_logp_BxN, hp.kl_estimator), mask,
                              P.POLICY_LOSSES[hp.policy_loss].aggregate)
        loss = loss + hp.kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss
    return loss, metrics


def ptx_loss(models: PPOModels, policy_params, ptx):
    """InstructGPT's pretraining-mix term: the policy's token NLL on the ptx batch (policy_params:
    the weights the policy runs with)."""
    if F.model_config(models.policy, policy_params).logits_chunk > 0:
        logp = F.shifted_logprobs(models.policy, policy_params, ptx["tokens"], None,
                                  positions_BxT=ptx["positions"], segment_ids_BxT=ptx["segment_ids"])
        return masked_nll(logp, ptx["loss_mask"])[0]
    logits = F.forward(models.policy, policy_params, ptx["tokens"], positions_BxT=ptx["positions"],
                       segment_ids_BxT=ptx["segment_ids"])
    return next_token_loss(logits, ptx["tokens"], ptx["loss_mask"])[0]


def ppo_loss(hp, models: PPOModels, params, mb: Rollout, ptx, scales=None, constants=None):
    """The registered policy loss (clipped surrogate) + vf_coef * clipped value loss (with a
    critic) + kl_coef * KL to the reference (estimators that put the KL in the loss, GRPO) -
    ent_coef * entropy (+ ptx_coef * LM loss).

    With the policy's `logits_chunk` > 0 the log-probs and entropy come chunk by chunk from the
    final hidden states (`forward.response_logprobs`), never from B x T x V logits. `scales` =
    (PPO terms' weight, ptx term's weight) multiplies the two parts (gradient accumulation).
    """
    N = mb.response_BxN.shape[1]
    P_len = mb.tokens_BxT.shape[1] - N
    seq = (mb.tokens_BxT, mb.mask_BxT, mb.positions_BxT)
    loss, metrics = ppo_terms(hp, trained_outputs(hp, models, params, seq, P_len, N, constants), mb)
    if scales is not None:
        loss = loss * scales[0]
    if hp.ptx_coef and ptx is not None:
        ptx_l = ptx_loss(models, models.full(params, constants)["policy"], ptx)
        loss = loss + (hp.ptx_coef * ptx_l if scales is None else hp.ptx_coef * ptx_l * scales[1])
        metrics["ptx_loss"] = ptx_l
    return loss, metrics


def minibatch_grads(hp, models: PPOModels, params, mb: Rollout, ptx, constants=None):
    """((loss, metrics), grads) of one minibatch; with `hp.grad_accum` = M > 1, accumulated over M
    slices in a scan (one slice's activations at a time), each slice's PPO terms weighted by its
    share of what the policy loss normalises by (response tokens, responses or rows:
    `objectives.ppo.aggregate_weight`) and its ptx term by its share of ptx tokens: the same
    gradient as the whole minibatch for the policy and KL terms (the value and entropy terms,
    token means, are exact with the token-normalised losses, ppo and dapo). Metrics: weighted
    means, `ratio_max` the max."""
    M = hp.grad_accum
    if M == 1:
        return jax.value_and_grad(lambda p: ppo_loss(hp, models, p, mb, ptx, constants=constants),
                                  has_aux=True)(params)
    slices = split_microbatches(mb, M)
    ptx_slices = split_microbatches(ptx, M) if ptx is not None else None
    how = P.POLICY_LOSSES[hp.policy_loss].aggregate
    tokens_M = jax.vmap(lambda m: P.aggregate_weight(m, how))(slices.response_mask_BxN)
    total = jnp.maximum(tokens_M.sum(), 1.0)
    ptx_M = (ptx_slices["loss_mask"][:, :, 1:].astype(jnp.float32).sum((1, 2)) if ptx is not None
             else jnp.zeros((M,), jnp.float32))
    ptx_total = jnp.maximum(ptx_M.sum(), 1.0)

    def one(grads_acc, xs):
        s, ptx_s, w, u = xs
        (loss, m), grads = jax.value_and_grad(
            lambda p: ppo_loss(hp, models, p, s, ptx_s, scales=(w / total, u / ptx_total), constants=constants),
            has_aux=True)(params)
        return jax.tree.map(jnp.add, grads_acc, grads), (loss, m)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (loss_M, metrics_M) = jax.lax.scan(one, zeros, (slices, ptx_slices, tokens_M, ptx_M))
    metrics = combine_metrics(metrics_M, tokens_M, total)
    if "ptx_loss" in metrics_M:
        metrics["ptx_loss"] = jnp.dot(ptx_M, metrics_M["ptx_loss"]) / ptx_total
    return (loss_M.sum(), metrics), grads


PTX_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def update(hp, models: PPOModels, tx, params, opt_state, data: Rollout, batch, rng, constants=None):
    """The update phase: `epochs` x `minibatches` clipped-PPO (+ ptx) steps as one scan."""
    B = data.tokens_BxT.shape[0]
    ptx = {k: batch[k] for k in PTX_KEYS if k in batch} or None
    if ptx is not None:
        ptx = jax.tree.map(lambda x: x.reshape(hp.minibatches, -1, *x.shape[1:]), ptx)
    order = minibatch_order(rng, B, hp.epochs, hp.minibatches)

    def minibatch(carry, xs):
        params, opt_state = carry
        idx, j = xs
        mb = jax.tree.map(lambda x: x[idx], data)
        ptx_mb = jax.tree.map(lambda x: x[j], ptx) if ptx is not None else None
        (loss, m), grads = minibatch_grads(hp, models, params, mb, ptx_mb, constants)
        params, opt_state, grad_norm = apply_gradients(tx, params, opt_state, grads)
        return (params, opt_state), {**m, "loss": loss, "grad_norm": grad_norm}

    mb_ids = jnp.tile(jnp.arange(hp.minibatches), hp.epochs)
    (params, opt_state), upd = jax.lax.scan(minibatch, (params, opt_state), (order, mb_ids))
    return params, opt_state, upd


def one_pass(hp) -> bool:
    """Whether the update is one gradient step on the whole batch (1 epoch of 1 minibatch, no
    accumulation), taken at the parameters that sampled it: then its forward pass is the scoring's."""
    return hp.epochs == 1 and hp.minibatches == 1 and hp.grad_accum == 1


def one_pass_update(hp, models: PPOModels, tx, params, opt_state, data: Rollout, outputs: Outputs, vjp_fn, batch,
                    constants=None):
    """`update` for `one_pass` settings, from the scoring's forward pass: `outputs` = the trained
    models' `Outputs` on the rollout at `params`, `vjp_fn` its pullback (`jax.vjp`). The gradient
    of the PPO terms is the pullback of their gradient in the outputs, which is the gradient of
    `ppo_loss` on the same rows (the chain rule; the rows' order is the only difference, and a
    mean does not depend on it): one forward pass of the policy and the value model an iteration
    instead of two. The ptx term, on other rows, is differentiated on its own and added."""
    (loss, metrics), g_out = jax.value_and_grad(lambda o: ppo_terms(hp, o, data), has_aux=True)(outputs)
    (grads,) = vjp_fn(g_out)
    ptx = {k: batch[k] for k in PTX_KEYS if k in batch} or None
    if hp.ptx_coef and ptx is not None:
        ptx_l, ptx_g = jax.value_and_grad(lambda p: ptx_loss(models, models.full(p, constants)["policy"], ptx))(params)
        grads = jax.tree.map(lambda a, b: a + hp.ptx_coef * b, grads, ptx_g)
        loss, metrics = loss + hp.ptx_coef * ptx_l, {**metrics, "ptx_loss": ptx_l}
    params, opt_state, grad_norm = apply_gradients(tx, params, opt_state, grads)
    return params, opt_state, {**metrics, "loss": loss, "grad_norm": grad_norm}


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

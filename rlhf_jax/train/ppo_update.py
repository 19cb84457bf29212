"""PPO's update phase: the loss on the trained models' outputs and the gradient steps over a scored
rollout (`train.ppo` samples and scores it, and runs the iteration as one jitted step).

Two ways to take the update: `update`, `epochs` x `minibatches` steps as a scan, each minibatch's
gradient through a forward pass of its own; and `one_pass_update`, for one epoch of one minibatch,
the gradient pulled back through the scoring's forward pass (the same gradient, one forward pass
of the policy and the value model fewer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.models import forward as F
from rlhf_jax.objectives import ppo as P
from rlhf_jax.objectives.lm import masked_nll, next_token_loss
from rlhf_jax.train.step import apply_gradients, combine_metrics, minibatch_order, split_microbatches

if TYPE_CHECKING:  # annotations only: train.ppo imports this module
    from rlhf_jax.train.ppo import PPOModels, Rollout


class Outputs(NamedTuple):
    """What the PPO loss reads from the trained models on a batch: the policy's log-probs of the
    response tokens at the sampling temperature, their entropies, the value model's values (None
    without a critic)."""
    logp_BxN: jax.Array
    entropy_BxN: jax.Array
    values_BxN: jax.Array | None


def trained_outputs(hp, models: PPOModels, params, seq, P_len: int, N: int, constants=None) -> Outputs:
    """`Outputs` of the trained params (LoRA: over their frozen bases in `constants`) on sequences
    `seq` = (tokens, mask, positions) whose responses are the N columns after P_len; the LM head
    at the response's columns only (`forward.response_logprobs`)."""
    full = models.full(params, constants)
    logp, entropy_BxN = F.response_logprobs(models.policy, full["policy"], seq, P_len, N, hp.temperature,
                                            with_entropy=True)
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

    The log-probs and entropy come from the final hidden states at the response's columns
    (`forward.response_logprobs`: B x N x V logits, chunk by chunk with the policy's
    `logits_chunk` > 0), never from B x T x V logits. `scales` =
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


def ptx_batch(batch) -> dict | None:
    """The pretraining-mix rows a PPO batch carries (`PTX_KEYS`), or None without them."""
    return {k: batch[k] for k in PTX_KEYS if k in batch} or None


def update(hp, models: PPOModels, tx, params, opt_state, data: Rollout, batch, rng, constants=None):
    """The update phase: `epochs` x `minibatches` clipped-PPO (+ ptx) steps as one scan."""
    B = data.tokens_BxT.shape[0]
    ptx = ptx_batch(batch)
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
    ptx = ptx_batch(batch)
    if hp.ptx_coef and ptx is not None:
        ptx_l, ptx_g = jax.value_and_grad(lambda p: ptx_loss(models, models.full(p, constants)["policy"], ptx))(params)
        grads = jax.tree.map(lambda a, b: a + hp.ptx_coef * b, grads, ptx_g)
        loss, metrics = loss + hp.ptx_coef * ptx_l, {**metrics, "ptx_loss": ptx_l}
    params, opt_state, grad_norm = apply_gradients(tx, params, opt_state, grads)
    return params, opt_state, {**metrics, "loss": loss, "grad_norm": grad_norm}

"""Preference optimisation (DPO family, SimPO, ORPO) as a loss for the generic step, over
ranking batches (tokens/mask/loss_mask [B, K, T], ranks, valid).

A loss that needs a reference reads its summed log-probs either from the batch (`ref_logp`
[B, K], computed once by `reference_logprobs` before training) or from frozen reference
weights passed as the step's constant; reference-free losses (SimPO, ORPO) need neither.
`hp` is the config's `dpo` block (loss, beta, label_smoothing, logprob_reduction, ...).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import signals
from rlhf_jax.data.batches import evaluate_all
from rlhf_jax.data.shared_prompt import continuation_batches
from rlhf_jax.models.forward import packed_logprobs, sequence_logprobs
from rlhf_jax.objectives.preference import PREFERENCE_LOSSES, SequenceLogprobs, preference_loss
from rlhf_jax.objectives.reward import pair_matrix
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train.rm import ranked_prompts
from rlhf_jax.train.step import make_train_step


def response_logprobs(graphdef, params, batch) -> SequenceLogprobs:
    """Summed log-probs and token counts [B, K] of every response (loss_mask marks its tokens), or
    of a batch packed with every prompt once (`shared_prompt.packed_batch`: each response token
    read from the slot that predicts it, summed by its owner)."""
    if "parent_ids" in batch:
        return _packed_logprobs(graphdef, params, batch)
    B, K, T = batch["tokens"].shape
    flat = lambda key: batch[key].reshape(B * K, T)
    total, count = sequence_logprobs(graphdef, params, flat("tokens"), flat("mask"), flat("loss_mask"))
    return SequenceLogprobs(total.reshape(B, K), count.reshape(B, K))


def _packed_logprobs(graphdef, params, batch) -> SequenceLogprobs:
    B, K = batch["ranks"].shape
    logp_RxL = packed_logprobs(graphdef, params, batch, batch["pred_col"], batch["tokens"])
    owner, counted = batch["owner"].clip(0).ravel(), (batch["owner"] >= 0).astype(jnp.float32).ravel()
    total = jax.ops.segment_sum(logp_RxL.ravel() * counted, owner, num_segments=B * K)
    count = jax.ops.segment_sum(counted, owner, num_segments=B * K)
    return SequenceLogprobs(total.reshape(B, K), count.reshape(B, K))


def needs_reference(hp) -> bool:
    return PREFERENCE_LOSSES[hp.loss].needs_reference


def _reference(graphdef, hp, batch, policy: SequenceLogprobs, ref_params):
    if not needs_reference(hp):
        return None
    if ref_params is None:  # cached: same tokens, so the policy's counts are the reference's
        return SequenceLogprobs(batch["ref_logp"], policy.count_BxK)
    return jax.lax.stop_gradient(response_logprobs(graphdef, lora_lib.lowrank_base(ref_params), batch))


def dpo_loss(graphdef, hp):
    """loss_fn(params, batch, rng, ref_params or None) for the generic step."""
    def loss_fn(params, batch, rng, ref_params):
        policy = response_logprobs(graphdef, params, batch)
        reference = _reference(graphdef, hp, batch, policy, ref_params)
        return preference_loss(hp.loss, policy, reference, batch["ranks"], batch["valid"], hp)

    return loss_fn


def make_dpo_step(graphdef, tx, schedule, hp, lora=None):
    """(state, batch, rng[, ref_params]) -> (state, metrics); `hp.grad_accum` > 1 accumulates the
    gradient over that many slices of the batch, each weighted by its ranked prompts; with `lora`
    the constants are (frozen base, ref_params or None)."""
    return make_train_step(dpo_loss(graphdef, hp), tx, schedule, hp.grad_accum, ranked_prompts, lora=lora)


def reference_logprobs(graphdef, ref_params, arrays, batch_size: int) -> np.ndarray:
    """The reference's [N, K] summed response log-probs over a whole dataset, computed once, each
    prompt once (`shared_prompt.continuation_batches`, `batch_size` packed rows a call; empty
    slots 0)."""
    tokens, mask, loss = (np.asarray(arrays[k]) for k in ("tokens", "mask", "loss_mask"))
    N, K, _ = tokens.shape
    length, response = mask.sum(-1), loss.sum(-1)
    prompts = [tokens[i, j, :length[i, j] - response[i, j]].tolist() for i in range(N) for j in range(K)]
    responses = [tokens[i, j, length[i, j] - response[i, j]:length[i, j]].tolist() for i in range(N) for j in range(K)]
    fn = jax.jit(lambda p, rows, col, target: packed_logprobs(graphdef, lora_lib.lowrank_base(p), rows, col, target))
    out = np.zeros(N * K)
    for packed in continuation_batches(prompts, responses, batch_size):
        signals.check("reference")
        logp = np.asarray(fn(ref_params, packed.rows, packed.col, packed.target), np.float64)
        np.add.at(out, packed.index[packed.index >= 0], logp[packed.index >= 0])
    return out.reshape(N, K).astype(np.float32)


def held_out_metrics(graphdef, params, arrays, batch_size: int, hp) -> dict[str, float]:
    """Loss, reward accuracy, margin and implicit rewards on held-out rankings (pair-weighted);
    `arrays` hold `ref_logp` when the loss needs a reference."""
    keys = ("reward_chosen", "reward_rejected", "reward_accuracy", "reward_margin")

    @jax.jit
    def evaluate(p, b):
        policy = response_logprobs(graphdef, p, b)
        loss, m = preference_loss(hp.loss, policy, _reference(graphdef, hp, b, policy, None), b["ranks"],
                                  b["valid"], hp)
        prompts = (pair_matrix(b["ranks"], b["valid"]).sum((1, 2)) > 0).sum()
        return {"loss": loss, "prompts": prompts, "pairs": m["pairs"], **{k: m[k] * m["pairs"] for k in keys}}

    out = evaluate_all(evaluate, params, arrays, batch_size)
    pairs = max(float(np.sum(out["pairs"])), 1.0)
    return {"val_loss": float(np.sum(out["loss"] * out["prompts"]) / max(float(np.sum(out["prompts"])), 1.0)),
            **{f"val_{k}": float(np.sum(out[k])) / pairs for k in keys}}

"""DPO as a pure, jitted step over ranking batches (tokens/mask/loss_mask [B, K, T], ranks, valid).

The reference log-probs are either cached in the batch (`ref_logp` [B, K], computed once by
`reference_logprobs` before training) or computed on the fly from frozen reference weights
passed as the step's constant.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.data.batches import eval_batches
from rlhf_jax.models.model import apply
from rlhf_jax.objectives.dpo import dpo_loss, sequence_logprobs
from rlhf_jax.objectives.lm import token_logprobs
from rlhf_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    loss: str = "dpo"  # dpo | cdpo | robust | ipo
    label_smoothing: float = 0.0  # eps of cdpo / robust
    logprob_reduction: str = "sum"  # sum (official) | mean (per token)
    cache_reference: bool = True


def response_logprobs(graphdef, params, batch, reduction: str = "sum"):
    """[B, K] sequence log-probs of every response (loss_mask marks response tokens)."""
    B, K, T = batch["tokens"].shape
    tokens, mask = batch["tokens"].reshape(B * K, T), batch["mask"].reshape(B * K, T)
    positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    logits, _ = apply(graphdef, params, tokens, positions_BxT=positions, segment_ids_BxT=mask)
    logp = token_logprobs(logits[:, :-1], tokens[:, 1:])
    return sequence_logprobs(logp, batch["loss_mask"].reshape(B * K, T)[:, 1:], reduction).reshape(B, K)


def _reference(graphdef, cfg: DPOConfig, batch, ref_params):
    if cfg.cache_reference:
        return batch["ref_logp"]
    return jax.lax.stop_gradient(response_logprobs(graphdef, ref_params, batch, cfg.logprob_reduction))


def make_dpo_step(graphdef, tx, schedule, cfg: DPOConfig):
    """(state, batch, rng[, ref_params]) -> (state, metrics)."""
    def loss_fn(params, batch, ref):
        policy = response_logprobs(graphdef, params, batch, cfg.logprob_reduction)
        return dpo_loss(policy, ref, batch["ranks"], batch["valid"], cfg.beta, cfg.loss, cfg.label_smoothing)

    def step(state: TrainState, batch, rng, ref_params=None):
        del rng
        ref = _reference(graphdef, cfg, batch, ref_params)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, ref)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

    return step


def reference_logprobs(graphdef, ref_params, arrays, batch_size: int, reduction: str) -> np.ndarray:
    """The reference's [N, K] sequence log-probs over a whole dataset, computed once."""
    fn = jax.jit(lambda p, b: response_logprobs(graphdef, p, b, reduction))
    keys = ("tokens", "mask", "loss_mask")
    n = len(arrays["tokens"])
    out = [np.asarray(fn(ref_params, {k: arrays[k][i:i + batch_size] for k in keys}))
           for i in range(0, n, batch_size)]
    return np.concatenate(out).astype(np.float32)


def held_out_metrics(graphdef, params, arrays, batch_size: int, cfg: DPOConfig) -> dict[str, float]:
    """Loss, reward accuracy, margin and implicit rewards on held-out rankings (pair-weighted)."""
    @jax.jit
    def evaluate(p, b):
        policy = response_logprobs(graphdef, p, b, cfg.logprob_reduction)
        return dpo_loss(policy, b["ref_logp"], b["ranks"], b["valid"], cfg.beta, cfg.loss, cfg.label_smoothing)

    totals, pairs, losses = {}, 0.0, []
    for batch in eval_batches(arrays, batch_size):
        loss, m = evaluate(params, batch)
        losses.append(float(loss))
        n = float(m["pairs"])
        pairs += n
        for k in ("reward_chosen", "reward_rejected", "reward_accuracy", "reward_margin"):
            totals[k] = totals.get(k, 0.0) + float(m[k]) * n
    return {"val_loss": float(np.mean(losses)), **{f"val_{k}": v / max(pairs, 1.0) for k, v in totals.items()}}

"""One generic train step over a loss function, and the one optimizer update every step uses.

A stage supplies `loss_fn(params, batch, rng, constants) -> (loss, metrics)`; the step is

    (state, batch, rng[, constants]) -> (state, {"loss", **metrics, "grad_norm", "lr"})

so SFT, reward models, fine-grained category models and the preference losses share it, and
PPO calls `apply_gradients` inside its minibatch scan.

Gradient accumulation: with `microbatches` = M > 1 the batch is cut into M slices, the
gradient of each is computed in turn (a scan: only one slice's activations live at a time)
and summed with weights, so the update is the whole batch's. The losses are means over
tokens, pairs or segments, so a slice's weight is its share of them: `weight_fn(slice)`
returns the count its loss averages over (None: equal weights, for a mean over rows).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.train.state import TrainState

# metrics that count things (summed over microbatches); "_max" metrics take the max; the rest
# are weighted means
COUNT_METRICS = ("tokens", "pairs", "segments", "prompts")


def apply_gradients(tx: optax.GradientTransformation, params, opt_state, grads):
    """(new params, new optimizer state, global gradient norm)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.global_norm(grads)


def minibatch_order(rng, batch_size: int, epochs: int, minibatches: int) -> jax.Array:
    """[epochs * minibatches, batch_size / minibatches] row indices: each epoch a fresh permutation
    of the batch, cut into its minibatches (PPO's and online DPO's update scans)."""
    perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(jax.random.split(rng, epochs))
    return perms.reshape(epochs * minibatches, batch_size // minibatches)


def split_microbatches(batch, microbatches: int):
    """Every leaf [B, ...] -> [M, B / M, ...]; slice m holds rows m, m + M, m + 2M, ... (strided, so
    a batch sharded on its leading axis gives each slice an equal share of every device's rows)."""
    def split(x):
        if x.shape[0] % microbatches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by microbatches={microbatches}")
        return x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def combine_metrics(metrics_M: dict, weights_M: jax.Array, total: jax.Array) -> dict:
    """One value per metric from per-microbatch values [M]: counts summed, maxima maxed, the rest
    averaged with the microbatches' weights."""
    out = {}
    for k, v in metrics_M.items():
        if k in COUNT_METRICS:
            out[k] = v.sum(0)
        elif k.endswith("_max"):
            out[k] = v.max(0)
        else:
            out[k] = jnp.tensordot(weights_M, v, axes=1) / total
    return out


def accumulate_gradients(loss_fn: Callable, params, batch, rng, constants, microbatches: int,
                         weight_fn: Callable | None = None):
    """((loss, metrics), grads) of the whole batch, from `microbatches` slices in a scan.

    grads = sum_m (w_m / W) grad loss_m with w_m = weight_fn(slice m), W = max(sum_m w_m, 1): the
    whole batch's gradient when loss_m is a mean over w_m items (tokens, pairs, ...). The loss and
    metrics are combined likewise (`combine_metrics`). Slice m draws its randomness from
    fold_in(rng, m): dropout or sampled latents differ from the whole batch's (same distribution).
    """
    slices = split_microbatches(batch, microbatches)
    if weight_fn is None:
        weights_M = jnp.ones((microbatches,), jnp.float32)
    else:
        weights_M = jax.vmap(weight_fn)(slices).astype(jnp.float32)
    total = jnp.maximum(weights_M.sum(), 1.0)

    def one(grads_acc, xs):
        mb, weight, m = xs

        def scaled(p):
            loss, metrics = loss_fn(p, mb, jax.random.fold_in(rng, m), constants)
            return loss * (weight / total), (loss, metrics)

        (_, (loss, metrics)), grads = jax.value_and_grad(scaled, has_aux=True)(params)
        grads_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
        return grads_acc, (loss, metrics)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params)
    grads, (loss_M, metrics_M) = jax.lax.scan(one, zeros, (slices, weights_M, jnp.arange(microbatches)))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    loss = jnp.dot(weights_M, loss_M) / total
    return (loss, combine_metrics(metrics_M, weights_M, total)), grads


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable,
                    microbatches: int = 1, weight_fn: Callable | None = None, lora=None):
    """The pure step around `loss_fn`; `constants` (frozen models) are passed through to it.

    microbatches > 1: the gradient is accumulated over that many slices of the batch
    (`accumulate_gradients`, weighted by `weight_fn`), giving the whole batch's update.
    lora (a LoRAConfig): the state holds the trainable part (`lora.split`), the step's
    constants are (frozen base, the loss's own constants) and the loss sees `lora.view`.
    """
    if microbatches < 1:
        raise ValueError(f"microbatches={microbatches} must be >= 1")
    if lora is not None:
        from rlhf_jax.train import lora as lora_lib
        loss_fn = lora_lib.wrap_loss(loss_fn, lora)

    def step(state: TrainState, batch, rng, constants=None):
        if microbatches == 1:
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng, constants)
        else:
            (loss, metrics), grads = accumulate_gradients(loss_fn, state.params, batch, rng, constants,
                                                          microbatches, weight_fn)
        params, opt_state, grad_norm = apply_gradients(tx, state.params, state.opt_state, grads)
        metrics = {"loss": loss, **metrics, "grad_norm": grad_norm, "lr": schedule(state.step)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step

"""One generic train step over a loss function, and the one optimizer update every step uses.

A stage supplies `loss_fn(params, batch, rng, constants) -> (loss, metrics)`; the step is

    (state, batch, rng[, constants]) -> (state, {"loss", **metrics, "grad_norm", "lr"})

so SFT, reward models, fine-grained category models and the preference losses share it, and
PPO calls `apply_gradients` inside its minibatch scan.
"""
from __future__ import annotations

from typing import Callable

import jax
import optax

from rlhf_jax.train.state import TrainState


def apply_gradients(tx: optax.GradientTransformation, params, opt_state, grads):
    """(new params, new optimizer state, global gradient norm)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.global_norm(grads)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable):
    """The pure step around `loss_fn`; `constants` (frozen models) are passed through to it."""
    def step(state: TrainState, batch, rng, constants=None):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng, constants)
        params, opt_state, grad_norm = apply_gradients(tx, state.params, state.opt_state, grads)
        metrics = {"loss": loss, **metrics, "grad_norm": grad_norm, "lr": schedule(state.step)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step

"""Supervised fine-tuning: completion-only next-token loss as a pure, jitted step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.data.batches import eval_batches
from rlhf_jax.models.model import apply
from rlhf_jax.objectives.lm import next_token_loss, token_logprobs
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train.lora import LoRAConfig
from rlhf_jax.train.state import TrainState


def lm_forward(graphdef, params, batch, dropout_rng=None):
    logits, _ = apply(graphdef, params, batch["tokens"], positions_BxT=batch["positions"],
                      segment_ids_BxT=batch["segment_ids"], dropout_rng=dropout_rng)
    return logits


def make_sft_step(graphdef, tx: optax.GradientTransformation, schedule, use_dropout: bool = False,
                  lora: LoRAConfig | None = None):
    """(state, batch, rng[, base]) -> (state, metrics); batch: tokens, loss_mask, segment_ids, positions [B, T].

    With `lora`, `state.params` holds the adapters and the frozen base weights come as `base`.
    """
    def loss_fn(params, batch, rng, base):
        if lora is not None:
            params = lora_lib.merge(base, params, lora)
        logits = lm_forward(graphdef, params, batch, rng if use_dropout else None)
        loss, n_tokens = next_token_loss(logits, batch["tokens"], batch["loss_mask"])
        return loss, n_tokens

    def step(state: TrainState, batch, rng, base=None):
        (loss, n_tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng, base)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "tokens": n_tokens, "grad_norm": optax.global_norm(grads),
                   "lr": schedule(state.step)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


def make_sft_eval(graphdef):
    """(params, batch) -> (summed token NLL, token count) for validation loss and perplexity."""
    @jax.jit
    def evaluate(params, batch):
        logits = lm_forward(graphdef, params, batch)
        logp = token_logprobs(logits[:, :-1], batch["tokens"][:, 1:])
        mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
        return -(logp * mask).sum(), mask.sum()

    return evaluate


def validation_loss(evaluate, params, arrays, batch_size: int) -> dict[str, float]:
    total, count = 0.0, 0.0
    for batch in eval_batches(arrays, batch_size):
        s, c = evaluate(params, batch)
        total, count = total + float(s), count + float(c)
    loss = total / max(count, 1.0)
    return {"val_loss": loss, "val_perplexity": float(jnp.exp(loss))}

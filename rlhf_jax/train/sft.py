"""Supervised fine-tuning: completion-only next-token loss, as a loss for the generic step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.data.batches import cut_width, evaluate_all
from rlhf_jax.models.forward import forward, model_config, row_ends, shifted_logprobs
from rlhf_jax.objectives.lm import masked_nll, next_token_loss, shifted_token_logprobs
from rlhf_jax.train.lora import LoRAConfig
from rlhf_jax.train.step import make_train_step


def lm_forward(graphdef, params, batch, dropout_rng=None):
    """Logits of a (possibly packed) batch: tokens, segment_ids, positions [B, T]."""
    return forward(graphdef, params, batch["tokens"], positions_BxT=batch["positions"],
                   segment_ids_BxT=batch["segment_ids"], dropout_rng=dropout_rng)


def lm_logprobs(graphdef, params, batch, dropout_rng=None):
    """logp_Bx(T-1) of tokens[:, 1:] in a (possibly packed) batch, without the B x T x V logits
    when the model's logits_chunk > 0 (see `forward.hidden_logprobs`)."""
    return shifted_logprobs(graphdef, params, batch["tokens"], None, positions_BxT=batch["positions"],
                            segment_ids_BxT=batch["segment_ids"], dropout_rng=dropout_rng)


def sft_loss(graphdef, use_dropout: bool = False):
    """loss_fn(params, batch, rng, constants) -> (mean completion NLL, {"tokens"})."""
    def loss_fn(params, batch, rng, constants):
        if model_config(graphdef, params).logits_chunk:
            loss, n_tokens = masked_nll(lm_logprobs(graphdef, params, batch, rng if use_dropout else None),
                                        batch["loss_mask"])
            return loss, {"tokens": n_tokens}
        logits = lm_forward(graphdef, params, batch, rng if use_dropout else None)
        loss, n_tokens = next_token_loss(logits, batch["tokens"], batch["loss_mask"])
        return loss, {"tokens": n_tokens}

    return loss_fn


def loss_tokens(batch):
    """The number of tokens the SFT loss averages over: a microbatch's weight."""
    return batch["loss_mask"][:, 1:].astype(jnp.float32).sum()


def cut_batch(batch: dict, bucket: int) -> dict:
    """The batch's columns up to its longest row (its last segment or loss column), rounded up
    to `bucket`: the same loss and gradient, as the cut columns are right padding that no real
    token attends to and the loss masks out, from fewer columns (one compile per width). Cut on
    the host before sharding, so every process cuts its copy of the global batch alike."""
    width = cut_width(row_ends(batch["segment_ids"], batch["loss_mask"]), batch["tokens"].shape[1], bucket)
    return {k: v[:, :width] for k, v in batch.items()}


def make_sft_step(graphdef, tx: optax.GradientTransformation, schedule, use_dropout: bool = False,
                  lora: LoRAConfig | None = None, microbatches: int = 1):
    """(state, batch, rng[, constants]) -> (state, metrics); batch: tokens, loss_mask, segment_ids, positions
    [B, T]. `microbatches` > 1 accumulates the gradient over that many slices of the batch (same update);
    with `lora` the state holds `lora.split`'s trainable part and the constants are (base, None)."""
    return make_train_step(sft_loss(graphdef, use_dropout), tx, schedule, microbatches, loss_tokens, lora=lora)


def make_sft_eval(graphdef):
    """(params, batch) -> {"nll": summed token NLL, "tokens": token count}."""
    @jax.jit
    def evaluate(params, batch):
        if model_config(graphdef, params).logits_chunk:
            mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
            return {"nll": -(lm_logprobs(graphdef, params, batch) * mask).sum(), "tokens": mask.sum()}
        logits = lm_forward(graphdef, params, batch)
        logp = shifted_token_logprobs(logits, batch["tokens"])
        mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
        return {"nll": -(logp * mask).sum(), "tokens": mask.sum()}

    return evaluate


def validation_loss(evaluate, params, arrays, batch_size: int) -> dict[str, float]:
    """Token-weighted NLL and perplexity over every held-out row (rows of similar length batched
    together, each batch cut after its longest row: the same sums from fewer padded columns)."""
    ends = row_ends(*(arrays[k] for k in ("segment_ids", "loss_mask") if k in arrays))
    out = evaluate_all(evaluate, params, arrays, batch_size, ends)
    loss = float(np.sum(out["nll"])) / max(float(np.sum(out["tokens"])), 1.0)
    return {"val_loss": loss, "val_perplexity": float(jnp.exp(loss))}

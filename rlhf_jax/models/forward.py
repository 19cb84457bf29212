"""Forward helpers every stage, generation and evaluation use: written once, here.

- `positions_from_mask`: positions count real tokens only (left or right padding alike);
- `forward`: the model on a padded batch (positions from the mask, padding never attended);
- `sequence_inputs`: prompt + response concatenated into one sequence;
- `response_logprobs` / `response_values`: the columns that predict each response token (the LM
  head runs at those N columns only);
- `sequence_logprobs`: summed (or counted) log-probs of the tokens a mask marks;
- `packed_forward` / `packed_logprobs`: rows packed with each prompt once, the LM head run only
  at the slots that predict the wanted tokens;
- `last_logits`: next-token logits after left-padded prompts;
- `hidden_logprobs`: log-probs (and entropy) of targets from final hidden states and the LM head,
  chunk by chunk when the model's `logits_chunk` > 0 (then `response_logprobs`,
  `shifted_logprobs`, `sequence_logprobs` and `packed_logprobs` never build the B x T x V logits);
- `score_at_last`: a scalar head read at each sequence's last real token (reward models);
- `pooled_features`: final hidden states at the last real token or averaged over the mask;
- `latent_posterior` / `latents`: the InfoRM head's posterior at the last real token.

Logits, log-probabilities and scores are float32 whatever the compute dtype.
"""
from __future__ import annotations

from typing import Callable

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import signals
from rlhf_jax.data.batches import LENGTH_BUCKET, cut_width
from rlhf_jax.models.heads import last_token_index, last_token_values
from rlhf_jax.models.model import apply
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.objectives.lm import chunked_token_logprobs, shifted_token_logprobs, token_entropy, token_logprobs


def positions_from_mask(mask_BxT):
    """Position of each token among the real tokens of its row (0 on and before the first)."""
    xp = np if isinstance(mask_BxT, np.ndarray) else jnp
    return xp.maximum(xp.cumsum(mask_BxT, 1) - 1, 0).astype(xp.int32)


def forward(graphdef, params, tokens_BxT, mask_BxT=None, *, positions_BxT=None, segment_ids_BxT=None,
            dropout_rng=None, features: bool = False, parent_ids_BxT=None):
    """The model's outputs on a batch (logits_BxTxV, values_BxT or hidden_BxTxD).

    Positions come from the mask unless given (packed rows give their own), segment ids are
    the mask unless given (0 marks padding, which is never attended); parent ids let response
    segments share a prompt segment packed before them (`layers.attention_mask`).
    """
    if segment_ids_BxT is None:
        segment_ids_BxT = mask_BxT
    if positions_BxT is None and mask_BxT is not None:
        positions_BxT = positions_from_mask(mask_BxT)
    out, _ = apply(graphdef, params, tokens_BxT, positions_BxT=positions_BxT, segment_ids_BxT=segment_ids_BxT,
                   dropout_rng=dropout_rng, features=features, parent_ids_BxT=parent_ids_BxT)
    return out


def packed_forward(graphdef, params, batch, features: bool = False):
    """`forward` on rows packed with each prompt once (`data.shared_prompt.packed_batch`)."""
    return forward(graphdef, params, batch["tokens"], positions_BxT=batch["positions"],
                   segment_ids_BxT=batch["segment_ids"], parent_ids_BxT=batch["parent_ids"], features=features)


def sequence_inputs(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN):
    """(tokens_BxT, mask_BxT, positions_BxT) of prompt + response, T = P + N."""
    tokens = jnp.concatenate([prompt_BxP, response_BxN], 1)
    mask = jnp.concatenate([prompt_mask_BxP, response_mask_BxN], 1).astype(jnp.int32)
    return tokens, mask, positions_from_mask(mask)


def response_columns(outputs_BxTx, n_prompt: int, n_resp: int):
    """The columns whose outputs predict (or value) each response token: P-1 .. P+N-2."""
    return outputs_BxTx[:, n_prompt - 1:n_prompt + n_resp - 1]


def response_logprobs(graphdef, params, seq, n_prompt: int, n_resp: int, temperature: float = 1.0,
                      with_entropy: bool = False):
    """logp_BxN of the response tokens under softmax(logits / temperature); with `with_entropy`,
    (logp_BxN, entropy_BxN). The LM head runs only at the N columns that predict the response
    (`response_columns` of the final hidden states), not at the prompt's, and chunked (no
    B x N x V logits) when the model's logits_chunk > 0 (`hidden_logprobs`)."""
    tokens, mask, positions = seq
    hidden_BxTxD = forward(graphdef, params, tokens, mask, positions_BxT=positions, features=True)
    logp, entropy = hidden_logprobs(nnx.merge(graphdef, params), response_columns(hidden_BxTxD, n_prompt, n_resp),
                                    tokens[:, n_prompt:n_prompt + n_resp], temperature, with_entropy)
    return (logp, entropy) if with_entropy else logp


def response_values(graphdef, params, seq, n_prompt: int, n_resp: int):
    """values_BxN of a scalar-head model at the columns that precede each response token."""
    tokens, mask, positions = seq
    return response_columns(forward(graphdef, params, tokens, mask, positions_BxT=positions), n_prompt, n_resp)


def shifted_logprobs(graphdef, params, tokens_BxT, mask_BxT, **kwargs):
    """logp_Bx(T-1): log-prob of tokens[:, 1:] given the prefix (kwargs go to `forward`);
    chunked (no B x T x V logits) when the model's logits_chunk > 0."""
    module = nnx.merge(graphdef, params)
    if module.cfg.logits_chunk:
        hidden_BxTxD = forward(graphdef, params, tokens_BxT, mask_BxT, features=True, **kwargs)
        return hidden_logprobs(module, hidden_BxTxD[:, :-1], tokens_BxT[:, 1:])[0]
    logits = forward(graphdef, params, tokens_BxT, mask_BxT, **kwargs)
    return shifted_token_logprobs(logits, tokens_BxT)


def sequence_logprobs(graphdef, params, tokens_BxT, mask_BxT, loss_mask_BxT):
    """(sum_B, count_B): summed log-probs of the tokens `loss_mask` marks, and their number."""
    logp = shifted_logprobs(graphdef, params, tokens_BxT, mask_BxT)
    m = loss_mask_BxT[:, 1:].astype(jnp.float32)
    return (logp * m).sum(-1), m.sum(-1)


def packed_logprobs(graphdef, params, batch, col_RxS, target_RxS, logits_chunk: int = 0):
    """logp_RxS of target tokens in packed rows (`packed_forward`), each read from the slot
    col_RxS that predicts it: the LM head runs only at those S slots per row, not at all L.
    `logits_chunk` > 0 (when the model has none of its own) bounds the logits to R x chunk x V."""
    module = nnx.merge(graphdef, params)
    hidden_RxLxD = packed_forward(graphdef, params, batch, features=True)
    predicting = jnp.take_along_axis(hidden_RxLxD, col_RxS[..., None], axis=1)
    if logits_chunk and not module.cfg.logits_chunk:
        unembed, spec = lm_unembedding(module)
        return chunked_token_logprobs(predicting, unembed, target_RxS, logits_chunk, spec=spec)[0]
    return hidden_logprobs(module, predicting, target_RxS)[0]


def model_config(graphdef, params) -> ModelConfig:
    """The ModelConfig a graph definition was built with."""
    return nnx.merge(graphdef, params).cfg


def lm_unembedding(module):
    """(unembed, spec) of a model's LM head: the tied embedding V x D ("vd") or its kernel D x V ("dv")."""
    if module.head_kind != "lm":
        raise ValueError(f"log-probs need an LM head, not {module.head_kind!r}")
    if module.head.tied:
        return module.embed[...], "vd"
    return module.head.kernel[...], "dv"


def hidden_logprobs(module, hidden_BxTxD, targets_BxT, temperature: float = 1.0, with_entropy: bool = False):
    """(logp_BxT, entropy_BxT or None) of targets from final hidden states (position t predicts
    targets_BxT[:, t]) under softmax(LM head / temperature).

    With the model's `logits_chunk` > 0 the LM head runs `logits_chunk` positions at a time
    (and `vocab_chunk` vocabulary rows at a time if > 0), forward and backward, so B x T x V
    logits never exist; otherwise the full logits, as `token_logprobs` computes them.
    """
    cfg = module.cfg
    if cfg.logits_chunk:
        unembed, spec = lm_unembedding(module)
        return chunked_token_logprobs(hidden_BxTxD, unembed, targets_BxT, cfg.logits_chunk, spec=spec,
                                      vocab_chunk=cfg.vocab_chunk, temperature=temperature,
                                      with_entropy=with_entropy)
    logits_BxTxV = module.head(hidden_BxTxD, module)
    entropy = token_entropy(logits_BxTxV / temperature) if with_entropy else None
    return token_logprobs(logits_BxTxV, targets_BxT, temperature), entropy


def last_logits(graphdef, params, tokens_BxT, mask_BxT):
    """logits_BxV of the next token after each left-padded prompt (float32)."""
    return forward(graphdef, params, tokens_BxT, mask_BxT.astype(jnp.int32))[:, -1].astype(jnp.float32)


def pooled_features(graphdef, params, tokens_BxT, mask_BxT, pool: str = "last"):
    """features_BxD: the final hidden state at the last real token ("last") or the masked mean ("mean")."""
    hidden = forward(graphdef, params, tokens_BxT, mask_BxT.astype(jnp.int32), features=True).astype(jnp.float32)
    if pool == "last":
        return jnp.take_along_axis(hidden, last_token_index(mask_BxT)[:, None, None], axis=1)[:, 0]
    if pool == "mean":
        m = mask_BxT.astype(jnp.float32)[..., None]
        return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    raise ValueError(f"pool={pool!r} must be 'last' or 'mean'")


def score_at_last(graphdef, params, tokens_BxT, mask_BxT):
    """scores_B: a scalar-head model's output at each row's last real token (the EOS)."""
    return last_token_values(forward(graphdef, params, tokens_BxT, mask_BxT), mask_BxT)


def latent_posterior(graphdef, params, tokens_BxT, mask_BxT):
    """InfoRM: (mu, log variance), each [B, L], of the latent at each row's last real token."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model(tokens_BxT, positions_BxT=positions_from_mask(mask_BxT), segment_ids_BxT=mask_BxT,
                      features=True)
    last = jnp.take_along_axis(hidden, last_token_index(mask_BxT)[:, None, None], axis=1)[:, 0]
    return model.head.encode(last)


def latents(graphdef, params, tokens_BxT, mask_BxT):
    """InfoRM: the evaluation-mode latent z = mu of each sequence, [B, L]."""
    return latent_posterior(graphdef, params, tokens_BxT, mask_BxT)[0]




def row_ends(*masks_NxT) -> np.ndarray:
    """end_N: one past each row's last nonzero column in any of the masks (0 for an empty row)."""
    any_NxT = np.logical_or.reduce([np.asarray(m) != 0 for m in masks_NxT])
    T = any_NxT.shape[1]
    return np.where(any_NxT.any(1), T - np.argmax(any_NxT[:, ::-1], 1), 0)


def fixed_batches(fn: Callable, rows: int, batch_size: int, make_batch: Callable) -> list:
    """fn(*make_batch(idx)) on batches of exactly batch_size row indices (a short last batch
    filled with copies of its first row, so a jitted fn keeps one shape); outputs cut back to the
    batch's real rows."""
    outs = []
    for start in range(0, rows, batch_size):
        idx = np.arange(start, min(start + batch_size, rows))
        fill = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        out = fn(*make_batch(fill))
        outs.append(jax.tree.map(lambda x: np.asarray(x)[:len(idx)], out))
    return outs


def rows_by_length(fn, arrays_NxT, end_N, batch_size: int, bucket: int = LENGTH_BUCKET):
    """fn(*batch) over batches of `batch_size` rows of arrays_NxT, the rows taken in order of
    end_N (where each row's real tokens end) and each batch cut after its longest row, rounded
    up to `bucket` columns (at most T): short rows do not pay for the longest row's padding.

    For fns that read only a row's columns before its end (causal models with right padding: cut
    columns are padding no real token attends to). A short last batch is filled with copies of
    its first row, so a jitted fn compiles once per width. fn's outputs (a pytree with the batch
    as leading axis) come back in input order.
    """
    arrays_NxT = [np.asarray(a) for a in arrays_NxT]  # on the host once (device arrays copied once, not per batch)
    N, T = arrays_NxT[0].shape[:2]
    batch_size = max(1, min(batch_size, N))
    order = np.argsort(end_N, kind="stable")

    def make_batch(fill):
        signals.check("scoring")
        rows = order[fill]
        return tuple(a[rows, :cut_width(end_N[rows], T, bucket)] for a in arrays_NxT)

    outs = fixed_batches(fn, N, batch_size, make_batch)
    inverse = np.argsort(order, kind="stable")
    return jax.tree.map(lambda *parts: np.concatenate(parts)[inverse], *outs)


def per_sequence_chunks(fn, params, tokens_NxT, mask_NxT, chunk: int = 512) -> np.ndarray:
    """fn(params, tokens, mask) over rows `chunk` at a time, each batch of rows of similar length
    cut after its longest row (`rows_by_length`: fn reads only real tokens, as the model's
    scores and latents do)."""
    return rows_by_length(lambda t, m: fn(params, t, m), (tokens_NxT, mask_NxT), row_ends(mask_NxT), chunk)

"""Token log-probabilities, entropy and the masked next-token loss (all in float32).

`chunked_token_logprobs` computes the same log-probs (and entropy) from the final hidden
states and the unembedding matrix a chunk of sequence positions at a time, so the full
B x T x V logits never exist, in the forward pass or (each chunk rematerialised) the backward.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log p(target_t) under softmax(logits_t / temperature); logits_t predicts targets_t."""
    logits = logits_BxTxV.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - logz


def shifted_token_logprobs(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
    """logp_Bx(T-1): column t is log p(tokens[:, t + 1]) under logits[:, t]. The log-probs are taken
    at all T columns (the last against a placeholder target) and the small B x T result is cut,
    not the B x T x V logits: slicing those costs a copy of them in the forward pass and a pad of
    their cotangent in the backward (the LM loss's operations outside the head's products: 0.108
    -> 0.068 s per SmolLM2 SFT step of 4 x 128 tokens on a 2-core Xeon, `tools/profile_ops.py`)."""
    targets = jnp.concatenate([tokens_BxT[:, 1:], tokens_BxT[:, -1:]], axis=1)
    return token_logprobs(logits_BxTxV, targets)[:, :-1]


def token_entropy(logits_BxTxV: jax.Array) -> jax.Array:
    """entropy_BxT of softmax(logits) at each position (nats)."""
    logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), -1)
    return -(jnp.exp(logp) * logp).sum(-1)


def masked_nll(logp_BxT: jax.Array, loss_mask_BxT: jax.Array):
    """(mean of -logp where loss_mask is 1, number of such tokens); logp_BxT is already shifted:
    column t is the log-prob of token t + 1, and loss_mask_BxT is the mask of the unshifted tokens
    (its column 0 is dropped), as `next_token_loss` reads them."""
    mask = loss_mask_BxT[:, 1:].astype(jnp.float32)
    n = mask.sum()
    return -(logp_BxT * mask).sum() / jnp.maximum(n, 1.0), n


def next_token_loss(logits_BxTxV: jax.Array, tokens_BxT: jax.Array, loss_mask_BxT: jax.Array):
    """Mean cross-entropy of predicting tokens[:, 1:] over positions where loss_mask[:, 1:] is 1.

    Returns (loss, number of predicted tokens).
    """
    return masked_nll(shifted_token_logprobs(logits_BxTxV, tokens_BxT), loss_mask_BxT)


# --- chunked: the logits of one chunk at a time ---------------------------------------------

def _logits(hidden_BxCxD, unembed, spec: str):
    """logits_BxCxV (float32) of the LM head: `unembed` is the tied embedding (V x D, spec "vd")
    or the head's kernel (D x V, spec "dv"), cast to the hidden states' dtype like `LMHead`."""
    out = jnp.einsum(f"bcd,{spec}->bc{spec.replace('d', '')}", hidden_BxCxD, unembed.astype(hidden_BxCxD.dtype),
                     preferred_element_type=jnp.float32)
    return out.astype(jnp.float32)


def _chunk_stats(unembed, hidden_BxCxD, targets_BxC, *, spec, temperature, with_entropy):
    """(logp_BxC, entropy_BxC or zeros) of one sequence chunk, all V logits at once."""
    logits_BxCxV = _logits(hidden_BxCxD, unembed, spec)
    if temperature != 1.0:
        logits_BxCxV = logits_BxCxV / temperature
    logp_BxC = token_logprobs(logits_BxCxV, targets_BxC)
    entropy_BxC = token_entropy(logits_BxCxV) if with_entropy else jnp.zeros_like(logp_BxC)
    return logp_BxC, entropy_BxC


def _vocab_chunks(unembed, spec: str, vocab_chunk: int):
    """The unembedding split into [n, ...] vocabulary slices of `vocab_chunk` (zero-padded)."""
    axis = 0 if spec == "vd" else 1
    V = unembed.shape[axis]
    n = -(-V // vocab_chunk)
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, n * vocab_chunk - V)
    w = jnp.pad(unembed, pad)
    if spec == "vd":
        return w.reshape(n, vocab_chunk, w.shape[1]), V
    return jnp.moveaxis(w.reshape(w.shape[0], n, vocab_chunk), 1, 0), V


def _chunk_stats_by_vocab(unembed, hidden_BxCxD, targets_BxC, *, spec, temperature, with_entropy, vocab_chunk):
    """`_chunk_stats` with the vocabulary in slices: an online log-sum-exp (and the running
    sum of p * logit for the entropy), each slice's logits rematerialised in the backward pass."""
    w_chunks, V = _vocab_chunks(unembed, spec, vocab_chunk)
    B, C = targets_BxC.shape
    targets_BxC = targets_BxC.astype(jnp.int32)

    @jax.checkpoint
    def body(carry, xs):
        max_BxC, sumexp_BxC, sumexp_logit_BxC, picked_BxC = carry
        w, start = xs
        cols_Vc = start + jnp.arange(vocab_chunk)
        logits_BxCxVc = _logits(hidden_BxCxD, w, spec)
        if temperature != 1.0:
            logits_BxCxVc = logits_BxCxVc / temperature
        logits_BxCxVc = jnp.where(cols_Vc < V, logits_BxCxVc, -jnp.inf)
        # the stabiliser cancels from log-sum-exp and entropy: no gradient through it
        new_max = jax.lax.stop_gradient(jnp.maximum(max_BxC, logits_BxCxVc.max(-1)))
        rescale = jnp.exp(max_BxC - new_max)
        p_BxCxVc = jnp.exp(logits_BxCxVc - new_max[..., None])
        finite = jnp.where(cols_Vc < V, logits_BxCxVc, 0.0)
        sumexp_BxC = sumexp_BxC * rescale + p_BxCxVc.sum(-1)
        sumexp_logit_BxC = sumexp_logit_BxC * rescale + (p_BxCxVc * finite).sum(-1)
        picked_BxC = picked_BxC + jnp.where(targets_BxC[..., None] == cols_Vc, finite, 0.0).sum(-1)
        return (new_max, sumexp_BxC, sumexp_logit_BxC, picked_BxC), None

    zeros = jnp.zeros((B, C), jnp.float32)
    init = (jnp.full((B, C), -jnp.inf, jnp.float32), zeros, zeros, zeros)
    starts = jnp.arange(w_chunks.shape[0], dtype=jnp.int32) * vocab_chunk
    (max_BxC, sumexp_BxC, sumexp_logit_BxC, picked_BxC), _ = jax.lax.scan(body, init, (w_chunks, starts))
    logz_BxC = max_BxC + jnp.log(sumexp_BxC)
    entropy_BxC = logz_BxC - sumexp_logit_BxC / sumexp_BxC if with_entropy else zeros
    return picked_BxC - logz_BxC, entropy_BxC


def chunked_token_logprobs(hidden_BxTxD: jax.Array, unembed: jax.Array, targets_BxT: jax.Array, chunk: int, *,
                           spec: str = "vd", vocab_chunk: int = 0, temperature: float = 1.0,
                           with_entropy: bool = False):
    """(logp_BxT, entropy_BxT or None) of `targets_BxT` under softmax(h @ unembed / temperature),
    `chunk` sequence positions at a time (a scan; T is padded up to a multiple of `chunk`).

    hidden_BxTxD: final (normed) hidden states, position t predicting targets_BxT[:, t];
    unembed: the tied embedding V x D (spec "vd") or an LM head kernel D x V (spec "dv").
    Each chunk's function is under `jax.checkpoint`, so the backward pass recomputes its
    B x chunk x V logits (B x chunk x vocab_chunk with `vocab_chunk`) instead of storing them.
    Equal to `token_logprobs` / `token_entropy` of the full logits up to float rounding.
    """
    B, T, D = hidden_BxTxD.shape
    n = -(-T // chunk)
    pad = n * chunk - T
    hidden = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets_BxT.astype(jnp.int32), ((0, 0), (0, pad)))
    hidden_NxBxCxD = hidden.reshape(B, n, chunk, D).swapaxes(0, 1)
    targets_NxBxC = targets.reshape(B, n, chunk).swapaxes(0, 1)
    kw = dict(spec=spec, temperature=temperature, with_entropy=with_entropy)
    if vocab_chunk:
        stats = functools.partial(_chunk_stats_by_vocab, vocab_chunk=vocab_chunk, **kw)
    else:
        stats = functools.partial(_chunk_stats, **kw)
    stats = jax.checkpoint(stats)
    _, (logp_NxBxC, entropy_NxBxC) = jax.lax.scan(lambda c, xs: (c, stats(unembed, *xs)), None,
                                                  (hidden_NxBxCxD, targets_NxBxC))
    unchunk = lambda x_NxBxC: x_NxBxC.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]
    return unchunk(logp_NxBxC), (unchunk(entropy_NxBxC) if with_entropy else None)

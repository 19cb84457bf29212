"""Jitted, batched model computations shared by metrics, benchmarks and judges (the forward
helpers of `rlhf_jax.models.forward`, jitted, plus host-side batching).

Jitted functions of (graphdef, params, arrays):

- `sequence_logprobs`: summed log-probabilities of marked tokens of right-padded rows
  (held-out tokens for perplexity); `packed_logprobs`: log-probs of chosen tokens in rows
  packed with each context once (continuations after a shared context), the LM head run only
  at the slots that predict them.
- `last_logits`: next-token logits after left-padded prompts (LLM judges).
- `pooled_features` / `token_features`: final (normed) hidden states, pooled or per token
  (MAUVE features, embedding similarity).

Host wrappers (`score_continuations`: packed, see its docstring; `next_token_logprobs`,
`text_features`, `text_token_features`) take token-id lists, sort them by length and pad them into
fixed-size batches (a short batch filled with copies of its first row, each batch's length
rounded up to a multiple of `LENGTH_BUCKET`, so a handful of shapes is compiled), run the
jitted function and return NumPy arrays in the input order.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data import shared_prompt
from rlhf_jax.data.tokenize import pad_left, pad_right
from rlhf_jax.models import forward as F

LENGTH_BUCKET = F.LENGTH_BUCKET


@functools.partial(jax.jit, static_argnames=("graphdef",))
def sequence_logprobs(graphdef, params, tokens_BxT, mask_BxT, target_mask_BxT):
    """(logprob_sum_B, count_B): sum of log p(token_t | tokens_<t) over t with target_mask 1
    (right-padded rows; the first token of a row has no prediction and is never scored)."""
    mask = mask_BxT.astype(jnp.int32)
    return F.sequence_logprobs(graphdef, params, tokens_BxT, mask, target_mask_BxT * mask)


packed_logprobs = jax.jit(F.packed_logprobs, static_argnames=("graphdef", "logits_chunk"))
LOGITS_CHUNK = 64  # score_continuations' logits: rows x 64 x V at a time (TruthfulQA's S reaches ~300)
last_logits = jax.jit(F.last_logits, static_argnames=("graphdef",))
pooled_features = jax.jit(F.pooled_features, static_argnames=("graphdef", "pool"))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def last_logprobs(graphdef, params, tokens_BxT, mask_BxT, ids_K):
    """logprobs_BxK: log_softmax of the next-token logits (full vocabulary), read at ids_K."""
    return jax.nn.log_softmax(F.last_logits(graphdef, params, tokens_BxT, mask_BxT), axis=-1)[:, ids_K]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def token_features(graphdef, params, tokens_BxT, mask_BxT):
    """hidden_BxTxD: final normed hidden states of right-padded rows (float32)."""
    return F.forward(graphdef, params, tokens_BxT, mask_BxT.astype(jnp.int32), features=True).astype(jnp.float32)


# --- host wrappers -------------------------------------------------------------------------

def _bucket(length: int) -> int:
    # positions count real tokens only, so padding past max_seq_len never reaches a position embedding
    return -(-length // LENGTH_BUCKET) * LENGTH_BUCKET


def _max_len(model) -> int | None:
    return model.cfg.max_seq_len if model.cfg.position == "learned" else None


def _by_length(fn: Callable, seqs: Sequence[Sequence[int]], batch_size: int, pad_id: int, left: bool = False,
               row_args: Sequence[np.ndarray] = ()):
    """fn(tokens_BxT, mask_BxT, *row_args_B) over length-sorted batches, results in input order.

    Each batch is padded (left or right) to its own bucketed length, so short rows do not pay
    for the longest one; row_args are per-row arrays (leading axis N) sliced alongside; the
    outputs must have the batch as their leading axis.
    """
    order = np.argsort([len(s) for s in seqs], kind="stable")
    pad = pad_left if left else pad_right

    def make_batch(fill):
        rows = order[fill]
        tokens, mask = pad([seqs[i] for i in rows], pad_id, _bucket(max(len(seqs[i]) for i in rows)))
        return (tokens, mask, *(np.asarray(a)[rows] for a in row_args))

    outs = F.fixed_batches(fn, len(seqs), batch_size, make_batch)
    inverse = np.argsort(order, kind="stable")
    return jax.tree.map(lambda *parts: np.concatenate(parts)[inverse], *outs)


def _check_len(seqs: Sequence[Sequence[int]], max_len: int | None, what: str) -> None:
    longest = max(len(s) for s in seqs)
    if max_len and longest > max_len:
        raise ValueError(f"{what}: a row has {longest} tokens, more than the model's max_seq_len={max_len}")


def score_continuations(model, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                        batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(logprob_N, ntokens_N): sum of log p(continuation | context) for each pair of id lists.

    Rows are packed with each distinct context once (`shared_prompt.continuation_batches`:
    TruthfulQA's answers share their question's prompt), `batch_size` packed rows a call; only
    the continuations' tokens reach the LM head. A context must hold at least one token (the
    first continuation token needs one before it).
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    if any(len(c) == 0 for c in contexts):
        raise ValueError("every context needs at least one token (e.g. BOS) to predict the continuation from")
    _check_len([list(c) + list(x) for c, x in zip(contexts, continuations)], _max_len(model), "score_continuations")
    counts_N = np.array([len(x) for x in continuations], np.int64)
    first, inverse = shared_prompt.unique_rows(contexts, continuations)  # equal rows, equal numbers
    logprob_U = np.zeros(len(first), np.float64)
    for p in shared_prompt.continuation_batches([contexts[i] for i in first], [continuations[i] for i in first],
                                                batch_size):
        logp = np.asarray(packed_logprobs(model.graphdef, model.params, p.rows, p.col, p.target,
                                          logits_chunk=LOGITS_CHUNK), np.float64)
        np.add.at(logprob_U, p.index[p.index >= 0], logp[p.index >= 0])
    return logprob_U[inverse], counts_N


def next_token_logprobs(model, prompts: Sequence[Sequence[int]], token_ids: Sequence[int],
                        batch_size: int = 8, pad_id: int = 0) -> np.ndarray:
    """logprobs_NxK: log p(next token = token_ids[k] | prompt_n) under the full softmax.

    Prompts are left-padded so that every row's next token sits at the last position.
    """
    _check_len(prompts, _max_len(model), "next_token_logprobs")
    ids_K = jnp.asarray(token_ids, jnp.int32)
    fn = lambda t, m: last_logprobs(model.graphdef, model.params, t, m, ids_K)
    return _by_length(fn, prompts, batch_size, pad_id, left=True).astype(np.float64)


def _encode_texts(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    ids = [list(tokenizer.encode(t, add_special_tokens=False))[:max_len] for t in texts]
    if any(len(i) == 0 for i in ids):
        raise ValueError("an empty text has no tokens to take features from")
    return ids


def text_features(model, tokenizer, texts: Sequence[str], pool: str = "last", batch_size: int = 16,
                  max_len: int = 256) -> np.ndarray:
    """features_NxD (float32): pooled final hidden states of each text (first max_len tokens)."""
    ids = _encode_texts(tokenizer, texts, min(max_len, _max_len(model) or max_len))
    fn = lambda t, m: pooled_features(model.graphdef, model.params, t, m, pool=pool)
    return _by_length(fn, ids, batch_size, tokenizer.pad_token_id or 0)


def text_token_features(model, tokenizer, texts: Sequence[str], batch_size: int = 16,
                        max_len: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(hidden_NxTxD, mask_NxT): per-token final hidden states of each text, right-padded."""
    ids = _encode_texts(tokenizer, texts, min(max_len, _max_len(model) or max_len))
    tokens_NxT, mask_NxT = pad_right(ids, tokenizer.pad_token_id or 0, _bucket(max(map(len, ids))))
    fn = functools.partial(token_features, model.graphdef, model.params)
    hidden = np.concatenate(F.fixed_batches(fn, len(ids), batch_size, lambda i: (tokens_NxT[i], mask_NxT[i])))
    return hidden, mask_NxT

"""Sequences that share a prompt packed with it once: training rankings (`rm.pack`, `dpo.pack`)
and every forward-only pass over responses to shared prompts (scoring).

In a ranking every response follows the same prompt, and under causal attention the prompt's
hidden states do not depend on what follows it. So a group = the prompt (its own segment), then
each response (a segment whose parent is the prompt's, positions continuing the prompt's)
gives every response exactly the states of its own padded sequence (`layers.attention_mask`
lets a query see its parent segment), from the prompt's positions once instead of K times.

`pack_rankings` lays out a batch; besides the rows it returns where to read each response's
score (its last token's slot: reward models) and, for every response token, which slot
predicts it and whose token it is (log-probs: DPO). `packed_batch` is one step's batch.
`continuation_batches` packs any (context, continuation) token lists the same way, a fixed
number of rows a call (TruthfulQA's answers, best-of-n's samples, the RM judges, DPO's cached
reference); `unique_rows` lets a caller score equal rows once.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

ROW_KEYS = ("tokens", "positions", "segment_ids", "parent_ids", "pred_col", "owner")


def _groups(arrays: dict[str, np.ndarray], row_len: int) -> list[tuple[int, int, list[int], int]]:
    """(ranking, prompt length, filled slots, tokens with the prompt once) per ranking."""
    mask, loss = arrays["mask"], arrays["loss_mask"]
    lengths = mask.sum(-1)
    out = []
    for i in range(len(mask)):
        slots = [j for j in range(mask.shape[1]) if lengths[i, j] > 0]
        prompt = int(lengths[i, slots[0]] - loss[i, slots[0]].sum())
        head = arrays["tokens"][i, slots[0], :prompt]
        for j in slots[1:]:
            if lengths[i, j] - loss[i, j].sum() != prompt or (arrays["tokens"][i, j, :prompt] != head).any():
                raise ValueError(f"ranking {i}: responses {slots[0]} and {j} have different prompts")
        if prompt == 0:
            raise ValueError(f"ranking {i}: no prompt tokens (loss_mask marks the whole sequence)")
        size = prompt + int(sum(lengths[i, j] - prompt for j in slots))
        if size > row_len:
            raise ValueError(f"ranking {i}: {size} tokens (the prompt once) do not fit row_len={row_len}")
        out.append((i, prompt, slots, size))
    return out


def pack_rankings(arrays: dict[str, np.ndarray], row_len: int) -> dict[str, np.ndarray]:
    """Rankings [N, K, T] (`tokenize.ranking_arrays`: tokens, mask, loss_mask marking each
    response) packed with each prompt once into rows of `row_len`, largest group first, each
    into the first row with room (first-fit decreasing; the order changes no number).

    Returns [R, row_len]: tokens, positions, segment_ids (0 = padding), parent_ids; pred_col
    (the slot whose hidden state predicts the token here: the one before, or the prompt's last
    slot for a response's first token) and owner (i * K + j of the response this token belongs
    to, -1 for prompts and padding); and [N, K]: score_row / score_col, the slot of each
    response's last token (0, 0 for empty slots).
    """
    N, K, _ = arrays["mask"].shape
    rows, used = [], []
    for g in sorted(_groups(arrays, row_len), key=lambda g: -g[3]):
        r = next((r for r, u in enumerate(used) if u + g[3] <= row_len), len(rows))
        if r == len(rows):
            rows.append([])
            used.append(0)
        rows[r].append(g)
        used[r] += g[3]
    out = {k: np.zeros((len(rows), row_len), np.int32) for k in ROW_KEYS}
    out["owner"][:] = -1
    out["score_row"], out["score_col"] = np.zeros((N, K), np.int32), np.zeros((N, K), np.int32)
    length = arrays["mask"].sum(-1)
    for r, row in enumerate(rows):
        at, seg = 0, 0
        for i, prompt, slots, _ in row:
            seg += 1
            parent, prompt_last = seg, at + prompt - 1
            spans = [(arrays["tokens"][i, slots[0], :prompt], 0, None)]
            spans += [(arrays["tokens"][i, j, prompt:length[i, j]], prompt, j) for j in slots]
            for ids, first, j in spans:
                n = len(ids)
                if j is not None and n == 0:
                    raise ValueError(f"ranking {i}: response {j} is empty")
                cols = slice(at, at + n)
                out["tokens"][r, cols] = ids
                out["positions"][r, cols] = np.arange(first, first + n)
                out["segment_ids"][r, cols] = seg
                out["parent_ids"][r, cols] = parent
                if j is not None:
                    out["pred_col"][r, cols] = np.arange(at - 1, at + n - 1)
                    out["pred_col"][r, at] = prompt_last
                    out["owner"][r, cols] = i * K + j
                    out["score_row"][i, j], out["score_col"][i, j] = r, at + n - 1
                at += n
                seg += 1
            seg -= 1
    return out


def pad_rows(packed: dict, n: int) -> dict:
    """A packed batch with empty rows appended up to `n` (padding; owner -1)."""
    pad = lambda k, x: np.pad(x, ((0, n - len(x)), (0, 0)), constant_values=-1 if k == "owner" else 0)
    return {k: pad(k, v) if k in ROW_KEYS else v for k, v in packed.items()}


def packed_batch(batch: dict[str, np.ndarray], multiple: int = 1, row_len: int = 0) -> dict:
    """One step's batch of rankings packed (`pack_rankings`) into rows of `row_len` (default K x T:
    one ranking always fits), its rows padded with empty ones to a multiple of `multiple` (the
    batch's shards). The per-ranking arrays the losses read (ranks, valid, a cached reference's
    ref_logp) pass through."""
    _, K, T = batch["tokens"].shape
    p = pack_rankings(batch, row_len or K * T)
    out = pad_rows({k: p[k] for k in ROW_KEYS}, -(-len(p["tokens"]) // multiple) * multiple)
    out.update(score_row=p["score_row"], score_col=p["score_col"])
    out.update({k: batch[k] for k in ("ranks", "valid", "ref_logp") if k in batch})
    return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def unique_rows(contexts, continuations) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): the first row of each distinct (context, continuation) and, per row, the
    position of its copy in `first`. Scoring the distinct rows only gives equal rows equal numbers
    (packed at different slots, two copies could differ by rounding and break a tie)."""
    seen: dict[tuple, int] = {}
    inverse = np.array([seen.setdefault((tuple(c), tuple(x)), len(seen)) for c, x in zip(contexts, continuations)],
                       np.int64)
    first = np.zeros(len(seen), np.int64)
    first[inverse[::-1]] = np.arange(len(inverse))[::-1]
    return first, inverse


def _context_groups(contexts, continuations, cap: int) -> list[tuple[list[int], list[int]]]:
    """(context, row indices) per distinct context, in first-seen order; a context whose
    continuations do not fit `cap` tokens together is split into several groups. Empty
    continuations are left out (their log-prob sum is 0)."""
    by_context: dict[tuple, list[int]] = {}
    for i, (c, x) in enumerate(zip(contexts, continuations)):
        if len(x):
            by_context.setdefault(tuple(c), []).append(i)
    groups = []
    for context, rows in by_context.items():
        group, size = [], len(context)
        for i in rows:
            if group and size + len(continuations[i]) > cap:
                groups.append((list(context), group))
                group, size = [], len(context)
            group.append(i)
            size += len(continuations[i])
        groups.append((list(context), group))
    return groups


class PackedContinuations(NamedTuple):
    """One batch of `continuation_batches`. rows: the ROW_KEYS arrays but owner and pred_col
    ([rows, L], for `forward.packed_forward` / `packed_logprobs`); entry [r, s] of col / target /
    index is the target token read from slot col[r, s] of row r, part of continuation
    index[r, s] (-1: padding); last: (continuation indices, their last token's row, its slot),
    where a reward model reads its score."""
    rows: dict
    col: np.ndarray
    target: np.ndarray
    index: np.ndarray
    last: tuple[np.ndarray, np.ndarray, np.ndarray]


def continuation_batches(contexts, continuations, rows: int, max_row: int = 1024, bucket: int = 32):
    """Batches of up to `rows` packed rows scoring continuations after contexts, each distinct
    context once (`pack_rankings`: the continuations of one context are the responses of one
    ranking); a batch's rows are padded to a power of two, so a short call computes few empty rows.

    Yields `PackedContinuations`. Groups go largest first, a batch at a time, each batch's L and
    S rounded up to `bucket` (a handful of compiled shapes); a group holds at most
    max(max_row, its longest row) tokens.
    """
    if not len(contexts):
        return
    cap = max(max_row, _round_up(max(len(c) + len(x) for c, x in zip(contexts, continuations)), bucket))
    size = lambda g: len(g[0]) + sum(len(continuations[i]) for i in g[1])
    groups = sorted(_context_groups(contexts, continuations, cap), key=size, reverse=True)
    for start in range(0, len(groups), rows):
        chunk = groups[start:start + rows]
        K = max(len(g[1]) for g in chunk)
        T = max(len(c) + len(continuations[i]) for c, g in chunk for i in g)
        arrays = {k: np.zeros((len(chunk), K, T), np.int32) for k in ("tokens", "mask", "loss_mask")}
        for n, (context, members) in enumerate(chunk):
            for k, i in enumerate(members):
                seq = list(context) + list(continuations[i])
                arrays["tokens"][n, k, :len(seq)] = seq
                arrays["mask"][n, k, :len(seq)] = 1
                arrays["loss_mask"][n, k, len(context):len(seq)] = 1
        packed = pack_rankings(arrays, _round_up(size(chunk[0]), bucket))
        # the rows padded to a power of two up to `rows` (a few shapes; a short call computes no empty rows)
        R = min(rows, 1 << (len(packed["tokens"]) - 1).bit_length())
        batch = pad_rows({k: packed[k] for k in ROW_KEYS}, R)
        owner = batch["owner"]
        S = _round_up(int((owner >= 0).sum(1).max()), bucket)
        col, target, index = (np.zeros((R, S), np.int32) for _ in range(3))
        index[:] = -1
        for r in range(R):
            slots = np.nonzero(owner[r] >= 0)[0]
            col[r, :len(slots)] = batch["pred_col"][r, slots]
            target[r, :len(slots)] = batch["tokens"][r, slots]
            index[r, :len(slots)] = [chunk[o // K][1][o % K] for o in owner[r, slots]]
        members = [(n, k, i) for n, (_, g) in enumerate(chunk) for k, i in enumerate(g)]
        last = tuple(np.array(a, np.int64) for a in zip(*[(i, packed["score_row"][n, k], packed["score_col"][n, k])
                                                          for n, k, i in members]))
        yield PackedContinuations({k: batch[k] for k in ("tokens", "positions", "segment_ids", "parent_ids")},
                                  col, target, index, last)

"""Fine-grained reward models: per-segment classifiers trained together, and the composite
per-token reward PPO optimises (Wu et al. 2023). The pure pieces are in
`rlhf_jax.objectives.finegrained`.

The C category models share one architecture (a scalar-head RM from the SFT backbone) and the
same tokens, and differ in their unit and labels, so they train like an ensemble: one step
vmapped over the category axis (axis 1 of the batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.data.batches import eval_batches
from rlhf_jax.data.tokenize import TokenizeConfig, TruncationStats, _encode, _eos, encode_prompt, truncate
from rlhf_jax.models.model import apply
from rlhf_jax.objectives import finegrained as F
from rlhf_jax.train.state import TrainState


def segment_arrays(records, tokenizer, cfg: TokenizeConfig, components, classes, min_words: int = 5):
    """Span-annotated records -> tokens/mask/response_mask [N, C, T] (the same sequence for every
    category) and ends/labels [N, C, T]: each category's segment ends and their labels
    (1 = no error of the category in the segment). Returns (arrays, stats)."""
    n, C, T = len(records), len(components), cfg.max_len
    tokens = np.full((n, T), tokenizer.pad_token_id or 0, np.int32)
    mask, resp_mask = np.zeros((n, T), np.int32), np.zeros((n, T), np.int32)
    stats = TruncationStats()
    responses = []
    for i, r in enumerate(records):
        ids, m = truncate(encode_prompt(tokenizer, r["prompt"], cfg),
                          _encode(tokenizer, r["response"]) + _eos(tokenizer), cfg, stats)
        tokens[i, :len(ids)], mask[i, :len(ids)], resp_mask[i, :len(ids)] = ids, 1, m
        responses.append((len(ids) - sum(m), ids[len(ids) - sum(m):]))
    ends = np.stack([np.asarray(F.segment_ends(tokens, resp_mask, classes, c.unit, min_words))
                     for c in components], 1)
    labels = np.zeros_like(ends)
    for i, (start, ids) in enumerate(responses):
        for j, c in enumerate(components):
            labels[i, j, start:start + len(ids)] = F.segment_labels(ends[i, j, start:start + len(ids)], ids,
                                                                    tokenizer, records[i]["spans"], c.errors)
    rep = lambda x: np.repeat(x[:, None], C, 1)
    arrays = {"tokens": rep(tokens), "mask": rep(mask), "response_mask": rep(resp_mask),
              "ends": ends.astype(np.float32), "labels": labels}
    return arrays, {**stats.as_dict(), "segments": int(ends.sum()),
                    "positive_rate": [float((labels[:, j] * ends[:, j]).sum() / max(ends[:, j].sum(), 1))
                                      for j in range(C)]}


def token_logits(graphdef, params, tokens, mask):
    """The scalar head's output at every position (positions from the mask: any padding side)."""
    positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    values, _ = apply(graphdef, params, tokens, positions_BxT=positions, segment_ids_BxT=mask)
    return values


def make_segment_step(graphdef, tx, schedule):
    """One category model's step on its [B, T] batch (vmap it over categories)."""
    def loss_fn(params, batch):
        logits = token_logits(graphdef, params, batch["tokens"], batch["mask"])
        return F.segment_loss(logits, batch["ends"], batch["labels"])

    def step(state: TrainState, batch, rng):
        del rng
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

    return step


def held_out(graphdef, stacked, arrays, batch_size: int, names) -> dict:
    """Per category: segment accuracy, its majority-class baseline, and the BCE loss."""
    @jax.jit
    def evaluate(p, b):
        def one(params, tb):
            return F.segment_loss(token_logits(graphdef, params, tb["tokens"], tb["mask"]), tb["ends"], tb["labels"])
        return jax.vmap(one, in_axes=(0, 1))(p, b)

    C = len(names)
    correct, pos, n, loss = np.zeros(C), np.zeros(C), np.zeros(C), np.zeros(C)
    for batch in eval_batches(arrays, batch_size):
        l, m = evaluate(stacked, batch)
        seg = np.asarray(m["segments"])
        correct += np.asarray(m["accuracy"]) * seg
        pos += np.asarray(m["positive_rate"]) * seg
        loss += np.asarray(l) * seg
        n += seg
    out = {}
    for j, name in enumerate(names):
        rate = pos[j] / max(n[j], 1)
        out[name] = {"val_accuracy": correct[j] / max(n[j], 1), "val_majority_baseline": max(rate, 1 - rate),
                     "val_loss": loss[j] / max(n[j], 1), "val_segments": int(n[j])}
    return out


class FineGrainedReward:
    """The composite reward: category models (stacked params) and optionally the holistic RM.

    `placed(params, tokens, mask, n_prompt)` -> [B, N] rewards on the response tokens (the last
    N = T - n_prompt columns); calling it gives the per-sequence total, so best-of-n and the
    judge use it like any reward. params = (stacked category params, holistic RM params or None).
    """

    def __init__(self, graphdef, components, classes, n_prompt: int, min_words: int = 5, mode: str = "hard",
                 holistic=None):
        """holistic: None or (graphdef, weight, mean, std): w * (score - mean) / std at the EOS."""
        self.graphdef, self.components, self.classes = graphdef, components, jnp.asarray(classes)
        self.n_prompt, self.min_words, self.mode, self.holistic = n_prompt, min_words, mode, holistic

    def placed(self, params, tokens, mask):
        cats, rm = params
        resp_mask = mask * (jnp.arange(tokens.shape[1]) >= self.n_prompt)[None, :]
        logits = jax.vmap(token_logits, in_axes=(None, 0, None, None))(self.graphdef, cats, tokens, mask)
        total = jnp.zeros(tokens.shape, jnp.float32)
        for j, c in enumerate(self.components):
            ends = F.segment_ends(tokens, resp_mask, self.classes, c.unit, self.min_words)
            total = total + F.segment_rewards(logits[j], ends, c.weight, self.mode)
        if self.holistic is not None:
            graphdef, weight, mean, std = self.holistic
            values = token_logits(graphdef, rm, tokens, mask)
            last = F.segment_ends(tokens, resp_mask, self.classes, "response")
            total = total + weight * (values - mean) / std * last
        return total[:, self.n_prompt:]

    def __call__(self, params, tokens, mask):
        return self.placed(params, tokens, mask).sum(1)

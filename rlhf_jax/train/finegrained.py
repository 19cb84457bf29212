"""Fine-grained reward models: per-segment classifiers trained together (Wu et al. 2023). The
pure pieces are in `rlhf_jax.objectives.finegrained`, the composite per-token reward PPO
optimises in `rlhf_jax.rewards.finegrained`.

The C category models share one architecture (a scalar-head RM from the SFT backbone) and the
same tokens, and differ in their unit and labels, so they train like an ensemble: one step
vmapped over the category axis (axis 1 of the batch).
"""
from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.data.batches import evaluate_all
from rlhf_jax.data.tokenize import TokenizeConfig, TruncationStats, encode_prompt, response_ids, truncate
from rlhf_jax.models.forward import forward
from rlhf_jax.objectives import finegrained as F
from rlhf_jax.train.step import make_train_step


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
                          response_ids(tokenizer, r["response"], cfg), cfg, stats)
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


def segment_loss(graphdef):
    """One category model's loss on its [B, T] batch (the step is vmapped over categories)."""
    def loss_fn(params, batch, rng, constants):
        logits = forward(graphdef, params, batch["tokens"], batch["mask"])
        return F.segment_loss(logits, batch["ends"], batch["labels"])

    return loss_fn


def segment_count(batch):
    """The number of segment ends the segment loss averages over: a microbatch's weight."""
    return batch["ends"].sum()


def make_segment_step(graphdef, tx, schedule, microbatches: int = 1):
    """One category model's step; `microbatches` > 1 accumulates the gradient over slices of the
    batch, each weighted by its segments (the whole batch's update)."""
    return make_train_step(segment_loss(graphdef), tx, schedule, microbatches, segment_count)


def held_out(graphdef, stacked, arrays, batch_size: int, names) -> dict:
    """Per category: segment accuracy, its majority-class baseline, and the BCE loss."""
    @jax.jit
    def evaluate(p, b):
        def one(params, tb):
            logits = forward(graphdef, params, tb["tokens"], tb["mask"])
            return F.segment_loss(logits, tb["ends"], tb["labels"])
        loss, m = jax.vmap(one, in_axes=(0, 1))(p, b)
        seg = m["segments"]
        return {"correct": m["accuracy"] * seg, "positive": m["positive_rate"] * seg, "loss": loss * seg,
                "segments": seg}

    out = {k: np.sum(v, 0) for k, v in evaluate_all(evaluate, stacked, arrays, batch_size).items()}
    result = {}
    for j, name in enumerate(names):
        n = max(out["segments"][j], 1)
        rate = out["positive"][j] / n
        result[name] = {"val_accuracy": out["correct"][j] / n, "val_majority_baseline": max(rate, 1 - rate),
                        "val_loss": out["loss"][j] / n, "val_segments": int(out["segments"][j])}
    return result

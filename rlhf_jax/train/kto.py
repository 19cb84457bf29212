"""KTO as a loss for the generic step, over binary-feedback batches.

A batch holds tokens/mask/loss_mask [B, 2, T]: slot 0 is the example (its prompt and response),
slot 1 its mismatched pair (its prompt with another example's response, for the reference point
z0); desirable [B] (1 or 0) and valid [B] (0 for padding rows). The mismatched partner of each
example is fixed once, before training (`mismatched_partners`), so the reference's log-probs of
both slots can be cached in one pass like DPO's (`ref_logp` [B, 2]); every batch's z0 is then the
mean over its rows' mismatched pairs. The paper and TRL shift the responses by one inside a
batch; a fixed seeded shift over the whole set pairs each prompt with a uniformly drawn other
response the same way, and lets the reference be cached. `hp` is the config's `kto` block.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data.batches import evaluate_all
from rlhf_jax.data.tokenize import ranking_arrays
from rlhf_jax.models.forward import sequence_logprobs
from rlhf_jax.objectives.kto import kto_loss
from rlhf_jax.train.step import make_train_step

TRIES = 64  # random swaps tried to give a row whose partner shares its prompt another partner


def mismatched_partners(records: list[dict], seed: int) -> np.ndarray:
    """partner[i]: the example whose response pairs with example i's prompt to estimate z0.

    A seeded cyclic shift (each example's partner is the next one in a random order, so every
    response is used once), then a row whose partner has its own prompt (a prompt converted from a
    ranking appears with several responses) swaps partners with a random row where both new
    pairings have different prompts: still every response once."""
    n = len(records)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    partner = np.empty(n, np.int64)
    partner[order] = np.roll(order, -1)
    prompts = [json.dumps(r["prompt"]) for r in records]  # chat prompts are lists of messages
    for i in range(n):
        if prompts[partner[i]] != prompts[i]:
            continue
        for k in rng.integers(0, n, TRIES):
            if prompts[partner[k]] != prompts[i] and prompts[partner[i]] != prompts[k]:
                partner[i], partner[k] = partner[k], partner[i]
                break
    return partner


def binary_arrays(records: list[dict], tokenizer, tcfg, seed: int) -> dict[str, np.ndarray]:
    """Binary-feedback records -> the batch arrays of the module docstring (N rows)."""
    partner = mismatched_partners(records, seed)
    rows = [{"prompt": r["prompt"], "responses": [r["response"], records[j]["response"]], "ranks": [0, 1]}
            for r, j in zip(records, partner)]
    arrays, stats = ranking_arrays(rows, tokenizer, tcfg, k_max=2)
    if stats.get("prompt_truncated") or stats.get("response_truncated"):
        print(f"[data] kto: {stats}", flush=True)
    return {"tokens": arrays["tokens"], "mask": arrays["mask"], "loss_mask": arrays["loss_mask"],
            "desirable": np.array([r["label"] for r in records], np.int32), "valid": np.ones(len(records), np.int32)}


def ratios(graphdef, params, batch):
    """(r_theta [B] of the examples, r_theta [B] of their mismatched pairs), the reference's
    log-probs read from the batch (`ref_logp` [B, 2], cached before training)."""
    slot = lambda key, k: batch[key][:, k]
    logp, _ = sequence_logprobs(graphdef, params, slot("tokens", 0), slot("mask", 0), slot("loss_mask", 0))
    # the mismatched pairs only set z0, which is detached: no backward pass through them
    kl_logp, _ = sequence_logprobs(graphdef, jax.lax.stop_gradient(params), slot("tokens", 1), slot("mask", 1),
                                   slot("loss_mask", 1))
    return logp - batch["ref_logp"][:, 0], kl_logp - batch["ref_logp"][:, 1]


def make_kto_loss(graphdef, hp):
    """loss_fn(params, batch, rng, constants) for the generic step (no constants: the reference is cached)."""
    def loss_fn(params, batch, rng, constants):
        ratio, kl_ratio = ratios(graphdef, params, batch)
        return kto_loss(ratio, kl_ratio, batch["desirable"], batch["valid"], hp.beta, hp.lambda_d, hp.lambda_u)

    return loss_fn


def examples(batch):
    """A microbatch's weight: its real rows (the loss is a mean over them)."""
    return batch["valid"].sum().astype(jnp.float32)


def make_kto_step(graphdef, tx, schedule, hp, lora=None):
    """(state, batch, rng[, frozen LoRA base]) -> (state, metrics); with `hp.grad_accum` > 1 each slice of
    the batch estimates its own z0 (as a microbatch does in the paper's and TRL's code)."""
    return make_train_step(make_kto_loss(graphdef, hp), tx, schedule, hp.grad_accum, examples, lora=lora)


def held_out_metrics(graphdef, params, arrays, batch_size: int, hp) -> dict[str, float]:
    """The loss and its metrics on the held-out set as one batch (z0 over all its mismatched pairs);
    `arrays` hold the cached `ref_logp`."""
    fn = jax.jit(lambda p, b: dict(zip(("ratio", "kl_ratio"), ratios(graphdef, p, b))))
    out = evaluate_all(fn, params, arrays, batch_size)
    n = len(arrays["valid"])
    ratio, kl_ratio = (jnp.asarray(out[k].reshape(-1)[:n], jnp.float32) for k in ("ratio", "kl_ratio"))
    loss, m = kto_loss(ratio, kl_ratio, arrays["desirable"], arrays["valid"], hp.beta, hp.lambda_d, hp.lambda_u)
    return {"val_loss": float(loss), **{f"val_{k}": float(v) for k, v in m.items()}}

"""Stage "sft": supervised fine-tuning of the base model on the demonstrations (completion-only
loss), fully, with frozen early layers, or with LoRA adapters (the merged weights are saved).
With `sft.candidates` = n > 0 it also keeps the parameters at n evenly spaced steps (the last
one the final step) under WORKDIR/sft/candidates/, which stage sft_select chooses among."""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from rlhf_jax import checkpoint
from rlhf_jax.models import abstract_model
from rlhf_jax.stages import candidates
from rlhf_jax.stages.base import Training, adapters, merge_batches, train, train_state
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import optim
from rlhf_jax.train import sft as sft_lib

SALT = 1


def check(c, need) -> None:
    for block in ("sft", "rs"):  # rs fine-tunes with sft's fields (its own block)
        need(not (c[block].lora_rank and c[block].freeze_layers), f"{block}.lora_rank",
             "LoRA and freeze_layers exclude each other")
    need(c.sft.candidates >= 0, "sft.candidates", "must be >= 0 (0 = keep none)")
    for block in ("sft", "rs"):
        need(c[block].cut_bucket >= 0, f"{block}.cut_bucket", "must be >= 0 (0 = every batch data.max_len wide)")


def fine_tune(ctx, stage: str, train_arrays=None, init=None) -> tuple[dict[str, Any], Any]:
    """Fine-tune `init` (default: the base model) on `train_arrays` (default: the demonstrations)
    with the fields of config[stage]; rejection sampling reuses it. Returns (summary, params)."""
    c = ctx.config[stage]
    t0 = time.perf_counter()
    train_arrays = ctx.data.arrays("sft_train") if train_arrays is None else train_arrays
    val = ctx.data.arrays("sft_val")
    init = ctx.base.params if init is None else init
    it = ctx.iterator(train_arrays, c.batch_size, SALT)
    total = c.steps or c.epochs * it.steps_per_epoch
    graphdef, _ = abstract_model(ctx.model_cfg(dropout_rate=c.dropout), "lm")
    mask = optim.freeze_mask(init, c.freeze_layers, c.freeze_layers > 0) if c.freeze_layers else None
    tx, sched = optim.from_config(c, total, mask=mask)
    lora = lora_lib.from_block(c)
    # full fine-tuning: the state holds every weight; LoRA: the adapters, over a frozen base constant
    params, base, view = adapters(ctx, c, init, 11)
    constants = None if base is None else (base, None)
    evaluate = sft_lib.make_sft_eval(ctx.base.graphdef)
    merged = jax.jit(view)
    val_bs = min(c.batch_size, len(val["tokens"]))
    # the candidates stage sft_select chooses among: the merged weights at evenly spaced steps
    kept = candidates.evenly_spaced(total, c.get("candidates", 0))
    # cut_bucket: each batch cut after its longest row (right padding: the same loss from fewer columns)
    combine = (lambda b: sft_lib.cut_batch(merge_batches(b), c.cut_bucket)) if c.cut_bucket else merge_batches
    result = train(ctx, stage, Training(
        step=sft_lib.make_sft_step(graphdef, tx, sched, c.dropout > 0, lora, microbatches=c.grad_accum),
        state=train_state(params, tx),
        data={"train": it}, total_steps=total, constants=constants, progress_keys=("loss", "lr"), combine=combine,
        evaluate=lambda s, _: sft_lib.validation_loss(evaluate, merged(s.params), val, val_bs),
        eval_every=c.eval_every, snapshot_steps=tuple(kept), snapshot=lambda s: merged(s.params)), SALT)
    final_params = merged(result.state.params)
    trainable = (lora_lib.count(params) if mask is None else
                 int(sum(float((m * jnp.ones(x.shape)).sum()) for m, x in
                         zip(jax.tree.leaves(mask), jax.tree.leaves(params)))))
    held_out = sft_lib.validation_loss(evaluate, final_params, val, val_bs)
    summary = {"steps": total, "wall_seconds": time.perf_counter() - t0,  # the final validation included
               "train_loss": result.last_metrics.get("loss"), "trainable_params": trainable,
               # the training loop's seconds (summed over resumes) and its median step (since the last resume)
               "train_seconds": result.seconds, "median_step_seconds": result.median_step_seconds, **held_out}
    if kept:
        summary["candidate_steps"] = kept
    return summary, final_params


def preflight(ctx, need) -> None:
    c = ctx.config.sft
    n = len(ctx.data.records("sft_train"))
    need(n >= c.batch_size, "sft.batch_size", f"{n} demonstrations cannot fill one batch of {c.batch_size}")
    need(len(ctx.data.records("sft_val")) > 0, "data.n_sft_val", "no held-out demonstrations")


# what SFT never reads of the run-wide data section: a workdir whose SFT has run takes these changed
# (the rankings a labelling round exported, say) without redoing the SFT
SFT_IGNORES = tuple(f"data.{f}" for f in ("rm_train", "rm_val", "n_rankings", "n_rankings_val", "k", "rm_from_policy",
                                          "prompts", "n_prompts", "ptx", "n_ptx", "gold"))


@register_stage("sft", trains=True, check=check, data=("sft_train",), preflight=preflight, ignores=SFT_IGNORES)
def run(ctx) -> dict[str, Any]:
    summary, params = fine_tune(ctx, "sft")
    checkpoint.save_final(ctx.workdir, "sft", params, summary)
    return summary

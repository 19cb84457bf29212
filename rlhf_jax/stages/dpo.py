"""Stage "dpo": a preference loss (`dpo.loss`: the DPO family, SimPO, ORPO) from the SFT policy on
the rankings the RM would see (all C(K, 2) pairs). A loss that needs a reference reads the
frozen SFT policy's log-probs, cached in one pass before training (`dpo.cache_reference`; the
pass is kept in WORKDIR/dpo/reference_logp.npz, so a resumed run reads it back:
`reference_pass`) or computed live; reference-free losses build no reference at all. With LoRA
the reference is the frozen base the adapters sit on, with the adapters off (the int8 base
under `dpo.lora_int8`), so at step 0 the policy is its reference and every implicit reward is 0."""
from __future__ import annotations

import hashlib
import json
import time
import zipfile
from typing import Any

import jax
import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax import sharding as shd
from rlhf_jax.data.shared_prompt import packed_batch
from rlhf_jax.eval.policy_eval import compare_policies, frontier_eval
from rlhf_jax.objectives.preference import PREFERENCE_LOSSES
from rlhf_jax.stages.base import Training, adapters, merge_batches, train, train_state
from rlhf_jax.stages.gold import gold_reward, gold_stages
from rlhf_jax.stages.handoff import load_sft, policy_stages, sft_stage
from rlhf_jax.stages.preferences import check_preference_sizes, preference_arrays, preference_stages
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.train import dpo as dpo_lib
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import optim
from rlhf_jax.train.ppo import sampling_config
from rlhf_jax.train.state import commit
from rlhf_jax.workdir import flatten

SALT = 5


REFERENCE_FILE = "reference_logp.npz"


def reference_pass(ctx, graphdef, ref, parts: dict[str, tuple[dict, int]]) -> dict[str, np.ndarray]:
    """{part: the reference's [N, K] log-probs} over each part ({part: (arrays, batch_size)}).

    The pass is kept in WORKDIR/dpo/reference_logp.npz under a key of everything it read (the SFT
    stage's summary, the model and dpo blocks, each part's rows and batch size), so a run resumed
    from a checkpoint reads it back instead of passing over the data again; a file with another
    key, or one that cannot be read, is computed again and replaced, with a line saying so."""
    path = ctx.workdir / "dpo" / REFERENCE_FILE
    key = _reference_key(ctx, parts)
    if path.exists():
        try:
            with np.load(path) as f:
                stored = {name: f[name] for name in f.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            stored = {"key": np.asarray(f"unreadable: {e}")}
        if str(stored.get("key")) == key and all(name in stored for name in parts):
            print(f"[dpo] the reference's log-probs read back from {path}", flush=True)
            return {name: stored[name] for name in parts}
        print(f"[dpo] {path} was made from other inputs ({str(stored.get('key'))[:60]}): computing it again",
              flush=True)
    out = {name: dpo_lib.reference_logprobs(graphdef, ref, arrays, batch_size)
           for name, (arrays, batch_size) in parts.items()}
    checkpoint.save_arrays_atomic(path, key=np.asarray(key), **out)
    return out


def _reference_key(ctx, parts) -> str:
    h = hashlib.sha256()
    h.update(checkpoint.summary_path(ctx.workdir, sft_stage(ctx.workdir)).read_bytes())
    h.update(json.dumps([flatten(ctx.config.model), flatten(ctx.config.dpo)], sort_keys=True, default=str).encode())
    for name, (arrays, batch_size) in sorted(parts.items()):
        h.update(f"{name}/{batch_size}".encode())
        for field in ("tokens", "mask", "loss_mask"):
            h.update(np.ascontiguousarray(arrays[field]).tobytes())
    return h.hexdigest()


def check_loss(d, block: str, need) -> None:
    """The preference-loss fields of a block (dpo, online_dpo): loss, beta, label_smoothing..."""
    need(d.loss in PREFERENCE_LOSSES, f"{block}.loss", f"must be one of {PREFERENCE_LOSSES.names()}")
    need(d.logprob_reduction in ("sum", "mean"), f"{block}.logprob_reduction", "must be 'sum' or 'mean'")
    need(d.beta > 0, f"{block}.beta", "must be > 0")
    need(0 <= d.label_smoothing < 0.5, f"{block}.label_smoothing", "must be in [0, 0.5)")
    need(d.loss in ("cdpo", "robust") or d.label_smoothing == 0, f"{block}.label_smoothing",
         f"only cdpo and robust use it ({block}.loss={d.loss!r})")
    need(d.orpo_lambda >= 0, f"{block}.orpo_lambda", "must be >= 0")


def check(c, need) -> None:
    check_loss(c.dpo, "dpo", need)
    need(not c.dpo.pack or c.dpo.grad_accum == 1, "dpo.pack", "needs dpo.grad_accum = 1 (a microbatch slice would "
         "cut the packed rows apart from their rankings)")
    need(c.dpo.eval_every >= 0, "dpo.eval_every", "must be >= 0 (0 = no trajectory)")


def preflight(ctx, need) -> None:
    check_preference_sizes(ctx, need, "dpo")
    need(len(ctx.data.records("eval_prompts")) > 0, "heldout.n_prompts", "no held-out prompts to evaluate on")


@register_stage("dpo", trains=True, needs=lambda c: policy_stages(c) + preference_stages(c) + gold_stages(c),
                check=check, reads=("heldout", "sampling"), data=("rm_train",), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c = ctx.config.dpo
    t0 = time.perf_counter()
    train_arrays, val = preference_arrays(ctx)
    sft = load_sft(ctx)
    graphdef = ctx.base.graphdef
    val_bs = min(c.batch_size, len(val["tokens"]))
    lora = lora_lib.from_block(c)
    # with LoRA: adapters over the frozen SFT policy (int8 with lora_int8), which is also the
    # reference (adapters off; dequantised where it is read): one frozen copy
    params, base, full = adapters(ctx, c, sft, 17)
    ref = None
    if dpo_lib.needs_reference(c):
        ref = commit(sft, ctx.mesh) if base is None else base  # frozen: the trained copy is a separate tree
        parts = {"val": (val, val_bs)}
        if c.cache_reference:  # one pass of the reference over the data, before training
            parts["train"] = (train_arrays, c.batch_size)
        ref_logp = reference_pass(ctx, graphdef, ref, parts)
        val = {**val, "ref_logp": ref_logp["val"]}
        if c.cache_reference:
            train_arrays = {**train_arrays, "ref_logp": ref_logp["train"]}
    it = ctx.iterator(train_arrays, c.batch_size, SALT)
    total = c.steps or c.epochs * it.steps_per_epoch
    tx, sched = optim.from_config(c, total)
    live_ref = ref if ref is not None and not c.cache_reference else None
    constants = live_ref if base is None else (base, live_ref)
    sampling = sampling_config(ctx.config.sampling, ctx.tokenizer, ctx.config.heldout.temperature)
    evaluate = None  # the trajectory: KL to SFT and gold reward on the held-out prompts every eval_every steps
    if c.eval_every:
        evaluate = frontier_eval(graphdef, ctx.data.arrays("eval_prompts"), sampling, jax.random.fold_in(ctx.rng, 98),
                                 sft, gold_reward(ctx), full)
    # dpo.pack: each batch's rankings with every prompt once
    combine = (lambda b: packed_batch(b["train"], shd.batch_shards(ctx.mesh))) if c.pack else merge_batches
    result = train(ctx, "dpo", Training(dpo_lib.make_dpo_step(graphdef, tx, sched, c, lora),
                                        train_state(params, tx), {"train": it}, total, constants=constants,
                                        combine=combine, evaluate=evaluate, eval_every=c.eval_every,
                                        progress_keys=("loss", "reward_accuracy", "reward_margin")), SALT)
    final = full(result.state.params)
    held_out = dpo_lib.held_out_metrics(graphdef, final, val, val_bs, c)
    evals, samples = compare_policies(
        graphdef, ctx.tokenizer, ctx.data.arrays("eval_prompts"), sampling,
        jax.random.fold_in(ctx.rng, 99), sft, final, None, None, gold_reward(ctx), "dpo",
        ctx.config.heldout.n_report_samples)
    summary = {"steps": total, "wall_seconds": time.perf_counter() - t0, "train_seconds": result.seconds,
               "train_reward_accuracy": result.last_metrics.get("reward_accuracy"), **held_out, **evals}
    checkpoint.write_json_atomic(ctx.workdir / "dpo" / "samples.json", samples)
    checkpoint.save_final(ctx.workdir, "dpo", final, summary)
    return summary



"""The one training skeleton every trained stage uses.

A stage describes its training as a `Training`: the pure step, the initial state, its named
data iterators, the number of steps, the frozen constants, an optional evaluation and
host-side hooks. `train` does the rest, the same way for every stage: compile the step with
explicit shardings, restore the latest checkpoint and the data position, run the host loop
(metrics one step late, JSONL / W&B / console, NaN stop, SIGTERM, checkpoints), and close
what it opened even when the stage fails.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.data.batches import BatchIterator
from rlhf_jax.stages import candidates
from rlhf_jax.stages.registry import STAGES
from rlhf_jax.train.loop import Hook, LoopResult, run_loop
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train.state import TrainState, commit, compile_step


def merge_batches(batches: dict[str, dict]) -> dict:
    """One step's batch from one batch of every iterator (their keys must differ)."""
    return {k: v for b in batches.values() for k, v in b.items()}


def stack_batches(batches: dict[str, dict]) -> dict:
    """Ensemble members: the iterators' batches stacked on axis 1 (axis 0 stays the data axis)."""
    first = next(iter(batches.values()))
    return {k: np.stack([b[k] for b in batches.values()], 1) for k in first}


@dataclasses.dataclass
class Training:
    step: Callable  # (state, batch, rng[, constants]) -> (state, metrics[, outputs])
    state: Any
    data: dict[str, BatchIterator]
    total_steps: int
    constants: Any = None
    combine: Callable[[dict[str, dict]], dict] = merge_batches
    evaluate: Callable[[Any, int], dict] | None = None
    eval_every: int = 0
    hooks: tuple[Hook, ...] = ()
    progress_keys: tuple[str, ...] = ("loss",)
    outputs: bool = False  # the step returns (state, metrics, outputs) for the hooks
    # the parameters after each of these steps kept as WORKDIR/<stage>/candidates/step_N (SFT's
    # candidates for stage sft_select); snapshot(state) -> the parameters to keep
    snapshot_steps: tuple[int, ...] = ()
    snapshot: Callable[[Any], Any] = lambda state: state.params


def adapters(ctx, block, init, salt: int, extras: tuple[str, ...] = (), base=None):
    """(trainable params, frozen base, full) of `init` under a block's LoRA fields (lora_rank...).

    With LoRA: the adapters (and the `extras` subtrees, e.g. a value head) drawn from the run's
    key folded with `salt`, the frozen weights (int8 with lora_int8; `base` reuses one, as
    ensemble members share theirs) and full(params) -> the merged weights. Without: a copy of
    `init` (the trained tree is separate from any frozen one), None and the identity."""
    lora = lora_lib.from_block(block)
    if lora is None:
        return jax.tree.map(jnp.copy, init), None, (lambda p: p)
    if base is None:
        base = commit(lora_lib.quantize(init) if block.lora_int8 else init, ctx.mesh)
    params = lora_lib.split(init, lora, jax.random.fold_in(ctx.rng, salt), extras=extras)
    return params, base, (lambda p: lora_lib.full(base, p, lora))


def train_state(params, tx) -> TrainState:
    """A fresh TrainState (k stacked members: `rm.member_state`)."""
    return TrainState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32))


class StoppedEarly(SystemExit):
    """`debug_stop_after` ended a stage early, with a checkpoint, as a kill would (tests)."""


def train(ctx, stage: str, t: Training, salt: int) -> LoopResult:
    """Compile, resume and run `t` as stage `stage` (checkpoints and logs in WORKDIR/<stage>/)."""
    fresh = {name: dataclasses.replace(it, epoch=0, index=0) for name, it in t.data.items()}
    example = ctx.shard(t.combine({name: next(it) for name, it in fresh.items()}))
    step, state = compile_step(t.step, t.state, example, ctx.mesh, constants=t.constants, outputs=t.outputs)
    constants = commit(t.constants, ctx.mesh) if t.constants is not None else None
    step_fn = step if constants is None else (lambda s, b, r: step(s, b, r, constants))
    checkpointer = Checkpointer(ctx.workdir / stage / "checkpoints")
    writer = None
    try:
        start, last, before = 0, {}, 0.0
        restored = checkpointer.restore_latest_readable(state, stage)
        if restored is not None:
            state, meta = restored
            for name, it in t.data.items():
                it.set_position(meta["data"][name])
            start, last = int(meta["step"]), meta.get("metrics", {})
            before = float(meta.get("train_seconds", 0.0))  # the loop's time before the resume
            print(f"[{stage}] resumed from step {start}", flush=True)
        writer = ctx.writer(stage, t.progress_keys, resume_step=start)
        stop_after = ctx.config.debug_stop_after.get(stage, 0) or None
        keep = set(t.snapshot_steps)
        after_step = (lambda s, n: candidates.save(ctx.workdir, stage, n, t.snapshot(s)) if n in keep else None)
        t0 = time.perf_counter()
        meta_fn = lambda: {"data": {k: it.position() for k, it in t.data.items()},
                           "train_seconds": before + time.perf_counter() - t0}
        result = run_loop(stage, step_fn, state, lambda: ctx.shard(t.combine({k: next(it) for k, it in t.data.items()})),
                          total_steps=t.total_steps, start_step=start, rng=jax.random.fold_in(ctx.rng, salt),
                          checkpointer=checkpointer, save_every=ctx.config[STAGES[stage].block].save_every,
                          meta_fn=meta_fn, writer=writer,
                          eval_fn=t.evaluate, eval_every=t.eval_every, stop_after=stop_after, hooks=t.hooks,
                          last_metrics=last, after_step=after_step if keep else None)
    finally:
        if writer is not None:
            writer.close()
        checkpointer.close()
    result = dataclasses.replace(result, seconds=before + result.seconds)  # summed over resumes
    if result.steps < t.total_steps:
        raise StoppedEarly(f"[{stage}] stopped after step {result.steps} of {t.total_steps} (debug_stop_after)")
    return result

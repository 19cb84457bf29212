"""The host loop around a jitted step: batches in, metrics out one step late, checkpoints,
evaluation, NaN guard and SIGTERM / SIGINT handling. Everything stateful lives here, not in
the step.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import numpy as np

from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax import sharding as shd, signals
from rlhf_jax.errors import UserError
from rlhf_jax.logging import NullWriter


class NonFiniteError(UserError, FloatingPointError):
    """A metric became NaN or infinite; the run stops after the last good checkpoint."""

    exit_code = 3


@dataclasses.dataclass
class LoopResult:
    state: Any
    steps: int
    seconds: float  # the loop's time, compiles before it not included (stages.base.train: summed over resumes)
    last_metrics: dict[str, float]
    history: list[dict[str, float]]
    # the median time between steps' metrics reaching the host, the first two steps (compiles) left
    # out: what one step costs, unmoved by a checkpoint save or the process being stopped a while
    median_step_seconds: float | None = None


def _host(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in shd.to_host(metrics).items()}


@dataclasses.dataclass(frozen=True)
class Hook:
    """`fn(step, host_metrics, outputs) -> extra metrics`, every `every` steps: host-side work on
    what a step returned besides its metrics (the PPO episodes, for a gold reward or latents)."""
    fn: Callable[[int, dict, Any], dict]
    every: int = 1


def run_loop(stage: str, step_fn: Callable, state: Any, next_batch: Callable[[], Any], *, total_steps: int,
             start_step: int = 0, rng: jax.Array, checkpointer: Checkpointer | None = None,
             meta_fn: Callable[[], dict] = dict, save_every: int = 0, writer=NullWriter(),
             eval_fn: Callable[[Any, int], dict] | None = None, eval_every: int = 0,
             stop_after: int | None = None, hooks: tuple[Hook, ...] = (),
             last_metrics: dict[str, float] | None = None,
             after_step: Callable[[Any, int], None] | None = None) -> LoopResult:
    """Run steps start_step+1 .. total_steps.

    `step_fn(state, batch, rng)` returns (state, metrics) or (state, metrics, outputs); the
    metrics are scalars, read one step late; `hooks` receive the outputs. `stop_after` ends
    the loop early after that step (with a checkpoint), as a kill would. `meta_fn()` returns
    the JSON metadata saved beside the state (e.g. the data position); the last metrics are
    saved there too, so a run resumed with no step left still reports them (`last_metrics`).
    `after_step(state, step)` runs after every step, before that step's checkpoint (whatever it
    writes exists for every step a resumed run starts after: SFT's candidate snapshots).
    """
    history: list[dict[str, float]] = []
    pending = None
    t0 = time.perf_counter()
    last: dict[str, float] = dict(last_metrics or {})
    done_at: list[float] = []  # when each step's metrics reached the host

    def drain(item):
        step, metrics, outputs = item
        host = _host(metrics)
        done_at.append(time.perf_counter())
        for hook in hooks:
            if hook.every and step % hook.every == 0:
                host.update(hook.fn(step, host, outputs))
        bad = [k for k, v in host.items() if not math.isfinite(v)]
        if bad:
            good = checkpointer.latest_step() if checkpointer else None
            raise NonFiniteError(f"[{stage}] step {step}: non-finite {', '.join(bad)}; the run stopped "
                                 f"(last good checkpoint: {f'step {good}' if good is not None else 'none'}). "
                                 f"Lower the learning rate or check the data, then rerun (with --fresh to start over)")
        host["step"] = step
        writer.write(step, host)
        writer.progress(step, total_steps, host)
        history.append(host)
        return host

    def save(step):
        if checkpointer is not None:
            checkpointer.save(step, state, {"step": step, **meta_fn(), "metrics": last})

    step = start_step
    while step < total_steps:
        step += 1
        batch = next_batch()
        state, *out = step_fn(state, batch, jax.random.fold_in(rng, step))
        if pending is not None:
            last = drain(pending)  # the previous step's metrics, read while this one runs
        pending = (step, out[0], out[1] if len(out) > 1 else None)
        if eval_fn is not None and eval_every and (step % eval_every == 0 or step == total_steps):
            evals = {f"eval/{k}": float(v) for k, v in eval_fn(state, step).items()}
            writer.write(step, evals)
            history.append({"step": step, **evals})
        if after_step is not None:
            after_step(state, step)
        final = step == total_steps or (stop_after is not None and step >= stop_after)
        stop = signals.requested()  # asked once per step, so the step saved is the step reported
        if (save_every and step % save_every == 0) or final or stop:
            last = drain(pending)
            pending = None
            save(step)
        if stop:
            raise signals.StopRequested(stage, step, stop)
        if stop_after is not None and step >= stop_after and step < total_steps:
            break
    if pending is not None:
        last = drain(pending)
    jax.block_until_ready(state)
    gaps = np.diff(done_at)[1:]  # from the third step on: the first two include compiles
    return LoopResult(state, step, time.perf_counter() - t0, last, history,
                      float(np.median(gaps)) if len(gaps) else None)

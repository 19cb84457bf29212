"""The stages of a run, one module each, registered by name (see `registry.py`):

    sft   supervised fine-tuning                    rm    reward model (single, ensemble, InfoRM)
    fgrm  fine-grained category reward models       ppo   PPO against the trained reward
    dpo   preference losses (DPO family, SimPO...)  bon   best-of-n curves
    rs    rejection-sampling fine-tuning

`run_stages(ctx)` runs the stages the config lists, in the order their needs set; a finished
stage (its summary in the workdir) is not run again.
"""
from __future__ import annotations

from typing import Any

from rlhf_jax import checkpoint
# each module registers itself; imported in pipeline order, the order summaries are listed in
from rlhf_jax.stages import sft, rm, fgrm, ppo, dpo, bon, rs  # noqa: F401,I001
from rlhf_jax.stages.registry import STAGES, MissingInputError, finished, plan, register_stage

__all__ = ["STAGES", "MissingInputError", "plan", "register_stage", "run", "run_stages"]


def run_stages(ctx, stages: list[str] | None = None) -> dict[str, Any]:
    """Run the planned stages; returns every finished stage's summary (listed or not)."""
    order = stages or plan(ctx.config, ctx.workdir)
    summary = {}
    for name in order:
        done = checkpoint.read_summary(ctx.workdir, name) if finished(ctx.workdir, name) else None
        summary[name] = done if done is not None else STAGES[name].run(ctx)
    for name in STAGES:
        if name not in summary and finished(ctx.workdir, name):
            summary[name] = checkpoint.read_summary(ctx.workdir, name)
    return {name: summary[name] for name in STAGES if name in summary}


def run(config, workdir, *, use_wandb: bool = True) -> dict[str, Any]:
    """Plan (a missing input fails before anything is built), build the context, run the stages."""
    from rlhf_jax.context import build_context
    order = plan(config, workdir)
    return run_stages(build_context(config, workdir, use_wandb=use_wandb), order)

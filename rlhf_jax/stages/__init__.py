"""The stages of a run, one module each, registered by name (see `registry.py`):

    sft   supervised fine-tuning                    rm    reward model (single, ensemble, InfoRM)
    sft_select  the SFT candidate a criterion picks (InstructGPT: by the RM's score)
    fgrm  fine-grained category reward models       ppo   PPO (or a critic-free method) against the reward
    dpo   preference losses (DPO family, SimPO...)  bon   best-of-n curves
    rs    rejection-sampling fine-tuning            eval  evaluation suites on any checkpoints
    clf   the gold classifier (IMDb sentiment)      prefs SFT samples ranked by the gold reward
    kto   KTO on unpaired binary feedback           online_dpo  DPO on pairs the policy samples
    active  rounds of label, retrain, select: which comparisons to label (active learning)

`run_stages(ctx)` runs the stages the config lists, in the order their needs set; a finished
stage (its summary in the workdir) is not run again.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import contextlib

from rlhf_jax import checkpoint, distributed, signals, workdir as workdirs
from rlhf_jax.context import build_context
# each stage module registers itself when imported: the pipeline's in pipeline order, the order
# summaries are listed in (the IMDb experiment's clf and prefs last), then any other module of
# this package (a new stage is one module here: nothing to add to a list)
from rlhf_jax.stages import sft, rm, fgrm, ppo, dpo, bon, rs, evaluation, classifier, prefs  # noqa: F401,I001
from rlhf_jax.stages.registry import (STAGES, MissingInputError, finished, plan, register_stage, stage_reads,
                                     started)
from rlhf_jax.stages.validate import need, validate_config

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STAGES", "MissingInputError", "plan", "register_stage", "run", "run_stages"]


def run_stages(ctx, stages: list[str] | None = None) -> dict[str, Any]:
    """Run the planned stages; returns every finished stage's summary (listed or not)."""
    order = stages or plan(ctx.config, ctx.workdir)
    summary = {}
    for name in order:
        signals.check(name)
        done = checkpoint.read_summary(ctx.workdir, name) if finished(ctx.workdir, name) else None
        summary[name] = done if done is not None else STAGES[name].run(ctx)
    for name in STAGES:
        if name not in summary and finished(ctx.workdir, name) and not STAGES[name].rerun:
            summary[name] = checkpoint.read_summary(ctx.workdir, name)
    return {name: summary[name] for name in STAGES if name in summary}


def preflight(ctx, order: list[str]) -> None:
    """Every listed stage's data-size checks, before the first stage starts."""
    for name in order:
        if STAGES[name].preflight is not None and not finished(ctx.workdir, name):
            STAGES[name].preflight(ctx, need)


def run(config, workdir, *, use_wandb: bool = True, fresh: bool = False) -> dict[str, Any]:
    """One run on a workdir: hold its lock, check the config against the one it was started
    with, plan (a missing input fails before anything is built), build the context, check
    every stage's data, run the stages. On several processes, process 0 holds the lock and
    writes; every process checks the same config (`rlhf_jax.distributed`)."""
    validate_config(config)
    primary = distributed.primary()
    path = workdirs.prepare(workdir) if primary else workdirs.Path(workdir)
    distributed.barrier("workdir")
    with workdirs.RunLock(path) if primary else contextlib.nullcontext():
        if fresh and primary:
            workdirs.start_over(path)
        distributed.barrier("fresh")
        distributed.agree("the config (its fingerprint)", workdirs.fingerprint(workdirs.flatten(config)))
        order = plan(config, path)
        reads = {name: stage_reads(name, config) for name in STAGES}
        ignores = {name: STAGES[name].ignores for name in STAGES}
        in_progress = [s for s in STAGES if started(path, s) and not finished(path, s)]
        workdirs.check_processes(path, distributed.process_count(), in_progress, write=primary)
        changed = workdirs.check_config(path, config, reads, {s for s in STAGES if started(path, s)}, ignores,
                                        write=primary)
        distributed.barrier("config")
        if changed and primary:
            print(f"[run] config fields changed since this workdir's last run (no started stage reads them): "
                  f"{', '.join(changed)}", flush=True)
        ctx = build_context(config, path, use_wandb=use_wandb)
        preflight(ctx, order)
        if primary:  # a launch that gets this far runs stages: where (WORKDIR/hosts.jsonl)
            workdirs.record_launch(path, distributed.process_count(), [s for s in STAGES if finished(path, s)],
                                   in_progress)
        return run_stages(ctx, order)

"""The stage registry and the plan the runner follows.

A stage is one module under `rlhf_jax/stages/` that registers its entry point:

    @register_stage("rm", needs=lambda c: ("sft",), check=check_rm, reads=("rm", "inform"))
    def run(ctx: RunContext) -> dict: ...          # returns the stage's summary

`needs(config)` names the stages whose hand-off files (WORKDIR/<stage>/final and
summary.json) the stage reads; `check(config, need)` validates the stage's config section;
`reads` names the config sections (or field prefixes) its results depend on, besides the
run-wide ones (seed, model, data), so a workdir can refuse a config change a started stage
would not see; `preflight(ctx, need)` checks its data sizes before the first stage starts.
`plan` orders the stages a config lists so that every need runs first, and fails before
anything is built when a need is neither listed nor already finished in the workdir.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from rlhf_jax.checkpoint import final_path, summary_path
from rlhf_jax.errors import UserError
from rlhf_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable
    needs: Callable
    check: Callable | None
    produces_params: bool
    reads: tuple[str, ...]
    preflight: Callable | None
    rerun: bool  # run every time it is listed (evaluation): never "finished", never constrains a config change
    ignores: tuple[str, ...]  # fields under `reads` its results do not depend on


STAGES = Registry("stage")
SAMPLING = ("ppo.max_new_tokens", "ppo.top_k", "ppo.top_p", "ppo.sampler")  # how every stage samples a policy


def register_stage(name: str, *, needs: Callable = lambda c: (), check: Callable | None = None,
                   produces_params: bool = True, reads: tuple[str, ...] = (),
                   preflight: Callable | None = None, rerun: bool = False, ignores: tuple[str, ...] = ()
                   ) -> Callable:
    """Register `run(ctx) -> summary` as stage `name` (see the module docstring)."""
    def add(run):
        STAGES.register(name, Stage(name, run, needs, check, produces_params, (name,) + tuple(reads), preflight,
                                    rerun, tuple(ignores)))
        return run
    return add


def listed(config) -> list[str]:
    return [s for s in config.stages.split(",") if s]


class MissingInputError(UserError, FileNotFoundError):
    """A stage's input is neither produced by a listed stage nor present in the workdir."""


def started(workdir: str | Path, stage: str) -> bool:
    """A stage has started once it wrote a checkpoint, its final parameters or its summary."""
    if STAGES[stage].rerun:
        return False
    d = Path(workdir) / stage
    ckpt = d / "checkpoints"
    return (summary_path(workdir, stage).exists() or final_path(workdir, stage).exists()
            or (ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())))


def finished(workdir: str | Path, stage: str) -> bool:
    """A stage is finished when its summary exists (written last, after its final parameters)."""
    if STAGES[stage].rerun or not summary_path(workdir, stage).exists():
        return False
    return not STAGES[stage].produces_params or final_path(workdir, stage).exists()


def plan(config, workdir: str | Path) -> list[str]:
    """The listed stages in an order that runs every need first (listed order among equals)."""
    wanted = listed(config)
    for name in wanted:
        STAGES[name]  # an unknown name fails here, listing the valid ones
    order, visiting = [], set()

    def visit(name: str, path: tuple[str, ...]):
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"stages {' -> '.join(path + (name,))} need each other in a cycle")
        visiting.add(name)
        for need in STAGES[name].needs(config):
            if need in wanted:
                visit(need, path + (name,))
            elif not finished(workdir, need):
                missing = summary_path(workdir, need) if STAGES[need].produces_params is False else final_path(
                    workdir, need)
                raise MissingInputError(f"stage {name!r} needs {missing} from stage {need!r}, which is not "
                                        f"listed in config.stages and has not finished in this workdir: "
                                        f"add it (--config.stages={need},{','.join(wanted)}) or point "
                                        f"--workdir at a run that has it")
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order

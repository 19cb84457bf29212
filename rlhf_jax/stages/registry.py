"""The stage registry and the plan the runner follows.

A stage is one module under `rlhf_jax/stages/` that registers its entry point:

    @register_stage("rm", trains=True, needs=needs, check=check, reads=("inform", "sampling"))
    def run(ctx: RunContext) -> dict: ...          # returns the stage's summary

`block` is the config section holding the stage's settings (default: its name; None for a
stage without one); `trains` says it trains with the skeleton (`stages.base.train`), so its
block holds the optimizer fields, batch_size and save_every (and, if it has them, grad_accum
and the LoRA fields), which `validate.py` checks for every such stage. `needs(config)` names
the stages whose hand-off files (WORKDIR/<stage>/final and summary.json) the stage reads;
`check(config, need)` validates the rest of its block; `data` names the `data.*` files it
needs when data.source = "files"; `preflight(ctx, need)` checks its data sizes before the
first stage starts.

What a stage's results depend on (`stage_reads`), besides the run-wide fields (seed, model,
data), is derived: its block, the shared sections it declares in `reads` (sampling, heldout,
inform: sections no stage owns), and everything the stages it needs read, since their
outputs are its inputs (a stage that needs clf judges with the classifier: it reads clf.*).
A workdir refuses a config change a started stage would not see.
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
    reads: tuple[str, ...]  # its block and the shared sections it declares (see `stage_reads` for all)
    preflight: Callable | None
    rerun: bool  # run every time it is listed (evaluation): never "finished", never constrains a config change
    ignores: tuple[str, ...]  # fields under `reads` its results do not depend on
    block: str | None = None  # its config section
    trains: bool = False  # trains with the skeleton: its block has the shared training fields
    data: tuple[str, ...] = ()  # data.* files it needs with data.source = "files"


STAGES = Registry("stage")


_NAME = "<the stage's name>"


def register_stage(name: str, *, block: str | None = _NAME, trains: bool = False,
                   needs: Callable = lambda c: (), check: Callable | None = None, produces_params: bool = True,
                   reads: tuple[str, ...] = (), data: tuple[str, ...] = (), preflight: Callable | None = None,
                   rerun: bool = False, ignores: tuple[str, ...] = ()) -> Callable:
    """Register `run(ctx) -> summary` as stage `name` (see the module docstring); `block`
    defaults to the stage's name."""
    block = name if block == _NAME else block
    if trains and not block:
        raise ValueError(f"stage {name!r} trains, so it needs a config block")

    def add(run):
        own = (block,) if block else ()
        STAGES.register(name, Stage(name, run, needs, check, produces_params, own + tuple(reads), preflight,
                                    rerun, tuple(ignores), block, trains, tuple(data)))
        return run
    return add


def stage_reads(name: str, config) -> tuple[str, ...]:
    """The config sections (or field prefixes) stage `name`'s results depend on, besides the
    run-wide ones: its block, the sections it declares, and what every stage it needs reads
    (recursively: a need's results are its inputs)."""
    out: dict[str, None] = {}
    seen: set[str] = set()

    def visit(stage: str) -> None:
        if stage in seen:
            return
        seen.add(stage)
        out.update(dict.fromkeys(STAGES[stage].reads))
        for need in STAGES[stage].needs(config):
            visit(need)

    visit(name)
    return tuple(out)


def trained() -> list[Stage]:
    """The registered stages that train (their blocks hold the shared training fields)."""
    return [STAGES[name] for name in STAGES if STAGES[name].trains]


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

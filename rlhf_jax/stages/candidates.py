"""Candidate parameter snapshots a trained stage keeps beside its final parameters (SFT's
`sft.candidates`, which stage sft_select chooses among): WORKDIR/<stage>/candidates/step_N,
one orbax directory of the parameters after step N each, written through a temporary name and
a rename (a kill leaves the old snapshot or the new one, never half of one; a resumed run
rewrites the snapshots of the steps it repeats with the same parameters)."""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from rlhf_jax import checkpoint
from rlhf_jax.errors import UserError


def evenly_spaced(total: int, n: int) -> list[int]:
    """n steps spread evenly over 1..total, the last one `total`: round(total * i / n), i = 1..n
    (fewer when total < n: a step is kept once)."""
    if n <= 0:
        return []
    return sorted({max(1, round(total * i / n)) for i in range(1, n + 1)})


def directory(workdir: str | Path, stage: str) -> Path:
    return (Path(workdir) / stage / "candidates").absolute()


def path(workdir: str | Path, stage: str, step: int) -> Path:
    return directory(workdir, stage) / f"step_{step}"


def save(workdir: str | Path, stage: str, step: int, params) -> None:
    """The parameters after `step` as a candidate of `stage` (atomically, see the module docstring)."""
    checkpoint.save_params(path(workdir, stage, step), params)


def load(workdir: str | Path, stage: str, step: int, like):
    """The candidate of `stage` after `step`, shaped and sharded like `like`."""
    p = path(workdir, stage, step)
    if not p.exists():
        raise UserError(f"{p}: stage {stage!r} kept no candidate at step {step} (its summary lists the "
                        f"candidates it kept; run it with {stage}.candidates > 0, or --fresh)")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(p, abstract)

"""Stages shared across a sweep's grid points: run once per seed, copied to the other points'
fresh workdirs (`--share sft,rm`), refused when a grid key is a field such a stage reads."""
from __future__ import annotations

from rlhf_jax.sweep.spec import Run, Sweep


def check_share(sweep: Sweep, share: tuple[str, ...]) -> None:
    """Sharing a stage across grid points is safe only when no grid key is a field it reads."""
    from rlhf_jax.stages import STAGES
    from rlhf_jax.workdir import readers
    for name in share:
        STAGES[name]  # an unknown stage fails here, listing the valid ones
    reads = {name: STAGES[name].reads for name in STAGES}
    ignores = {name: STAGES[name].ignores for name in STAGES}
    for key in sweep.grid:
        clash = sorted(readers(key, reads, ignores) & set(share))
        if clash:
            raise ValueError(f"--share {','.join(share)}: stage {', '.join(clash)} reads --grid {key}, so its "
                             f"results differ between points; share only stages the grid does not change")


def share_stages(run: Run, runs: list[Run], share: tuple[str, ...]) -> list[str]:
    """Copy each shared stage a sibling run of the same seed has finished into `run`'s fresh
    workdir (its summary and final parameters; never into a workdir that has started)."""
    import shutil
    if not share or (run.workdir / "config.json").exists():
        return []
    copied = []
    for stage in share:
        source = next((r.workdir / stage for r in runs if r.seed == run.seed and r is not run
                       and (r.workdir / stage / "summary.json").exists()), None)
        if source is not None and not (run.workdir / stage).exists():
            (run.workdir / stage).mkdir(parents=True)
            for name in ("final", "summary.json", "metrics.jsonl", "candidates"):  # candidates: sft_select
                if (source / name).is_dir():
                    shutil.copytree(source / name, run.workdir / stage / name)
                elif (source / name).exists():
                    shutil.copy2(source / name, run.workdir / stage / name)
            copied.append(stage)
    return copied

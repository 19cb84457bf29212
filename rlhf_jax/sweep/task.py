"""One SLURM array task of a sweep: run entry INDEX of a submission's runs.json.

    python -m rlhf_jax.sweep.task OUT/slurm/submit_1/runs.json [INDEX]   # INDEX: $SLURM_ARRAY_TASK_ID

The run's `python -m rlhf_jax.main` command runs with a sweep child's environment, its output
appended to WORKDIR/run.log; SIGTERM (time limit, scancel) is forwarded so it checkpoints. A run
already finished is not started again. The exit status is the run's.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

USAGE = "usage: python -m rlhf_jax.sweep.task RUNS_JSON [INDEX]  (INDEX defaults to $SLURM_ARRAY_TASK_ID)"


def entry(runs_file: Path, index: int) -> dict:
    """Entry `index` of runs.json, or a ValueError naming the valid range."""
    listing = json.loads(Path(runs_file).read_text())
    runs = listing["runs"]
    if not 0 <= index < len(runs):
        raise ValueError(f"{runs_file}: task index {index} is not in 0-{len(runs) - 1}")
    return {**runs[index], "sweep": listing.get("sweep", "")}


def main(argv: list[str] | None = None) -> int:
    """Run one entry; returns the run's exit status (2: bad arguments)."""
    from rlhf_jax.sweep import procs
    from rlhf_jax.sweep.runner import finished
    from rlhf_jax.sweep.spec import resolve_config
    args = sys.argv[1:] if argv is None else argv
    index_text = args[1] if len(args) > 1 else os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if len(args) not in (1, 2) or not index_text.isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    try:
        run = entry(Path(args[0]), int(index_text))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir = Path(run["workdir"])
    if finished(workdir, resolve_config(run["config"], run["overrides"])):
        print(f"[sweep task] {run['label']}: already finished in {workdir}")
        return 0
    print(f"[sweep task] {run['label']}: running in {workdir} (log {workdir / procs.LOG_NAME})", flush=True)
    code = procs.run_attached(run["command"], workdir, procs.environment(None, f"sweep:{run['sweep']}"))
    print(f"[sweep task] {run['label']}: {procs.describe_exit(code)}", flush=True)
    return procs.exit_status(code)


if __name__ == "__main__":
    sys.exit(main())

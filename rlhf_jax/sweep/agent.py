"""The program of a W&B sweep agent's run: one run of a sweep, chosen by the parameters W&B hands over.

    python -m rlhf_jax.sweep.agent --out OUT --ppo.kl_coef=0.05 --seed=1

reads the sweep from OUT/sweep.json (written by experiments/sweep.py --backend wandb), maps the
parameters to the run's workdir OUT/<point>/seed_<s> and overrides (`wandb_sweep.run_for`) and
runs its `python -m rlhf_jax.main` command (W&B on: the agent's environment names its run), output
appended to WORKDIR/run.log, from the directory the sweep was started in. A finished run is not
run again. The exit status is the run's (2: the parameters or OUT do not name a run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

USAGE = "usage: python -m rlhf_jax.sweep.agent --out OUT --KEY=VALUE... (W&B's ${args})"


def load_sweep(out: Path):
    """The Sweep that OUT/sweep.json describes, and the directory it was started in."""
    from rlhf_jax.sweep.spec import Sweep
    meta = json.loads((out / "sweep.json").read_text())
    sweep = Sweep(meta["config"], {k: list(v) for k, v in meta["grid"].items()}, list(meta["seeds"]),
                  dict(meta["sets"]), out, bool(meta.get("vary_world_seed")), meta.get("name") or "")
    return sweep, meta.get("cwd") or os.getcwd()


def plan(out: Path, args: list[str]):
    """(run, command, working directory) for W&B's `args` in the sweep at `out`."""
    from rlhf_jax.sweep import procs
    from rlhf_jax.sweep.wandb_sweep import parse_args, run_for
    sweep, cwd = load_sweep(out)
    run = run_for(sweep, parse_args(args))
    return run, procs.command(sweep.config, run.workdir, run.overrides, wandb=True), cwd, sweep


def main(argv: list[str] | None = None) -> int:
    """Run the run W&B asked for; returns its exit status."""
    from rlhf_jax.sweep import procs
    from rlhf_jax.sweep.runner import run_finished
    from rlhf_jax.sweep.spec import SweepError

    parser = argparse.ArgumentParser(prog="python -m rlhf_jax.sweep.agent", usage=USAGE, allow_abbrev=False)
    parser.add_argument("--out", required=True)
    parsed, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    out = parsed.out
    try:
        run, cmd, cwd, sweep = plan(Path(out).resolve(), rest)
    except (OSError, ValueError, KeyError) as e:  # SweepError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.path.isdir(cwd):
        os.chdir(cwd)  # the config path is relative to where the sweep started
    try:
        done = run_finished(sweep, run)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if done:
        print(f"[sweep agent] {run.label}: already finished in {run.workdir}")
        return 0
    print(f"[sweep agent] {run.label}: running in {run.workdir} (log {run.workdir / procs.LOG_NAME})", flush=True)
    code = procs.run_attached(cmd, run.workdir, procs.environment(None, f"sweep:{sweep.label}"))
    print(f"[sweep agent] {run.label}: {procs.describe_exit(code)}", flush=True)
    return procs.exit_status(code)


if __name__ == "__main__":
    sys.exit(main())

"""Sweep a config over a grid of overrides and seeds; aggregate the results over seeds.

    python experiments/sweep.py --config configs/instructgpt.py:tiny --out sweeps/kl \\
        --grid ppo.kl_coef=0.01,0.05,0.2 --grid rm.members=1,5 --seeds 0-4 --set ppo.iterations=50 \\
        --metrics ppo.gold_reward_final,ppo.kl_final --jobs 2

Each grid point x seed is `python -m rlhf_jax.main` in OUT/<point>/seed_<s> (log: run.log there).
Run the same command again to resume: finished runs are skipped, interrupted ones resume from
their checkpoints. Writes OUT/sweep.json, OUT/results.jsonl, OUT/results.csv and OUT/summary.md.

--backend local (default) runs them here, --jobs at a time. --backend slurm submits the pending
runs as one SLURM array job (OUT/slurm/submit_<k>/array.sh, --slurm_opts passed to sbatch) and
returns; --backend wandb writes a W&B grid sweep (OUT/wandb/sweep.yaml) for `wandb agent`, created
online when W&B is reachable. Run the same command again once they have ended: it writes the
tables from the finished runs and hands over the unfinished ones again (docs/clusters.md).

Exit status: 0 every run finished (or was handed to SLURM / W&B); 1-100 that many runs failed
(100 = 100 or more); 124 the sweep could not start (a bad flag, the config, another runner in
OUT, sbatch missing or refusing the job); 130/143 stopped by SIGINT/SIGTERM (running runs
checkpoint first; run the command again to go on).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rlhf_jax from this checkout

CANNOT_START = 124
STOP_CODES = {"SIGINT": 130, "SIGTERM": 143}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(CANNOT_START)


def parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file and variants, as for rlhf_jax.main")
    p.add_argument("--out", required=True, help="the sweep's directory (one workdir per run inside)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values of one config field (repeat for a Cartesian product; ';' separates values "
                        "that hold commas)")
    p.add_argument("--seeds", default="0", help="config.seed values: 0-4, 0,2,7 or 0-2,7 (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a fixed override of every run")
    p.add_argument("--vary_world_seed", action="store_true",
                   help="also set data.world.seed to each seed (a new task world per seed; default: one world)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each pinned to its share of the CPUs")
    p.add_argument("--metrics", default="", help="headline metrics of summary.md (stage.metric,...); "
                   "default ppo.gold_reward_final,ppo.kl_final when present, else all")
    p.add_argument("--interval", default="t", choices=("t", "bootstrap"),
                   help="95%% interval over seeds: t (default, right for few seeds) or bootstrap (BCa)")
    p.add_argument("--no_wandb", action="store_true", help="disable W&B in every run")
    p.add_argument("--project", default="", help="W&B project of every run (config.log.project)")
    p.add_argument("--name", default="", help="the sweep's name in W&B run names and tags (default: OUT's name)")
    p.add_argument("--share", default="", help="stages run once per seed and copied to every point (e.g. sft,rm); "
                                                "refused when a --grid key is a field they read")
    p.add_argument("--lock_wait", type=float, default=300.0,
                   help="seconds to wait for a run still held by a killed runner's child (default 300)")
    p.add_argument("--backend", default="local", choices=("local", "slurm", "wandb"),
                   help="where the runs go: local processes (default), one SLURM array job, or W&B sweep agents")
    p.add_argument("--slurm_opts", default="", metavar="'OPTS'",
                   help="sbatch options for every task, e.g. '--partition=gpu --time=4:00:00 --gres=gpu:1'")
    p.add_argument("--wait", action="store_true",
                   help="--backend slurm: wait for the array job to end (sbatch --wait), then write the tables")
    return p


def _attach_opts(argv: list[str]) -> list[str]:
    """`--slurm_opts --time=1:00:00` -> `--slurm_opts=--time=1:00:00` (argparse would take the value for a flag)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--slurm_opts" and i + 1 < len(argv):
            out.append(f"--slurm_opts={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print where the outputs are; returns the exit status."""
    from rlhf_jax.sweep import Sweep, SweepError, parse_grid, parse_seeds, parse_sets, run_sweep
    from rlhf_jax.sweep.slurm import parse_opts
    args = parser().parse_args(_attach_opts(sys.argv[1:] if argv is None else list(argv)))
    try:
        sets = parse_sets(args.set)
        if args.project:
            sets["log.project"] = args.project
        sweep = Sweep(args.config, parse_grid(args.grid), parse_seeds(args.seeds), sets, Path(args.out),
                      args.vary_world_seed, args.name)
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] or None
        share = tuple(s.strip() for s in args.share.split(",") if s.strip())
        outcome = run_sweep(sweep, jobs=args.jobs, wandb=not args.no_wandb, interval=args.interval,
                            metrics=metrics, argv=["python", *(sys.argv if argv is None else [__file__, *argv])],
                            share=share, backend=args.backend, slurm_opts=parse_opts(args.slurm_opts),
                            wait=args.wait)
    except (SweepError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return CANNOT_START
    ok = sum(r["status"] == "ok" for r in outcome.runs)
    print(f"[sweep] {ok}/{len(outcome.runs)} runs finished, {outcome.failed} failed"
          + (f", {outcome.submitted} submitted ({args.backend}): run this command again once they have ended"
             if outcome.submitted else "")
          + (f", stopped by {outcome.interrupted}" if outcome.interrupted else ""))
    for name in ("summary.md", "results.csv", "results.jsonl", "sweep.json"):
        print(f"  {os.path.join(args.out, name)}")
    if outcome.interrupted:
        return STOP_CODES.get(outcome.interrupted, 143)
    return min(outcome.failed, 100)


if __name__ == "__main__":
    sys.exit(main())

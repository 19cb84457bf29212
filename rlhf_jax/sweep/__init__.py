"""Sweeps: a grid of config overrides x seeds, each an ordinary run in its own workdir.

    from rlhf_jax.sweep import Sweep, parse_grid, parse_seeds, run_sweep
    sweep = Sweep("configs/instructgpt.py:micro", parse_grid(["ppo.kl_coef=0.01,0.1"]), parse_seeds("0-2"),
                  {}, Path("sweeps/kl"))
    outcome = run_sweep(sweep, jobs=1, wandb=False)

`spec` parses and expands the flags, `procs` starts one run as a child process, `runner`
runs them (resuming a killed sweep) and `results` aggregates the summaries over seeds. The
CLI is `experiments/sweep.py`. Past one machine, `run_sweep(..., backend="slurm")` submits the
pending runs as one SLURM array job (`slurm`; each task is `python -m rlhf_jax.sweep.task`) and
`backend="wandb"` writes a W&B grid sweep whose agents run `python -m rlhf_jax.sweep.agent`
(`wandb_sweep`); docs/clusters.md.
"""
from rlhf_jax.sweep.results import aggregate, interval, numeric_metrics, table
from rlhf_jax.sweep.runner import SweepOutcome, finished, run_finished, run_sweep
from rlhf_jax.sweep.spec import (Point, Run, Sweep, SweepError, check, expand, parse_grid, parse_seeds, parse_sets,
                                 points, resolve_config)

__all__ = ["Point", "Run", "Sweep", "SweepError", "SweepOutcome", "aggregate", "check", "expand", "finished",
           "interval", "numeric_metrics", "parse_grid", "parse_seeds", "parse_sets", "points", "resolve_config",
           "run_finished", "run_sweep", "table"]

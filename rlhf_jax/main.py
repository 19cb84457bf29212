"""One CLI for the pipeline.

    python -m rlhf_jax.main --config configs/instructgpt.py:tiny --workdir runs/tiny
    python -m rlhf_jax.main --config configs/instructgpt.py --workdir runs/x --config.stages=sft,rm
    python -m rlhf_jax.main --config configs/instructgpt.py --workdir runs/x --config.ppo.kl_coef=0.02

Runs the stages the config lists, each resuming from its own checkpoint; SIGTERM saves a
checkpoint and exits with code 143. Writes WORKDIR/summary.json, WORKDIR/report.md and
WORKDIR/*_curves.png, and prints where they are.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/instructgpt.py", "pipeline config (file:variant)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory", required=True)
_NO_WANDB = flags.DEFINE_bool("no_wandb", False, "disable W&B logging (JSONL and console stay on)")


def main(argv) -> int:
    del argv
    sys.path.insert(0, os.getcwd())  # configs/ importable from the repository root
    from rlhf_jax.context import ConfigError
    from rlhf_jax.eval.report import plot_curves, write_report
    from rlhf_jax.registry import UnknownNameError
    from rlhf_jax.stages import MissingInputError, run
    from rlhf_jax.train.loop import StopRequested, install_sigterm_handler

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
    config = _CONFIG.value
    workdir = Path(_WORKDIR.value)
    install_sigterm_handler()
    t0 = time.perf_counter()
    try:
        summary = run(config, workdir, use_wandb=not _NO_WANDB.value and config.log.wandb != "disabled")
    except (ConfigError, UnknownNameError, MissingInputError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:
        print(f"[{e.stage}] SIGTERM: checkpoint saved at step {e.step}; run the same command to resume",
              file=sys.stderr)
        return 143
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary_path = workdir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    plots = plot_curves(workdir)
    report = write_report(workdir, summary, " ".join(sys.argv))
    print(json.dumps(summary, indent=2))
    print(f"\nfinished in {time.perf_counter() - t0:.0f}s")
    print(f"summary: {summary_path}\nreport:  {report}\nplots:   {', '.join(str(p) for p in plots)}")
    return 0


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()

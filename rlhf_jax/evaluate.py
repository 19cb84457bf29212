"""The evaluation CLI: the `eval` stage on a workdir, with a suite from configs/eval.py.

    python -m rlhf_jax.evaluate --config configs/eval.py:tiny --workdir runs/tiny
    python -m rlhf_jax.evaluate --config configs/eval.py:smollm2,small --workdir runs/eval_smollm2

When --workdir holds a finished run, its stored config is kept and only the suite's
`evaluate` section (and `stages=eval`) is taken from --config, so the run's checkpoints are
evaluated with the tokenizer, model and data they were trained with. Results: WORKDIR/eval/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf_jax import main as cli
from rlhf_jax.workdir import unflatten


def with_run_config(config, workdir: Path):
    """The run's stored config with this suite's `evaluate` section and `stages=eval`."""
    stored = workdir / "config.json"
    if not stored.exists():
        return config
    run = unflatten(json.loads(stored.read_text())["config"])
    run.evaluate = config.evaluate
    run.stages = "eval"
    print(f"[evaluate] {workdir} holds a run: its config is kept, the evaluate section comes from --config",
          flush=True)
    return run


def run() -> None:
    cli.PREPARE_CONFIG = with_run_config
    cli.run()


if __name__ == "__main__":
    run()

"""Helpers shared by the over-optimisation figure scripts (gao_overoptimization.py,
inform_overoptimization.py): run a sweep through the runner, read each run's logs back, and
aggregate over seeds with the runner's own statistics (mean, std, 95% t-interval)."""
from __future__ import annotations

import json
import math
import shlex
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # rlhf_jax and configs/ from this checkout

from rlhf_jax.sweep import Sweep, expand, run_sweep  # noqa: E402
from rlhf_jax.sweep.results import aggregate  # noqa: E402


def sweep_command(sweep: Sweep, share: tuple[str, ...]) -> str:
    """The experiments/sweep.py command line equivalent to `sweep` (for the results JSON)."""
    return shlex.join(sweep.cli(share))


def run(sweep: Sweep, share: tuple[str, ...] = ("sft",), metrics: list[str] | None = None,
        jobs: int = 1) -> dict[str, Any]:
    """Run (or resume) `sweep` through the runner, one run at a time (jobs=1: child processes;
    jobs=0: in this process, as the smoke modes do); fail loudly on a failed run.
    Returns {"command", "seconds", "runs"} for the results JSON."""
    t0 = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(ROOT)  # the runner resolves configs/ from the working directory
    try:
        outcome = run_sweep(sweep, jobs=jobs, wandb=False, metrics=metrics, share=share,
                            argv=[sys.argv[0], "(library run_sweep)"])
    finally:
        os.chdir(cwd)
    if outcome.failed or outcome.interrupted:
        bad = [f"{r['point']}/seed_{r['seed']}: {r['error']}" for r in outcome.runs if r["status"] != "ok"]
        raise RuntimeError(f"sweep {sweep.out}: {outcome.failed} failed, interrupted={outcome.interrupted}: {bad}")
    return {"command": sweep_command(sweep, share), "seconds": round(time.perf_counter() - t0, 1),
            "runs": [{k: r[k] for k in ("point", "seed", "status", "reused", "seconds")} for r in outcome.runs]}


def workdirs(sweep: Sweep) -> dict[str, dict[int, Path]]:
    """{point name: {seed: workdir}}."""
    out: dict[str, dict[int, Path]] = {}
    for r in expand(sweep):
        out.setdefault(r.point.name, {})[r.seed] = r.workdir
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def summary(workdir: Path) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def stats(values: Iterable[float | None]) -> dict[str, Any]:
    """n, mean, std, ci_low, ci_high, half_width (95% t-interval over seeds), values."""
    values = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    return {**aggregate(values), "values": values}


def fmt(s: dict | None, digits: int = 3) -> str:
    """`mean ± half-width (n)` for tables."""
    if not s or not s.get("n"):
        return "—"
    if s.get("half_width") is None:
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    return f"{s['mean']:.{digits}f} ± {s['half_width']:.{digits}f} (n={s['n']})"


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (shrinking at the ends) along the last axis; NaN-aware."""
    x = np.asarray(x, float)
    if window <= 1:
        return x
    half = window // 2
    out = np.full_like(x, np.nan)
    for i in range(x.shape[-1]):
        seg = x[..., max(0, i - half):i + half + 1]
        with np.errstate(all="ignore"):
            out[..., i] = np.nanmean(seg, axis=-1)
    return out


def jsonable(obj):
    """NaN / inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(f"{float(obj):.7g}")
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")

"""Shared plumbing of the figure scripts experiments/instructgpt.py and experiments/coste_ensembles.py.

Every grid point x seed is an ordinary run started by the sweep runner (`rlhf_jax.sweep.run_sweep`);
this module only builds the sweeps, records the equivalent `experiments/sweep.py` command line,
times them (wall clock and the CPU seconds of the runs), and aggregates per-seed numbers that the
runner does not (curves, post-hoc evaluations) with the runner's own statistics (mean, std, n,
95% t-interval over seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
# the parent process scores RMs itself: one host device (as the runner gives its runs; a caller's
# fake-device count would change the mesh) and the runs' persistent compilation cache
_xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
os.environ["XLA_FLAGS"] = " ".join([*_xla, "--xla_force_host_platform_device_count=1"])
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ.get(
    "RLHF_JAX_JAX_CACHE", str(Path.home() / ".cache" / "rlhf_jax" / "jax")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # rlhf_jax and configs from this checkout

from rlhf_jax.sweep import Sweep, run_sweep  # noqa: E402
from rlhf_jax.sweep.results import aggregate  # noqa: E402


def cli_command(sweep: Sweep, share: tuple[str, ...], metrics: list[str] | None) -> list[str]:
    """The `experiments/sweep.py` command line that runs the same sweep."""
    return sweep.cli(share, metrics)


class Recorder:
    """Runs sweeps through the runner and keeps what the results JSON reports about them."""

    def __init__(self, runs_dir: Path, jobs: int = 1):
        self.runs_dir, self.jobs = Path(runs_dir), jobs
        self.commands: list[str] = []
        self.timings: dict[str, dict[str, float]] = {}
        self.failed = 0
        os.chdir(REPO)  # the runner starts `python -m rlhf_jax.main --config configs/...` from here

    def sweep(self, name: str, config: str, seeds: list[int], *, grid: dict[str, list] | None = None,
              sets: dict[str, Any] | None = None, share: tuple[str, ...] = (), metrics: list[str] | None = None):
        """Run one sweep (resuming a finished or interrupted one); returns (sweep, outcome)."""
        sweep = Sweep(config, {k: [str(v) for v in vs] for k, vs in (grid or {}).items()}, list(seeds),
                      {k: str(v) for k, v in (sets or {}).items()}, self.runs_dir / name, name=name)
        argv = cli_command(sweep, share, metrics) + (["--jobs", str(self.jobs)] if self.jobs > 1 else [])
        self.commands.append(shlex.join(argv))
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        outcome = run_sweep(sweep, jobs=self.jobs, wandb=False, metrics=metrics, argv=argv, share=share,
                            echo=lambda m: print(f"[{name}] {m}", flush=True))
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.timings[name] = {"wall_s": round(time.perf_counter() - t0, 1),
                              "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
                              "runs": len(outcome.runs),
                              "runs_reused": sum(bool(r["reused"]) for r in outcome.runs)}
        bad = [r for r in outcome.runs if r["status"] != "ok"]
        self.failed += len(bad)
        for r in bad:
            print(f"[{name}] FAILED {r['point']}/seed_{r['seed']}: {r['error']}", flush=True)
        if outcome.interrupted:
            raise SystemExit(f"sweep {name} stopped by {outcome.interrupted}; run the same command again to go on")
        return sweep, outcome


def stat(values: Iterable[float | None]) -> dict[str, Any]:
    """mean, std, n, 95% t-interval over seeds (the runner's statistics), plus the values."""
    values = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    s = aggregate(values, "t")
    return {k: s[k] for k in ("mean", "std", "n", "ci_low", "ci_high", "half_width")} | {"values": values}


def row_stat(outcome, point: str, metric: str) -> dict[str, Any]:
    """A metric of one grid point from the runner's results rows."""
    for row in outcome.rows:
        if row["point"] == point and row["metric"] == metric:
            return {k: row[k] for k in ("mean", "std", "n", "ci_low", "ci_high", "half_width")} | {
                "values": row["values"]}
    return stat([])


def run_dirs(sweep, outcome, point: str) -> list[tuple[int, Path | None]]:
    """(seed, workdir or None if the run failed) of each seed of a point."""
    status = {(r["point"], r["seed"]): r["status"] for r in outcome.runs}
    return [(s, sweep.out / point / f"seed_{s}" if status.get((point, s)) == "ok" else None) for s in sweep.seeds]


def curve_stats(xs: list, per_seed: list[list[float] | None]) -> list[dict[str, Any]]:
    """Per-x statistics over seeds of curves aligned on `xs` (a failed seed is None)."""
    out = []
    for i, x in enumerate(xs):
        vals = [c[i] if c is not None and i < len(c) else None for c in per_seed]
        out.append({"x": x, **stat(vals)})
    return out


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1):i + 1] if v is not None and math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def fmt(s: dict[str, Any], digits: int = 3) -> str:
    """'mean ± half-width (n)' as the runner's summary.md writes it."""
    if s.get("mean") is None:
        return "—"
    if s.get("half_width") is None:
        return f"{s['mean']:.{digits}f} ({s['n']})"
    return f"{s['mean']:.{digits}f} ± {s['half_width']:.{digits}f} ({s['n']})"


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")


def check_finite(data: Any, where: str = "") -> list[str]:
    """Paths of non-finite numbers in a nested structure (for the smoke checks)."""
    bad = []
    if isinstance(data, dict):
        for k, v in data.items():
            bad += check_finite(v, f"{where}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            bad += check_finite(v, f"{where}[{i}]")
    elif isinstance(data, float) and not math.isfinite(data):
        bad.append(where)
    return bad


def artifact_paths(name: str, smoke: bool, artifacts: str | None) -> tuple[Path, Path]:
    """(results JSON, figure PNG): experiments/results|figures/<name>.* for a full run; a smoke
    run writes <name>_smoke.* under --artifacts (default runs/experiments/smoke)."""
    if smoke or artifacts:
        base = Path(artifacts) if artifacts else REPO / "runs" / "experiments" / "smoke"
        tag = f"{name}_smoke" if smoke else name
        return base / f"{tag}.json", base / f"{tag}.png"
    return REPO / "experiments" / "results" / f"{name}.json", REPO / "experiments" / "figures" / f"{name}.png"


def parser(doc: str, name: str, smoke_help: str) -> argparse.ArgumentParser:
    """The flags every figure script of this family takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    ap.add_argument("--runs", default=None, help="directory of the sweeps' run directories "
                                                 f"(default runs/experiments/{name}[_smoke])")
    ap.add_argument("--artifacts", default=None, help="where the results JSON and PNG go (default: "
                                                      "experiments/results and experiments/figures; smoke: runs/...)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at once (default 1); 0: every run in this process "
                    "(the default with --smoke: no start-up per run)")
    return ap


def setup(args, name: str) -> tuple[Path, Path, "Recorder"]:
    """(results JSON path, PNG path, the Recorder) for parsed `parser` flags."""
    runs = Path(args.runs) if args.runs else REPO / "runs" / "experiments" / (name + ("_smoke" if args.smoke else ""))
    json_path, png_path = artifact_paths(name, args.smoke, args.artifacts)
    return json_path, png_path, Recorder(runs, jobs=args.jobs if args.jobs is not None else (0 if args.smoke else 1))

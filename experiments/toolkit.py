"""The figure scripts' shared plumbing: flags, set-up, running sweeps, statistics over seeds, JSON.

Every figure script (instructgpt.py, coste_ensembles.py, dpo_imdb.py, gao_overoptimization.py,
inform_overoptimization.py, finegrained_wu.py) runs each grid point x seed as an ordinary run
through the sweep runner (`rlhf_jax.sweep.run_sweep`) and:

- takes the same flags (`parser`): --smoke, --seeds, --out (the sweeps' directory), --artifacts
  (where the results JSON and PNG go), --jobs, --set, --wandb / --no_wandb;
- runs its sweeps through one `Recorder` (`setup`), which keeps the equivalent
  `experiments/sweep.py` command lines, the wall and CPU seconds of each sweep and the failed
  runs; stages are shared through the runner's `share_stages`: inside a sweep with `share=`,
  across sweeps with `share_from=` (the same stages of the same seed of another sweep);
- aggregates per-seed numbers the runner does not (curves, post-hoc evaluations) with the
  runner's own statistics (`stat`: mean, std, n, 95% t-interval over seeds);
- writes its JSON with `write_json` (NaN -> null, numpy -> Python).
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# a script's own process scores RMs itself: one host device (as the runner gives its runs; a
# caller's fake-device count would change the mesh) and the runs' persistent compilation cache.
# Imported where JAX already runs (a test calling main()), the environment is the caller's.
if "jax" not in sys.modules:
    _xla = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join([*_xla, "--xla_force_host_platform_device_count=1"])
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # rlhf_jax and configs from this checkout
from rlhf_jax import hostenv  # noqa: E402

hostenv.compile_cache_defaults(os.environ)

from rlhf_jax.sweep import Sweep, expand, parse_seeds, parse_sets, run_finished, run_sweep  # noqa: E402
from rlhf_jax.sweep.results import aggregate  # noqa: E402
from rlhf_jax.sweep.runner import share_stages  # noqa: E402

STAT_KEYS = ("mean", "std", "n", "ci_low", "ci_high", "half_width")


# --- flags and set-up ------------------------------------------------------------------------------

def parser(doc: str, name: str, *, seeds: str, smoke_seeds: str, smoke_help: str) -> argparse.ArgumentParser:
    """The flags every figure script takes (a script adds its own after these)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    ap.add_argument("--seeds", default=None, help=f"config.seed values, as experiments/sweep.py takes them "
                                                  f"(default {seeds}; --smoke {smoke_seeds})")
    ap.add_argument("--out", default=None, help=f"the sweeps' directory, one workdir per run inside "
                                                f"(default runs/experiments/{name}[_smoke])")
    ap.add_argument("--artifacts", default=None, help="directory of the results JSON and PNG (default: "
                    "experiments/results and experiments/figures; with --smoke, --out)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at once, each pinned to its share of the CPUs "
                    "(default 1); 0: every run in this process (the default with --smoke: no start-up per run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override of every run (after the script's own settings)")
    ap.add_argument("--wandb", dest="wandb", action="store_true", default=False,
                    help="log every run to W&B (default off: the figures run offline)")
    ap.add_argument("--no_wandb", dest="wandb", action="store_false", help="no W&B (the default)")
    ap.set_defaults(_seeds_default=(seeds, smoke_seeds))
    return ap


class Setup:
    """What a script needs from its parsed flags: seeds, paths, the recorder."""

    def __init__(self, args, name: str, figure_name: str | None = None, argv: list[str] | None = None,
                 tag: str | None = None):
        """`name`: the script's (experiments/<name>.py); `tag`: the runs' and artifacts' name when a
        mode of the script writes other files (default `name`)."""
        self.name, self.smoke = name, bool(args.smoke)
        full, smoke = args._seeds_default
        self.seeds = parse_seeds(args.seeds or (smoke if args.smoke else full))
        tag = (tag or name) + ("_smoke" if args.smoke else "")
        self.runs = Path(args.out).resolve() if args.out else REPO / "runs" / "experiments" / tag
        fig = (figure_name or tag) + ("_smoke" if args.smoke and figure_name else "")
        if args.artifacts or args.smoke:
            base = Path(args.artifacts).resolve() if args.artifacts else self.runs
            self.json_path, self.png_path = base / f"{tag}.json", base / f"{fig}.png"
        else:
            self.json_path = REPO / "experiments" / "results" / f"{tag}.json"
            self.png_path = REPO / "experiments" / "figures" / f"{fig}.png"
        jobs = args.jobs if args.jobs is not None else (0 if args.smoke else 1)
        self.recorder = Recorder(self.runs, jobs=jobs, sets=parse_sets(args.set), wandb=args.wandb)
        # the command as typed (argv: the flags of a main(argv) call from Python); `name` is the script's
        self.command = shlex.join(["python", f"experiments/{name}.py", *(sys.argv[1:] if argv is None else argv)])

    def finish(self, result: dict, table, plot) -> int:
        """The common end of a figure script: the result's markdown table (`table(result)`), its JSON
        and figure written, both paths printed; the exit code counts failed runs (at most 100)."""
        result["table"] = table(result)
        write_json(self.json_path, result)
        plot(result, self.png_path)
        print(result["table"])
        print(f"  {self.json_path}\n  {self.png_path}\n  {result['failed_runs']} failed runs")
        return min(result["failed_runs"], 100)


def setup(args, name: str, figure_name: str | None = None, argv: list[str] | None = None,
          tag: str | None = None) -> Setup:
    """(seeds, paths, recorder) of a script's parsed `parser` flags."""
    return Setup(args, name, figure_name, argv, tag)


# --- running sweeps -------------------------------------------------------------------------------

class Recorder:
    """Runs sweeps through the runner and keeps what the results JSON reports about them."""

    def __init__(self, runs_dir: Path, jobs: int = 1, sets: dict[str, str] | None = None, wandb: bool = False):
        self.runs_dir, self.jobs, self.sets, self.wandb = Path(runs_dir), jobs, dict(sets or {}), wandb
        self.commands: list[str] = []
        self.timings: dict[str, dict[str, float]] = {}
        self.records: dict[str, list[dict]] = {}
        self.reused: dict[str, dict[str, list[str]]] = {}
        self.failed = 0

    def build(self, name: str, config: str, seeds: list[int], *, grid: dict[str, list] | None = None,
              sets: dict[str, Any] | None = None) -> Sweep:
        """The sweep runs_dir/name (the script's `sets`, then every --set)."""
        return Sweep(config, {k: [str(v) for v in vs] for k, vs in (grid or {}).items()}, list(seeds),
                     {**{k: str(v) for k, v in (sets or {}).items()}, **self.sets}, self.runs_dir / name, name=name)

    def sweep(self, name: str, config: str, seeds: list[int], *, grid: dict[str, list] | None = None,
              sets: dict[str, Any] | None = None, **how):
        """`build` and `run` in one; returns (sweep, outcome)."""
        return self.run(self.build(name, config, seeds, grid=grid, sets=sets), **how)

    def run(self, sweep: Sweep, *, share: tuple[str, ...] = (), metrics: list[str] | None = None,
            share_from: tuple[Sweep, tuple[str, ...]] | None = None, strict: bool = False, key: str | None = None):
        """Run one sweep (resuming a finished or interrupted one); returns (sweep, outcome).
        `share`: stages run once per seed and copied to the sweep's other points;
        `share_from=(other sweep, stages)`: those stages of the same seed of a finished sweep are
        copied into every run that has not started; `strict`: a failed run raises; `key`: the
        name its timings are kept under (default the sweep's)."""
        with at_repo():
            return self._run(sweep, share, metrics, share_from, strict, key or sweep.label)

    def _run(self, sweep, share, metrics, share_from, strict, key):
        argv = sweep.cli(share, metrics, self.jobs, wandb=self.wandb)
        command = shlex.join(argv)
        if share_from:
            source, stages = share_from
            command += f"  # first: stages {','.join(stages)} of {source.out.name}/<point>/seed_N copied in"
            self.reused[key] = copy_stages(expand(sweep), expand(source), stages)
        self.commands.append(command)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        outcome = run_sweep(sweep, jobs=self.jobs, wandb=self.wandb, metrics=metrics, argv=argv, share=share,
                            echo=lambda m: print(f"[{key}] {m}", flush=True))
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.timings[key] = {"wall_s": round(time.perf_counter() - t0, 1),
                             "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
                             "runs": len(outcome.runs), "runs_reused": sum(bool(r["reused"]) for r in outcome.runs),
                             "run_seconds": round(sum(r["seconds"] or 0.0 for r in outcome.runs), 1)}
        self.records[key] = [{k: r.get(k) for k in ("point", "seed", "status", "reused", "seconds")}
                             for r in outcome.runs]
        bad = [r for r in outcome.runs if r["status"] not in ("ok", "pending")]
        self.failed += len(bad)
        for r in bad:
            print(f"[{key}] FAILED {r['point']}/seed_{r['seed']}: {r['error']}", flush=True)
        pending = [f"{r['point']}/seed_{r['seed']}" for r in outcome.runs if r["status"] == "pending"]
        if pending:  # a stopped sweep leaves these; otherwise the runner starts every run
            print(f"[{key}] not started: {', '.join(pending)}", flush=True)
        if outcome.interrupted:  # the exit status experiments/sweep.py gives a stopped sweep
            print(f"sweep {key} stopped by {outcome.interrupted}; run the same command again to go on",
                  file=sys.stderr, flush=True)
            raise SystemExit(130 if outcome.interrupted == "SIGINT" else 143)
        if strict and bad:
            raise RuntimeError(f"sweep {sweep.out}: {len(bad)} runs failed: "
                               f"{[(r['point'], r['seed'], r['error']) for r in bad]}")
        return sweep, outcome

    def report(self) -> dict[str, Any]:
        """The results JSON's record of the sweeps run."""
        return {"commands": self.commands, "timings": self.timings, "failed_runs": self.failed,
                "stages_copied_across_sweeps": self.reused,
                "total_run_cpu_s": round(sum(t["cpu_s"] for t in self.timings.values()), 1),
                "run_seconds_total": round(sum(t["run_seconds"] for t in self.timings.values()), 1),
                "runs_dir": str(self.runs_dir)}


def copy_stages(runs: list, sources: list, stages: tuple[str, ...]) -> dict[str, list[str]]:
    """Copy `stages` of the same seed's finished run in `sources` into each of `runs` that has not
    started (the runner's `share_stages`); returns {run label: stages copied}."""
    copied = {}
    for run in runs:
        got = share_stages(run, [*[s for s in sources if s.seed == run.seed], run], stages)
        if got:
            copied[run.label] = got
    return copied


def run_dirs(sweep, outcome, point: str) -> list[tuple[int, Path | None]]:
    """(seed, workdir or None if the run failed) of each seed of a point."""
    status = {(r["point"], r["seed"]): r["status"] for r in outcome.runs}
    return [(s, sweep.out / point / f"seed_{s}" if status.get((point, s)) == "ok" else None) for s in sweep.seeds]


@contextmanager
def at_repo():
    """The repository root as the working directory: the runner starts `python -m rlhf_jax.main
    --config configs/...` from there, and reads the configs' relative paths from there."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)


def unfinished(sweep: Sweep) -> list:
    """The runs of `sweep` that a run of it would start: those the runner does not count as
    finished (a summary after the last start's config, the same config, every listed stage)."""
    with at_repo():
        return [run for run in expand(sweep) if not run_finished(sweep, run)]


def workdirs(sweep: Sweep) -> dict[str, dict[int, Path]]:
    """{point name: {seed: workdir}}."""
    out: dict[str, dict[int, Path]] = {}
    for r in expand(sweep):
        out.setdefault(r.point.name, {})[r.seed] = r.workdir
    return out


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summary(workdir: Path) -> dict:
    return read_json(Path(workdir) / "summary.json")


# --- statistics over seeds ---------------------------------------------------------------------

def stat(values: Iterable[float | None]) -> dict[str, Any]:
    """mean, std, n, 95% t-interval over seeds (the runner's statistics; non-finite values and
    None are left out of n), plus the values (None where a seed has none)."""
    values = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    s = aggregate(values, "t")
    return {k: s[k] for k in STAT_KEYS} | {"values": values}


def row_stat(outcome, point: str, metric: str) -> dict[str, Any]:
    """A metric of one grid point from the runner's results rows (n = 0 when absent)."""
    for row in outcome.rows:
        if row["point"] == point and row["metric"] == metric:
            return {k: row[k] for k in STAT_KEYS} | {"values": row["values"]}
    return stat([])


def curve_stats(xs: list, per_seed: list[list[float] | None]) -> list[dict[str, Any]]:
    """Per-x statistics over seeds of curves aligned on `xs` (a failed seed is None)."""
    return [{"x": x, **stat([c[i] if c is not None and i < len(c) else None for c in per_seed])}
            for i, x in enumerate(xs)]


def trailing_moving_average(values: list[float | None], window: int) -> list[float]:
    """Point i averages the finite values among i-window+1 .. i (the first points average what
    there is): what a reader of a training log sees up to that iteration."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1):i + 1] if v is not None and math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def centred_moving_average(x, window: int) -> np.ndarray:
    """Along the last axis, point i averages i - window//2 .. i + window//2 (shrinking at the
    ends), ignoring NaN: a smoothed curve without the trailing average's lag."""
    x = np.asarray(x, float)
    if window <= 1:
        return x
    half = window // 2
    out = np.full_like(x, np.nan)
    for i in range(x.shape[-1]):
        with np.errstate(all="ignore"):
            out[..., i] = np.nanmean(x[..., max(0, i - half):i + half + 1], axis=-1)
    return out


def fmt(s: dict[str, Any] | None, digits: int = 3) -> str:
    """'mean ± half-width (n=N)' as the tables print it; '—' without values."""
    if not s or s.get("mean") is None:
        return "—"
    if s.get("half_width") is None:
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    return f"{s['mean']:.{digits}f} ± {s['half_width']:.{digits}f} (n={s['n']})"


# --- output -----------------------------------------------------------------------------------------

def jsonable(obj):
    """NaN / inf -> None, numpy scalars and arrays -> Python, floats to 7 significant digits, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
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

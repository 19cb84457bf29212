"""Run a sweep: every grid point x seed as an ordinary run in its own workdir, then the tables.

    outcome = run_sweep(sweep, jobs=2, wandb=False)   # -> SweepOutcome(runs, rows, failed, interrupted)

Resume: a run whose workdir holds a summary.json written after its config.json, with the
same config (logging fields and the name aside) and every listed stage, is finished and
skipped; any other run is started again and resumes from its own checkpoints. A failed run
is recorded (exit code, log, last log line) and the others go on. SIGINT/SIGTERM stop the
launching of runs and are forwarded once to the running ones, which checkpoint and stop.
OUT/sweep.json is rewritten whenever a run changes state.

A backend decides how the pending runs are executed: `local` (the default) runs them here as
above; `slurm` submits them as one SLURM array job (`rlhf_jax.sweep.slurm`) and `wandb` writes
a W&B grid sweep for `wandb agent` (`rlhf_jax.sweep.wandb_sweep`). Both hand the runs over and
return with those runs "submitted"; running the sweep again collects. Expansion, resume,
sweep.json and the tables are the same for every backend.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from rlhf_jax import hostenv
from rlhf_jax.sweep import procs, results
from rlhf_jax.sweep.share import check_share, share_stages
from rlhf_jax.sweep.spec import Run, Sweep, check, expand, points, resolve_config
from rlhf_jax.workdir import WorkdirError, flatten, launches

BACKENDS = ("local", "slurm", "wandb")
IGNORED = ("log", "name")  # config fields that never change a run's numbers; may differ on resume
POLL_SECONDS = 0.2


@dataclasses.dataclass
class SweepOutcome:
    """What a sweep ended with: per-run records (as in sweep.json), the results rows, the
    number of failed runs, and the signal that interrupted it (None if it ran to the end)."""

    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    failed: int
    interrupted: str | None
    submitted: int = 0  # runs handed to SLURM or W&B that have not finished yet


def _comparable(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config without the fields a resume may change, in its JSON form."""
    keep = {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in IGNORED)}
    return json.loads(json.dumps(keep, default=str))


def finished(workdir: Path, config) -> bool:
    """Whether `workdir` holds a complete run of `config`: summary.json written after the
    config.json of the last start, the same config, and a summary for every listed stage."""
    summary_path, config_path = workdir / "summary.json", workdir / "config.json"
    try:
        summary = json.loads(summary_path.read_text())
        stored = json.loads(config_path.read_text())["config"]
        fresh = summary_path.stat().st_mtime_ns >= config_path.stat().st_mtime_ns
    except (OSError, ValueError, KeyError, TypeError):
        return False
    listed = [s for s in str(config.stages).split(",") if s]
    return (fresh and isinstance(summary, dict) and all(s in summary for s in listed)
            and _comparable(stored) == _comparable(flatten(config)))


def run_finished(sweep: Sweep, run: Run) -> bool:
    """`finished` for one run of `sweep`, on the config its overrides resolve to (config paths
    relative to the working directory, as the sweep's commands run)."""
    return finished(run.workdir, resolve_config(sweep.config, run.overrides))


def _record(sweep: Sweep, run: Run) -> dict[str, Any]:
    rel = lambda p: str(p.relative_to(sweep.out))
    return {"point": run.point.name, "params": dict(run.point.params), "seed": run.seed,
            "workdir": rel(run.workdir), "log": rel(run.workdir / procs.LOG_NAME), "status": "pending",
            "reused": False, "started": None, "exit_code": None, "seconds": None, "error": ""}


def _previous(out: Path) -> dict[str, dict]:
    """The run records of an earlier sweep.json in `out` that finished, by label."""
    try:
        runs = json.loads((out / "sweep.json").read_text())["runs"]
        return {f"{r['point']}/seed_{r['seed']}": r for r in runs if r.get("status") == "ok"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _previous_meta(out: Path) -> dict:
    """An earlier sweep.json in `out` ({} if none or unreadable)."""
    try:
        meta = json.loads((out / "sweep.json").read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def hosts_of(workdir: Path) -> list[str]:
    """The machines a run's launches ran on (WORKDIR/hosts.jsonl), one line each, in first-seen order."""
    try:
        records = launches(workdir)
    except WorkdirError as e:
        return [f"unreadable: {e}"]
    return hostenv.labels(records)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def in_process_environment(echo: Callable[[str], None] = print) -> None:
    """Give runs made in this process (`jobs=0`) what a child run gets: one host device and the
    shared compilation cache. It only takes effect before JAX is first imported; after that, a
    process with several (fake) devices shards every tiny run across them, which is far slower
    on a CPU, so say so."""
    if "jax" not in sys.modules:
        child = procs.environment()
        for key in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
            os.environ[key] = child[key]
        return
    import jax
    if jax.device_count() > 1:
        echo(f"[sweep] warning: in-process runs see {jax.device_count()} devices (JAX was imported before the "
             f"sweep); set XLA_FLAGS=--xla_force_host_platform_device_count=1 for the runs a child would make")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class _Stop:
    """SIGINT/SIGTERM while the sweep runs: remember the first, forward each to the children."""

    def __init__(self, active: dict):
        self.signal, self.signum, self.active, self.saved = None, None, active, {}

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread; its caller handles them
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.saved[signum] = signal.signal(signum, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        self.signal, self.signum = self.signal or signal.Signals(signum).name, self.signum or signum
        for proc, *_ in self.active.values():
            procs.signal_group(proc, signum)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)


class _Execution:
    """The launch-and-poll loop over the pending runs, at most `jobs` at a time."""

    def __init__(self, sweep: Sweep, runs: list[Run], records: dict, save: Callable, *, jobs: int, wandb: bool,
                 lock_wait: float, echo: Callable, share: tuple[str, ...] = ()):
        self.sweep, self.records, self.save, self.echo = sweep, records, save, echo
        self.share, self.runs = share, runs
        self.pending = [r for r in runs if records[r.label]["status"] == "pending"]
        self.total, self.done = len(runs), len(runs) - len(self.pending)
        self.jobs, self.wandb, self.lock_wait = jobs, wandb, lock_wait
        self.slots = procs.cpu_slots(max(jobs, 1))
        self.free = list(range(max(jobs, 1)))
        self.active: dict[str, tuple] = {}  # label -> (proc, run, slot, t0)
        self.waiting_since: dict[str, float] = {}

    def _next(self) -> Run | None:
        """The first pending run whose workdir is not held by another process (an orphan of a
        killed runner finishing its checkpoint), or one that has waited `lock_wait` seconds
        (it then fails with the lock holder named)."""
        now = time.monotonic()
        for run in self.pending:
            if not procs.locked(run.workdir):
                return run
            if run.label not in self.waiting_since:
                self.echo(f"[sweep] {run.label}: its workdir is held by another process; waiting up to "
                          f"{self.lock_wait:.0f}s")
            if now - self.waiting_since.setdefault(run.label, now) > self.lock_wait:
                return run
        return None

    def _start(self, run: Run) -> None:
        copied = share_stages(run, self.runs, self.share)
        if copied:
            self.echo(f"[sweep] {run.label}: reuses {', '.join(copied)}")
        slot = self.free.pop(0)
        cpus = self.slots[slot] if self.slots else None
        cmd = procs.command(self.sweep.config, run.workdir, run.overrides, self.wandb)
        proc = procs.launch(cmd, run.workdir, procs.environment(cpus, f"sweep:{self.sweep.label}"), cpus)
        self.pending.remove(run)
        self.active[run.label] = (proc, run, slot, time.monotonic())
        self.records[run.label].update(status="running", started=_now())
        self.save()
        log = run.workdir / procs.LOG_NAME
        self.echo(f"[{self.done + len(self.active)}/{self.total}] {run.label}: started (log {log})")

    def _finish(self, label: str, code: int, stop: str | None) -> None:
        proc, run, slot, t0 = self.active.pop(label)
        self.free.append(slot)
        self.done += 1
        rec = self.records[label]
        has_summary = (run.workdir / "summary.json").exists()
        status = "ok" if code == 0 and has_summary else "interrupted" if stop else "failed"
        error = "" if status == "ok" else procs.last_line(run.workdir / procs.LOG_NAME)
        if code == 0 and not has_summary:
            error = "exit 0 but no summary.json"
        rec.update(status=status, exit_code=code, seconds=round(time.monotonic() - t0, 1), error=error,
                   hosts=hosts_of(run.workdir))
        self.save()
        detail = f"{rec['seconds']:.0f}s" if status == "ok" else f"{procs.describe_exit(code)}: {error}"
        self.echo(f"[{self.done}/{self.total}] {label}: {status} ({detail})")

    def loop_in_process(self) -> None:
        """`jobs=0`: every pending run in this process, one after another (small sweeps, tests:
        no process start-up; each run traces its steps again, and XLA's compiled programs of one
        shape come from the persistent compile cache, as in a child run)."""
        from rlhf_jax.stages import run as run_stages
        for run in list(self.pending):
            copied = share_stages(run, self.runs, self.share)
            if copied:
                self.echo(f"[sweep] {run.label}: reuses {', '.join(copied)}")
            self.pending.remove(run)
            self.records[run.label].update(status="running", started=_now())
            t0 = time.monotonic()
            try:
                summary = run_stages(resolve_config(self.sweep.config, run.overrides), run.workdir, use_wandb=False)
                _write_json(run.workdir / "summary.json", summary)
                status, error = "ok", ""
            except Exception as e:  # noqa: BLE001  (a failed run is recorded; the others go on)
                status, error = "failed", f"{type(e).__name__}: {str(e)[:300]}"
            self.done += 1
            self.records[run.label].update(status=status, exit_code=0 if status == "ok" else 1, error=error,
                                           seconds=round(time.monotonic() - t0, 1), hosts=hosts_of(run.workdir))
            self.save()
            self.echo(f"[{self.done}/{self.total}] {run.label}: {status} {error}".rstrip())

    def loop(self) -> str | None:
        """Run until every pending run has ended; returns the stopping signal's name, if any."""
        if self.jobs == 0:
            self.loop_in_process()
            return None
        with _Stop(self.active) as stop:
            while self.active or (self.pending and not stop.signal):
                while self.free and self.pending and not stop.signal:
                    run = self._next()
                    if run is None:
                        break
                    self._start(run)
                    if stop.signum:  # a signal that arrived while this run was being launched
                        procs.signal_group(self.active[run.label][0], stop.signum)
                for label, (proc, *_rest) in list(self.active.items()):
                    code = proc.poll()
                    if code is not None:
                        self._finish(label, code, stop.signal)
                time.sleep(POLL_SECONDS)
            return stop.signal


def _summaries(sweep: Sweep, runs: list[Run], records: dict) -> dict[tuple[str, int], dict]:
    """{(point, seed): summary} of the runs that finished."""
    out = {}
    for run in runs:
        if records[run.label]["status"] == "ok":
            out[run.point.name, run.seed] = json.loads((run.workdir / "summary.json").read_text())
    return out


def write_outputs(sweep: Sweep, runs: list[Run], records: dict, *, interval: str,
                  metrics: list[str] | None, command: str) -> list[dict]:
    """results.jsonl, results.csv and summary.md from the finished runs; returns the rows."""
    grid_points = points(sweep.grid)
    rows = results.table(grid_points, sweep.seeds, _summaries(sweep, runs, records), interval)
    results.write_jsonl(sweep.out / "results.jsonl", rows)
    results.write_csv(sweep.out / "results.csv", rows, list(sweep.grid), sweep.seeds)
    level = f"{results.CONFIDENCE:.0%}"
    how = "t-interval over seeds" if interval == "t" else "bootstrap (BCa) over seeds"
    header = (f"# Sweep {sweep.label}\n\n`{command}`\n\nConfig `{sweep.config}`, seeds {sweep.seeds}. "
              f"Cells: mean ± half-width of the {level} {how} (n seeds); no ± with one seed.\n")
    chosen = results.headline(rows, metrics)
    text = results.summary_markdown(grid_points, rows, chosen, list(records.values()), header)
    (sweep.out / "summary.md").write_text(text)
    return rows


def _check_backend(backend: str, jobs: int, share: tuple[str, ...], slurm_opts: list[str] | None,
                   wait: bool) -> None:
    """Flags that only one backend reads fail with the others, naming the flag."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose one of {BACKENDS}")
    if backend != "local":
        if share:
            raise ValueError(f"--share {','.join(share)}: only with --backend local (a shared stage is copied from "
                             f"a sibling run that has finished it; {backend} runs start together)")
        if jobs != 1:
            raise ValueError(f"--jobs {jobs}: only with --backend local ({backend} decides where runs go)")
    if slurm_opts and backend != "slurm":
        raise ValueError("--slurm_opts: only with --backend slurm")
    if wait and backend != "slurm":
        raise ValueError("--wait: only with --backend slurm (local runs always finish before the tables)")


def run_sweep(sweep: Sweep, *, jobs: int = 1, wandb: bool = True, interval: str = "t",
              metrics: list[str] | None = None, argv: list[str] | None = None, lock_wait: float = 300.0,
              echo: Callable[[str], None] = print, share: tuple[str, ...] = (), backend: str = "local",
              slurm_opts: list[str] | None = None, wait: bool = False) -> SweepOutcome:
    """Check the flags, run the runs that are not finished (`jobs` at a time) or hand them to
    the `backend` (slurm: one array job with `slurm_opts` passed to sbatch, `wait` for it to
    end; wandb: a W&B grid sweep), write sweep.json, results.jsonl, results.csv and summary.md
    under sweep.out. Raises SweepError (bad flags) or RuntimeError (another runner holds the
    directory, sbatch missing or failing) before any run starts. `share`: stages (e.g. sft, rm)
    that run once per seed and are copied to the other points of that seed, when no grid key
    is a field they read."""
    if interval not in results.METHODS:
        raise ValueError(f"--interval {interval!r}: choose one of {results.METHODS}")
    if jobs < 0:
        raise ValueError(f"--jobs {jobs}: must be >= 0 (0: every run in this process)")
    _check_backend(backend, jobs, tuple(share), slurm_opts, wait)
    check(sweep)
    check_share(sweep, tuple(share))
    if jobs == 0:
        in_process_environment(echo)
    runs = expand(sweep)
    command = " ".join(argv or sys.argv)
    with procs.SweepLock(sweep.out):
        records = {run.label: _record(sweep, run) for run in runs}
        before = _previous(sweep.out)
        for run in runs:
            if run_finished(sweep, run):
                last = before.get(run.label, {})
                records[run.label].update(status="ok", reused=True, exit_code=last.get("exit_code"),
                                          seconds=last.get("seconds"))
                if last.get("job"):
                    records[run.label]["job"] = last["job"]  # the SLURM task or W&B sweep that ran it
        meta = {"command": command, "cwd": os.getcwd(), "config": sweep.config, "grid": sweep.grid,
                "sets": sweep.sets, "seeds": sweep.seeds, "vary_world_seed": sweep.vary_world_seed,
                "name": sweep.label, "jobs": jobs, "interval": interval, "metrics": metrics,
                "points": [{"name": p.name, "params": p.params} for p in points(sweep.grid)],
                "backend": backend, "started": _now(), "finished": None, "interrupted": None}
        handler = _backend(backend, sweep, meta, _previous_meta(sweep.out), slurm_opts=slurm_opts or [], wait=wait,
                           wandb=wandb, echo=echo)
        if handler is not None:
            handler.prepare(runs, records)
        save = lambda: _write_json(sweep.out / "sweep.json", {**meta, "runs": list(records.values())})
        save()
        reused = sum(r["reused"] for r in records.values())
        queued = sum(r["status"] == "submitted" for r in records.values())
        echo(f"[sweep] {len(runs)} runs in {sweep.out} ({reused} finished before"
             + (f", {queued} still queued in SLURM" if queued else "") + f", {len(runs) - reused - queued} to run)")
        stop = None
        if handler is None:
            stop = _Execution(sweep, runs, records, save, jobs=jobs, wandb=wandb, lock_wait=lock_wait,
                              echo=echo, share=tuple(share)).loop()
        else:
            handler.execute(runs, records, save, lambda run: run_finished(sweep, run))
        rows = write_outputs(sweep, runs, records, interval=interval, metrics=metrics, command=command)
        meta.update(finished=_now(), interrupted=stop)
        save()
    failed = sum(r["status"] == "failed" for r in records.values())
    submitted = sum(r["status"] == "submitted" for r in records.values())
    return SweepOutcome(list(records.values()), rows, failed, stop, submitted)


def _backend(name: str, sweep: Sweep, meta: dict, previous: dict, *, slurm_opts: list[str], wait: bool,
             wandb: bool, echo: Callable[[str], None]):
    """The backend that hands runs elsewhere (None: local). Each has prepare(runs, records), before
    sweep.json is first written (runs still running elsewhere), and execute(runs, records, save, is_finished)."""
    if name == "slurm":
        from rlhf_jax.sweep.slurm import SlurmBackend
        return SlurmBackend(sweep, meta, previous, opts=slurm_opts, wait=wait, wandb=wandb, echo=echo)
    if name == "wandb":
        from rlhf_jax.sweep.wandb_sweep import WandbBackend
        return WandbBackend(sweep, meta, previous, wandb=wandb, echo=echo)
    return None

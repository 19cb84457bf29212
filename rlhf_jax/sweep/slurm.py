"""The SLURM backend: a sweep's pending runs as one array job, each task one run.

    backend = SlurmBackend(sweep, meta, previous, opts=["--partition=gpu", "--time=4:00:00"], wait=False, ...)

Each submission k writes OUT/slurm/submit_<k>/runs.json (every run's label, workdir, config,
overrides and exact `python -m rlhf_jax.main ...` command) and array.sh (`#SBATCH --array=0-(N-1)`,
task output in task_<i>.out beside it), then calls `sbatch --parsable [--wait] OPTS array.sh`.
Task i runs `python -m rlhf_jax.sweep.task runs.json` (the run at SLURM_ARRAY_TASK_ID), its output
appended to the run's run.log as a local run's is. sweep.json keeps every submission's job id
and the runs it holds (`slurm.jobs`), and each submitted run's `job` (`JOBID_INDEX`).

Submit and return: runs are "submitted" in sweep.json and the tables hold the runs finished so
far. Running the same sweep command again collects: finished runs are "ok"; a run whose task
`squeue` still lists stays "submitted"; any other unfinished run (its task failed, hit the
time limit or was cancelled) is submitted again in a new array job and resumes from its
checkpoints. With `wait` (sbatch --wait) the command returns when the job has ended, with the
tables written and the unfinished runs "failed".
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from rlhf_jax.sweep import procs
from rlhf_jax.sweep.spec import Run, Sweep

DIRECTORY = "slurm"
RUNS_NAME, SCRIPT_NAME = "runs.json", "array.sh"


def _tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"--backend slurm: `{name}` is not on PATH ({why}); run the sweep on a SLURM login node")
    return path


def parse_opts(text: str) -> list[str]:
    """`--slurm_opts "--partition=x --time=4:00:00"` -> sbatch arguments; the runner owns
    --array, --output, --parsable and --wait."""
    opts = shlex.split(text)
    for opt in opts:
        name = opt.split("=", 1)[0]
        if name in ("--array", "-a", "--output", "-o", "--parsable", "--wait", "-W"):
            raise ValueError(f"--slurm_opts {text!r}: {name} is set by the sweep runner (one array task per "
                             f"run, output in OUT/{DIRECTORY}/submit_<k>/; --wait is the runner's --wait)")
    return opts


def job_name(sweep: Sweep) -> str:
    """`sweep-<label>` with characters SLURM or a shell would mind replaced."""
    return "sweep-" + re.sub(r"[^A-Za-z0-9._-]", "_", sweep.label)[:64]


def array_script(sweep: Sweep, runs_file: Path, count: int, sbatch_argv: list[str]) -> str:
    """The batch script of one submission: task i runs entry i of `runs_file`."""
    folder = runs_file.parent
    q = shlex.quote
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# Sweep {sweep.label}: {count} run(s) of {sweep.out.resolve()} as one array job; task i runs entry i",
        f"# of {RUNS_NAME} (python -m rlhf_jax.sweep.task). Written and submitted by experiments/sweep.py",
        "# --backend slurm as:",
        f"#   {shlex.join(sbatch_argv)}",
        f"#SBATCH --job-name={job_name(sweep)}",
        f"#SBATCH --array=0-{count - 1}",
        f"#SBATCH --output={folder}/task_%a.out",
        "set -euo pipefail",
        f"cd {q(os.getcwd())}",
        f"export PYTHONPATH={q(str(procs.PACKAGE_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"exec {q(sys.executable)} -m rlhf_jax.sweep.task {q(str(runs_file))}",
        ""])


def runs_listing(sweep: Sweep, runs: list[Run], wandb: bool) -> dict[str, Any]:
    """runs.json: what each task needs to run its run without the sweep's flags."""
    return {"sweep": sweep.label, "out": str(sweep.out.resolve()), "cwd": os.getcwd(),
            "runs": [{"label": r.label, "workdir": str(r.workdir.resolve()), "config": sweep.config,
                      "overrides": r.overrides,
                      "command": procs.command(sweep.config, r.workdir.resolve(), r.overrides, wandb)}
                     for r in runs]}


def active_tasks(job_id: str) -> set[int]:
    """The array indices of `job_id` that SLURM still lists (pending or running)."""
    squeue = _tool("squeue", f"it tells whether job {job_id} still runs runs of this sweep")
    done = subprocess.run([squeue, "--noheader", "--array", "--jobs", job_id, "--format", "%K"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        if "invalid job id" in (done.stderr + done.stdout).lower():
            return set()  # the job ended and SLURM forgot it
        raise RuntimeError(f"squeue --jobs {job_id} failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    return {int(line.strip()) for line in done.stdout.splitlines() if line.strip().isdigit()}


class SlurmBackend:
    """Hands the pending runs to SLURM (module docstring)."""

    name = "slurm"

    def __init__(self, sweep: Sweep, meta: dict, previous: dict, *, opts: list[str], wait: bool, wandb: bool,
                 echo: Callable[[str], None]):
        self.sweep, self.meta, self.opts, self.wait, self.wandb, self.echo = sweep, meta, opts, wait, wandb, echo
        self.sbatch = ""
        earlier = previous.get("slurm", {}).get("jobs", []) if isinstance(previous.get("slurm"), dict) else []
        meta["slurm"] = {"jobs": list(earlier)}

    def _latest_task(self, label: str) -> tuple[str, int] | None:
        """(job id, array index) of the last submission that held `label`."""
        for job in reversed(self.meta["slurm"]["jobs"]):
            if label in job["labels"]:
                return job["job_id"], job["labels"].index(label)
        return None

    def prepare(self, runs: list[Run], records: dict) -> None:
        """Mark the unfinished runs whose task SLURM still lists as submitted (not resubmitted);
        with runs left to submit, find sbatch (before sweep.json is written)."""
        active: dict[str, set[int]] = {}
        for run in runs:
            rec = records[run.label]
            task = self._latest_task(run.label) if rec["status"] == "pending" else None
            if task is None:
                continue
            job_id, index = task
            if job_id not in active:
                active[job_id] = active_tasks(job_id)
            if index in active[job_id]:
                rec.update(status="submitted", job=f"{job_id}_{index}")
            else:
                self.echo(f"[sweep] {run.label}: its task {job_id}_{index} ended without a finished run "
                          f"(log {run.workdir / procs.LOG_NAME}); submitting it again")
        if any(records[run.label]["status"] == "pending" for run in runs):
            self.sbatch = _tool("sbatch", "it submits the array job")

    def execute(self, runs: list[Run], records: dict, save: Callable[[], None],
                is_finished: Callable[[Run], bool]) -> None:
        """Submit the pending runs as one array job (none: nothing to do); with `wait`, until it ends.
        `is_finished(run)`: whether the run's workdir holds its finished run."""
        pending = [r for r in runs if records[r.label]["status"] == "pending"]
        queued = sum(r["status"] == "submitted" for r in records.values())
        if not pending:
            if queued:
                self.echo(f"[sweep] nothing to submit; {queued} run(s) still queued or running in SLURM: "
                          f"run this command again when they have ended")
            return
        jobs = self.meta["slurm"]["jobs"]
        folder = (self.sweep.out / DIRECTORY / f"submit_{len(jobs) + 1}").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        runs_file, script = folder / RUNS_NAME, folder / SCRIPT_NAME
        argv = [self.sbatch, "--parsable", *(["--wait"] if self.wait else []), *self.opts, str(script)]
        runs_file.write_text(json.dumps(runs_listing(self.sweep, pending, self.wandb), indent=1))
        script.write_text(array_script(self.sweep, runs_file, len(pending), argv))
        self.echo(f"[sweep] submitting {len(pending)} run(s): {shlex.join(argv)}"
                  + (" (waiting for the job to end)" if self.wait else ""))
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        job_id = done.stdout.strip().splitlines()[0].split(";")[0].strip() if done.stdout.strip() else ""
        if not job_id or (done.returncode != 0 and not self.wait):
            raise RuntimeError(f"sbatch failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:500]}")
        jobs.append({"job_id": job_id, "dir": str(folder.relative_to(self.sweep.out.resolve())),
                     "labels": [r.label for r in pending], "argv": argv})
        for i, run in enumerate(pending):
            records[run.label].update(status="submitted", job=f"{job_id}_{i}")
        save()
        for i, run in enumerate(pending):  # a task that already ended (or every task, with --wait)
            rec = records[run.label]
            if is_finished(run):
                rec.update(status="ok", exit_code=0)
            elif self.wait:
                error = procs.last_line(run.workdir / procs.LOG_NAME) or f"no run.log (see {folder}/task_{i}.out)"
                rec.update(status="failed", error=error)
        save()
        if self.wait:
            ok = sum(records[r.label]["status"] == "ok" for r in pending)
            self.echo(f"[sweep] SLURM job {job_id} ended: {ok}/{len(pending)} run(s) finished")
        else:
            self.echo(f"[sweep] submitted SLURM array job {job_id} ({folder / SCRIPT_NAME}; task output "
                      f"{folder}/task_<i>.out, each run's in its run.log). Run this command again once the job has "
                      f"ended: it writes the tables from the finished runs and resubmits the unfinished ones")

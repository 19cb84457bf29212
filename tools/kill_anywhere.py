"""Kill a run with SIGKILL at random moments, restart it each time, and check that it ends with
exactly the numbers of an uninterrupted run and with clean metrics files.

    python tools/kill_anywhere.py --kills 200 --seed 0                       # the micro config
    python tools/kill_anywhere.py --kills 20 --config configs/dpo.py:micro

Prints one JSON object: the kill moments (seconds after each start), how many restarts each
stage needed, whether the final summary equals the reference field by field (wall-clock
fields aside), and whether every metrics.jsonl holds each step exactly once, in order.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_jax.sweep import procs  # noqa: E402
from rlhf_jax.sweep.results import is_wall_clock  # noqa: E402
from tools._common import parser  # noqa: E402



def command(config: str, workdir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "rlhf_jax.main", "--config", config, "--workdir", str(workdir), "--no_wandb",
            *extra]


def environment() -> dict:
    """One CPU device (the caller's other XLA flags, an ISA cap, kept) and a shared persistent
    compilation cache, so restarts compile little (the caller's cache settings win)."""
    return dict(procs.environment(), JAX_PLATFORMS="cpu", WANDB_MODE="disabled")  # a sweep run's, on the CPU


def run_once(cmd: list[str], timeout: float) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout)
    return out.returncode, time.perf_counter() - t0, out.stdout[-2000:] + out.stderr[-2000:]


def numbers(summary: dict) -> dict:
    return {stage: {k: v for k, v in values.items() if not is_wall_clock(k)} for stage, values in summary.items()}


def metrics_clean(workdir: Path) -> dict[str, bool]:
    """Per stage: every training row's step appears once, in order, from 1."""
    out = {}
    for path in sorted(workdir.glob("*/metrics.jsonl")):
        steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
        train = [s for s, line in zip(steps, path.read_text().splitlines()) if '"eval/' not in line]
        out[path.parent.name] = train == list(range(1, len(train) + 1))
    return out


def progress(workdir: Path) -> str:
    """Where a run stands: the last stage with output, and its latest checkpoint or 'done'."""
    stages = sorted((d for d in workdir.iterdir() if d.is_dir() and (d / "metrics.jsonl").exists()),
                    key=lambda d: d.stat().st_mtime) if workdir.exists() else []
    if not stages:
        return "start"
    last = stages[-1]
    if (last / "summary.json").exists():
        return f"{last.name}:done"
    steps = [int(p.name) for p in (last / "checkpoints").glob("*") if p.name.isdigit()]
    return f"{last.name}:{max(steps) if steps else 0}"


def timeline(reference: Path) -> list[tuple[str, int]]:
    """(stage, step) of every training metrics line of an uninterrupted run, in run order."""
    stages = sorted((d for d in reference.iterdir() if (d / "summary.json").exists() and (d / "metrics.jsonl").exists()),
                    key=lambda d: (d / "summary.json").stat().st_mtime)
    return [(d.name, json.loads(line)["step"]) for d in stages
            for line in (d / "metrics.jsonl").read_text().splitlines() if '"eval/' not in line]


def position(workdir: Path, order: list[str], since: float) -> tuple[int, int] | None:
    """(stage index, step) of the last metrics line this process wrote (files touched since
    `since`); None before it wrote any."""
    best = None
    for i, stage in enumerate(order):
        path = workdir / stage / "metrics.jsonl"
        if path.exists() and path.stat().st_mtime >= since:
            lines = [line for line in path.read_text(errors="replace").splitlines() if line.endswith("}")]
            step = json.loads(lines[-1])["step"] if lines else 0
            best = (i, step)
    return best


def kill_and_resume(cmd: list[str], kills: int, seed: int, events: list[tuple[str, int]],
                    timeout: float = 900.0) -> dict:
    """Start `cmd` and SIGKILL it, `kills` times; then let it finish.

    The kills are spread over the run: k sorted random points of the uninterrupted run's
    `events` (its metrics lines, stage by stage); attempt i is killed a random 0-1.5 s after
    the restarted run has written past its point (a fifth of the attempts are killed during
    start-up instead), so kills land in every phase: training, sampling, evaluation,
    checkpoint and final writes.
    """
    rng = random.Random(seed)
    workdir = Path(cmd[cmd.index("--workdir") + 1])
    order = list(dict.fromkeys(stage for stage, _ in events))
    targets = sorted(rng.randrange(len(events)) for _ in range(kills))
    moments, finished_early, where = [], 0, []
    for target in targets:
        stage, step = events[target]
        goal = (order.index(stage), step)
        t_start = time.time()
        log = open(workdir.parent / f"{workdir.name}.attempt.log", "w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environment(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        t0 = time.perf_counter()
        during_startup = rng.random() < 0.2
        deadline = t0 + rng.uniform(0.2, 3.0) if during_startup else None
        extra = rng.uniform(0.0, 1.5)
        while proc.poll() is None:
            now = time.perf_counter()
            if deadline is None:
                at = position(workdir, order, t_start)
                if at is not None and at >= goal:
                    deadline = now + extra
            if deadline is not None and now >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.05)
        else:
            finished_early += 1  # it finished (or failed) before the kill
            if proc.returncode != 0:
                log.close()
                tail = Path(log.name).read_text()[-3000:]
                raise RuntimeError(f"a restart failed with exit code {proc.returncode} after kill "
                                   f"{len(moments)} (progress {where[-1] if where else 'start'}):\n{tail}")
        log.close()
        moments.append(round(time.perf_counter() - t0, 2))
        where.append(progress(workdir))
    code, seconds, tail = run_once(cmd, timeout)
    return {"moments": moments, "progress_at_kill": where, "finished_before_kill": finished_early,
            "final_exit": code, "final_seconds": round(seconds, 1), "final_output": tail if code else ""}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--config", default="configs/instructgpt.py:micro")
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="", help="where to run (default: a temporary directory)")
    p.add_argument("extra", nargs="*", help="further --config.x=y overrides")
    args = p.parse_args()
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kill_anywhere_"))
    reference, killed = base / "reference", base / "killed"
    for d in (reference, killed):
        shutil.rmtree(d, ignore_errors=True)
    code, seconds, tail = run_once(command(args.config, reference, args.extra), 900)
    if code:
        raise SystemExit(f"the uninterrupted run failed:\n{tail}")
    report = kill_and_resume(command(args.config, killed, args.extra), args.kills, args.seed, timeline(reference))
    same = numbers(json.loads((reference / "summary.json").read_text())) == numbers(
        json.loads((killed / "summary.json").read_text())) if report["final_exit"] == 0 else False
    print(json.dumps({"config": args.config, "kills": args.kills, "seed": args.seed,
                      "uninterrupted_seconds": round(seconds, 1), **report, "same_numbers": same,
                      "metrics_clean": metrics_clean(killed)}, indent=1))


if __name__ == "__main__":
    main()

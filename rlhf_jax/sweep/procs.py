"""Running one sweep point as a child process: its command, environment, CPU share and locks.

Each run is `python -m rlhf_jax.main --config ... --workdir ... --config.K=V...` in its own
session (so a Ctrl-C reaches the runner, which forwards it once), its output appended to
WORKDIR/run.log. On Linux the child asks for SIGTERM when the runner dies (PR_SET_PDEATHSIG),
so a runner killed with SIGKILL does not leave orphans training on: they checkpoint and stop,
and the next runner waits for their workdir lock before resuming them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import rlhf_jax
from rlhf_jax import hostenv
from rlhf_jax.workdir import HolderLock

PACKAGE_ROOT = Path(rlhf_jax.__file__).resolve().parents[1]
LOG_NAME = "run.log"
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def command(config: str, workdir: Path, overrides: dict[str, str], wandb: bool) -> list[str]:
    """The run's rlhf_jax.main command line."""
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "rlhf_jax.main", "--config", config, "--workdir", str(workdir), *flags,
            *([] if wandb else ["--no_wandb"])]


def cpu_slots(jobs: int) -> list[set[int]] | None:
    """Disjoint CPU sets for `jobs` concurrent runs (None for one run: no pinning); with more
    jobs than CPUs, jobs share CPUs round-robin."""
    if jobs <= 1 or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if jobs >= len(cpus):
        return [{cpus[i % len(cpus)]} for i in range(jobs)]
    size, extra = divmod(len(cpus), jobs)
    bounds = [i * size + min(i, extra) for i in range(jobs + 1)]
    return [set(cpus[bounds[i]:bounds[i + 1]]) for i in range(jobs)]


def environment(cpus: set[int] | None = None, tags: str = "", base: dict | None = None) -> dict[str, str]:
    """The child's environment: one host device (a caller's fake-device count would change the
    mesh), the shared persistent compilation cache, this checkout's package first on the path,
    thread pools sized to the CPU share, the sweep as a W&B tag."""
    env = dict(os.environ if base is None else base)
    xla = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*xla, "--xla_force_host_platform_device_count=1"])
    hostenv.compile_cache_defaults(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    if cpus:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(len(cpus))
    if tags:
        env["WANDB_TAGS"] = tags[:64]  # W&B caps a tag at 64 characters
    return env


def _child_setup(cpus: set[int] | None, parent: int):
    """Runs in the child between fork and exec (the runner is single-threaded, so this is safe)."""
    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the runner died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


def launch(cmd: list[str], workdir: Path, env: dict[str, str], cpus: set[int] | None) -> subprocess.Popen:
    """Start `cmd` with its output appended to WORKDIR/run.log (after a header line)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / LOG_NAME, "a") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"=== {stamp} sweep runner pid {os.getpid()}: {shlex.join(cmd)}\n")
        log.flush()
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_child_setup(cpus, os.getpid()))


def run_attached(cmd: list[str], workdir: Path, env: dict[str, str]) -> int:
    """Run `cmd` as `launch` does and wait for it (a SLURM task, a W&B agent's run): SIGINT and
    SIGTERM (SLURM's time limit, scancel) are forwarded to it, so it checkpoints and stops.
    Returns its exit code (negative: the signal that killed it)."""
    proc = launch(cmd, workdir, env, None)
    forward = lambda signum, frame: signal_group(proc, signum)
    saved = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def exit_status(code: int) -> int:
    """A child's return code as a shell exit status (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Send `signum` to the child's process group (its session), if it still runs."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def describe_exit(code: int) -> str:
    """'exit 2', or 'killed by SIGKILL' for a negative return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def last_line(log: Path, limit: int = 300) -> str:
    """The log's last non-empty line (progress bars' carriage returns split lines too)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def locked(workdir: Path) -> bool:
    """Whether a run (a previous runner's child, or anyone's) holds the workdir's lock now."""
    path = workdir / ".lock"
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


class SweepLock(HolderLock):
    """`with SweepLock(out):` one runner per sweep directory (an flock on OUT/.sweep.lock)."""

    def __init__(self, out: Path):
        super().__init__(Path(out) / ".sweep.lock")

    def busy(self, holder: str) -> Exception:
        return RuntimeError(f"{self.path.parent}: another sweep runner uses this directory ({holder})")

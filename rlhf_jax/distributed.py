"""One run on several processes (hosts): start-up, who writes, agreement, and failure.

    launch = distributed.resolve(coordinator, num_processes, process_id, mode)   # flags + environment
    distributed.initialize(launch)        # jax.distributed on several processes; nothing on one

Every process runs the same program on the same config and feeds its own rows of each global
batch (`RunContext.shard`). The workdir must be on a filesystem every process sees:

- process 0 alone takes the workdir lock and writes metrics, summaries, reports, plots and the
  hand-off files (`primary()`); every process takes part in orbax's saves and restores;
- `barrier(name)` orders a write by process 0 before the reads of the others;
- `agree(what, value)` checks that every process holds the same value (the config fingerprint)
  and fails on all of them, naming the processes that differ;
- a failure on one process ends all of them with its message: `fail(message, code)` publishes it
  in the coordination service, where a watcher thread in every other process reads it, prints it
  and exits with the same code (no process waits for a collective that will never come). A
  process killed outright is noticed by the coordination service's heartbeat
  (`heartbeat_timeout_seconds`), which ends the others.

Launch modes (`--distributed`): `auto` (default) starts jax.distributed when the flags or the
environment name several processes (`--coordinator/--num_processes/--process_id`; SLURM with
more than one task; JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES > 1), `on` always (a TPU VM
slice, where JAX reads the topology from the metadata server), `off` never.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

MODES = ("auto", "on", "off")
_FAILURE = "rlhf_jax/failure"
_STATE = {"client": None, "barriers": 0, "finishing": False}


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a run: `enabled` False for one process; the fields left None are
    for JAX's cluster detection (SLURM, TPU VM) to fill in."""

    enabled: bool
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout: int = 100
    source: str = "one process"


def _int(environ, name: str) -> int | None:
    value = environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def resolve(coordinator: str = "", num_processes: int = 0, process_id: int = -1, mode: str = "auto",
            heartbeat_timeout: int = 100, environ=os.environ) -> Launch:
    """The launch the flags and the environment describe (module docstring); a mistake in the
    flags raises ValueError naming the flag."""
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}: choose one of {', '.join(MODES)}")
    explicit = [name for name, given in (("--coordinator", bool(coordinator)), ("--num_processes", num_processes > 0),
                                         ("--process_id", process_id >= 0)) if given]
    if explicit and len(explicit) < 3:
        missing = sorted({"--coordinator", "--num_processes", "--process_id"} - set(explicit))
        raise ValueError(f"{', '.join(explicit)} given without {', '.join(missing)}: give all three, or none "
                         f"(SLURM and TPU VMs are detected from the environment)")
    if explicit and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id}: must be in [0, --num_processes={num_processes})")
    if mode == "off":
        return Launch(False, source="--distributed=off")
    if explicit:
        return Launch(num_processes > 1, coordinator, num_processes, process_id, heartbeat_timeout, "flags")
    env_n = _int(environ, "JAX_NUM_PROCESSES")
    if environ.get("JAX_COORDINATOR_ADDRESS") and env_n and env_n > 1:
        return Launch(True, environ["JAX_COORDINATOR_ADDRESS"], env_n, _int(environ, "JAX_PROCESS_ID"),
                      heartbeat_timeout, "JAX_* environment")
    slurm_n = _int(environ, "SLURM_NTASKS") or _int(environ, "SLURM_NPROCS")
    if environ.get("SLURM_JOB_ID") and slurm_n and slurm_n > 1:
        return Launch(True, heartbeat_timeout=heartbeat_timeout, source="SLURM")  # JAX reads the rest
    if mode == "on":
        return Launch(True, heartbeat_timeout=heartbeat_timeout, source="cluster detection")
    return Launch(False)


def initialize(launch: Launch) -> None:
    """Start jax.distributed for `launch` (CPU collectives over gloo) and the failure watcher."""
    if not launch.enabled:
        return
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only when the devices are CPUs
    jax.distributed.initialize(coordinator_address=launch.coordinator, num_processes=launch.num_processes,
                               process_id=launch.process_id, heartbeat_timeout_seconds=launch.heartbeat_timeout)
    from jax._src import distributed as jax_distributed
    _STATE["client"] = jax_distributed.global_state.client
    threading.Thread(target=_watch, name="rlhf_jax-failure-watcher", daemon=True).start()


def active() -> bool:
    return _STATE["client"] is not None


def process_index() -> int:
    import jax
    return jax.process_index() if active() else 0


def process_count() -> int:
    import jax
    return jax.process_count() if active() else 1


def primary() -> bool:
    """Whether this process writes the run's files (process 0, or the only process)."""
    return process_index() == 0


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Wait until every process reaches the barrier of this name (a no-op on one process). Every
    process must call the same barriers in the same order: the name gets a sequence number."""
    if not active():
        return
    _STATE["barriers"] += 1
    _STATE["client"].wait_at_barrier(f"rlhf_jax/{_STATE['barriers']}/{name}", int(timeout_s * 1000))


def agree(what: str, value: str, timeout_s: float = 600.0) -> None:
    """Raise (on every process) unless every process holds the same `value` for `what`."""
    if not active():
        return
    from rlhf_jax.errors import UserError
    client, me = _STATE["client"], process_index()
    client.key_value_set(f"rlhf_jax/agree/{what}/{me}", value)
    values = {i: client.blocking_key_value_get(f"rlhf_jax/agree/{what}/{i}", int(timeout_s * 1000))
              for i in range(process_count())}
    if len(set(values.values())) > 1:
        groups: dict[str, list[int]] = {}
        for i, v in values.items():
            groups.setdefault(v, []).append(i)
        described = "; ".join(f"processes {ids}: {v}" for v, ids in groups.items())
        raise UserError(f"the processes of this run disagree on {what} ({described}); launch every process with "
                        f"the same command and files")


def any_true(flag: bool) -> bool:
    """Whether `flag` holds on some process (a collective: every process must call it)."""
    if not active():
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


def fail(message: str, code: int, wait_s: float = 10.0) -> None:
    """On several processes: publish this process's failure so that every process ends with its
    message, wait (at most `wait_s`) until the others have read it (the coordination service
    lives in process 0 and must outlive the reading), then exit with `code` at once (a normal
    exit would wait at JAX's shutdown barrier for processes that are gone). A no-op on one
    process: the caller reports and exits as usual."""
    if not active():
        return
    _STATE["finishing"] = True
    client, me = _STATE["client"], process_index()
    try:
        client.key_value_set(_FAILURE, f"{code}\n{me}\n{message}")
    except Exception:  # noqa: BLE001  (another process failed first: its message stands)
        pass
    deadline = time.monotonic() + wait_s
    for i in range(process_count()):
        if i != me:
            left = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                client.blocking_key_value_get(f"{_FAILURE}/read/{i}", left)
            except Exception:  # noqa: BLE001  (it is gone or slow: stop waiting for it)
                pass
    try:  # process 0, which hosts the service, waits for this before it exits
        client.key_value_set(f"{_FAILURE}/exiting", "1")
    except Exception:  # noqa: BLE001
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def finish() -> None:
    """The normal end of a multi-process run: every process shuts down together."""
    if not active():
        return
    _STATE["finishing"] = True
    import jax
    jax.distributed.shutdown()
    _STATE["client"] = None


def _watch() -> None:
    """Wait for a failure published by another process; print it and exit with its code."""
    client = _STATE["client"]
    while not _STATE["finishing"]:
        try:
            text = client.blocking_key_value_get(_FAILURE, 60_000)
        except Exception:  # noqa: BLE001  (the timeout, or the service ending)
            time.sleep(0.5)
            continue
        if _STATE["finishing"]:
            return
        code, who, message = text.split("\n", 2)
        me = process_index()
        if int(who) == me:
            return
        print(f"error: process {who} of {process_count()} failed: {message}", file=sys.stderr, flush=True)
        try:
            client.key_value_set(f"{_FAILURE}/read/{me}", "1")
            if me == 0:  # the service lives here: its end would abort the failing process before its own exit
                client.blocking_key_value_get(f"{_FAILURE}/exiting", 10_000)
                time.sleep(0.5)
        except Exception:  # noqa: BLE001
            pass
        sys.stderr.flush()
        os._exit(int(code))

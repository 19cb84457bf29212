"""A workdir that knows its run: one writer at a time, and the config it was started with.

- `RunLock`: an exclusive `flock` on WORKDIR/.lock, held for the whole run; a second run on
  the same workdir fails at once, naming the holder (pid, host, start time, command). The
  kernel releases it when the holder dies, however it dies.
- `check_config`: WORKDIR/config.json keeps the resolved config and its fingerprint. A rerun
  or resume with another config is refused, naming the changed fields, unless every changed
  field is safe: logging and bookkeeping fields (`SAFE`), or fields read only by stages that
  have not started in this workdir. `--fresh` starts over instead. A field the stored config
  lacks (the code gained it since) is accepted: new fields default to the old behaviour.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from rlhf_jax import hostenv
from rlhf_jax.errors import UserError

# changing these never changes a result (the mesh only places the same computation; rm.pack and
# dpo.pack only lay out the same rankings: the same scores and log-probs from fewer positions)
SAFE = ("stages", "name", "variant", "log", "debug_stop_after", "mesh", "rm.pack", "dpo.pack")
GLOBAL = ("seed", "model", "data")  # read by every stage


class WorkdirError(UserError):
    """The workdir cannot be used as asked (locked, another config, not a directory...)."""


def prepare(workdir: str | Path) -> Path:
    """The workdir, created if needed; a clear error when it is a file or not writable."""
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path}: is a file, not a directory; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except PermissionError:
        raise WorkdirError(f"--workdir {path}: not writable; choose a directory you can write to") from None
    except OSError as e:
        raise WorkdirError(f"--workdir {path}: cannot be used ({e.strerror})") from None
    return path


class HolderLock:
    """`with HolderLock(path):` an exclusive `flock` on `path`, taken without waiting; while it is
    held the file names its holder (pid, host, start time, command). When another process holds
    it, entering raises `self.busy(holder)`. The kernel releases it when the holder dies."""

    def __init__(self, path: str | Path):
        self.path, self.file = Path(path), None

    def busy(self, holder: str) -> Exception:
        return RuntimeError(f"{self.path}: held by {holder}")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            self.file = None
            raise self.busy(holder) from None
        self.file.seek(0)
        self.file.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {shlex.join(sys.argv)}")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


class RunLock(HolderLock):
    """`with RunLock(workdir):` holds the workdir for one run (WORKDIR/.lock)."""

    def __init__(self, workdir: str | Path):
        super().__init__(Path(workdir) / ".lock")

    def busy(self, holder: str) -> Exception:
        return WorkdirError(f"{self.path.parent}: another run holds this workdir ({holder}); wait for it, "
                            f"or use another --workdir")


def unflatten(flat: dict[str, Any]):
    """A ConfigDict from dotted keys (the inverse of `flatten`)."""
    import ml_collections
    nested: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ml_collections.ConfigDict(nested)


def stored_config(workdir: str | Path):
    """The config a workdir's run was started with (WORKDIR/config.json) as a ConfigDict."""
    return unflatten(json.loads((Path(workdir) / "config.json").read_text())["config"])


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"ppo.kl_coef": 0.05, ...} of a ConfigDict (or nested dict)."""
    items = config.to_dict() if hasattr(config, "to_dict") else config
    out = {}
    for key, value in items.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def fingerprint(flat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def readers(field: str, stage_reads: dict[str, tuple[str, ...]], stage_ignores: dict | None = None) -> set[str]:
    """The stages whose results depend on `field` (a dotted path): those that read it or a
    section above it (and do not ignore it), every stage for a run-wide field, none for a
    safe one."""
    covers = lambda prefix: field == prefix or field.startswith(prefix + ".")
    if any(covers(s) for s in SAFE):
        return set()
    ignores = stage_ignores or {}
    return {stage for stage, reads in stage_reads.items()
            if any(covers(r) for r in reads + GLOBAL) and not any(covers(i) for i in ignores.get(stage, ()))}


def check_processes(workdir: Path, count: int, in_progress: list[str], write: bool = True) -> None:
    """Refuse to resume a stage that is mid-way on another number of processes than it started
    on (WORKDIR/launch.json keeps the count): its checkpoints and data position were made for
    that launch. A finished stage is never affected; `--fresh` starts over."""
    path = workdir / "launch.json"
    try:
        before = json.loads(path.read_text())["processes"] if path.exists() else None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise WorkdirError(f"{path}: unreadable; delete it (the next run writes it again)") from None
    if before is not None and before != count and in_progress:
        raise WorkdirError(f"{workdir}: stage {', '.join(in_progress)} started on {before} process"
                           f"{'es' if before != 1 else ''} and is not finished; relaunch it on {before} "
                           f"(this launch has {count}), or start over with --fresh")
    if write:
        tmp = path.with_name("launch.json.tmp")
        tmp.write_text(json.dumps({"processes": count}))
        os.replace(tmp, path)


def record_launch(workdir: Path, processes: int, finished: list[str], in_progress: list[str]) -> dict:
    """Append this launch to WORKDIR/hosts.jsonl: the machine (`hostenv.host`; on several processes,
    process 0's), the process count, and the stages already finished and mid-way (to be resumed).
    A stage's times came from the launches between the one it started in and the first that lists
    it finished: when those name more than one boot of one machine (`hostenv.same_host`), its
    times mix hosts."""
    record = {**hostenv.host(), "processes": processes, "finished": finished, "in_progress": in_progress}
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(workdir / "hosts.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write() of the whole line: a kill lands before it or after it, not inside
        os.write(fd, line)
    finally:
        os.close(fd)
    return record


def launches(workdir: Path) -> list[dict]:
    """The records `record_launch` appended, oldest first ([] for a workdir from before them). A
    last line cut short (the machine lost power, or the disk filled, mid-write) is left out; any
    other unreadable line is an error naming it."""
    path = Path(workdir) / "hosts.jsonl"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines):
                raise WorkdirError(f"{path}:{i}: not a JSON record ({e.msg}); delete the line") from None
    return out


def check_config(workdir: Path, config, stage_reads: dict[str, tuple[str, ...]], started: set[str],
                 stage_ignores: dict[str, tuple[str, ...]] | None = None, write: bool = True) -> list[str]:
    """Store the config on a first run; later, refuse changes a started stage would not see.

    Returns the changed fields that were accepted (safe, or read only by stages not started).
    `write` False only checks (the processes of a multi-process run other than process 0).
    """
    path = workdir / "config.json"
    flat = flatten(config)
    if path.exists():
        try:
            stored = json.loads(path.read_text())["config"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WorkdirError(f"{path}: unreadable ({e}); restore it, or start over with --fresh") from None
        changed = sorted(k for k in set(stored) | set(flat) if stored.get(k, "<absent>") != flat.get(k, "<absent>"))
        refused = []
        for field in changed:
            if field not in stored:  # a field the code gained since: the run used its behaviour before
                continue
            hit = sorted(readers(field, stage_reads, stage_ignores) & started)
            if hit:
                refused.append(f"{field}: {stored.get(field, '<absent>')!r} -> {flat.get(field, '<absent>')!r} "
                               f"(read by stage {', '.join(hit)})")
        if refused:
            raise WorkdirError(f"{workdir}: this workdir was run with another config; changed fields:\n  "
                               + "\n  ".join(refused) + "\nrerun with the workdir's config, use another --workdir, "
                               "or start over with --fresh")
        accepted = changed
    else:
        accepted = []
    if not write:
        return accepted
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint(flat), "config": flat}, indent=1, default=str))
    os.replace(tmp, path)
    return accepted


def start_over(workdir: Path) -> None:
    """--fresh: remove everything the previous run left (the lock stays with this run)."""
    for child in workdir.iterdir():
        if child.name == ".lock":
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()

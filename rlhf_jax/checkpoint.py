"""Orbax checkpoints of a stage: the train-state pytree plus JSON metadata (data position...),
and the files one stage hands to the next (final parameters, summary).

Restoring targets the live state's shardings, so a resumed run places every array exactly
where an uninterrupted one would have it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax import distributed
from rlhf_jax.errors import CorruptFileError

# Orbax's default on CPU and TPU splits each replicated array among its replicas, each writing a
# part ("replica-parallel"): one slice op per array and device. On one host that is pure
# overhead (a test-sized run on 8 devices sliced 4,926 times, a third of its wall time); across
# hosts it pays for large arrays. Split only where every part is at least this large.
REPLICA_PARALLEL_MIN_BYTES = 16 << 20
_absl = logging.getLogger("absl")
_level = _absl.level
_absl.setLevel(logging.ERROR)  # not its warning that a handler is replaced
try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES),
        override=True)
finally:
    _absl.setLevel(_level)


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state shaped and sharded like `like`, meta) from `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        check_shapes(self._stored(step), like)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def _stored(self, step: int):
        """The metadata tree of step's state; None where it cannot be read (the restore then says why)."""
        try:
            return self.manager.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001
            return None

    def restore_latest_readable(self, like: Any, stage: str = "") -> tuple[Any, dict] | None:
        """The newest checkpoint that restores, falling back (with a warning naming it) past
        a corrupt one; None when there is none; CorruptFileError when none can be read."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                return self.restore(like, step)
            except Exception as e:  # noqa: BLE001  (orbax raises many kinds on a damaged directory)
                where = self.directory / str(step)
                later = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "no older one to use"
                print(f"[{stage}] warning: checkpoint {where} is unreadable ({type(e).__name__}: "
                      f"{str(e)[:160]}); {later}", file=sys.stderr, flush=True)
        if steps:
            raise CorruptFileError(f"{self.directory}: no checkpoint can be read; delete the directory to restart "
                                   f"the stage, or start over with --fresh")
        return None

    def close(self) -> None:
        self.manager.close()


def _names(path) -> tuple[str, ...]:
    """A key path as plain names: a field, a dict key and a list index alike (orbax stores a
    dataclass or named tuple as a dict of its fields)."""
    return tuple(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def check_shapes(stored, like) -> None:
    """ValueError naming the first leaf whose stored shape differs from `like`'s, or that only one
    side has. Checked before restoring: a mismatched restore fails inside orbax's asynchronous
    reads, which then print a traceback for every read still in flight. `stored` is orbax's
    metadata tree (None: nothing to check)."""
    if stored is None:
        return
    have = {_names(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored)}
    want = {_names(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(like)}
    for key in sorted(want.keys() | have.keys()):
        if have.get(key) != want.get(key):
            said = lambda s: "absent" if s is None else str(s)
            raise ValueError(f"{'/'.join(key)}: stored shape {said(have.get(key))}, this run's {said(want.get(key))} "
                             f"(written by another configuration or version)")


# --- stage hand-off files: WORKDIR/<stage>/final (parameters) and summary.json ---------------

def final_path(workdir: str | Path, stage: str) -> Path:
    return (Path(workdir) / stage / "final").absolute()


def summary_path(workdir: str | Path, stage: str) -> Path:
    return Path(workdir) / stage / "summary.json"


def summary_identity(workdir: str | Path, stage: str) -> str | None:
    """A hash of the stage's summary.json, which every run of the stage writes anew (wall times
    included): another run of it since gives another value. None when it has not finished."""
    path = summary_path(workdir, stage)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def write_json_atomic(path: Path, value) -> None:
    """JSON to `path` through a temporary name and a rename: a reader sees the old file or the new one.
    On several processes only process 0 writes (every process holds the same value), creating
    the directory if needed."""
    if not distributed.primary():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def save_arrays_atomic(path: Path, **arrays) -> None:
    """numpy arrays to the .npz `path` through a temporary name and a rename (a reader sees the
    old file or the new one); on several processes only process 0 writes, as write_json_atomic."""
    if not distributed.primary():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def save_params(path: Path, params) -> None:
    """Parameters to the directory `path` through `path`.tmp and a rename (a reader sees the old
    directory or the new one). On several processes every one takes part in orbax's save and
    process 0 renames; every process returns once the directory is in place."""
    primary = distributed.primary()
    tmp = path.with_name(path.name + ".tmp")
    if primary:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier(f"{path}-clean")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp, params)
    distributed.barrier(f"{path}-saved")
    if primary:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    distributed.barrier(f"{path}-renamed")


def save_final(workdir: str | Path, stage: str, params, summary: dict) -> None:
    """The stage's final parameters (when it has any), then its summary: the summary is written
    last, each by a rename, so a stage is either done with both or not done. On several
    processes every one takes part in orbax's save; process 0 renames and writes the summary,
    and every process returns only once both exist."""
    path = final_path(workdir, stage)
    if distributed.primary():
        path.parent.mkdir(parents=True, exist_ok=True)
    if params is not None:
        save_params(path, params)
    write_json_atomic(summary_path(workdir, stage), summary)
    distributed.barrier(f"{stage}-summary")


def load_final(workdir: str | Path, stage: str, like):
    """A finished stage's final parameters, shaped and sharded like `like`."""
    path = final_path(workdir, stage)
    if not path.exists():
        raise FileNotFoundError(f"{path}: stage {stage!r} has not finished; run it first "
                                f"(--config.stages={stage},...)")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            check_shapes(ckptr.metadata(path).item_metadata, like)
            return ckptr.restore(path, abstract)
    except Exception as e:  # noqa: BLE001
        raise CorruptFileError(f"{path}: the final parameters of stage {stage!r} cannot be read "
                               f"({type(e).__name__}: {str(e)[:200]}); delete {path.parent} to run it again") from e


def read_summary(workdir: str | Path, stage: str) -> dict | None:
    """A finished stage's summary, or None while it has not finished."""
    path = summary_path(workdir, stage)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path}: not valid JSON ({e}); delete it to run stage {stage!r} again") from None

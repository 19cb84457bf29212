"""One metrics writer per stage: JSON Lines file, W&B (online / offline / disabled), console progress.

`NullWriter` is the no-op for tests. Values are plain floats by the time they reach a writer:
the training loop reads device metrics one step late so that logging never stalls the device.

A resumed stage truncates its metrics.jsonl to the step it resumes from (and drops a line a
kill cut short), so no step appears twice and the curves stay clean.

W&B mode: the config's `log.wandb` when it names one (online, offline, disabled); with "auto",
the environment's WANDB_MODE when set; otherwise online with an API key, offline without.
When online logging cannot start within `WANDB_INIT_TIMEOUT` seconds, the stage logs offline
and says so.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

WANDB_INIT_TIMEOUT = 30.0
MODES = ("online", "offline", "disabled")


def wandb_mode(requested: str, environ=os.environ) -> str:
    """The mode a writer uses (module docstring); an unknown name fails with the valid ones."""
    if requested != "auto":
        if requested not in MODES:
            raise ValueError(f"log.wandb={requested!r} must be 'auto' or one of {MODES}")
        return requested
    env = environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if environ.get("WANDB_API_KEY") else "offline"


class NullWriter:
    def write(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep the complete lines of `path` up to `last_step`; returns how many were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line a kill cut short
        if line.endswith("\n") and row.get("step", 0) <= last_step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - len(keep)


def _start_wandb(mode: str, **kwargs):
    """A W&B run in `mode`; online falls back to offline (with a warning) if it cannot start."""
    import wandb as wb
    settings = wb.Settings(init_timeout=WANDB_INIT_TIMEOUT, silent=True)
    try:
        return wb.init(mode=mode, settings=settings, **kwargs)
    except Exception as e:  # noqa: BLE001  (any failure to reach the server)
        if mode != "online":
            raise
        print(f"[wandb] online logging failed ({type(e).__name__}: {str(e)[:200]}); logging offline instead",
              file=sys.stderr, flush=True)
        return wb.init(mode="offline", settings=settings, **kwargs)


class Writer(NullWriter):
    def __init__(self, directory: str | Path, stage: str, *, wandb: str = "auto", project: str = "rlhf_jax",
                 run_name: str | None = None, group: str | None = None, config: dict | None = None,
                 keys: tuple[str, ...] = (), stream=sys.stderr, every: int = 1, resume_step: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stage, self.keys, self.stream, self.every = stage, keys, stream, every
        path = self.directory / "metrics.jsonl"
        truncate_metrics(path, resume_step or 0) if resume_step is not None else None
        self.file = open(path, "a", encoding="utf-8")
        self.bar = None
        self.run = None
        mode = wandb_mode(wandb)
        if mode != "disabled":
            self.run = _start_wandb(mode, project=project, name=f"{run_name or 'run'}-{stage}", group=group or run_name,
                                    dir=str(self.directory), config=config or {}, reinit="finish_previous")

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        self.file.flush()
        if self.run is not None:
            self.run.log({f"{self.stage}/{k}": v for k, v in clean.items()}, step=step)

    def progress(self, step: int, total: int, metrics: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm
            tty = self.stream.isatty()
            self.bar = tqdm(total=total, initial=step - 1, desc=f"[{self.stage}]", file=self.stream,
                            mininterval=0.5 if tty else 15.0, dynamic_ncols=tty, ascii=not tty, leave=True)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k: f"{metrics[k]:.4g}" for k in self.keys if k in metrics}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.run is not None:
            self.run.finish()

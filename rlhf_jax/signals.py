"""SIGTERM and SIGINT: finish the current step, save what there is to save, exit.

The first signal only sets a flag. The training loop checks it after every step (and writes
a checkpoint); sampling, scoring and evaluation loops check it between batches. A second
Ctrl-C stops at once, without waiting.
"""
from __future__ import annotations

import signal

_STATE = {"signal": None}
EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}


class StopRequested(SystemExit):
    """Raised at the next safe point after a signal; `step` is the checkpointed step (or None)."""

    def __init__(self, stage: str, step: int | None, name: str = "SIGTERM"):
        super().__init__(EXIT_CODES.get(name, 143))
        self.stage, self.step, self.signal = stage, step, name


def install() -> None:
    def handler(signum, frame):
        name = signal.Signals(signum).name
        if _STATE["signal"] == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        _STATE["signal"] = name

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def requested() -> str | None:
    """The signal that asks this run to stop, or None. On several processes a collective: every
    process gets the same answer at the same point of the program (a SIGTERM that reached one
    process stops all of them at the same step), so every process must call it."""
    from rlhf_jax import distributed
    local = _STATE["signal"]  # read once: a signal arriving during the collective counts at the next call
    if distributed.process_count() == 1:
        return local
    if not distributed.any_true(local is not None):
        return None
    _STATE["signal"] = local or "SIGTERM"
    return _STATE["signal"]


def reset() -> None:
    _STATE["signal"] = None


def check(stage: str, step: int | None = None) -> None:
    """Raise StopRequested if a signal arrived (call between batches of any long loop)."""
    name = requested()
    if name is not None:
        raise StopRequested(stage, step, name)

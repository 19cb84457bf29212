"""Tests that need a mesh: `@pytest.mark.devices(8)`.

A pytest process has one fake host device (tests/conftest.py): every in-process run the suite
makes (the micro pipeline, the stage tests) then compiles and runs unsharded, as a run of the
sweep runner does. Sharded 8 ways on 2 cores the same micro pipeline took 76.5 s against 63.5 s
on one device from an empty compile cache, 36.6 s against 29.0 s from a warm one (docs/tests.md).

A test marked `devices(n)` in a process with fewer devices is replaced, after collection, by an
`InChild` item of the same node id: the first one of a module to run starts one child pytest with
n devices for every such test of that module, the child records each test's outcome (`record`),
and each item reports what the child saw (a failure with the child's text, a skip with its
reason). A caller who sets `--xla_force_host_platform_device_count` to n or more runs them
in-process."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.children import ROOT, child_env

OUTCOMES = "RLHF_JAX_TEST_OUTCOMES"  # set in the child: where it records its tests' outcomes
_seen: dict[str, dict] = {}  # nodeid -> the child's record of it


def needed(item) -> int:
    """The devices a test asks for (its nearest `devices` mark), 0 for none."""
    mark = item.get_closest_marker("devices")
    return int(mark.args[0]) if mark else 0


def record(report) -> None:
    """In a child: append each phase of a test that did not pass, and its call."""
    path = os.environ.get(OUTCOMES)
    if not path or (report.when != "call" and report.passed):
        return
    if report.skipped and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        skipped_at, line, reason = report.longrepr
        text = f"{os.path.relpath(skipped_at, ROOT)}:{line}: {reason.removeprefix('Skipped: ')}"
    else:
        text = report.longreprtext
    with open(path, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                            "text": text}) + "\n")


def in_children(items: list) -> None:
    """pytest_collection_modifyitems (after deselection): replace every test that needs more
    devices than this process has by an `InChild` of the same node id."""
    have = _have()
    group: dict[str, list[str]] = {}  # module -> the node ids its child runs
    for i, item in enumerate(items):
        devices = needed(item)
        if devices > have:
            ids = group.setdefault(item.nodeid.split("::")[0], [])
            ids.append(item.nodeid)
            items[i] = InChild.from_parent(item.parent, name=item.name, original=item, devices=devices, group=ids)


def _have() -> int:
    """This process's devices: on the CPU platform, from the fake-device flag conftest sets (read
    without starting JAX's backend during collection), else JAX's count."""
    counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    if counts and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
        return int(counts[-1])
    import jax
    return jax.device_count()


class ChildFailed(Exception):
    """The child's failure text of a test."""


class InChild(pytest.Item):
    """A test run in a child pytest with `devices` fake devices, with the other tests of its
    module that need them (`group`), and reported here as the child saw it."""

    def __init__(self, *, original, devices: int, group: list[str], **kwargs):
        super().__init__(**kwargs)
        self.devices, self.group = devices, group
        self.own_markers.extend(original.own_markers)
        self.keywords.update(original.keywords)
        self._where = original.reportinfo()

    def reportinfo(self):
        return self._where

    def runtest(self) -> None:
        if self.nodeid not in _seen:
            _run_group(self)
        r = _seen[self.nodeid]
        if r["outcome"] == "skipped":
            pytest.skip(r["text"])
        if r["outcome"] == "failed":
            raise ChildFailed(f"[in a child pytest with {self.devices} devices, at its {r['when']}]\n{r['text']}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChildFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


def _run_group(item: InChild) -> None:
    """Run `item.group` in one child pytest; keep each test's record in `_seen`."""
    tmp = Path(tempfile.mkdtemp(prefix="rlhf_jax_devices_"))
    try:
        out = tmp / "outcomes.jsonl"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-m", item.config.getoption("markexpr") or "",
               "--basetemp", str(tmp / "base"), *item.group]
        done = subprocess.run(cmd, cwd=ROOT, env=child_env(item.devices, **{OUTCOMES: str(out)}),
                              capture_output=True, text=True)
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in records:  # a test's call, or the first phase that did not pass (a teardown's error counts)
        if _seen.get(r["nodeid"], {"outcome": "passed"})["outcome"] == "passed":
            _seen[r["nodeid"]] = r
    for nodeid in item.group:  # a test the child never reported (it crashed, or collected nothing) fails here
        _seen.setdefault(nodeid, {"nodeid": nodeid, "when": "call", "outcome": "failed",
                                  "text": f"the child pytest (exit {done.returncode}) did not report this test:\n"
                                          f"{done.stdout[-4000:]}{done.stderr[-4000:]}"})

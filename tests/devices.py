"""Tests that need a mesh: `@pytest.mark.devices(8)`.

A pytest process has one fake host device (tests/conftest.py): every in-process run the suite
makes (the micro pipeline, the stage tests) then compiles and runs unsharded, as a run of the
sweep runner does. Sharded 8 ways on 2 cores the same micro pipeline took 76.5 s against 63.5 s
on one device from an empty compile cache, 36.6 s against 29.0 s from a warm one (docs/tests.md).

A test marked `devices(n)` in a process with another device count is replaced, after collection,
by an `InChild` item of the same node id: the first one of a module to run starts one child
pytest on the CPU platform with n fake devices for every such test of that module, the child
records each test's outcome (`record`), and each item reports what the child saw (a failure with
the child's text, a skip with its reason). A caller who sets
`--xla_force_host_platform_device_count` to n runs them in-process. The grouping is per module,
as `--dist loadfile` hands out tests; under another xdist mode every worker that gets a test of
the module runs the module's group again (correct, slower).
"""
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

OUTCOMES = "RLHF_JAX_TEST_OUTCOMES"  # set for a child: where it records its tests' outcomes
_outcomes = os.environ.pop(OUTCOMES, None)  # this process's (a child's) record file; its own children do not see it
TIMEOUT = 3600  # seconds one child may take before its unreported tests fail
_seen: dict[str, dict] = {}  # nodeid -> the child's record of it


def needed(item) -> int:
    """The devices a test asks for (its nearest `devices` mark), 0 for none."""
    mark = item.get_closest_marker("devices")
    if mark is None:
        return 0
    if len(mark.args) != 1 or not isinstance(mark.args[0], int) or mark.args[0] < 1 or mark.kwargs:
        raise pytest.UsageError(f"{item.nodeid}: mark it devices(n) with one positive int, "
                                f"not devices{mark.args}{mark.kwargs or ''}")
    return mark.args[0]


def started(nodeid: str) -> None:
    """In a child: note that a test started (a child that dies names the test it was in)."""
    _write({"nodeid": nodeid, "when": "start", "outcome": "started", "text": ""})


def record(report) -> None:
    """In a child: append each phase of a test that did not pass, and its call."""
    if report.when != "call" and report.passed:
        return
    if getattr(report, "wasxfail", None) is not None:  # an xfail mark's expected failure
        _write({"nodeid": report.nodeid, "when": report.when, "outcome": "xfailed", "text": report.wasxfail})
        return
    if report.skipped and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        skipped_at, line, reason = report.longrepr
        text = f"{os.path.relpath(skipped_at, ROOT)}:{line}: {reason.removeprefix('Skipped: ')}"
    else:
        text = report.longreprtext
    _write({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "text": text})


def _write(entry: dict) -> None:
    if _outcomes:
        with open(_outcomes, "a") as f:
            f.write(json.dumps(entry) + "\n")


def in_children(items: list) -> None:
    """pytest_collection_modifyitems (after deselection): replace every test that needs another
    device count than this process has by an `InChild` of the same node id."""
    have = _have()
    group: dict[tuple[str, int], list[str]] = {}  # (module, devices) -> the node ids one child runs
    for i, item in enumerate(items):
        devices = needed(item)
        if devices and devices != have:
            if _outcomes:  # already a child: never start another
                raise pytest.UsageError(f"{item.nodeid} needs {devices} devices; this child pytest has {have}")
            ids = group.setdefault((item.nodeid.split("::")[0], devices), [])
            ids.append(item.nodeid)
            items[i] = InChild.from_parent(item.parent, name=item.name, where=item.reportinfo(), devices=devices,
                                           group=ids)


def _have() -> int:
    """This process's devices: on the CPU platform, from the fake-device settings conftest and
    `child_env` make (read without starting JAX's backend during collection), else JAX's count."""
    if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
        if os.environ.get("JAX_NUM_CPU_DEVICES"):
            return int(os.environ["JAX_NUM_CPU_DEVICES"])
        counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
        if counts:
            return int(counts[-1])
    import jax
    return jax.device_count()


class ChildFailed(Exception):
    """The child's failure text of a test."""


class InChild(pytest.Item):
    """A test run in a child pytest with `devices` fake devices, with the other tests of its
    module that need as many (`group`), and reported here as the child saw it. It carries no
    marks of the test's: the child applies them (skipif, xfail), the parent only reports."""

    def __init__(self, *, where, devices: int, group: list[str], **kwargs):
        super().__init__(**kwargs)
        self.devices, self.group, self._where = devices, group, where

    def reportinfo(self):
        return self._where

    def runtest(self) -> None:
        if self.nodeid not in _seen:
            _run_group(self)
        r = _seen[self.nodeid]
        if r["outcome"] == "skipped":
            pytest.skip(r["text"])
        if r["outcome"] == "xfailed":
            pytest.xfail(r["text"])
        if r["outcome"] == "failed":
            raise ChildFailed(f"[in a child pytest with {self.devices} devices, at its {r['when']}]\n{r['text']}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChildFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


def _child_environment(devices: int, out: Path) -> dict[str, str]:
    """The caller's environment with `devices` fake CPU devices and none of pytest's or xdist's
    per-run variables (PYTEST_ADDOPTS could hand the child options of plugins it does not load)."""
    env = child_env(devices, JAX_PLATFORMS="cpu", **{OUTCOMES: str(out)})
    for key in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        env.pop(key, None)
    return env


def _run_group(item: InChild) -> None:
    """Run `item.group` in one child pytest; keep each test's record in `_seen`. A test the child
    never finished fails here, naming what happened: the child stopped inside it, or never
    reached it, with the child's exit code and the end of its output."""
    tmp = Path(tempfile.mkdtemp(prefix="rlhf_jax_devices_"))
    out, code, tail, records = tmp / "outcomes.jsonl", None, "", []
    try:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-m", item.config.getoption("markexpr") or "",
               "--basetemp", str(tmp / "base"), *item.group]
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=_child_environment(item.devices, out), capture_output=True,
                                  text=True, errors="replace", timeout=TIMEOUT)
            code, tail = done.returncode, done.stdout[-4000:] + done.stderr[-4000:]
        except subprocess.TimeoutExpired as e:
            text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # bytes, whatever `text`
            code, tail = f"killed after {TIMEOUT} s", text(e.stdout)[-4000:] + text(e.stderr)[-4000:]
        if out.exists():
            for line in out.read_text(errors="replace").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:  # a line cut short by a dying child
                    pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        in_progress = None
        for r in records:  # a test's call, or the first phase that did not pass (a teardown's error counts)
            if r["when"] == "start":
                in_progress = r["nodeid"]
                continue
            if _seen.get(r["nodeid"], {"outcome": "passed"})["outcome"] == "passed":
                _seen[r["nodeid"]] = r
        for nodeid in item.group:
            if nodeid not in _seen:
                what = "stopped inside this test" if nodeid == in_progress else "never finished this test"
                _seen[nodeid] = {"nodeid": nodeid, "when": "call", "outcome": "failed",
                                 "text": f"the child pytest (exit {code}) {what}:\n{tail}"}

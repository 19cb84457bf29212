"""Tests that need a mesh: `@pytest.mark.devices(8)`.

A pytest process has one fake host device (tests/conftest.py): every in-process run the suite
makes (the micro pipeline, the stage tests) then compiles and runs unsharded, as a run of the
sweep runner does. Sharded 8 ways on 2 cores the same micro pipeline took 76.5 s against 63.5 s
on one device from an empty compile cache, 36.6 s against 29.0 s from a warm one (docs/tests.md).

A test marked `devices(n)` in a process with fewer devices runs in a child pytest that has n:
the first such test of a module runs every selected one of that module in one child, which
records each test's outcome (`record`), and each is reported here as the child saw it, with the
child's failure text. A caller who sets `--xla_force_host_platform_device_count` to n or more
runs them in-process."""
from __future__ import annotations

import json
import os
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
    """In a child: append a test's outcome, the first phase that did not pass or its call."""
    path = os.environ.get(OUTCOMES)
    if not path or (report.when != "call" and report.passed):
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        text = report.longrepr[2]
    else:
        text = report.longreprtext
    with open(path, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                            "text": text, "duration": report.duration}) + "\n")


def _run_module(item, devices: int) -> None:
    """Run every selected test of `item`'s module that needs more devices than this process has
    in one child pytest with `devices` fake devices; keep their records in `_seen`."""
    module = item.nodeid.split("::")[0]
    ids = [i.nodeid for i in item.session.items
           if i.nodeid.split("::")[0] == module and needed(i) > _have() and i.nodeid not in _seen]
    tmp = Path(tempfile.mkdtemp(prefix="rlhf_jax_devices_"))
    try:
        out = tmp / "outcomes.jsonl"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-m", item.config.getoption("markexpr") or "",
               "--basetemp", str(tmp / "base"), *ids]
        done = subprocess.run(cmd, cwd=ROOT, env=child_env(devices, **{OUTCOMES: str(out)}),
                              capture_output=True, text=True)
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in records:
        _seen.setdefault(r["nodeid"], r)
    for nodeid in ids:  # a test the child never reported (it crashed, or collected nothing) fails here
        _seen.setdefault(nodeid, {"nodeid": nodeid, "when": "call", "outcome": "failed", "duration": 0.0,
                                  "text": f"the {devices}-device child pytest (exit {done.returncode}) did not "
                                          f"report this test:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"})


def _have() -> int:
    import jax
    return jax.device_count()


def run_in_child(item) -> bool:
    """pytest_runtest_protocol for a test that needs more devices than this process has: report
    the child's outcome as this test's; False (run it here) when this process has enough."""
    devices = needed(item)
    if devices <= _have():
        return False
    if item.nodeid not in _seen:
        _run_module(item, devices)
    r = _seen[item.nodeid]
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    keywords = {k: 1 for k in item.keywords}
    for when in ("setup", "teardown") if r["when"] == "setup" else ("setup", "call", "teardown"):
        mine = when == r["when"]
        outcome = r["outcome"] if mine else "passed"
        longrepr = None
        if mine and outcome == "skipped":
            path, line, _ = item.location
            longrepr = (str(ROOT / path), (line or 0) + 1, r["text"])
        elif mine and outcome == "failed":
            longrepr = f"[ran in a child pytest with {devices} devices]\n{r['text']}"
        item.ihook.pytest_runtest_logreport(report=pytest.TestReport(
            item.nodeid, item.location, keywords, outcome, longrepr, when,
            duration=r["duration"] if mine else 0.0))
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True

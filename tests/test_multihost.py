"""One run on several processes: `python -m rlhf_jax.main` as 2 local processes x 4 CPU devices
over gloo against 1 process x 8 devices, a process killed mid-stage, a relaunch on another
process count, a failure on one process, and the launch flags (rlhf_jax/distributed.py).

Tolerance of the comparison. Both runs execute the same program partitioned over the same
('data'=8) mesh: every device computes the same shard. They differ only where the 8 devices'
partial sums meet: XLA's in-process all-reduce against gloo's ring, which adds the same 8
numbers in another order. Each such reduction differs by float32 rounding, and the differences
pass through the pipeline's steps (SFT, RM, PPO's rollouts and updates, DPO). The sampled tokens
must be identical (a rounding difference flips a draw only when the uniform falls within an ulp
of a boundary: about 1e-7 per draw, a few thousand draws), so the discrete results (step counts,
the sample texts) are compared exactly; the numbers with `tol.f32` over the longest chain of one
update (the gradient chain of the micro model), at the largest magnitude a summary number is
computed from (sums of up to 6 token log-probabilities of a 60-token vocabulary: 30), for every
number alike.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from rlhf_jax import distributed
from tests import tolerance as tol
from tests.children import child_env
from tests.micro import CFG, numbers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = "sft,rm,ppo,dpo"
TOL = tol.f32(tol.gradient_chain(CFG, 16, 32 * 16), 30.0)  # SFT's batch: 32 sequences of 16 tokens


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, processes: int, *flags: str, heartbeat: int = 100, env_of=lambda i: {},
           stages: str = STAGES) -> list[subprocess.Popen]:
    """The micro pipeline on `processes` local processes (4 CPU devices each; one process: 8);
    `env_of(i)`: environment variables of process i only."""
    port = _port()
    procs = []
    for i in range(processes):
        env = child_env(8 // processes, JAX_PLATFORMS="cpu", **env_of(i))
        where = ["--coordinator", f"127.0.0.1:{port}", "--num_processes", str(processes), "--process_id", str(i),
                 "--heartbeat_timeout", str(heartbeat)] if processes > 1 else []
        cmd = [sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro", "--workdir",
               str(workdir), f"--config.stages={stages}", *where, *flags]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def finish(procs, timeout: float = 600) -> tuple[list[int], list[str]]:
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], logs


def summary_of(workdir) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def flat(summary: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def assert_same_run(got: dict, want: dict, stages: str = STAGES) -> None:
    """Every field of `want`'s `stages` in `got`: numbers within TOL (module docstring), the rest equal."""
    pick = lambda summary: {s: v for s, v in summary.items() if s in stages.split(",")}
    got, want = flat(numbers(pick(got))), flat(numbers(pick(want)))
    assert set(got) == set(want), set(got) ^ set(want)
    for key, value in want.items():
        if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            np.testing.assert_allclose(np.asarray(got[key], float), np.asarray(value, float), atol=TOL, rtol=0,
                                       err_msg=key)
        else:
            assert got[key] == value, key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """1 process x 8 devices, launched as the two processes are (the suite's own processes have one
    device: tests/devices.py)."""
    work = tmp_path_factory.mktemp("one_process") / "run"
    codes, logs = finish(launch(work, 1))
    assert codes == [0], logs[0][-3000:]
    return work, summary_of(work)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    work = tmp_path_factory.mktemp("two_processes") / "run"
    codes, logs = finish(launch(work, 2))
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    return work, logs


def test_two_processes_give_the_run_of_one(one_process, two_processes):
    (one, want), (two, logs) = one_process, two_processes
    assert_same_run(summary_of(two), want)
    for stage in ("ppo", "dpo"):  # the sampled texts: the same tokens drawn (and their scores within TOL)
        got, want_samples = (json.loads((d / stage / "samples.json").read_text()) for d in (two, one))
        assert len(got) == len(want_samples)
        for g, w in zip(got, want_samples):
            assert {k: v for k, v in g.items() if isinstance(v, str)} == {k: v for k, v in w.items() if isinstance(v, str)}
            for key in (k for k, v in w.items() if isinstance(v, float)):
                np.testing.assert_allclose(g[key], w[key], atol=TOL, rtol=0, err_msg=f"{stage} {key}")  # NaN: no RM
    # process 0 alone wrote the run's files; process 1 printed no summary
    assert '"sft"' in logs[0] and '"sft"' not in logs[1]
    for stage in STAGES.split(","):  # one writer: the metrics lines of one process's run, none twice
        steps = lambda d: [json.loads(line)["step"] for line in (d / stage / "metrics.jsonl").read_text().splitlines()]
        assert steps(two) == steps(one), stage
    assert json.loads((two / "launch.json").read_text()) == {"processes": 2}


def wait_for(path, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_dir():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), finish(procs)[1]
        time.sleep(0.05)


KILLED, PPO = "sft,rm,ppo", ("--config.ppo.save_every=1",)  # a checkpoint after every PPO iteration


def test_killed_and_stopped_processes_end_together_and_a_relaunch_resumes_both(two_processes, tmp_path):
    """SIGKILL process 1 mid-PPO: process 0 ends within the heartbeat timeout (no hang); a
    relaunch on one process is refused; a relaunch on two resumes PPO, and a SIGTERM to its
    process 1 stops both at one step with a checkpoint; the last relaunch resumes from there and
    ends with the uninterrupted run's numbers."""
    work = tmp_path / "run"
    work.mkdir()
    for stage in ("sft", "rm"):  # the finished stages of the uninterrupted run: only PPO runs here
        shutil.copytree(two_processes[0] / stage, work / stage)
    procs = launch(work, 2, *PPO, heartbeat=5, stages=KILLED)
    wait_for(work / "ppo" / "checkpoints" / "1", procs)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    code0 = procs[0].wait(timeout=120)
    waited = time.monotonic() - t0
    procs[0].stdout.read(), procs[1].communicate()
    assert code0 != 0 and waited < 5 + 60, (code0, waited)
    assert not (work / "ppo" / "summary.json").exists()

    codes, logs = finish(launch(work, 1, *PPO, stages=KILLED))
    assert codes == [2], logs[0][-2000:]
    assert "stage ppo started on 2 processes and is not finished; relaunch it on 2 (this launch has 1)" in logs[0]

    # relaunched on two, then SIGTERM to process 1 alone: both stop at the same step, with its checkpoint
    procs = launch(work, 2, *PPO, stages=KILLED)
    wait_for(work / "ppo" / "checkpoints" / "2", procs)
    procs[1].send_signal(signal.SIGTERM)
    codes, logs = finish(procs)
    assert codes == [143, 143], "\n".join(log[-3000:] for log in logs)
    saved = [re.search(r"\[ppo\] SIGTERM: checkpoint saved at step (\d+)", log) for log in logs]
    assert all(saved) and saved[0].group(1) == saved[1].group(1), logs
    assert (work / "ppo" / "checkpoints" / saved[0].group(1)).is_dir()

    codes, logs = finish(launch(work, 2, *PPO, stages=KILLED))
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert f"[ppo] resumed from step {saved[0].group(1)}" in logs[0]
    assert_same_run(summary_of(work), summary_of(two_processes[0]), KILLED)
    steps = [json.loads(line)["step"] for line in (work / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), steps  # the resumed metrics hold each step once


INJECT = """
import errno
import rlhf_jax.checkpoint as checkpoint

def load_final(workdir, stage, like):
    raise OSError(errno.ENOSPC, "No space left on device", str(workdir))

checkpoint.load_final = load_final  # this process's disk is full when the RM stage reads SFT's parameters
"""


def test_a_failure_on_one_process_ends_all_with_its_message(two_processes, tmp_path):
    """Process 1 alone hits a full disk (a sitecustomize module on its path breaks its reads):
    both processes end at once, with process 1's message and exit code."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT)
    work = tmp_path / "run"
    work.mkdir()
    shutil.copytree(two_processes[0] / "sft", work / "sft")
    t0 = time.monotonic()
    codes, logs = finish(launch(work, 2, env_of=lambda i: {"PYTHONPATH": str(tmp_path / "inject")} if i else {}),
                         timeout=300)
    assert codes == [3, 3], logs
    assert time.monotonic() - t0 < 120
    message = f"no space left on the device holding {work}: free some, or use another --workdir"
    assert f"error: {message}" in logs[1]
    assert f"error: process 1 of 2 failed: {message}" in logs[0]


def test_flags_and_environment_choose_the_launch():
    r = distributed.resolve
    assert not r(environ={}).enabled
    assert r("h:1", 2, 1, environ={}) == distributed.Launch(True, "h:1", 2, 1, 100, "flags")
    assert not r("h:1", 1, 0, environ={}).enabled  # one process needs no service
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}
    assert r(environ=slurm).enabled and r(environ=slurm).source == "SLURM"
    assert not r(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).enabled
    assert not r(mode="off", environ=slurm).enabled
    assert r(mode="on", environ={}).enabled  # a TPU VM slice: JAX reads the topology itself
    env = {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert r(environ=env) == distributed.Launch(True, "h:2", 2, 1, 100, "JAX_* environment")
    with pytest.raises(ValueError, match="--coordinator given without --num_processes, --process_id"):
        r("h:1", environ={})
    with pytest.raises(ValueError, match=r"--process_id=2: must be in \[0, --num_processes=2\)"):
        r("h:1", 2, 2, environ={})
    with pytest.raises(ValueError, match="choose one of auto, on, off"):
        r(mode="maybe", environ={})


def test_a_bad_launch_flag_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro",
                          "--workdir", str(tmp_path / "w"), "--coordinator", "127.0.0.1:1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --coordinator given without --num_processes, --process_id: give all three, or none "
        "(SLURM and TPU VMs are detected from the environment)"], out.stderr

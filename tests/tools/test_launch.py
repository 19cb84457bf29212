"""The launch scripts in tools/launch/ and the repository's other shell scripts: shellcheck passes on
each (skipped, naming why, without the binary), the SLURM script hands every process the
coordinator, the process count and its own index (fake `scontrol` and `srun`), and the TPU VM
script's gcloud command runs the same quoted command on every worker."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(ROOT.glob("tools/launch/*.sh")) + [ROOT / "tools" / "setup.sh", ROOT / ".ci" / "run"]


def test_the_launch_scripts_exist():
    assert {p.name for p in ROOT.glob("tools/launch/*.sh")} >= {"slurm.sh", "tpu_vm.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_passes(script, shellcheck):
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


FAKE_SRUN = """#!/usr/bin/env bash
# A fake srun: runs the command once per task (--ntasks=N) with SLURM_PROCID set, one after another.
n=1
while [ "${1#--}" != "$1" ]; do
  case "$1" in --ntasks=*) n="${1#--ntasks=}" ;; esac
  echo "$1" >> "$FAKE_DIR/srun_options"
  shift
done
for ((i = 0; i < n; i++)); do SLURM_PROCID=$i "$@"; done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$*" = "show hostnames gpu[07-08]" ] && printf 'gpu07\\ngpu08\\n'
"""
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys
with open(os.path.join(os.environ["FAKE_DIR"], "processes.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_slurm_script_passes_every_process_its_index_and_the_coordinator(tmp_path):
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("python", FAKE_PYTHON)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2",
           "RLHF_JAX_PYTHON": str(tmp_path / "python")}
    done = subprocess.run(["bash", str(ROOT / "tools" / "launch" / "slurm.sh"), "configs/instructgpt.py:tiny",
                           "runs/two nodes", "--config.mesh.data=2", "--config.mesh.fsdp=-1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 processes on 2 node(s), coordinator gpu07:23456" in done.stdout
    processes = [json.loads(line) for line in (tmp_path / "processes.jsonl").read_text().splitlines()]
    assert processes == [["-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:tiny",
                          "--workdir", "runs/two nodes", "--coordinator", "gpu07:23456", "--num_processes", "2",
                          "--process_id", str(i), "--config.mesh.data=2", "--config.mesh.fsdp=-1"] for i in (0, 1)]
    assert (tmp_path / "srun_options").read_text().split() == ["--ntasks=2", "--ntasks-per-node=1",
                                                               "--kill-on-bad-exit=1"]
    usage = subprocess.run(["bash", str(ROOT / "tools" / "launch" / "slurm.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: sbatch" in usage.stderr


def test_tpu_vm_script_runs_one_quoted_command_on_every_worker():
    env = {**os.environ, "RLHF_JAX_DRY_RUN": "1", "RLHF_JAX_REMOTE_DIR": "src/rlhf jax"}
    done = subprocess.run(["bash", str(ROOT / "tools" / "launch" / "tpu_vm.sh"), "my-v4-32", "us-central2-b",
                           "configs/instructgpt.py:tiny", "/mnt/runs/v4", "--config.mesh.data=4",
                           "--config.name=a b"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = done.stdout.splitlines()
    assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32", "--zone", "us-central2-b"]
    assert argv[8:10] == ["--worker=all", "--command"] and len(argv) == 11
    remote = argv[10]
    assert remote == ("cd src/rlhf\\ jax && .venv/bin/python -m rlhf_jax.main --config configs/instructgpt.py:tiny "
                      "--workdir /mnt/runs/v4 --distributed=on --config.mesh.data=4 --config.name=a\\ b")
    cd, command = remote.split(" && ")
    words = subprocess.run(["bash", "-c", 'printf "%s\\n" ' + command], capture_output=True, text=True).stdout
    assert words.splitlines()[-1] == "--config.name=a b"  # the remote shell gets the argument back whole
    usage = subprocess.run(["bash", str(ROOT / "tools" / "launch" / "tpu_vm.sh"), "x"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: tools/launch/tpu_vm.sh" in usage.stderr

"""The processes a test starts: their own fake-device count, every other XLA flag of the caller's
kept (an ISA cap such as --xla_cpu_max_isa=AVX2 must reach the child too), and the experiment
scripts run as a shell runs them."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def child_env(devices: int, **extra: str) -> dict[str, str]:
    xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}  # it would override the flag
    return dict(env, XLA_FLAGS=" ".join([*xla, f"--xla_force_host_platform_device_count={devices}"]), **extra)


def run_script(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """experiments/<script> with `args` in a child process with one host device, from the
    repository root, as a shell runs it; a non-zero exit fails the test with the end of its output.
    A caller's fake-device count does not reach it: with 8 the script's runs (`--smoke` runs them
    in-process) shard every tiny run 8 ways, and the active-learning smoke took 152 s that way
    against 111 s on one device (2-core EPYC, both beside the same background job)."""
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], cwd=ROOT, env=child_env(1),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} {' '.join(args)}: exit {done.returncode}\n" + \
        done.stdout[-3000:] + done.stderr[-3000:]
    return done

"""The environment of a process a test starts: its own fake-device count, every other XLA flag of
the caller's kept (an ISA cap such as --xla_cpu_max_isa=AVX2 must reach the child too)."""
import os


def child_env(devices: int, **extra: str) -> dict[str, str]:
    xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    return dict(os.environ, XLA_FLAGS=" ".join([*xla, f"--xla_force_host_platform_device_count={devices}"]), **extra)

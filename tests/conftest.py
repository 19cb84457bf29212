"""Test setup: 8 fake CPU devices for the sharding tests, a persistent compile cache, data paths."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import jax  # noqa: E402
import pytest  # noqa: E402

_cache = os.environ.get("RLHF_JAX_JAX_CACHE", str(pathlib.Path.home() / ".cache" / "rlhf_jax" / "jax"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# the same cache for the runs tests start as child processes (sweeps, figure scripts, CLI runs)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def data_dir() -> pathlib.Path | None:
    """Where the real datasets live: RLHF_JAX_DATA_DIR, else ../shared/data beside the checkout."""
    env = os.environ.get("RLHF_JAX_DATA_DIR")
    candidates = [pathlib.Path(env)] if env else [ROOT.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def shared_data():
    d = data_dir()
    if d is None:
        pytest.skip("real datasets not found: set RLHF_JAX_DATA_DIR")
    return d

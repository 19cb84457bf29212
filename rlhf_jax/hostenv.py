"""The host process's memory (glibc's malloc asked for transparent huge pages) and the
persistent compilation cache every process of a run, a sweep or the suite shares.

On a CPU, XLA allocates a step's large buffers (activations, gradients, the layer scan's
stacked residuals and their zero-filled accumulators) afresh at every execution. glibc serves
allocations above its mmap threshold with new mappings, so each step pays one page fault, and
the kernel's zeroing, per 4 KiB page it touches: in the per-operation profile of the
SmolLM2-shape SFT step, zero-fills of 106 MB gradient buffers ran at 1.6 GB/s. With the tunable
`glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc marks its memory MADV_HUGEPAGE, and where the
kernel's transparent huge pages are in `madvise` mode it then maps 2 MiB at a fault.

Measured on a 2-core AMD EPYC (AVX-512), fp32, SmolLM2-135M shape, two fresh processes each way
(`python tools/ab_hugepages.py`, docs/benchmarks.md "Huge pages"): the SFT step 9% faster, the RM
step 12%; a torch step of the same shape and a compile-bound CLI run did not change. So the CLIs
that train and generate (`rlhf_jax.main`, `.evaluate`, `.generate_data`) and the timing tools
turn it on; the test suite keeps glibc's default (tests/conftest.py).

glibc reads its tunables once, at start, so `reexec_with_huge_pages` re-executes the process
with the tunable added to GLIBC_TUNABLES, before anything large is allocated.
RLHF_JAX_HUGEPAGES=0 keeps glibc's default.

`compile_cache_defaults` gives a process JAX's persistent compilation cache in one shared
directory (RLHF_JAX_JAX_CACHE, default ~/.cache/rlhf_jax/jax), keeping every program however
quickly it compiled (JAX's own default keeps those of 1 s or more). Runs of a sweep differ in
seeds and settings, not in most of their programs: a second micro pipeline run (seed 1 after
seed 0, `--config.stages=sft,rm,ppo,dpo`, one device, at O0) took 14.5 s against the first's
26.1 s with every program kept, 108 programs and 2.2 MB on disk; with only those of 0.5 s or
more kept, a run recompiles about 100 of its 110 programs (measured on the 2-core EPYC).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
OFF = ("0", "off", "false", "no")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MARK = "RLHF_JAX_HUGEPAGES_REEXECUTED"  # set for the re-executed process: never a second restart


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The kernel's transparent huge page mode (`always`, `madvise`, `never`), or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, stop = text.find("["), text.find("]")
    return text[start + 1:stop] if 0 <= start < stop else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the C library when it is glibc, else None (musl, macOS, Windows)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    try:
        return tuple(int(x) for x in version.split(".")[:2]) if name == "glibc" else None
    except ValueError:
        return None


def wants_huge_pages(environ, glibc: tuple[int, ...] | None, thp: str | None) -> bool:
    """Whether re-executing with the tunable helps: not turned off, not already set, glibc
    2.35 or later, and huge pages in `madvise` mode (`always` gives them without asking,
    `never` refuses them)."""
    if str(environ.get("RLHF_JAX_HUGEPAGES", "1")).lower() in OFF:
        return False
    if TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    return glibc is not None and glibc >= (2, 35) and thp == "madvise"


def reexec_with_huge_pages() -> None:
    """Re-execute this process (same interpreter, same arguments) with `glibc.malloc.hugetlb=1`
    added to GLIBC_TUNABLES, when `wants_huge_pages`; returns otherwise. Says so on stderr."""
    if sys.platform != "linux" or not sys.executable or os.environ.get(MARK):
        return  # MARK: this process is the re-executed one, whatever glibc left of the variable
    if not wants_huge_pages(os.environ, glibc_version(), thp_mode()):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    os.environ[MARK] = "1"
    print(f"[host] restarting with GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}: transparent huge pages "
          f"for XLA's buffers (rlhf_jax/hostenv.py; RLHF_JAX_HUGEPAGES=0 keeps glibc's default)",
          file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def compile_cache_defaults(environ) -> None:
    """Set JAX's persistent-cache variables in `environ` (os.environ, or a child's environment)
    where the caller has not: the shared directory and no minimum compile time."""
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", environ.get(
        "RLHF_JAX_JAX_CACHE", str(Path.home() / ".cache" / "rlhf_jax" / "jax")))
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

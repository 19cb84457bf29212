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

`xla_cpu_defaults` hands XLA:CPU's matrix products, with the element-wise work around them, to
its YNNPACK library fusions (`--xla_cpu_experimental_ynn_fusion_type=dot,reduce`; jaxlib 0.10's
default, `individual_dot,reduce`, hands it only the bare products). The backward pass's weight
gradients contract over the token axis, and by default XLA writes one operand of each transposed
inside the element-wise fusion that produces it, a fifth of the SmolLM2-shape SFT step; fused
into YNNPACK's product that pass goes. Measured on a 2-core Xeon (AVX-512, AMX), fp32,
SmolLM2-135M shape, fresh processes alternating (`python tools/ab_ynn.py`, docs/benchmarks.md
"XLA:CPU's library fusions"): the SFT step 3.27 -> 2.55 s, the RM step 5.42 -> 4.14 s (medians of
3 processes each way), the same loss. Every process of a run (the CLIs, the timing tools, the
suite) sets it the same way; a flag of the caller's own in XLA_FLAGS wins, RLHF_JAX_YNN_FUSION=0
keeps XLA's default, and a jaxlib other than 0.10, which the suite has not checked it with, is
left alone.

`cpu_info` and `host` say which machine a timing came from. Hosts of one name differ: two 2-core
"AMD EPYC" VMs, both AVX2-only, each running nothing else, took 11.9 s and 22.5 s for a packed RM
step of 8 of the proxy's HH pairs (160 tokens, SmolLM2-135M, experiments/README.md). So every
launch of a run appends `host()` to WORKDIR/hosts.jsonl (`rlhf_jax.workdir.record_launch`), and a
report that puts two runs' times side by side can check that one boot of one machine made both.

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


YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# products with the element-wise work XLA fuses around them, and (as XLA's default) reductions
YNN_FUSION = "dot,reduce"
YNN_JAXLIB = ((0, 10), (0, 11))  # the jaxlib releases (from, before) the suite runs it with


def jaxlib_version() -> tuple[int, ...] | None:
    """(major, minor) of the installed jaxlib, read without importing it, or None."""
    from importlib import metadata
    try:
        return tuple(int(x) for x in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def xla_cpu_defaults(environ, jaxlib: tuple[int, ...] | None = None) -> bool:
    """Add `YNN_FLAG=YNN_FUSION` to environ's XLA_FLAGS, unless the caller set that flag,
    RLHF_JAX_YNN_FUSION is off, or the jaxlib (default: the installed one) is outside
    YNN_JAXLIB. Call it before the process (or a child given `environ`) starts XLA. Returns
    whether it added the flag."""
    flags = environ.get("XLA_FLAGS", "")
    if str(environ.get("RLHF_JAX_YNN_FUSION", "1")).lower() in OFF or YNN_FLAG in flags:
        return False
    jaxlib = jaxlib_version() if jaxlib is None else jaxlib
    if jaxlib is None or not YNN_JAXLIB[0] <= jaxlib < YNN_JAXLIB[1]:
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}={YNN_FUSION}".strip()
    return True


def prepare_process() -> None:
    """What each CLI and timing tool does first, before jax starts: XLA:CPU's defaults
    (`xla_cpu_defaults`), then glibc's huge pages (`reexec_with_huge_pages`, which keeps them)."""
    xla_cpu_defaults(os.environ)
    reexec_with_huge_pages()


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def usable_cores() -> int:
    """The cores this process may run on: its affinity where the platform has one, else the
    machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_info() -> dict:
    """This machine's CPU as a timing depends on it: the model name and clock, the cores this
    process may run on (its affinity) and the machine's count, the instruction sets that change
    what XLA and torch emit (AVX2 / AVX-512 vectors; bfloat16 and AMX matrix units, which make a
    bfloat16 matmul several times a float32 one's speed), and what XLA_FLAGS sets of XLA's code: a cap on
    its instruction sets, its library fusions (`xla_cpu_defaults`)."""
    import platform
    info = {"model": platform.processor() or platform.machine(), "cores": usable_cores(),
            "machine_cores": os.cpu_count(), "mhz": None, "isa": [], "xla_max_isa": None,
            "xla_ynn_fusion": None}
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_cpu_max_isa="):
            info["xla_max_isa"] = flag.split("=", 1)[1]
        if flag.startswith(YNN_FLAG + "="):
            info["xla_ynn_fusion"] = flag.split("=", 1)[1]
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    info["model"] = fields.get("model name", info["model"])
    try:
        info["mhz"] = round(float(fields["cpu MHz"]))
    except (KeyError, ValueError):
        pass
    info["isa"] = [f for f in ISA_FLAGS if f in flags]
    return info


def boot_id() -> str | None:
    """The kernel's id of this boot (Linux): two records with the same one came from one machine
    between two restarts; a VM moved to other hardware boots again."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def host() -> dict:
    """`cpu_info` plus what else decides a timing: the boot, the host name, glibc's huge pages
    (asked for or not, the kernel's mode) and, when jax is already imported, its version, backend
    and devices (the record never imports jax itself)."""
    import datetime
    import platform
    out = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "hostname": platform.node(), "boot_id": boot_id(), **cpu_info(),
           "huge_pages": TUNABLE in os.environ.get("GLIBC_TUNABLES", ""), "thp": thp_mode()}
    jax = sys.modules.get("jax")
    if jax is not None:
        devices = jax.devices()
        out.update(jax=jax.__version__, backend=jax.default_backend(), devices=len(devices),
                   device_kind=devices[0].device_kind if devices else None)
    return out


def label(record: dict) -> str:
    """One line for a `host()` record: model, cores, instruction sets, XLA's cap and the boot."""
    isa = "+".join(record.get("isa") or []) or "isa unknown"
    cap = f", XLA capped at {record['xla_max_isa']}" if record.get("xla_max_isa") else ""
    cap += f", YNN fusion {record['xla_ynn_fusion'] or 'off'}" if record.get("xla_ynn_fusion") is not None else ""
    boot = f", boot {record['boot_id'][:8]}" if record.get("boot_id") else ""
    return f"{record.get('model')}, {record.get('cores')} cores, {isa}{cap}{boot}"


def labels(records: list[dict]) -> list[str]:
    """The distinct machines of some records, one `label` each, in first-seen order."""
    return list(dict.fromkeys(label(r) for r in records))


def same_host(records: list[dict | None]) -> bool | None:
    """True when every record (`host()`, or a tool's JSON `host`) names one boot of one machine,
    False when two differ, None when one is missing or names no boot (a run made before hosts
    were recorded, or a platform without boot ids)."""
    if not records or any(not r or not r.get("boot_id") for r in records):
        return None
    keys = ("boot_id", "hostname", "model", "cores")
    return all(tuple(r.get(k) for k in keys) == tuple(records[0].get(k) for k in keys) for r in records)


def compile_cache_defaults(environ) -> None:
    """Set JAX's persistent-cache variables in `environ` (os.environ, or a child's environment)
    where the caller has not: the shared directory and no minimum compile time."""
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", environ.get(
        "RLHF_JAX_JAX_CACHE", str(Path.home() / ".cache" / "rlhf_jax" / "jax")))
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

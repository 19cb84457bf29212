"""rlhf_jax/hostenv.py: when the CLI re-executes itself with glibc's malloc asking for huge pages,
that the re-executed process has the tunable, and that glibc then backs a large allocation with
huge pages (the mechanism the speed-up rests on); the description of the machine each launch of a
run records (WORKDIR/hosts.jsonl) and the check that two timings came from one machine."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import hostenv, workdir
from tests.conftest import ROOT

MADVISE = hostenv.glibc_version() is not None and hostenv.glibc_version() >= (2, 35) \
    and hostenv.thp_mode() == "madvise"
needs_madvise = pytest.mark.skipif(
    not MADVISE, reason=f"needs glibc >= 2.35 (here {hostenv.glibc_version()}) and transparent huge pages in madvise "
                        f"mode (here {hostenv.thp_mode()})")


@pytest.mark.parametrize("environ, glibc, thp, expected", [
    ({}, (2, 36), "madvise", True),
    ({"RLHF_JAX_HUGEPAGES": "1"}, (2, 35), "madvise", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise", True),
    ({"RLHF_JAX_HUGEPAGES": "0"}, (2, 36), "madvise", False),
    ({"RLHF_JAX_HUGEPAGES": "off"}, (2, 36), "madvise", False),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", False),  # the caller's own choice
    ({}, (2, 34), "madvise", False),  # no such tunable before 2.35
    ({}, None, "madvise", False),  # not glibc
    ({}, (2, 36), "always", False),  # huge pages without asking
    ({}, (2, 36), "never", False),
    ({}, (2, 36), None, False),
])
def test_when_huge_pages_are_wanted(environ, glibc, thp, expected):
    assert hostenv.wants_huge_pages(environ, glibc, thp) is expected


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hostenv.thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hostenv.thp_mode(f) == "always"
    assert hostenv.thp_mode(tmp_path / "missing") is None


# a child that re-executes itself, then reports its tunables and how many KiB of anonymous huge
# pages a 64 MiB malloc, written through, added to the process
CHILD = textwrap.dedent("""
    import ctypes, os, sys
    from rlhf_jax.hostenv import reexec_with_huge_pages
    reexec_with_huge_pages()
    def huge_kib():
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    before = huge_kib()
    size = 64 << 20
    p = libc.malloc(ctypes.c_size_t(size))
    ctypes.memset(p, 1, size)
    print(os.environ.get("GLIBC_TUNABLES", ""), huge_kib() - before)
""")


def _child(**env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", "RLHF_JAX_HUGEPAGES", hostenv.MARK)}
    return subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env={**environ, **env},
                          capture_output=True, text=True, timeout=60)


@needs_madvise
def test_the_reexecuted_process_gets_huge_pages_from_malloc():
    on = _child(GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    assert on.returncode == 0, on.stderr
    tunables, kib = on.stdout.split()
    assert tunables == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"  # the caller's tunables kept
    assert "[host] restarting with GLIBC_TUNABLES=" in on.stderr
    # at least one 2 MiB page (how many the kernel finds depends on its free memory's fragmentation)
    assert int(kib) >= 2048, f"64 MiB malloc'd and written, {kib} KiB of it in huge pages"
    off = _child(RLHF_JAX_HUGEPAGES="0")
    assert off.returncode == 0, off.stderr
    assert off.stderr == "" and off.stdout.split() == ["0"], (off.stdout, off.stderr)  # no tunable, no huge page


@needs_madvise
def test_the_cli_restarts_once_before_reading_its_config():
    out = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:no_such_variant",
                          "--workdir", "unused"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**{k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostenv.MARK)},
                              "RLHF_JAX_HUGEPAGES": "1"})
    assert out.returncode == 2
    assert out.stderr.count("[host] restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1") == 1, out.stderr
    assert "config error" in out.stderr and "no_such_variant" in out.stderr, out.stderr


@needs_madvise
def test_a_reexecuted_process_never_restarts_again():
    """Were glibc to drop the tunable from the environment, the marker still stops a second restart."""
    out = _child(**{hostenv.MARK: "1"})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.split() == ["0"]  # no tunable set, no restart, no huge page


def test_compile_cache_defaults_keep_every_program_and_the_callers_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {}
    hostenv.compile_cache_defaults(env)
    assert env == {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / ".cache" / "rlhf_jax" / "jax"),
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env = {"RLHF_JAX_JAX_CACHE": "/c"}
    hostenv.compile_cache_defaults(env)
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/c"
    env = {"RLHF_JAX_JAX_CACHE": "/c", "JAX_COMPILATION_CACHE_DIR": "/mine",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}
    hostenv.compile_cache_defaults(env)
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/mine" and env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2"


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: 2000.123
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile avx512_vnni
processor\t: 1
"""


def test_cpu_info_reads_the_model_clock_and_the_instruction_sets_that_change_timings(monkeypatch):
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: CPUINFO if str(self) == "/proc/cpuinfo"
                        else real_read(self, *a, **k))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX2")
    info = hostenv.cpu_info()
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["mhz"] == 2000
    assert info["isa"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert info["xla_max_isa"] == "AVX2"
    assert info["cores"] == len(os.sched_getaffinity(0)) and info["machine_cores"] == os.cpu_count()
    assert hostenv.label(info) == ("Intel(R) Xeon(R) Platinum 8480+, %d cores, avx2+fma+avx512f+avx512_vnni+avx512_bf16"
                                   "+amx_bf16+amx_tile, XLA capped at AVX2" % info["cores"])


def test_cpu_info_without_proc_cpuinfo_still_answers(monkeypatch):
    def unreadable(self, *a, **k):
        raise OSError("no such file")
    monkeypatch.setattr(Path, "read_text", unreadable)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    info = hostenv.cpu_info()
    assert info["isa"] == [] and info["cores"] >= 1 and info["model"] and info["mhz"] is None
    assert info["xla_max_isa"] is None and hostenv.boot_id() is None


def test_host_names_the_boot_and_jax_only_once_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    bare = hostenv.host()
    assert "jax" not in bare and "jax" not in sys.modules  # the record never imports jax itself
    if Path("/proc/sys/kernel/random/boot_id").exists():
        assert bare["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    monkeypatch.undo()
    import jax
    full = hostenv.host()
    assert full["jax"] == jax.__version__ and full["devices"] == jax.device_count() and full["backend"] == "cpu"


def test_same_host_needs_one_boot_of_one_machine_and_says_when_it_cannot_tell():
    a = {"boot_id": "b1", "hostname": "h", "model": "AMD EPYC", "cores": 2, "time": "t1"}
    assert hostenv.same_host([a, dict(a, time="t2", mhz=1996)]) is True  # the time of a launch is not the host
    assert hostenv.same_host([a, dict(a, boot_id="b2")]) is False  # the same name after a reboot: maybe other hardware
    assert hostenv.same_host([a, dict(a, cores=1)]) is False
    assert hostenv.same_host([a, None]) is None and hostenv.same_host([a, {"model": "AMD EPYC"}]) is None
    assert hostenv.same_host([]) is None


def test_each_launch_appends_its_host_and_a_torn_last_line_is_left_out(tmp_path):
    first = workdir.record_launch(tmp_path, 1, [], [])
    workdir.record_launch(tmp_path, 2, ["sft"], ["rm"])
    records = workdir.launches(tmp_path)
    assert [r["processes"] for r in records] == [1, 2] and records[0]["boot_id"] == first["boot_id"]
    assert records[1]["finished"] == ["sft"] and records[1]["in_progress"] == ["rm"]
    with open(tmp_path / "hosts.jsonl", "a") as f:
        f.write('{"time": "2026-')  # a write cut short (a full disk, a lost machine)
    assert len(workdir.launches(tmp_path)) == 2
    with open(tmp_path / "hosts.jsonl", "a") as f:
        f.write("\n" + json.dumps(first) + "\n")
    with pytest.raises(workdir.WorkdirError, match=r"hosts.jsonl:3: not a JSON record"):
        workdir.launches(tmp_path)
    assert workdir.launches(tmp_path / "none") == []


def test_xla_cpu_defaults_add_ynn_fusion_once_and_leave_the_callers_choice(monkeypatch):
    on = (0, 10)
    env = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}
    assert hostenv.xla_cpu_defaults(env, jaxlib=on) is True
    assert env["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2 --xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    assert hostenv.xla_cpu_defaults(env, jaxlib=on) is False  # a second call (a child of a run) adds nothing
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
    env = {}
    assert hostenv.xla_cpu_defaults(env, jaxlib=on)
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    assert hostenv.xla_cpu_defaults(mine, jaxlib=on) is False
    assert mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"  # the caller's own wins
    off = {"RLHF_JAX_YNN_FUSION": "0"}
    assert hostenv.xla_cpu_defaults(off, jaxlib=on) is False and "XLA_FLAGS" not in off
    for other in ((0, 9), (0, 11), (1, 0)):  # a jaxlib the suite has not checked it with
        env = {}
        assert hostenv.xla_cpu_defaults(env, jaxlib=other) is False and env == {}
    monkeypatch.setattr(hostenv, "jaxlib_version", lambda: None)  # none installed
    env = {}
    assert hostenv.xla_cpu_defaults(env) is False and env == {}


def test_cpu_info_and_label_record_the_library_fusion_setting(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    info = hostenv.cpu_info()
    assert info["xla_ynn_fusion"] == "dot"
    assert ", YNN fusion dot, boot abcdef12" in hostenv.label({**info, "boot_id": "abcdef123"})
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert ", YNN fusion off" in hostenv.label(hostenv.cpu_info())
    monkeypatch.setenv("XLA_FLAGS", "")
    assert hostenv.cpu_info()["xla_ynn_fusion"] is None and "YNN" not in hostenv.label(hostenv.cpu_info())


YNN_ON = f"{hostenv.YNN_FLAG}={hostenv.YNN_FUSION}" in os.environ.get("XLA_FLAGS", "")

# a child's (or this process's) SFT gradient of the test decoder, with the library fusions XLA compiled
GRAD = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from rlhf_jax.models import PRESETS, init_model
    from rlhf_jax.train import sft as sft_lib
    from tools.profile_ops import parse_module
    cfg = PRESETS["test"]
    model = init_model(cfg, seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (4, 32)), jnp.int32)
    batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens), "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.broadcast_to(jnp.arange(32), (4, 32))}
    grad = jax.jit(jax.grad(lambda p: sft_lib.sft_loss(model.graphdef)(p, batch, None, None)[0]))
    fused = [i.get("fused") or [] for n, i in parse_module(grad.lower(model.params).compile().as_text()).items()
             if n.startswith("ynn_fusion")]
    leaves = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(grad(model.params))]
    print(json.dumps({"fused": fused, "grads": leaves}))
""")


@pytest.mark.skipif(not YNN_ON, reason="the suite runs without YNNPACK's fused products (RLHF_JAX_YNN_FUSION=0, a "
                                       "flag of the caller's, or a jaxlib outside hostenv.YNN_JAXLIB)")
def test_ynn_product_fusions_reach_xla_and_keep_the_gradient_to_rounding():
    """The suite's processes compile with the flag (conftest sets it before jax starts), and it
    changes the program: products fused with the work around them (reshapes, adds, scaling) in
    YNNPACK fusions, where XLA's default fuses bare products only. The gradient of the same loss,
    compiled both ways, agrees to the rounding of two orderings of a float32 gradient."""
    from rlhf_jax.models import PRESETS
    from tests import tolerance as tol

    def run(env):
        out = subprocess.run([sys.executable, "-c", GRAD], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    on = run(dict(os.environ))
    flags = " ".join(f for f in os.environ["XLA_FLAGS"].split() if not f.startswith(hostenv.YNN_FLAG))
    off = run({**os.environ, "XLA_FLAGS": flags, "RLHF_JAX_YNN_FUSION": "0"})
    with_dot = lambda fused: [f for f in fused if "dot" in f]
    assert with_dot(off["fused"]) and all(f == ["dot"] for f in with_dot(off["fused"])), off["fused"]
    assert any(len(f) > 1 for f in with_dot(on["fused"])), on["fused"]
    cfg = PRESETS["test"]
    n = tol.gradient_chain(cfg, 32, 4 * 32)
    scale = max(abs(x) for leaf in off["grads"] for x in leaf)
    assert scale > 0 and len(on["grads"]) == len(off["grads"])
    for a, b in zip(on["grads"], off["grads"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol.f32(n, scale))

"""The accelerator check (tools/accelerator_check.py) runs on CPU at --smoke sizes: one JSON and
one Markdown table with every section, finite figures, dot_product attention within the dtype's
tolerance of the manual one; and a section that fails is recorded, the others still report,
and the exit code is 1."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.children import child_env
from tools import accelerator_check as ac

ROOT = Path(__file__).resolve().parents[2]


def _numbers(tree):
    if isinstance(tree, bool):
        return
    if isinstance(tree, (int, float)):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The command CI runs, as a child process (its exit code, JSON and Markdown)."""
    d = tmp_path_factory.mktemp("check")
    env = child_env(1, PYTHONPATH=str(ROOT))  # its figures are of one device (187 s on 8 fake ones, 163 s on 1)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "accelerator_check.py"), "--smoke",
                           "--out", str(d / "c.json"), "--md", str(d / "c.md")],
                          env=env, capture_output=True, text=True, timeout=600)
    return proc, json.loads((d / "c.json").read_text()), (d / "c.md").read_text()


def test_smoke_writes_every_section_with_finite_figures(smoke):
    proc, result, md = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["failed"] == []
    assert list(result["sections"]) == list(ac.SECTIONS)
    for name, section in result["sections"].items():
        assert section["status"] in ("ok", "skipped"), (name, section)
        assert section["device"] and "dtype" in section, name
        assert f"| {name} |" in md
        assert all(math.isfinite(x) for x in _numbers(section)), name
    mem, mfu, dec = (result["sections"][k] for k in ("memory", "mfu", "decode"))
    assert mem["estimate_peak_gb"] > 0 and mem["estimate_arguments_gb"] > 0
    assert mfu["tokens_per_s"] > 0 and 0 < mfu["mfu"] and "12 * layers" in mfu["flop_formula"]
    assert mfu["dtype"].startswith("bfloat16")
    assert dec["tokens_per_s"] > 0 and dec["roofline_tokens_per_s"] > 0
    trl = result["sections"]["trl"]
    try:
        import trl as _  # noqa: F401
        assert trl["status"] == "ok"
    except ImportError:
        assert trl["status"] == "skipped" and "trl" in trl["reason"]


def test_smoke_attention_parity(smoke):
    att = smoke[1]["sections"]["attention"]
    dp = att["impls"]["dot_product"]
    assert dp["parity"] is True
    assert dp["max_abs_diff_output"] <= att["tolerance_output"]
    assert dp["max_abs_diff_gradient"] <= att["tolerance_gradient"]


def test_attention_tolerance_from_the_dtype():
    """float32: the probabilistic chain bound alone; bfloat16 adds its casts at its own eps."""
    f32 = ac.attention_tolerance("float32", 64, 100, 1.0, roundings=2)
    assert f32 == pytest.approx(8 * math.sqrt(264) * 2 ** -23)
    assert ac.attention_tolerance("bfloat16", 64, 100, 1.0, roundings=2) == pytest.approx(f32 + 2 * 2 ** -7)
    assert ac.attention_tolerance("bfloat16", 64, 100, 3.0, roundings=8) == pytest.approx(3 * (f32 + 8 * 2 ** -7))


def test_a_failing_section_is_recorded_and_the_others_still_report(monkeypatch, tmp_path):
    def broken(s):
        raise RuntimeError("forced failure")
    monkeypatch.setitem(ac.SECTIONS, "memory", broken)
    rc = ac.main(["--smoke", "--sections", "device,memory,attention", "--out", str(tmp_path / "c.json"),
                  "--md", str(tmp_path / "c.md")])
    assert rc == 1
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["failed"] == ["memory"]
    mem = result["sections"]["memory"]
    assert mem["status"] == "error" and "RuntimeError: forced failure" in mem["error"]
    assert result["sections"]["device"]["status"] == "ok"
    assert result["sections"]["attention"]["status"] == "ok"
    assert result["sections"]["attention"]["impls"]["dot_product"]["parity"] is True
    assert "| memory | error | RuntimeError: forced failure |" in (tmp_path / "c.md").read_text()


def test_unknown_section_fails_with_the_valid_ones():
    with pytest.raises(SystemExit):
        ac.main(["--smoke", "--sections", "nope"])


def test_attention_that_disagrees_fails_the_section_and_keeps_its_figures(monkeypatch):
    """A fused attention 10% off the manual one (an error far above bfloat16's few casts, which
    allow about 2 eps = 1.6% of the largest value): parity False, the section an error, and its
    figures still recorded."""
    manual = ac.L.attention
    monkeypatch.setattr(ac.L, "fused_attention", lambda q, k, v, mask, **kw: manual(q, k, v, mask) * 1.1)
    s = ac.sizes(True, "cpu", object())
    out = ac.attention(s)
    dp = out["impls"]["dot_product"]
    assert out["status"] == "error" and "dot_product" in out["error"]
    assert dp["parity"] is False and dp["max_abs_diff_output"] > out["tolerance_output"]
    assert dp["seconds_per_call"] > 0


def test_trl_section_wiring_with_a_stand_in_trl(monkeypatch):
    """Where `trl` imports, the section times our steps (on one device, as every
    section) and divides by TRL's figures: TRL's side replaced by fixed numbers,
    the ratios are ours over them."""
    monkeypatch.setitem(sys.modules, "trl", type(sys)("trl"))
    theirs = {"sft": {"tokens_per_s": 1.0}, "rm": {"tokens_per_s": 1.0}, "ppo": {"iteration_s": 1.0}}
    monkeypatch.setattr(ac.benchmark_pipeline, "trl_side", lambda shape, steps: theirs)
    out = ac.trl(ac.sizes(True, "cpu", object()))
    ours, ratios = out["ours"], out["ratio_ours_over_trl"]
    assert ratios["sft_tokens_per_s"] == ours["sft"]["tokens_per_s"] > 0
    assert ratios["ppo_iteration_speedup"] == pytest.approx(1 / ours["ppo"]["iteration_s"])
    assert set(out["targets_met"]) == {"sft_1x", "rm_1x", "sft_1.3x", "rm_1.3x", "ppo_3x", "sft_75pct_of_matmul_rate"}
    assert ours["sft"]["share_of_matmul_rate"] == pytest.approx(ours["sft"]["gflop_per_s"] / ours["matmul"]["gflop_per_s"])

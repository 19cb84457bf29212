"""experiments/sft_selection.py --smoke (micro config, 2 seeds): every run goes through the sweep
runner, each seed's candidates carry all three scores, each pick is its criterion's argmin /
argmax, the paired differences have n = 2, and the figure is written."""
import json
import math

import pytest

from tests.children import run_script


def test_sft_selection_smoke(tmp_path):
    out = tmp_path / "runs"
    run_script("sft_selection.py", "--smoke", "--out", str(out))
    result = json.loads((out / "sft_selection_smoke.json").read_text())
    assert (out / "sft_selection_smoke.png").stat().st_size > 10_000
    assert result["seeds"] == [0, 1] and result["failed_runs"] == 0
    sel = result["selection"]
    for seed, s in sel["per_seed"].items():
        rows = s["candidates"]
        assert [r["step"] for r in rows] == [5, 11, 16]  # micro: 2 epochs of 8 steps, 3 candidates
        assert all(math.isfinite(r[k]) for r in rows for k in ("val_loss", "rm_score", "gold"))
        assert s["picked_step"]["val_loss"] == min(rows, key=lambda r: r["val_loss"])["step"]
        assert s["picked_step"]["rm_score"] == max(rows, key=lambda r: r["rm_score"])["step"]
        assert s["picked_step"]["last"] == 16
        assert s["gold_of"]["gold"] == max(r["gold"] for r in rows)
    d = sel["rm_minus_val_loss"]
    assert d["n"] == 2 and d["values"] == pytest.approx([s["gold_of"]["rm_score"] - s["gold_of"]["val_loss"]
                                                         for s in sel["per_seed"].values()], abs=1e-9)
    assert all(v >= 0 for v in sel["oracle_minus_rm"]["values"])  # the oracle's pick is the best gold

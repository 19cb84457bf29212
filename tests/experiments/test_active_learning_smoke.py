"""experiments/active_learning.py --smoke (micro config, 4 strategies x 2 seeds): every run goes
through the sweep runner from its seed's shared SFT policy, the JSON holds a learning curve per
strategy with n = seeds at every budget, the strategies share the first (random) round so their
paired differences there are exactly 0, random's difference with itself is 0 everywhere, and the
figure is written."""
import json
import math

from tests.children import run_script


def test_active_learning_smoke(tmp_path):
    out = tmp_path / "runs"
    run_script("active_learning.py", "--smoke", "--out", str(out))
    result = json.loads((out / "active_learning_smoke.json").read_text())
    assert (out / "active_learning_smoke.png").stat().st_size > 10_000
    assert result["seeds"] == [0, 1] and result["failed_runs"] == 0
    strategies = result["strategies"]
    assert list(strategies) == ["random", "uncertainty", "disagreement", "diverse_disagreement"]
    for name, s in strategies.items():
        assert s["budgets"] == [16, 32, 48]
        for metric in ("accuracy_gold", "accuracy_annotator", "bon_gold"):
            for row in s[metric]:
                assert row["n"] == 2 and all(math.isfinite(v) for v in row["values"]), (name, metric, row)
            assert s[f"{metric}_minus_random"][0]["values"] == [0.0, 0.0]  # the shared first round
    assert all(v == 0.0 for row in strategies["random"]["accuracy_gold_minus_random"] for v in row["values"])
    assert "| disagreement |" in result["table"]

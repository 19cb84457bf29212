"""The over-optimisation figure scripts' smoke modes (micro config, 2 seeds, a few steps): each
runs its sweeps through the runner, writes a results JSON with finite numbers and n = seeds,
and a PNG (experiments/gao_overoptimization.py, experiments/inform_overoptimization.py)."""
import importlib.util
import json
import math
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finite_stats(stats: dict, seeds: int) -> None:
    assert stats["n"] == seeds, stats
    for key in ("mean", "std", "ci_low", "ci_high"):
        assert stats[key] is not None and math.isfinite(stats[key]), (key, stats)
    assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]


def _run(name: str, tmp_path: pathlib.Path) -> dict:
    module = _load(name)
    assert module.main(["--smoke", "--runs", str(tmp_path / "runs")]) == 0
    out = json.loads((tmp_path / "runs" / f"{name}_smoke.json").read_text())
    assert (tmp_path / "runs" / f"{name}_smoke.png").stat().st_size > 10_000
    assert out["mode"] == "smoke" and out["seeds"] == [0, 1]
    assert out["commands"] and out["paper"]["claims"]
    assert all(r["status"] == "ok" for records in out["runs"] for r in records)
    return out


def test_gao_overoptimization_smoke(tmp_path):
    out = _run("gao_overoptimization", tmp_path)
    seeds = len(out["seeds"])
    assert out["points"]
    for p in out["points"]:
        for key in ("gold", "proxy", "gold_gain", "proxy_gain"):
            assert len(p["bon"][key]) == len(p["bon"]["n"]) >= 3
            for s in p["bon"][key][1:]:  # n = 1 of the gains is 0 for every seed (std 0)
                _finite_stats(s, seeds)
        assert p["bon"]["kl"][0] == 0.0 and all(math.isfinite(k) for k in p["bon"]["kl"])
        for key in ("gold", "proxy", "kl"):
            for s in p["rl"][key]:
                _finite_stats(s, seeds)
        for key in ("rm_val_accuracy", "ppo_gold_final", "ppo_kl_final", "ppo_win_rate_vs_sft"):
            _finite_stats(p["final"][key], seeds)
        for fit in (p["bon_fit"]["pooled"], p["rl_fit"]["pooled"]):  # the fits ran (their values may be anything)
            assert fit["alpha"] is not None and math.isfinite(fit["alpha"]) and math.isfinite(fit["beta"])


def test_inform_overoptimization_smoke(tmp_path):
    out = _run("inform_overoptimization", tmp_path)
    seeds = len(out["seeds"])
    labels = [p["label"] for p in out["points"]]
    assert labels[0] == "standard RM" and any(label.startswith("InfoRM") for label in labels)
    for p in out["points"]:
        for key in ("gold_reward", "kl", "score"):
            for s in p["curves"][key]:
                _finite_stats(s, seeds)
        for key in ("gold_reward_final", "kl_final", "win_rate_vs_sft", "gold_reward_sft", "rm_val_accuracy"):
            _finite_stats(p["final"][key], seeds)
        if p["label"].startswith("InfoRM"):
            assert p["curves"]["tracked_iteration"]
            for s in p["curves"]["csi"]:
                _finite_stats(s, seeds)
            _finite_stats(p["final"]["latent_csi_final"], seeds)
            assert p["final"]["gold_final_minus_standard_paired"]["n"] == seeds

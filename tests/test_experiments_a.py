"""The figure scripts experiments/instructgpt.py and experiments/coste_ensembles.py in --smoke mode
(micro config, 2 seeds, a few steps): each runs its sweeps through the runner and writes a results
JSON and a PNG whose numbers are finite with n = the number of seeds."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from tests import tolerance as tol

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEEDS = 2


def _run(script: str, tmp_path: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # the scripts force one host device themselves; drop the suite's fake-device count anyway
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--smoke", "--runs",
                           str(tmp_path / "runs"), "--artifacts", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = script.removesuffix(".py")
    js, png = tmp_path / "out" / f"{name}_smoke.json", tmp_path / "out" / f"{name}_smoke.png"
    assert js.exists() and png.exists() and png.stat().st_size > 1000
    result = json.loads(js.read_text())
    assert result["smoke"] and result["seeds"] == list(range(SEEDS)) and result["failed_runs"] == 0
    assert result["commands"] and all("experiments/sweep.py" in c for c in result["commands"])
    return result


def _stats(node):
    """Every statistics dict (mean/n/values) in a nested result."""
    if isinstance(node, dict):
        if {"mean", "n", "values"} <= set(node):
            yield node
        else:
            for v in node.values():
                yield from _stats(v)
    elif isinstance(node, list):
        for v in node:
            yield from _stats(v)


def _assert_full(stat, what: str):
    assert stat["n"] == SEEDS, (what, stat)
    assert math.isfinite(stat["mean"]) and math.isfinite(stat["half_width"]), (what, stat)
    assert all(v is not None and math.isfinite(v) for v in stat["values"]), (what, stat)


def test_instructgpt_smoke(tmp_path):
    r = _run("instructgpt.py", tmp_path)
    k = r["k_budget"]["points"]
    assert [p["k"] for p in k] == [2] and k[0]["n_rankings"] == r["settings"]["budget"] // 2
    for p in k:
        for m in ("val_accuracy_fixed_k4", "val_accuracy_own_k", "val_loss_fixed_k4"):
            _assert_full(p[m], f"k{p['k']} {m}")
    arms = {p["arm"] for p in r["kwise_vs_shuffled"]["points"]}
    assert arms == {"kwise", "shuffled"}
    for p in r["kwise_vs_shuffled"]["points"]:
        for m in ("train_accuracy", "heldout_accuracy", "train_loss", "heldout_loss"):
            _assert_full(p[m], f"{p['arm']} {m}")
        assert p["check_rebuilt_heldout_minus_stage_max_abs"] == 0.0  # the rebuilt held-out set is the stage's
    shuffled = next(p for p in r["kwise_vs_shuffled"]["points"] if p["arm"] == "shuffled")
    kwise = next(p for p in r["kwise_vs_shuffled"]["points"] if p["arm"] == "kwise")
    assert shuffled["rm_steps"] > kwise["rm_steps"]  # one shuffled epoch = C(K,2) x as many examples
    for p in r["ptx"]["points"]:
        for m in ("win_rate_vs_sft", "alignment_tax", "gold_reward_final"):
            _assert_full(p[m], f"ptx {p['ptx_coef']} {m}")
        tax = [f - s for f, s in zip(p["heldout_nll_final"]["values"], p["heldout_nll_sft"]["values"])]
        # difference of the two float32 mean NLLs against the mean of per-demonstration differences
        # (stages/ppo.py alignment_tax): numpy's pairwise means, about log2(N) + 8 <= 16 roundings
        # each at the NLLs' size (< 8 nats), two chains on one side (tests/tolerance.py)
        assert tax == pytest.approx(p["alignment_tax"]["values"], abs=2 * tol.f32(16, 8.0))


def test_coste_ensembles_smoke(tmp_path):
    r = _run("coste_ensembles.py", tmp_path)
    (level,) = r["noise_levels"]
    assert level["flip_rate"] == 0.25 and 0.05 < level["measured"]["flipped_share_of_untied"] < 0.5
    methods = r["results"][level["tag"]]
    assert set(methods) == {"single", "min"}
    for name, res in methods.items():
        for m in ("ppo.gold_reward_final", "bon.gold_peak", "rm.val_accuracy"):
            _assert_full(res["summary"][m], f"{name} {m}")
        assert len(res["bon_gold"]) >= 2 and len(res["ppo_gold"]) == r["settings"]["sets"]["ppo.iterations"]
        for row in res["bon_gold"] + res["ppo_gold"]:
            _assert_full(row, f"{name} curve")
    # the single RM and the ensemble share the SFT policy of a seed: same gold reward before PPO
    assert methods["single"]["summary"]["ppo.gold_reward_sft"]["values"] == \
        methods["min"]["summary"]["ppo.gold_reward_sft"]["values"]

"""The reward-design figure scripts in --smoke mode (micro config, 2 seeds, a few steps):
experiments/instructgpt.py (K-wise RM, PPO-ptx), experiments/coste_ensembles.py (RM ensembles) and
experiments/finegrained_wu.py (fine-grained rewards). Each runs its sweeps through the runner and
writes a results JSON and a PNG whose numbers are finite with n = the number of seeds; the
fine-grained arm really reuses the holistic arm's SFT and RM. Also the shared toolkit's statistics."""
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests import tolerance as tol
from tests.children import run_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = 2


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toolkit_stat_and_moving_averages():
    T = _load("toolkit")
    s = T.stat([1.0, 2.0, None, float("nan"), 6.0])
    assert s["n"] == 3 and s["values"] == [1.0, 2.0, None, None, 6.0]
    assert s["mean"] == pytest.approx(3.0) and s["std"] == pytest.approx(math.sqrt(7.0))
    # t(0.975, 2) = 4.302652729911275
    assert s["half_width"] == pytest.approx(4.302652729911275 * math.sqrt(7.0) / math.sqrt(3.0), rel=1e-9)
    assert T.fmt(s) == f"3.000 ± {s['half_width']:.3f} (n=3)" and T.fmt(T.stat([])) == "—"
    x = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert T.trailing_moving_average(x, 2) == [1.0, 1.5, 3.0, 6.0, 12.0]
    np.testing.assert_allclose(T.centred_moving_average(np.array(x), 3), [1.5, 7 / 3, 14 / 3, 28 / 3, 12.0])
    np.testing.assert_allclose(T.centred_moving_average(np.array([[1.0, np.nan, 3.0]]), 3), [[1.0, 2.0, 3.0]])


def test_toolkit_write_json_nulls_non_finite(tmp_path):
    T = _load("toolkit")
    T.write_json(tmp_path / "r.json", {"a": np.float32(0.5), "b": [float("nan"), np.int64(3)], "c": np.array([1.25])})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 0.5, "b": [None, 3], "c": [1.25]}


def _run(script: str, tmp_path: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # the scripts force one host device themselves; drop a caller's fake-device count anyway
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--smoke", "--out",
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
    assert r["ptx"]["sets"]["data.ptx"] == "world:pretrain"
    for p in r["ptx"]["points"]:
        for m in ("win_rate_vs_sft", "alignment_tax_pretrain", "alignment_tax_demonstrations", "gold_reward_final"):
            _assert_full(p[m], f"ptx {p['ptx_coef']} {m}")
        # the tax is the final policy's held-out NLL minus the SFT policy's, on each text
        for tax, nll in (("alignment_tax_pretrain", "pretrain_nll"), ("alignment_tax_demonstrations", "heldout_nll")):
            diff = [f - s for f, s in zip(p[f"{nll}_final"]["values"], p[f"{nll}_sft"]["values"])]
            # difference of the two float32 mean NLLs against the mean of per-document differences
            # (stages/ppo.py): numpy's pairwise means, about log2(N) + 8 <= 16 roundings each at the
            # NLLs' size (< 8 nats), two chains on one side (tests/tolerance.py)
            assert diff == pytest.approx(p[tax]["values"], abs=2 * tol.f32(16, 8.0))
        assert p["pretrain_nll_sft"]["values"] != p["heldout_nll_sft"]["values"]  # two different held-out texts


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


def test_finegrained_wu_smoke_reuses_the_holistic_sft_and_rm(tmp_path):
    """The fine-grained arm's SFT and RM are the holistic arm's of the same seed, copied through
    the runner's share_stages: the sft and rm stages run once per seed (in the holistic sweep),
    never in the fine-grained one, whose stage summaries are the holistic run's, byte for byte."""
    from rlhf_jax.workdir import launches
    out = tmp_path / "runs"
    run_script("finegrained_wu.py", "--smoke", "--out", str(out), "--parts", "holistic,fine_grained")  # QA-Feedback: -m slow
    for seed in range(SEEDS):
        run = lambda arm: out / arm / "base" / f"seed_{seed}"  # noqa: E731
        # every launch records the stages it found finished (WORKDIR/hosts.jsonl): the holistic run
        # found none and ran sft and rm; every launch of the fine-grained run found both finished
        assert launches(run("holistic"))[0]["finished"] == []
        assert all({"sft", "rm"} <= set(launch["finished"]) for launch in launches(run("fine_grained")))
        assert launches(run("fine_grained"))
        for stage in ("sft", "rm"):
            mine = run("fine_grained") / stage / "summary.json"
            assert mine.read_bytes() == (run("holistic") / stage / "summary.json").read_bytes()
    r = json.loads((out / "finegrained_wu_smoke.json").read_text())
    assert (out / "finegrained_wu_smoke.png").stat().st_size > 10_000
    assert r["smoke"] and r["seeds"] == list(range(SEEDS)) and r["failed_runs"] == 0
    assert r["stages_copied_across_sweeps"]["fine_grained"] == {f"base/seed_{s}": ["sft", "rm"] for s in range(SEEDS)}
    for arm in ("holistic", "fine_grained"):
        for m in ("ppo.gold_reward_final", "ppo.kl_final", "ppo.win_rate_vs_sft", "rm.val_accuracy"):
            _assert_full(r["points"][arm][m], f"{arm} {m}")
        assert len(r["curves"][arm]["steps"]) == 4
    # same SFT policy and RM in both arms: identical SFT gold and RM accuracy per seed
    for m in ("ppo.gold_reward_sft", "rm.val_accuracy"):
        assert r["points"]["fine_grained"][m]["values"] == r["points"]["holistic"][m]["values"]
    for m in ("fgrm.wrong_val_accuracy", "fgrm.extra_val_accuracy"):
        _assert_full(r["points"]["fine_grained"][m], m)
    d = r["fine_grained_minus_holistic_paired"]["ppo.gold_reward_final"]
    fg, ho = (r["points"][a]["ppo.gold_reward_final"]["values"] for a in ("fine_grained", "holistic"))
    assert d["values"] == pytest.approx([a - b for a, b in zip(fg, ho)], abs=1e-6)


@pytest.mark.slow
def test_finegrained_wu_smoke_qa_feedback(tmp_path, shared_data):
    """The figure's QA-Feedback part (real span annotations) in smoke mode: kept out of the
    default run for its time."""
    module = _load("finegrained_wu")
    out = tmp_path / "runs"
    assert module.main(["--smoke", "--out", str(out), "--parts", "qa_feedback"]) == 0
    r = json.loads((out / "finegrained_wu_smoke.json").read_text())
    for m in ("fgrm.relevance_val_accuracy", "fgrm.factuality_val_accuracy"):
        _assert_full(r["points"]["qa_feedback"][m], f"qa {m}")

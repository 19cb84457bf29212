"""experiments/real_model.py: the parts of the HH pairs it checks are disjoint, and its smoke
mode (a random-init tiny decoder on the real HH rows, 2 seeds, a few steps per stage) runs the
gold RM, proxy RM, best-of-n, PPO, DPO and the evaluation through the sweep runner and writes a
results JSON whose numbers come from the runs' own files, and a PNG."""
import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.children import child_env

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("real_model", ROOT / "experiments" / "real_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_check_refuses_shared_rows():
    rm = _load()
    proxy = {"rm_val": [0, 200], "eval_prompts": [136, 200], "rm_train": [200, 1200], "ppo_prompts": [200, 600]}
    parts = rm.check_layout(proxy, {"rm_train": [1200, 1992]})
    assert parts["gold_pairs"] == [1200, 1992] and parts["heldout_prompts"] == [136, 200]
    with pytest.raises(SystemExit, match="gold_pairs"):
        rm.check_layout(proxy, {"rm_train": [1100, 1992]})  # the gold RM would train on proxy pairs
    with pytest.raises(SystemExit, match="heldout_prompts"):
        rm.check_layout({**proxy, "eval_prompts": [150, 214]}, {"rm_train": [1200, 1992]})


def test_no_data_directory_stops_before_any_run(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_JAX_DATA_DIR", raising=False)
    with pytest.raises(SystemExit, match="no data directory: set RLHF_JAX_DATA_DIR"):
        _load().main(["--smoke", "--out", str(tmp_path)])
    assert not (tmp_path / "gold").exists()  # no sweep started


def test_a_gold_seed_among_the_proxies_is_refused_before_any_run(tmp_path):
    rm = _load()
    with pytest.raises(SystemExit, match=r"gold RM \(seed 1\) draws a score head from a seed the proxy RM of "
                                         r"seed\(s\) \[1\] draws from"):
        rm.main(["--seeds", "0-2", "--gold_seeds", "1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # no sweep started
    # two heads a run (seed s draws s + 1 and s + 2): gold seed 3 (heads 4, 5) meets seed 2's (3, 4), not 0's or 1's
    with pytest.raises(SystemExit, match=r"proxy RM of seed\(s\) \[2\] draws from"):
        rm.main(["--seeds", "0-2", "--gold_seeds", "3", "--set", "rm.members=2", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
    assert rm.overlapping_heads(*(rm._config_module().get_config(f"{r},smoke") for r in ("proxy", "gold")),
                                [0, 1, 2], 3) == []  # one head a run: gold seed 3 meets none of 0-2


def test_the_configs_parts_are_disjoint():
    rm = _load()
    module = rm._config_module()
    for size in ("cpu", "smoke", "cpu,chat", "smoke,chat"):
        proxy, gold = (module.layout(module.get_config(f"{role},{size}")) for role in ("proxy", "gold"))
        parts = rm.check_layout(proxy, gold)
        assert parts["heldout_pairs"][1] <= parts["proxy_pairs"][0]
        assert parts["proxy_pairs"][1] <= parts["gold_pairs"][0]
    full = module.get_config("proxy,cpu")
    assert full.data.n_rankings == 1000 and full.data.rm_train == "corpus:hh_rlhf[200:1200]"
    assert module.get_config("gold,cpu").data.rm_train == "corpus:hh_rlhf[1200:1992]"
    chat = module.get_config("proxy,cpu,chat")  # the same rows, as chat messages, and longer answers
    assert chat.data.rm_train == "corpus:hh_rlhf?form=chat[200:1200]" and chat.sampling.max_new_tokens == 64
    assert module.layout(chat) == module.layout(full) and chat.evaluate.max_new_tokens == 64


def test_the_estimate_prices_packed_rm_steps():
    rm = _load()
    module = rm._config_module()
    proxy, gold = (module.get_config(f"{role},cpu") for role in ("proxy", "gold"))
    assert proxy.rm.pack and gold.rm.pack and proxy.dpo.pack  # configs/instructgpt.py:smollm2_hh packs
    packed = rm.estimate(proxy, gold, 3, 1, 10.0)["per_run_s"]
    proxy.rm.pack = gold.rm.pack = proxy.dpo.pack = False
    padded = rm.estimate(proxy, gold, 3, 1, 10.0)["per_run_s"]
    # the proxy RM's 125 steps (1,000 pairs) and the gold's 198 (two epochs of 792) at 0.66 of a padded
    # step; DPO's 125, each 1.33 padded RM steps, at 0.52
    assert padded["proxy"] - packed["proxy"] == pytest.approx(125 * 10.0 * (1 - 0.66))
    assert padded["gold"] - packed["gold"] == pytest.approx(198 * 10.0 * (1 - 0.66))
    assert padded["dpo"] - packed["dpo"] == pytest.approx(125 * 10.0 * 1.33 * (1 - 0.52))
    assert padded["ppo"] == packed["ppo"] and padded["bon"] == packed["bon"]
    # TRL's RewardTrainer per seed when trl is installed: its 125 padded steps at 0.83 of ours, 400 forwards
    with_trl = rm.estimate(proxy, gold, 3, 1, 10.0, trl=True)
    assert with_trl["per_run_s"]["trl"] == pytest.approx(125 * 10.0 * 0.83 + 400 * 10.0 / 48 + 120.0)
    assert with_trl["total_s"] - rm.estimate(proxy, gold, 3, 1, 10.0)["total_s"] == pytest.approx(
        3 * with_trl["per_run_s"]["trl"])
    # --rm_only: the gold RM once, the proxy and TRL's per seed, nothing else
    rm_only = rm.estimate(proxy, gold, 3, 1, 10.0, trl=True, rm_only=True)
    assert set(rm_only["per_run_s"]) == {"gold", "proxy", "trl"}
    assert rm_only["total_s"] == pytest.approx(sum(with_trl["per_run_s"][k] * n
                                                   for k, n in (("gold", 1), ("proxy", 3), ("trl", 3))))


def test_the_time_left_counts_only_the_runs_a_start_would_run(tmp_path):
    # a run counts as finished as the runner counts it: its summary after its config, the same
    # config, a summary for every listed stage; TRL's seed once its seed_<s>.json exists
    rm = _load()
    Recorder, at_repo = rm.T.Recorder, rm.T.at_repo
    from rlhf_jax.sweep import expand, resolve_config
    from rlhf_jax.workdir import flatten
    seeds, gold_seeds = [0, 1, 2], [0]
    cfg = {role: f"{rm.CONFIG}:{role},smoke,chat" for role in ("proxy", "gold")}
    sweeps = rm.build_sweeps(Recorder(tmp_path), cfg, seeds, gold_seeds)
    assert sorted(sweeps) == ["bon", "dpo", "eval", "gold", "ppo", "proxy"]
    per_run = {"gold": 100.0, "proxy": 10.0, "trl": 7.0, "ppo": 1.0}
    assert rm.left_s(per_run, sweeps, tmp_path / "trl", seeds) == 100 + 3 * (10 + 7 + 1)

    def finish(name, seed, config=None, stages=None):
        sweep = sweeps[name]
        run = next(r for r in expand(sweep) if r.seed == seed)
        with at_repo():
            flat = flatten(resolve_config(sweep.config, run.overrides))
        run.workdir.mkdir(parents=True, exist_ok=True)
        (run.workdir / "config.json").write_text(json.dumps({"config": {**flat, **(config or {})}}, default=str))
        listed = stages or flat["stages"].split(",")
        (run.workdir / "summary.json").write_text(json.dumps({s: {} for s in listed}))

    for name, seed in (("gold", 0), ("proxy", 0), ("proxy", 2), ("ppo", 1)):
        finish(name, seed)
    (tmp_path / "trl").mkdir()
    (tmp_path / "trl" / "seed_1.json").write_text("{}")
    assert rm.left_s(per_run, sweeps, tmp_path / "trl", seeds) == 10 + 2 * 7 + 2 * 1
    finish("ppo", 2, stages=["sft", "rm"])  # PPO's stage not summarised: not finished
    finish("proxy", 1, config={"rm.lr": 1.0})  # run with another learning rate: the runner reruns it
    assert rm.left_s(per_run, sweeps, tmp_path / "trl", seeds) == 10 + 2 * 7 + 2 * 1


def _finite(s, n):
    assert s["n"] == n, s
    assert all(s[k] is not None and math.isfinite(s[k]) for k in ("mean", "ci_low", "ci_high")), s


def test_real_model_smoke(tmp_path, shared_data):
    # a child process with one host device, as the script runs from a shell (with a caller's 8 fake
    # devices the runs were four times slower on 2 cores); the caller's other XLA flags kept (the
    # suite's O0: 82 s against 98 s alone; an ISA cap)
    env = child_env(1)
    script = [sys.executable, str(ROOT / "experiments" / "real_model.py"), "--smoke", "--out", str(tmp_path / "runs")]
    # --rm_only first: the RM sweeps alone and the so-far report; the full command then reuses them
    done = subprocess.run([*script, "--rm_only"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    early = json.loads((tmp_path / "runs" / "real_model_chat_smoke_so_far.json").read_text())
    assert early["proxy_rm"]["finished_seeds"] == [1, 2] and "policies" not in early and "bon" not in early
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == \
        sorted(["gold", "proxy", *(["trl"] if importlib.util.find_spec("trl") else [])])
    done = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[proxy] [sweep] 2 runs" in done.stdout and "(2 finished before, 0 to run)" in done.stdout
    out = json.loads((tmp_path / "runs" / "real_model_chat_smoke.json").read_text())
    assert (tmp_path / "runs" / "real_model_chat_smoke.png").stat().st_size > 10_000
    # the defaults: proxies at seeds 1-2 (heads from seeds 2, 3), the gold RM at seed 0 (head from seed 1)
    assert out["mode"] == "smoke" and out["seeds"] == [1, 2] and out["gold_seeds"] == [0]
    assert out["gold_head_shared_with_seeds"] == []
    assert out["trl_reward_trainer"]["status"] in ("ran", "skipped: trl not installed")
    trl_ran = out["trl_reward_trainer"]["status"] == "ran"  # where trl imports: one more command per seed
    assert out["failed_runs"] == 0 and len(out["commands"]) == 6 + 2 * trl_ran
    assert all(r["status"] == "ok" for records in out["runs"].values() for r in records)
    runs = tmp_path / "runs"
    # every policy run is judged by the gold sweep's first seed, which trained on the gold rows only
    gold_dir = runs / "gold" / "base" / "seed_0"
    cfg = json.loads((runs / "eval" / "base" / "seed_1" / "config.json").read_text())["config"]
    assert cfg["data.gold"] == f"rm:{gold_dir}"
    # the default form: the conversations as chat messages, in a chat template
    run_cfg = json.loads((gold_dir / "config.json").read_text())["config"]
    assert run_cfg["data.rm_train"] == "corpus:hh_rlhf?form=chat[1200:1248]" and run_cfg["data.template"] == "chatml"
    # numbers over seeds are the runs' own: the proxy RM's accuracy and best-of-n's curves
    accs = [json.loads((runs / "proxy" / "base" / f"seed_{s}" / "rm" / "summary.json").read_text())["val_accuracy"]
            for s in (1, 2)]
    assert out["proxy_rm"]["val_accuracy"]["values"] == pytest.approx(accs, rel=1e-6)
    _finite(out["proxy_rm"]["val_accuracy"], 2)
    curves = [json.loads((runs / "bon" / "base" / f"seed_{s}" / "bon" / "curve.json").read_text()) for s in (1, 2)]
    assert out["bon"]["n"] == [1, 2, 4, 8]
    for j in range(4):
        want = np.mean([c[j]["gold"] for c in curves])
        assert out["bon"]["gold"][j]["mean"] == pytest.approx(want, rel=1e-6, abs=1e-9)
    # the eval sweep's policies: KL to the start and scores under both judges, with intervals
    for p in ("ppo", "dpo"):
        row = out["policies"][p]
        for key in ("kl_to_start", "score_gold", "score_rm", "win_rate_vs_start_gold", "response_length"):
            assert row[key]["n"] == 2 and len(row[key]["per_seed_interval"]) == 2, (p, key)
        _finite(row["score_gold"], 2)
        # the trained policy, not the start: the same weights would give a KL of exactly 0
        assert all(v != 0.0 for v in row["kl_to_start"]["values"]), p
    assert out["policies"]["start"]["truthfulqa_qa_primer_mc2"]["n"] == 2
    # the policy stages' own evaluation, a second draw: per seed the mean of the two gold win rates
    for p in ("ppo", "dpo"):
        own = [json.loads((runs / p / "base" / f"seed_{s}" / p / "summary.json").read_text()) for s in (1, 2)]
        assert out[f"{p}_stage"]["win_rate_vs_sft"]["values"] == pytest.approx([o["win_rate_vs_sft"] for o in own])
        two = [(a + o["win_rate_vs_sft"]) / 2 for a, o in zip(out["policies"][p]["win_rate_vs_start_gold"]["values"], own)]
        assert out["policies"][p]["win_rate_vs_start_gold_two_draws"]["values"] == pytest.approx(two)
        assert f"| {p}, two draws (with its stage's own evaluation) | " in out["table_md"]
    assert len(out["ppo_curve"]["iteration"]) == 4 and out["ppo_curve"]["kl"][0]["n"] == 2
    assert "| proxy RM (ours) |" in out["table_md"]


def test_so_far_reports_the_finished_stages_and_starts_nothing(tmp_path):
    rm = _load()
    runs, out = tmp_path / "runs", tmp_path / "out"

    def put(rel, data):
        path = runs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    put("gold/base/seed_0/rm/summary.json", {"val_accuracy": 0.59, "train_seconds": 900.0, "wall_seconds": 990.0})
    # seeds 0 and 1 finished on both sides, seed 2 only on ours; TRL's accuracy as its tool writes it
    for s, (acc, trl_acc, ours_s, trl_s) in enumerate([(0.6, 0.55, 100.0, 200.0), (0.5, 0.6, 150.0, 300.0)]):
        put(f"proxy/base/seed_{s}/rm/summary.json",
            {"val_accuracy": acc, "train_seconds": ours_s, "median_step_seconds": 8.0, "wall_seconds": ours_s + 50})
        put(f"trl/seed_{s}.json", {"accuracy": {"value": trl_acc, "low": 0.4, "high": 0.7, "n": 200},
                                   "shorter_wins_accuracy": {"value": 0.53}, "score_length_correlation": -0.4,
                                   "train_seconds": trl_s, "step_seconds_median": 10.0})
    put("proxy/base/seed_2/rm/summary.json", {"val_accuracy": 0.7, "train_seconds": 120.0, "wall_seconds": 170.0})
    # the machines: seed 0's RM ran (and resumed) on the machine TRL's seed 0 ran on; seed 1's TRL run
    # came from another boot; the launch that found seed 0's rm finished is not one of its hosts
    here = {"boot_id": "b1", "hostname": "vm", "model": "AMD EPYC", "cores": 2, "isa": ["avx2", "fma"]}
    there = dict(here, boot_id="b2", isa=["avx2", "fma", "avx512f"])
    (runs / "proxy/base/seed_0/hosts.jsonl").write_text("".join(
        json.dumps(dict(h, finished=f)) + "\n" for h, f in ((here, []), (here, ["sft"]), (there, ["sft", "rm"]))))
    (runs / "proxy/base/seed_1/hosts.jsonl").write_text(json.dumps(dict(here, finished=[])) + "\n")
    for s, h in ((0, here), (1, there)):
        trl = json.loads((runs / f"trl/seed_{s}.json").read_text())
        put(f"trl/seed_{s}.json", dict(trl, host=h))
    put("proxy/base/seed_3/rm/.keep", {})  # a seed whose rm stage has not finished
    put("bon/base/seed_1/bon/curve.json", [{"n": 1, "kl": 0.0, "proxy": -1.0, "gold": -0.5},
                                           {"n": 2, "kl": 0.193, "proxy": 0.0, "gold": 0.5}])
    # seed 0's policies evaluated: every number the eval stage writes, as an interval where it writes one
    iv = lambda v: {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 100}
    gen = {p: {"score_gold": iv(g), "score_rm": iv(g + 1), "response_length": iv(30.0), "eos_rate": iv(0.5),
               **({"kl_to_baseline": iv(k)} if p != "start" else {})}
           for p, g, k in (("start", 0.0, 0.0), ("ppo", 0.5, 2.0), ("dpo", 0.25, 1.0))}
    gen["win_rate_vs_start"] = {j: {"ppo": iv(0.6), "dpo": iv(0.55)} for j in ("gold", "rm")}
    gen["judge_bias"] = {j: {p: {"lc_win_rate": iv(w), "win_rate": iv(0.6)} for p, w in (("ppo", 0.52), ("dpo", 0.5))}
                         for j in ("gold", "rm")}
    put("eval/base/seed_0/eval/summary.json",
        {"generation": gen, "truthfulqa": {"qa_primer": {p: {"mc1": 0.25, "mc2": 0.4} for p in ("start", "ppo", "dpo")},
                                           "seconds": 548.0}})  # the suite's time beside its formats
    put("ppo/base/seed_0/ppo/summary.json", {"wall_seconds": 1100.0})
    put("dpo/base/seed_0/dpo/summary.json", {"wall_seconds": 1200.0})
    # stage ppo finished for seeds 0 and 1, dpo for seed 1: their own evaluation as the stages write it
    # (numbers, with intervals over prompts under `intervals`; the alignment tax an interval itself)
    own = lambda win, gold, kl: {"win_rate_vs_sft": win, "judge": "gold", "gold_reward_sft": -0.2, "gold_reward_final": gold,
                                 "kl_final": kl, "response_length_sft": 30.0, "response_length_final": 28.0,
                                 "intervals": {"win_rate_vs_sft": iv(win), "gold_reward_final": iv(gold), "kl_final": iv(kl)}}
    for s, win in ((0, 0.6), (1, 0.7)):
        put(f"ppo/base/seed_{s}/ppo/summary.json", {**own(win, 0.3, 1.5), "wall_seconds": 1100.0, "rm_score_sft": -1.0,
                                                   "rm_score_final": 0.5, "alignment_tax": iv(0.02)})
        (runs / f"ppo/base/seed_{s}/ppo/metrics.jsonl").write_text("".join(
            json.dumps({"step": t, "kl": 0.5 * t + s, "score": t - 1.0, "gold_reward": 0.1 * t}) + "\n" for t in (1, 2, 3)))
    put("dpo/base/seed_1/dpo/summary.json", {**own(0.55, 0.1, 0.8), "wall_seconds": 1200.0, "val_reward_accuracy": 0.6})
    # runs made with the gold at seed 0, as the chat form's first were: --so_far reads them and names the
    # seed whose proxy drew its head from the gold's seed
    for s in range(3):
        put(f"proxy/base/seed_{s}/config.json", {"config": {"seed": s, "rm.members": 1}})
    put("gold/base/seed_0/config.json", {"config": {"seed": 0, "rm.members": 1}})
    assert rm.main(["--so_far", "--seeds", "0-3", "--gold_seeds", "0", "--out", str(runs), "--artifacts", str(out)]) == 0
    # (the default form: chat)
    res = json.loads((out / "real_model_chat_so_far.json").read_text())
    assert res["proxy_rm"]["finished_seeds"] == [0, 1, 2] and res["trl_reward_trainer"]["finished_seeds"] == [0, 1]
    assert res["gold_head_shared_with_seeds"] == [0]
    assert "Not judged independently: the proxy RM of seed(s) [0] drew its score head" in res["table_md"]
    assert res["proxy_rm"]["val_accuracy"]["values"] == [0.6, 0.5, 0.7, None]
    assert res["proxy_rm"]["val_accuracy"]["mean"] == pytest.approx(0.6)
    paired = res["paired"]
    assert paired["seeds"] == [0, 1]
    assert paired["accuracy_ours_minus_trl"]["values"] == pytest.approx([0.05, -0.1])
    assert paired["train_seconds_trl_over_ours"]["values"] == [2.0, 2.0]
    assert paired["same_host"] == [True, False]
    assert res["proxy_rm"]["hosts"] == {"0": ["AMD EPYC, 2 cores, avx2+fma, boot b1"],
                                        "1": ["AMD EPYC, 2 cores, avx2+fma, boot b1"], "2": []}
    assert "| 2.00 ± 0.00 (n=2) (different hosts) | [0, 1] |" in res["table_md"]
    assert "Hosts of the RM stages (WORKDIR/hosts.jsonl): AMD EPYC, 2 cores, avx2+fma, boot b1." in res["table_md"]
    assert res["gold_rm"] == [{"seed": 0, "val_accuracy": 0.59, "train_seconds": 900.0, "median_step_seconds": None,
                               "hosts": []}]
    assert "| gold RM, seed 0 | 0.590 |  | 900 | 0 |" in res["table_md"]
    assert res["bon"]["seeds"] == [1] and res["bon"]["n"] == [1, 2] and res["bon"]["gold"][1]["mean"] == 0.5
    assert "| TRL RewardTrainer | 0.575 ± " in res["table_md"]
    pol = res["policies"]
    assert pol["seeds"] == [0]
    assert pol["ppo"]["win_rate_vs_start_gold"]["values"] == [0.6]
    assert pol["ppo"]["win_rate_vs_start_gold"]["per_seed_interval"][0]["low"] == pytest.approx(0.5)
    assert pol["ppo"]["lc_win_rate_vs_start_gold"]["values"] == [0.52] and pol["start"]["eos_rate"]["values"] == [0.5]
    assert "| ppo | 0.600 [0.500, 0.700] (1 seed, n=100) | 0.520 [0.420, 0.620] (1 seed, n=100) |" in res["table_md"]
    assert pol["dpo"]["kl_to_start"]["mean"] == 1.0 and "kl_to_start" not in pol["start"]
    assert pol["ppo"]["train_seconds"]["values"] == [1100.0] and pol["dpo"]["truthfulqa_qa_primer_mc2"]["mean"] == 0.4
    assert sorted(k for k in pol["dpo"] if k.startswith("truthfulqa_")) == ["truthfulqa_qa_primer_mc1",
                                                                         "truthfulqa_qa_primer_mc2"]
    # the policy stages' own evaluation, over the seeds whose stage finished (seed 0's dpo summary above holds
    # only its time: the dpo row's numbers are seed 1's, with seed 1's interval)
    ppo, dpo = res["ppo_stage"], res["dpo_stage"]
    assert ppo["seeds"] == [0, 1] and ppo["win_rate_vs_sft"]["values"] == [0.6, 0.7]
    assert ppo["win_rate_vs_sft"]["mean"] == pytest.approx(0.65)
    assert ppo["win_rate_vs_sft"]["per_seed_interval"][1] == {"low": pytest.approx(0.6), "high": pytest.approx(0.8),
                                                              "n": 100, "method": None}
    assert ppo["alignment_tax"]["values"] == [0.02, 0.02] and ppo["rm_score_final"]["mean"] == 0.5
    assert dpo["seeds"] == [0, 1] and dpo["win_rate_vs_sft"]["values"] == [None, 0.55]
    assert dpo["val_reward_accuracy"]["values"] == [None, 0.6]
    curve = res["ppo_curve"]
    assert curve["seeds"] == [0, 1] and curve["iteration"] == [1, 2, 3]
    assert curve["kl"][2]["values"] == [1.5, 2.5] and curve["d"][0] == pytest.approx(np.sqrt(1.0))
    assert "| ppo ([0, 1]) | 0.650 ± " in res["table_md"]
    assert "| dpo ([0, 1]) | 0.550 [0.450, 0.650] (1 seed, n=100) |" in res["table_md"]  # seed 1's own interval
    assert curve["window"] == 5 and curve["kl_last"]["values"] == [1.0, 2.0]  # each seed's 3 iterations, averaged
    assert "PPO's training rollouts (seeds [0, 1]), the mean over the first 5 iterations → over the last 5: " \
           "KL 1.500 ± " in res["table_md"]
    assert "| ppo | 0.600 [0.500, 0.700] (1 seed, n=100) |" in res["table_md"]
    assert sorted(p.name for p in runs.iterdir()) == ["bon", "dpo", "eval", "gold", "ppo", "proxy", "trl"]  # none new


# ---------------------------------------------------------------- the real model (pytest -m slow)
def _cli(config: str, workdir, *sets: str, timeout: int = 3600) -> dict:
    """One run of the CLI at the real model's cpu size with counts cut to a few steps; its summary."""
    cmd = [sys.executable, "-m", "rlhf_jax.main", "--config", config, "--workdir", str(workdir), "--no_wandb",
           *(f"--config.{s}" for s in sets)]
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(1), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((workdir / "summary.json").read_text())


@pytest.mark.slow
def test_the_cpu_size_runs_every_stage_on_the_real_model(tmp_path, shared_data):
    """Every stage of experiments/configs/real_model.py at the cpu size (SmolLM2-135M-Instruct, LoRA
    PPO and DPO, packed RM and DPO steps, the gold RM as judge, TruthfulQA, best-of-n), each cut to a
    step or two and a few rows: what the hours-long sweeps run, in one process a stage each, so a
    crash shows in minutes and not after the RMs have trained."""
    from rlhf_jax.paths import smollm2_path
    if not smollm2_path().exists():
        pytest.skip(f"{smollm2_path()} absent: run tools/fetch_smollm2.py first")
    config = ROOT / "experiments" / "configs" / "real_model.py"
    few = ("data.n_sft=16", "data.n_rankings=16", "data.rm_val=corpus:hh_rlhf?form=chat[0:8]",
           "data.val_fraction=0.004", "rm.steps=2")
    # the default form; the gold at a seed of its own (a shared one is refused: its head would be the proxy's)
    gold = _cli(f"{config}:gold,cpu,chat", tmp_path / "gold", "stages=sft,rm", "seed=100", *few)
    assert gold["rm"]["steps"] == 2 and 0.0 <= gold["rm"]["val_accuracy"] <= 1.0
    s = _cli(f"{config}:proxy,cpu,chat", tmp_path / "proxy", "stages=sft,rm,ppo,dpo,eval,bon",
             f"data.gold=rm:{tmp_path / 'gold'}", *few, "data.n_prompts=8", "heldout.n_prompts=8",
             "ppo.iterations=2", "dpo.steps=2", "bon.n_samples=4", "bon.n_prompts=4", "evaluate.n_prompts=8",
             "evaluate.n_pairs=8", "evaluate.n_truthfulqa=4", "evaluate.bootstrap=200",
             "evaluate.policies=start=stage:sft,ppo=stage:ppo,dpo=stage:dpo", "evaluate.baseline=start",
             "evaluate.suites=rm_pairs,generation,truthfulqa", "evaluate.judges=gold,rm")
    assert s["ppo"]["steps"] == 2 and s["dpo"]["steps"] == 2  # two, as the first is at warmup's learning rate 0
    gen = s["eval"]["generation"]
    for p in ("ppo", "dpo"):  # LoRA adapters that moved (the start's own weights give a KL of exactly 0)
        assert gen[p]["kl_to_baseline"]["value"] != 0.0 and math.isfinite(gen[p]["score_gold"]["value"]), p
        assert 0.0 <= gen["win_rate_vs_start"]["gold"][p]["value"] <= 1.0
    assert s["eval"]["truthfulqa"]["qa_primer"]["start"]["n"] == 4
    curve = json.loads((tmp_path / "proxy" / "bon" / "curve.json").read_text())
    assert [r["n"] for r in curve] == [1, 2, 4] and all(math.isfinite(r["gold"]) for r in curve)

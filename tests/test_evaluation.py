"""The evaluation stage: the tiny world's suites end to end (in the test suite, under a minute),
numbers checked against independent computations, the CLI on a finished workdir, and the
intervals the end-of-PPO evaluation now carries."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.eval import get_config as eval_config
from configs.instructgpt import get_config
from rlhf_jax.context import build_context
from rlhf_jax.data.tokenize import encode_example, pad_right
from rlhf_jax.eval.policy_eval import INTERVAL_COVERS
from rlhf_jax.eval.report import write_report
from rlhf_jax.models.forward import score_at_last
from rlhf_jax.stages import common, run as run_pipeline, run_stages
from rlhf_jax.stages.evaluation import labelled_pairs, parse_policies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("trained")
    return path, run_pipeline(get_config("micro"), path, use_wandb=False)


@pytest.fixture(scope="module")
def evaluated(trained):
    path, _ = trained
    c = get_config("micro")
    c.stages, c.evaluate = "eval", eval_config("micro").evaluate
    return path, run_pipeline(c, path, use_wandb=False)["eval"]


def test_the_tiny_world_suites_run_and_report(evaluated):
    path, ev = evaluated
    gen = ev["generation"]
    assert set(ev["judges"]) == {"gold", "rm"} and gen["n_prompts"] == 32
    for policy in ("sft", "ppo"):
        for key in ("response_length", "eos_rate", "score_gold", "score_rm", "rougeL", "exact_match"):
            est = gen[policy][key]
            assert est["n"] == 32 and est["low"] <= est["value"] <= est["high"], (policy, key)
    for judge in ("gold", "rm"):
        win = gen["win_rate_vs_sft"][judge]["ppo"]
        assert 0 <= win["low"] <= win["value"] <= win["high"] <= 1
        assert 0 <= gen["judge_bias"][judge]["ppo"]["longer_agreement"]["value"] <= 1
    assert gen["ppo"]["kl_to_baseline"]["value"] > 0 and "kl_to_baseline" not in gen["sft"]
    assert ev["perplexity"]["sft"]["perplexity"] > 1 and ev["rm_pairs"]["n"] == 64
    for name in ("summary.json", "report.md", "samples.jsonl", "metrics.jsonl", "win_rates.png"):
        assert (path / "eval" / name).exists(), name
    report = (path / "eval" / "report.md").read_text()
    assert "### generation / win_rate_vs_sft" in report and "### generation: examples" in report
    metrics = json.loads((path / "eval" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["generation/win_rate_vs_sft/gold/ppo/low"] == pytest.approx(win["low"])


def test_rm_pair_accuracy_and_the_length_baseline_by_hand(trained, evaluated):
    path, ev = evaluated
    c = get_config("micro")
    c.stages, c.evaluate = "eval", eval_config("micro").evaluate
    ctx = build_context(c, path, use_wandb=False)
    pairs = labelled_pairs(ctx)
    reward, params, _, _ = common.trained_reward(ctx, "bon")

    def scores(key):
        ids = [encode_example(ctx.tokenizer, r["prompt"], r[key], ctx.data.tcfg)[0] for r in pairs]
        tokens, mask = pad_right(ids, ctx.tokenizer.pad_token_id, ctx.data.tcfg.max_len)
        return np.asarray(jax.jit(lambda p, t, m: score_at_last(reward.graphdef, p, t, m))(params, tokens, mask))
    chosen, rejected = scores("chosen"), scores("rejected")
    assert ev["rm_pairs"]["accuracy"]["value"] == pytest.approx(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))
    lengths = np.array([len(r["chosen"].split()) - len(r["rejected"].split()) for r in pairs])
    assert ev["rm_pairs"]["shorter_wins_accuracy"]["value"] == pytest.approx(np.mean((lengths < 0) + 0.5 * (lengths == 0)))


def test_the_end_of_ppo_evaluation_carries_intervals(trained):
    _, summary = trained
    ppo = summary["ppo"]
    win = ppo["intervals"]["win_rate_vs_sft"]
    assert win["value"] == pytest.approx(ppo["win_rate_vs_sft"]) and win["low"] <= win["value"] <= win["high"]
    assert ppo["intervals"]["gold_reward_final"]["value"] == pytest.approx(ppo["gold_reward_final"])
    assert ppo["intervals"]["kl_final"]["n"] == 32
    # the summary says what the intervals cover: the evaluation prompts, not training
    assert ppo["interval_covers"] == INTERVAL_COVERS and "not training randomness" in INTERVAL_COVERS


def test_the_run_report_shows_intervals_with_what_they_cover(tmp_path):
    summary = {"ppo": {"gold_reward_final": 0.479, "interval_covers": INTERVAL_COVERS,
                       "intervals": {"gold_reward_final": {"value": 0.479, "low": 0.437, "high": 0.521, "n": 256}}}}
    text = write_report(tmp_path, summary, "cmd").read_text()
    assert "| ppo | gold_reward_final 95% interval (evaluation prompts) | 0.479 [0.437, 0.521] (n=256) |" in text
    assert f"Intervals over evaluation prompts cover {INTERVAL_COVERS}." in text
    assert "| ppo | intervals |" not in text and "| ppo | interval_covers |" not in text


def test_the_cli_evaluates_a_finished_workdir_with_its_own_config(trained, tmp_path):
    path, _ = trained
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    out = subprocess.run([sys.executable, "-m", "rlhf_jax.evaluate", "--config", "configs/eval.py:micro",
                          "--workdir", str(path), "--config.evaluate.suites=perplexity",
                          "--config.evaluate.judges="], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "holds a run: its config is kept" in out.stdout
    summary = json.loads((path / "eval" / "summary.json").read_text())
    assert set(summary["perplexity"]) >= {"sft", "ppo"}


def test_policy_specs_and_unknown_suites_fail_clearly():
    assert parse_policies("sft=stage:sft, base=/m/x.gguf") == {"sft": "stage:sft", "base": "/m/x.gguf"}
    with pytest.raises(ValueError, match="is not name=spec"):
        parse_policies("stage:sft")
    from rlhf_jax.context import ConfigError
    from rlhf_jax.stages.validate import validate_config
    c = eval_config("micro")
    c.evaluate.suites = "generation,mmlu"
    with pytest.raises(ConfigError, match=r"config\.evaluate\.suites: \['mmlu'\] are not among"):
        validate_config(c)


@pytest.mark.slow
def test_smollm2_gguf_evaluation_at_a_small_size(tmp_path, shared_data):
    from rlhf_jax.paths import smollm2_path
    if not smollm2_path().exists():
        pytest.skip("run tools/fetch_smollm2.py first")
    c = eval_config("smollm2,small")
    c.evaluate.update(n_truthfulqa=8, n_alpaca=4, n_pairs=16, max_new_tokens=16, bootstrap=200)
    ev = run_stages(build_context(c, tmp_path, use_wandb=False))["eval"]
    assert ev["truthfulqa"]["qa_primer"]["smollm2"]["n"] == 8
    assert 0 <= ev["alpaca_eval"]["llm"]["smollm2"]["win_rate"]["value"] <= 1
    assert ev["judge_agreement"]["llm"]["accuracy"]["n"] == 16


def test_self_preference_reads_alpaca_results_beside_their_other_entries():
    """The AlpacaEval suite's results hold per-judge dicts beside a count and a per-policy rate;
    the self-preference summary takes only the judges' win rates (a crash here once cost a run)."""
    import ml_collections

    from rlhf_jax.stages.evaluation import self_preference
    win = {"value": 0.7, "low": 0.6, "high": 0.8, "n": 50}
    results = {"alpaca_eval": {"n": 50, "llm": {"smollm2": {"win_rate": win}},
                               "llm_rating": {"smollm2": {"win_rate": {**win, "value": 0.4}}},
                               "generation_examples_per_second": {"smollm2": 0.25}}}
    e = ml_collections.ConfigDict({"judge_model": "policy:smollm2", "baseline": "smollm2"})
    out = self_preference(results, e)
    assert out == {"policy": "smollm2", "alpaca_eval": {"llm": win, "llm_rating": {**win, "value": 0.4}}}

"""The evaluation stage: the tiny world's suites end to end (in the test suite, under a minute),
numbers checked against independent computations, the CLI on a finished workdir, the
intervals the end-of-PPO evaluation now carries, and each suite's file written as it finishes
and reused by a rerun."""
import json
import os
import shutil
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
from rlhf_jax.stages import run as run_pipeline, run_stages
from rlhf_jax.stages.reward import trained_reward
from rlhf_jax.stages.evaluation import labelled_pairs, parse_policies
from tests.children import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(micro_trained, tmp_path_factory):
    """A copy of the session's micro run: the evaluation stage writes into it."""
    path = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(micro_trained[0], path)
    return path, micro_trained[1]


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
    assert not (path / "eval" / "chunks").exists()  # the sampler's kept chunks, removed when the stage finished
    report = (path / "eval" / "report.md").read_text()
    assert "### generation / win_rate_vs_sft" in report and "### generation: examples" in report
    metrics = json.loads((path / "eval" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["generation/win_rate_vs_sft/gold/ppo/low"] == pytest.approx(
        gen["win_rate_vs_sft"]["gold"]["ppo"]["low"])


def test_rm_pair_accuracy_and_the_length_baseline_by_hand(trained, evaluated):
    path, ev = evaluated
    c = get_config("micro")
    c.stages, c.evaluate = "eval", eval_config("micro").evaluate
    ctx = build_context(c, path, use_wandb=False)
    pairs = labelled_pairs(ctx)
    reward, params, _, _ = trained_reward(ctx, "bon")
    params = jax.tree.map(lambda x: x[0], params)  # one RM: an ensemble of one member

    def scores(key):
        ids = [encode_example(ctx.tokenizer, r["prompt"], r[key], ctx.data.tcfg)[0] for r in pairs]
        tokens, mask = pad_right(ids, ctx.tokenizer.pad_token_id, ctx.data.tcfg.max_len)
        return np.asarray(jax.jit(lambda p, t, m: score_at_last(reward.graphdef, p, t, m))(params, tokens, mask))
    chosen, rejected = scores("chosen"), scores("rejected")
    assert ev["rm_pairs"]["accuracy"]["value"] == pytest.approx(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))
    lengths = np.array([len(r["chosen"].split()) - len(r["rejected"].split()) for r in pairs])
    assert ev["rm_pairs"]["shorter_wins_accuracy"]["value"] == pytest.approx(np.mean((lengths < 0) + 0.5 * (lengths == 0)))


def test_suite_numbers_recomputed_from_the_samples(evaluated):
    """The suites' aggregates against the same samples drawn again (the sampler is seeded) and
    aggregated here: mean length, EOS rate, distinct-1, the gold judge's mean score, the paired win
    rate of ppo over sft, the gold judge's longer-agreement, perplexity and per-token NLL, and the
    "longer wins" agreement with the annotators' labels."""
    from rlhf_jax.eval.metrics import heldout_nll
    from rlhf_jax.eval.reliability import hh_pairs
    from rlhf_jax.stages.evaluation import environment
    path, ev = evaluated
    c = get_config("micro")
    c.stages, c.evaluate = "eval", eval_config("micro").evaluate
    ctx = build_context(c, path, use_wandb=False)
    env = environment(ctx)
    prompts = [p["prompt"] for p in env.prompts]
    gen, gold = ev["generation"], {}
    for name in ("sft", "ppo"):
        s = env.sampled(name)
        words = [w for t in s["texts"] for w in t.split()]
        gold[name] = np.asarray(env.judges["gold"].score(prompts, s["texts"]))
        assert gen[name]["response_length"]["value"] == pytest.approx(np.mean(s["lengths"]))
        assert gen[name]["eos_rate"]["value"] == pytest.approx(np.mean(s["eos"]))
        assert gen[name]["distinct_1"] == pytest.approx(len(set(words)) / len(words))
        assert gen[name]["score_gold"]["value"] == pytest.approx(gold[name].mean())
        assert 0 < gen[name]["mauve"] <= 1
        nll, count = heldout_nll(env.policies[name].model, env.heldout["tokens"], env.heldout["loss_mask"],
                                 env.heldout["segment_ids"], batch_size=env.settings.batch_size)
        assert ev["perplexity"][name]["perplexity"] == pytest.approx(np.exp(nll.sum() / count.sum()))
        assert ev["perplexity"][name]["nll_per_token"]["value"] == pytest.approx(np.mean(nll / count))
    outcome = (gold["ppo"] > gold["sft"]) + 0.5 * (gold["ppo"] == gold["sft"])
    assert gen["win_rate_vs_sft"]["gold"]["ppo"]["value"] == pytest.approx(outcome.mean())
    la = np.array([len(t.split()) for t in env.sampled("ppo")["texts"]])
    lb = np.array([len(t.split()) for t in env.sampled("sft")["texts"]])
    assert gen["judge_bias"]["gold"]["ppo"]["n_unequal"] == int((la != lb).sum())
    longer = np.where(la > lb, outcome, 1 - outcome)[la != lb]
    assert gen["judge_bias"]["gold"]["ppo"]["longer_agreement"]["value"] == pytest.approx(longer.mean())
    _, a, b, human_a = hh_pairs(env.pairs, seed=0)
    la, lb = np.array([len(x.split()) for x in a]), np.array([len(x.split()) for x in b])
    correct = np.where(la == lb, 0.5, (la > lb) == human_a)
    assert ev["judge_agreement"]["baselines"]["longer_wins"]["accuracy"]["value"] == pytest.approx(correct.mean())
    assert ev["judge_agreement"]["n"] == len(a) == 64


def test_a_stopped_generation_resumes_at_its_chunk_to_the_same_samples(evaluated, monkeypatch):
    """The evaluation's sampler keeps each finished chunk (WORKDIR/eval/chunks): a SIGTERM while the first of 4 chunks is sampled stops it, and sampling again
    draws only the other 3, giving the uninterrupted samples and KL."""
    from rlhf_jax import signals
    from rlhf_jax.stages import sampling
    from rlhf_jax.stages.evaluation import environment
    path, _ = evaluated
    chunks = path / "eval" / "chunks"
    shutil.rmtree(chunks, ignore_errors=True)  # other tests sample in this workdir too
    c = get_config("micro")
    c.stages, c.evaluate = "eval", eval_config("micro").evaluate
    c.evaluate.batch_size = 8  # 32 prompts: 4 chunks
    env = environment(build_context(c, path, use_wandb=False))
    whole = env.generate(env.policies["ppo"], env.prompts)
    shutil.rmtree(chunks)
    saved, save, stop = [], sampling.ChunkStore.save, [True]

    def save_then_stop(self, start, *arrays):
        save(self, start, *arrays)
        saved.append(start)
        if stop:
            signals._STATE["signal"] = "SIGTERM"
    monkeypatch.setattr(sampling.ChunkStore, "save", save_then_stop)
    signals.reset()
    try:
        with pytest.raises(signals.StopRequested):
            env.generate(env.policies["ppo"], env.prompts)
    finally:
        signals.reset()
    assert saved == [0]
    stop.clear()
    again = env.generate(env.policies["ppo"], env.prompts)
    assert saved == [0, 8, 16, 24]
    assert again["texts"] == whole["texts"] and [type(t) for t in again["texts"]] == [type(t) for t in whole["texts"]]
    for key in ("lengths", "eos", "kl_to_baseline"):
        np.testing.assert_array_equal(again[key], whole[key])
    shutil.rmtree(chunks)


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
    env = child_env(1)
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


# --- the suites on stub policies and judges, every number by hand ------------------------------

N_STUB = 20
K_GOOD = [i % 4 + 1 for i in range(N_STUB)]  # ppo says "good" 1-4 times, then "answer"
STUB_TEXTS = {"sft": ["the cat sat"] * N_STUB, "ppo": ["good " * k + "answer" for k in K_GOOD],
              "copy": ["good answer"] * N_STUB}  # copy: the references themselves


def stub_env(judge_model="policy:ppo", prompts=None):
    """Three policies with fixed texts on a tiny random model (MAUVE's featuriser), judged by
    "gold" = word count and "llm" = number of "good" (named llm: the self judge when judge_model
    is policy:ppo)."""
    import ml_collections

    from rlhf_jax.eval.judges import FunctionJudge
    from rlhf_jax.eval.suites import EvalEnv, Policy
    from tests.eval_tiny import tiny_model, word_tokenizer
    tok, model = word_tokenizer(), tiny_model()
    policies = {name: Policy(name, model, tok) for name in STUB_TEXTS}

    def generate(policy, records):
        texts = STUB_TEXTS[policy.name][:len(records)]
        return {"texts": texts, "lengths": np.array([len(t.split()) for t in texts], float),
                "eos": np.array([i % 3 != 0 for i in range(len(texts))])}
    judges = {"gold": FunctionJudge(lambda p, r: [len(x.split()) for x in r]),
              "llm": FunctionJudge(lambda p, r: [x.count("good") for x in r])}
    settings = ml_collections.ConfigDict({"n_report": 2, "bootstrap": 300, "batch_size": 4,
                                          "judge_model": judge_model})
    prompts = prompts or [{"prompt": f"question {i % 5}", "reference": "good answer"} for i in range(N_STUB)]
    return EvalEnv(policies, "sft", judges, prompts, generate, settings)


def test_generation_suite_numbers_by_hand():
    from rlhf_jax.eval import metrics, scoring
    from rlhf_jax.eval.suites import EVAL_SUITES
    env = stub_env()
    out, rows = EVAL_SUITES["generation"](env)
    sft, ppo, copy = out["sft"], out["ppo"], out["copy"]
    # lengths (words) 3 / 2-5; EOS on 13 of 20 rows (not on every third)
    assert sft["response_length"]["value"] == 3.0 and ppo["response_length"]["value"] == pytest.approx(3.5)
    assert ppo["eos_rate"]["value"] == pytest.approx(13 / 20)
    # distinct-n over the set: ppo has 70 words, 2 distinct; 50 bigrams, 2 distinct (good good, good answer)
    assert (sft["distinct_1"], sft["distinct_2"]) == (pytest.approx(3 / 60), pytest.approx(2 / 40))
    assert (ppo["distinct_1"], ppo["distinct_2"]) == (pytest.approx(2 / 70), pytest.approx(2 / 50))
    # within a response: only "good good good good answer" repeats a trigram (1 of 3)
    assert ppo["repetition_rate_3"]["value"] == pytest.approx((1 / 3) / 4)
    # against "good answer": exact on k = 1; ROUGE-L F1 = 2 P R / (P + R) with LCS 2 of k + 1 words
    assert ppo["exact_match"]["value"] == pytest.approx(0.25) and sft["exact_match"]["value"] == 0.0
    f1 = [2 * (2 / (k + 1)) / (2 / (k + 1) + 1) for k in (1, 2, 3, 4)]
    assert ppo["rougeL"]["value"] == pytest.approx(np.mean(f1)) and copy["rougeL"]["value"] == pytest.approx(1.0)
    assert (sft["score_gold"]["value"], ppo["score_llm"]["value"]) == (3.0, pytest.approx(2.5))
    # paired win rates over sft: gold (word count) 2, 3, 4, 5 against 3 -> loss, tie, win, win
    win = out["win_rate_vs_sft"]
    assert win["gold"]["ppo"]["value"] == pytest.approx(0.625) and win["gold"]["copy"]["value"] == 0.0
    assert win["llm"]["ppo"]["value"] == 1.0 and win["llm"]["ppo"]["method"] == "degenerate"
    # verbosity: gold always picks the longer (15 unequal pairs); llm picks ppo, the shorter on k = 1
    assert out["judge_bias"]["gold"]["ppo"]["longer_agreement"]["value"] == 1.0
    assert out["judge_bias"]["gold"]["ppo"]["n_unequal"] == 15
    assert out["judge_bias"]["llm"]["ppo"]["longer_agreement"]["value"] == pytest.approx(10 / 15)
    # self-preference of the llm judge (ppo's own model) against the neutral gold judge, paired over prompts
    sp = out["self_preference"]
    assert sp["policy"] == "ppo" and set(sp) == {"policy", "llm_minus_gold"}
    diff = sp["llm_minus_gold"]["self_preference"]
    assert diff["value"] == pytest.approx(1.0 - 0.625) and diff["n"] == N_STUB
    assert diff["low"] <= diff["value"] <= diff["high"]
    # MAUVE on the sft policy's features of prompt + text: the references' own texts score 1
    assert copy["mauve"] == pytest.approx(1.0, abs=1e-6)
    fp = env.policies["sft"]
    feats = lambda texts: scoring.text_features(fp.model, fp.tokenizer, [p["prompt"] + " " + t for p, t in
                                                                        zip(env.prompts, texts)], batch_size=4)
    assert ppo["mauve"] == pytest.approx(metrics.mauve_score(feats(STUB_TEXTS["ppo"]), feats(["good answer"] * N_STUB)))
    assert ppo["mauve"] < 1.0 and out["mauve_features"].startswith("sft")
    assert [r["ppo"] for r in rows] == STUB_TEXTS["ppo"][:2] and rows[0]["ppo/gold"] == 2.0


def test_generation_suite_without_a_neutral_judge_or_references():
    from rlhf_jax.eval.suites import EVAL_SUITES
    env = stub_env(prompts=[{"prompt": f"q {i}"} for i in range(N_STUB)])
    env.judges.pop("gold")
    out, _ = EVAL_SUITES["generation"](env)
    assert "mauve" not in out["ppo"] and "rougeL" not in out["ppo"] and "mauve_features" not in out
    assert "not_measurable" in out["self_preference"]
    no_self, _ = EVAL_SUITES["generation"](stub_env(judge_model=""))
    assert "self_preference" not in no_self


def test_alpaca_eval_suite_reports_skips_characters_and_self_preference():
    from rlhf_jax.eval import benchmarks
    from rlhf_jax.eval.suites import EVAL_SUITES
    env = stub_env()
    env.alpaca = [{"prompt": f"question {i}", "reference": "a good answer" if i % 2 else "ok"} for i in range(N_STUB)]
    env.alpaca_load = {"read": 14, "kept": 12, "skipped": {"empty_reference": 2}, "evaluated": 12,
                       "policy": benchmarks.EMPTY_REFERENCE_POLICY}
    out, rows = EVAL_SUITES["alpaca_eval"](env)
    assert out["n"] == N_STUB and out["records"]["skipped"] == {"empty_reference": 2}
    refs = [r["reference"] for r in env.alpaca]
    ppo = out["gold"]["ppo"]
    # gold counts words: ppo has k + 1 words against 3 ("a good answer") or 1 ("ok")
    expected = [float(k + 1 > len(r.split())) + 0.5 * (k + 1 == len(r.split())) for k, r in zip(K_GOOD, refs)]
    assert ppo["win_rate"]["value"] == pytest.approx(np.mean(expected))
    assert ppo["mean_length_model"] == pytest.approx(np.mean([len(t) for t in STUB_TEXTS["ppo"]]))  # characters
    assert ppo["mean_length_reference"] == pytest.approx(np.mean([len(r) for r in refs]))
    assert ppo["instruction_term"] is True and "preferences" not in ppo  # three policies share the difficulty
    longer = [float(len(t) > len(r)) if len(t) != len(r) else None for t, r in zip(STUB_TEXTS["ppo"], refs)]
    agree = [e if lo == 1.0 else 1 - e for e, lo in zip(expected, longer) if lo is not None]
    assert ppo["judge_bias"]["longer_agreement"]["value"] == pytest.approx(np.mean(agree))
    llm_wins = [float(k > r.count("good")) + 0.5 * (k == r.count("good")) for k, r in zip(K_GOOD, refs)]
    diff = out["self_preference"]["llm_minus_gold"]["self_preference"]
    assert diff["value"] == pytest.approx(np.mean(llm_wins) - np.mean(expected))
    assert len(rows) == 2 * len(STUB_TEXTS)


def test_self_preference_summary_collects_the_paired_differences():
    """The stage's summary takes each suite's paired difference (not the two win rates side by side),
    and skips suites and entries without one."""
    import ml_collections

    from rlhf_jax.stages.evaluation import self_preference
    diff = {"value": 0.3, "low": 0.1, "high": 0.5, "n": 50}
    per_pair = {"win_rate_self_judge": {**diff, "value": 0.7}, "win_rate_neutral_judge": {**diff, "value": 0.4},
                "self_preference": diff}
    results = {"alpaca_eval": {"n": 50, "self_preference": {"policy": "smollm2", "llm_minus_gold": per_pair}},
               "generation": {"self_preference": {"policy": "smollm2", "not_measurable": "no neutral judge"}},
               "perplexity": {"smollm2": {"perplexity": 3.0}}}
    e = ml_collections.ConfigDict({"judge_model": "policy:smollm2", "baseline": "smollm2"})
    assert self_preference(results, e) == {"policy": "smollm2", "alpaca_eval": {"llm_minus_gold": diff},
                                           "generation": {"not_measurable": "no neutral judge"}}
    assert self_preference(results, ml_collections.ConfigDict({"judge_model": "/m/judge.gguf"})) == {}


# --- each suite on disk as it finishes; a rerun reuses it --------------------------------------

def stand_in_perplexity(env):
    """A second suite with fixed numbers (the stage's bookkeeping, not the suite, is under test)."""
    return {name: {"perplexity": 2.0 + i} for i, name in enumerate(env.policies)}, [{"policy": "sft", "nll": 0.5}]


def stub_stage(monkeypatch):
    """run(workdir, fail=False, **evaluate) of the eval stage on the stub environment with suites
    generation (the real one) and perplexity (the stand-in, raising when `fail`); and the calls of
    each suite and of the environment, counted."""
    from types import SimpleNamespace

    from rlhf_jax.eval.suites import EVAL_SUITES
    from rlhf_jax.logging import Writer
    from rlhf_jax.stages import evaluation
    calls = {"environment": 0, "generation": 0, "perplexity": 0}
    generation, failing = EVAL_SUITES["generation"], {"now": False}

    def counted(name, fn):
        def suite(*args):
            calls[name] += 1
            if name == "perplexity" and failing["now"]:
                raise FloatingPointError("nll overflowed")
            return fn(*args)
        return suite
    monkeypatch.setitem(EVAL_SUITES._entries, "generation", counted("generation", generation))
    monkeypatch.setitem(EVAL_SUITES._entries, "perplexity", counted("perplexity", stand_in_perplexity))
    monkeypatch.setattr(evaluation, "environment", counted("environment", lambda ctx: stub_env()))

    def run(path, fail=False, **evaluate):
        c = eval_config("micro")
        c.evaluate.update(suites="generation,perplexity", judges="gold,llm", judge_model="policy:ppo", **evaluate)
        failing["now"] = fail
        writer = lambda stage, keys: Writer(path / stage, stage, wandb="disabled", keys=keys)  # noqa: E731
        return evaluation.run(SimpleNamespace(config=c, workdir=path, writer=writer))
    return run, calls


def timeless(value):
    """Evaluation results without their wall times and rates (what two equal evaluations share)."""
    if not isinstance(value, dict):
        return value
    return {k: timeless(v) for k, v in value.items() if not k.endswith(("seconds", "per_second"))}


def test_a_failing_suite_leaves_the_finished_ones_on_disk_and_is_named(tmp_path, monkeypatch, capsys):
    from rlhf_jax.eval.suites import generation
    run, _ = stub_stage(monkeypatch)
    with pytest.raises(FloatingPointError, match="nll overflowed") as err:
        run(tmp_path, fail=True)
    out = tmp_path / "eval"
    stored = json.loads((out / "suites" / "generation.json").read_text())
    expected, rows = generation(stub_env())  # the same numbers again (the stub and the bootstrap are seeded)
    assert stored["results"]["seconds"] > 0
    assert timeless(stored["results"]) == timeless(json.loads(json.dumps(expected)))
    assert stored["results"]["win_rate_vs_sft"]["gold"]["ppo"]["value"] == pytest.approx(0.625)  # by hand above
    assert [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()] == \
        [{"suite": "generation", **json.loads(json.dumps(r))} for r in rows]
    assert not (out / "suites" / "perplexity.json").exists() and not (out / "summary.json").exists()
    assert (f"[eval] suite perplexity: failed (FloatingPointError); the finished suites (generation) are in "
            f"{out / 'suites'}; rerunning reuses them") in capsys.readouterr().out
    if sys.version_info >= (3, 11):  # the error itself carries the suite's name as a note
        assert "in evaluation suite 'perplexity'" in " ".join(err.value.__notes__)


def test_a_rerun_reuses_the_finished_suites_and_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    run, calls = stub_stage(monkeypatch)
    with pytest.raises(FloatingPointError):
        run(tmp_path / "resumed", fail=True)
    resumed = run(tmp_path / "resumed")
    stored = tmp_path / "resumed" / "eval" / "suites" / "generation.json"
    assert calls == {"environment": 2, "generation": 1, "perplexity": 2}  # generation not recomputed
    assert f"[eval] suite generation: reused from {stored}" in capsys.readouterr().out
    whole = run(tmp_path / "whole")
    assert calls["generation"] == 2 and timeless(resumed) == timeless(whole)
    assert resumed["generation"]["seconds"] == json.loads(stored.read_text())["results"]["seconds"]
    for name in ("summary.json", "samples.jsonl"):
        a, b = [(tmp_path / w / "eval" / name).read_text() for w in ("resumed", "whole")]
        assert (timeless(json.loads(a)) == timeless(json.loads(b))) if name.endswith(".json") else a == b, name
    run(tmp_path / "whole")  # everything on disk: no suite runs, no model is loaded
    assert calls == {"environment": 3, "generation": 2, "perplexity": 3}
    (tmp_path / "whole" / "sft").mkdir()
    (tmp_path / "whole" / "sft" / "summary.json").write_text("{}")  # stage sft (policy stage:sft) run since
    run(tmp_path / "whole", bootstrap=200)  # and another config: recomputed, the differences named
    assert calls == {"environment": 4, "generation": 3, "perplexity": 4}
    assert ("generation.json was computed under another config (config.evaluate.bootstrap, inputs.stage:sft); "
            "recomputing") in capsys.readouterr().out


def test_generation_suite_records_an_unmeasurable_verbosity_bias(monkeypatch):
    """Every pair of equal length (both policies cut at max_new_tokens): the bias is recorded as
    not measured, and the win rates are still reported."""
    from rlhf_jax.eval.suites import EVAL_SUITES
    monkeypatch.setitem(STUB_TEXTS, "ppo", ["good answer now"] * N_STUB)
    monkeypatch.setitem(STUB_TEXTS, "copy", ["the dog ran"] * N_STUB)
    out, _ = EVAL_SUITES["generation"](stub_env(judge_model=""))
    assert "equal lengths" in out["judge_bias"]["gold"]["ppo"]["not_measured"]
    assert out["win_rate_vs_sft"]["gold"]["ppo"]["value"] == 0.5  # 3 words against 3: every pair a tie
    assert out["win_rate_vs_sft"]["llm"]["ppo"]["value"] == 1.0

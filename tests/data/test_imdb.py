"""The DPO paper's IMDb experiment: the readers, the gold classifier (stage clf) and its reward,
the gold-ranked preference data (stage prefs), PPO against the gold reward, and the smoke run of
experiments/dpo_imdb.py."""
import gzip
import itertools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import imdb as imdb_config
from rlhf_jax.context import build_context
from rlhf_jax.data import imdb
from rlhf_jax.data.corpora import gpt2_tokenizer
from rlhf_jax.models import init_model
from rlhf_jax.models.config import PRESETS
from rlhf_jax.rewards.classifier import ClassifierReward
from rlhf_jax.stages import prefs
from rlhf_jax.stages.gold import gold_reward
from rlhf_jax.stages import preferences
from rlhf_jax.stages.preferences import preference_arrays
from rlhf_jax.train.classifier import binary_cross_entropy
from tests import tolerance as tol
from tests.conftest import ROOT


# --- pure pieces ------------------------------------------------------------------------------

def test_binary_cross_entropy_by_hand():
    loss, m = binary_cross_entropy(jnp.array([2.0, -1.0, 0.5]), jnp.array([1.0, 1.0, 0.0]))
    sig = lambda z: 1 / (1 + math.exp(-z))
    want = -(math.log(sig(2.0)) + math.log(sig(-1.0)) + math.log(1 - sig(0.5))) / 3
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(1 / 3)


def test_rank_dedupes_drops_empty_and_ties_share_a_rank():
    records, dropped = prefs.rank(["p1", "p2", "p3", "p4"],
                                  [["a", "b", "a", ""], ["x", "x", "x", "x"], ["u", "v", "w", "z"], ["s", "t", "", ""]],
                                  np.array([[0.2, 0.9, 0.2, 0.5], [0.1] * 4, [0.3, 0.7, 0.7, 0.1], [0.4, 0.4, 0, 0]]))
    assert [r["prompt"] for r in records] == ["p1", "p3"]
    assert records[0]["responses"] == ["a", "b"] and records[0]["ranks"] == [1, 0]
    assert records[1]["ranks"] == [1, 0, 0, 2]  # 0.7 and 0.7 tie for best
    assert dropped == {"fewer_than_2_distinct": 1, "all_tied": 1}


def _tiny_classifier():
    tok = gpt2_tokenizer()
    cfg = PRESETS["test"].replace(vocab_size=len(tok), max_seq_len=32)
    model = init_model(cfg, head="scalar", seed=3)
    return tok, model


def test_classifier_reward_ignores_eos_and_is_the_same_in_and_out_of_jit(shared_data):
    tok, model = _tiny_classifier()
    eos = tok.eos_token_id
    ids = tok.encode("This movie was")
    resp = tok.encode(" wonderful, truly.")
    P, N = 6, 8
    prompt = np.full((2, P), eos, np.int32)
    prompt[:, P - len(ids):] = ids
    pmask = np.zeros((2, P), np.int32)
    pmask[:, P - len(ids):] = 1
    response = np.full((2, N), eos, np.int32)
    rmask = np.zeros((2, N), np.int32)
    response[:, :len(resp)] = resp
    rmask[:, :len(resp)] = 1
    rmask[1, len(resp)] = 1  # row 1 ends with EOS, row 0 was cut off: judged alike
    prob = ClassifierReward(model.graphdef, model.params, tok, "prob")
    host = prob.host_scores(prompt, pmask, response, rmask)
    # each pair below: the same sequence in two programs or paddings, so another operation order;
    # probabilities <= 1 and the sigmoid is 1/4-Lipschitz, so the forward chain's bound at scale 1
    atol = tol.forward(model.cfg, P + N, 1.0)
    assert host[0] == pytest.approx(host[1], abs=atol)
    tokens, mask = np.concatenate([prompt, response], 1), np.concatenate([pmask, rmask], 1)
    jitted = jax.jit(lambda p, t, m: prob.score(p, t, m, P))(model.params, tokens, mask)
    np.testing.assert_allclose(np.asarray(jitted), host, atol=atol, rtol=0)
    assert prob.fn(["This movie was"], [" wonderful, truly."])[0] == pytest.approx(host[0], abs=atol)
    logit = ClassifierReward(model.graphdef, model.params, tok, "logit").host_scores(prompt, pmask, response, rmask)
    np.testing.assert_allclose(host, 1 / (1 + np.exp(-logit)), atol=atol, rtol=0)


# --- the readers on the real files ------------------------------------------------------------

def test_readers_are_shuffled_and_cut_as_documented(shared_data):
    tok = gpt2_tokenizer()
    reviews, report = imdb.imdb_reviews(limit=400)
    assert report.kept == 400 and 120 < sum(r["label"] for r in reviews) < 280  # the file is sorted by label
    assert not any("<br" in r["text"] for r in reviews)
    sft, _ = imdb.imdb_sft(tokenizer=tok, limit=400)
    lengths = [len(tok.encode(r["prompt"])) for r in sft[:300]]
    assert min(lengths) >= 1 and max(lengths) <= 8
    completions = [tok.encode(r["completion"]) for r in sft[:300]]
    assert max(map(len, completions)) <= 24
    ended = np.mean([bool(imdb.SENTENCE_END.search(r["completion"])) for r in sft[:300]])
    assert ended > 0.6  # most openings stop at a sentence end (the others at 24 tokens)


# --- the stages, micro, in a child process with one device (as the sweep runner runs them) ----

def run_main(config: str, workdir, data_dir, *overrides: str) -> dict:
    """`python -m rlhf_jax.main` in a child with one host device; returns the run's summary."""
    from rlhf_jax.sweep import procs
    env = procs.environment(base={**os.environ, "RLHF_JAX_DATA_DIR": str(data_dir)})
    cmd = procs.command(config, workdir, dict(o.split("=", 1) for o in overrides), wandb=False)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((workdir / "summary.json").read_text())


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory, shared_data):
    """clf (on a 4,096-review slice), sft and prefs at micro sizes."""
    workdir = tmp_path_factory.mktemp("imdb_micro")
    summary = run_main("configs/imdb.py:dpo,micro", workdir, shared_data, "stages=clf,sft,prefs",
                       "clf.train=corpus:imdb_reviews?limit=4096", "clf.test=corpus:imdb_reviews?split=test&limit=1000",
                       "clf.steps=0", "clf.epochs=1", "clf.lr=0.003", "clf.max_len=32",
                       "clf.save_every=0", "sft.save_every=0")  # the tests read final parameters only
    return imdb_config.get_config("dpo,micro"), workdir, summary


def test_classifier_stage_learns_better_than_chance(micro_run):
    summary = micro_run[2]["clf"]
    assert summary["n_train"] == 4096 and summary["n_test"] == 1000 and summary["steps"] == 128
    assert summary["intervals"]["test_accuracy"]["low"] > 0.5, summary  # the 95% interval excludes chance


def test_prefs_are_ranked_by_the_gold_classifier_and_feed_rm_and_dpo(micro_run):
    config, workdir, summary = micro_run
    assert summary["prefs"]["train"]["rankings"] > 0.9 * config.data.n_rankings
    ctx = build_context(config, workdir, use_wandb=False)
    gold = gold_reward(ctx)
    records = preferences.load(workdir, "train")
    with gzip.open(workdir / "prefs/final/train.jsonl.gz", "rt") as f:
        stored = [json.loads(line) for line in f]
    pairs = 0
    for r, s in zip(records, stored):
        prompt = s["prompt_ids"]
        # the classifier on the sampled tokens, scored again here, gives the stored scores ...
        rows = [prompt + ids for ids in s["response_ids"]]
        tokens = np.full((len(rows), max(map(len, rows))), ctx.tokenizer.eos_token_id, np.int32)
        mask = np.zeros_like(tokens)
        for i, row in enumerate(rows):
            tokens[i, :len(row)], mask[i, :len(row)] = row, 1
        scores = gold.host_scores(tokens[:, :len(prompt)], mask[:, :len(prompt)], tokens[:, len(prompt):],
                                  mask[:, len(prompt):])
        # rescored in other batches (other padding): the forward chain of a classifier no larger than
        # configs/imdb.py's SMALL_MODEL over clf.max_len = 32 tokens, at scale 1 (probabilities)
        small = imdb_config.SMALL_MODEL
        atol = tol.f32(tol.decoder_chain(small["d_model"], small["d_ff"], small["n_layers"], small["head_dim"], 32))
        np.testing.assert_allclose(scores, s["scores"], atol=atol, rtol=0)
        # ... and the ranks order the responses by them: every pair is ranked by the classifier
        for i, j in itertools.permutations(range(len(r["ranks"])), 2):
            if r["ranks"][i] < r["ranks"][j]:
                assert scores[i] > scores[j]
                pairs += 1
    assert pairs == summary["prefs"]["train"]["pairs"] >= 5 * len(records)
    train, _ = preference_arrays(ctx)  # what the RM and DPO train on: these rankings
    assert len(train["tokens"]) == len(records)
    np.testing.assert_array_equal(train["ranks"][0, :len(records[0]["ranks"])], records[0]["ranks"])


@pytest.mark.slow
def test_smoke_experiment_writes_finite_numbers(shared_data, tmp_path):
    """experiments/dpo_imdb.py --smoke: 10 micro runs (base, DPO at 2 betas, PPO on the RM and on
    the gold classifier, 2 seeds each); minutes on a 2-core CPU, so kept out of the default run."""
    out = tmp_path / "smoke"
    env = {**os.environ, "RLHF_JAX_DATA_DIR": str(shared_data)}
    proc = subprocess.run([sys.executable, "experiments/dpo_imdb.py", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "dpo_imdb_smoke.json").read_text())
    assert (out / "dpo_imdb_frontier_smoke.png").stat().st_size > 0
    assert {p["arm"] for p in result["points"]} == {"dpo", "ppo_rm", "ppo_gold"}
    for p in result["points"]:
        assert p["kl"]["n"] == 2 and p["gold"]["n"] == 2
        assert all(math.isfinite(v) for v in (p["kl"]["mean"], p["gold"]["mean"], p["gold"]["half_width"]))
        assert 0.0 <= p["gold"]["mean"] <= 1.0 and p["trajectory"]
    assert math.isfinite(result["shared"]["clf.test_accuracy"]["mean"])
    gold_run = json.loads((out / "ppo_gold/kl_coef=0.05/seed_0/summary.json").read_text())["ppo"]
    # optimised the gold: the same classifier scored in two programs (jit and host), mean of probabilities
    small = imdb_config.SMALL_MODEL
    atol = tol.f32(tol.decoder_chain(small["d_model"], small["d_ff"], small["n_layers"], small["head_dim"], 32))
    assert gold_run["rm_score_final"] == pytest.approx(gold_run["gold_reward_final"], abs=atol)

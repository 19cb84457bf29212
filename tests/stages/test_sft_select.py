"""SFT's candidates and stage sft_select: the candidates are the parameters a run stopped at their
steps holds (and a killed, resumed SFT keeps the same ones); each criterion's score recomputed by
hand; the chosen candidate is the criterion's argmin / argmax; PPO starts from the chosen
parameters; bad configs name the field."""
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlhf_jax import checkpoint
from rlhf_jax.context import ConfigError, build_context
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import decode
from rlhf_jax.errors import UserError
from rlhf_jax.models.forward import forward
from rlhf_jax.stages import candidates, plan, run as run_pipeline, run_stages
from rlhf_jax.stages import sft_select as sel
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages.ppo import _heldout_nll
from rlhf_jax.stages.validate import validate_config
from tests.micro import micro

SFT = {"stages": "sft", "sft.epochs": 2, "sft.candidates": 3}  # micro: 8 steps an epoch, 16 in all
STEPS = [5, 11, 16]  # round(16 * i / 3), i = 1..3
PIPELINE = {"stages": "sft,rm,ppo,sft_select", "sft.epochs": 2, "sft.candidates": 4,
            "sft_select.report": "val_loss,rm_score,gold", "sft_select.n_prompts": 16, "sft_select.n_samples": 2,
            "ppo.iterations": 2}


def _raw(path):
    """An orbax directory's tree as host arrays (no template)."""
    with ocp.StandardCheckpointer() as ckptr:
        return jax.tree.map(np.asarray, ckptr.restore(path))


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_evenly_spaced_steps():
    assert candidates.evenly_spaced(16, 3) == STEPS
    assert candidates.evenly_spaced(256, 8) == [32, 64, 96, 128, 160, 192, 224, 256]
    assert candidates.evenly_spaced(2, 4) == [1, 2]  # fewer steps than candidates: each kept once
    assert candidates.evenly_spaced(10, 0) == []


def test_candidates_are_the_parameters_at_their_steps(tmp_path):
    straight = run_pipeline(micro(**SFT), tmp_path / "straight", use_wandb=False)["sft"]
    assert straight["candidate_steps"] == STEPS
    kept = {s: _raw(candidates.path(tmp_path / "straight", "sft", s)) for s in STEPS}
    _assert_same(kept[16], _raw(checkpoint.final_path(tmp_path / "straight", "sft")))
    assert not np.array_equal(kept[5]["embed"], kept[11]["embed"])
    # a run stopped at step 5 holds, in its checkpoint, the parameters the candidate of step 5 holds
    with pytest.raises(SystemExit):
        run_pipeline(micro(**SFT, **{"debug_stop_after.sft": 5}), tmp_path / "resumed", use_wandb=False)
    state = _raw(tmp_path / "resumed" / "sft" / "checkpoints" / "5" / "state")
    _assert_same(state["params"], kept[5])
    assert sorted(p.name for p in candidates.directory(tmp_path / "resumed", "sft").iterdir()) == ["step_5"]
    # resumed after the kill, it keeps the same candidates as the uninterrupted run
    run_pipeline(micro(**SFT), tmp_path / "resumed", use_wandb=False)
    for s in STEPS:
        _assert_same(_raw(candidates.path(tmp_path / "resumed", "sft", s)), kept[s])


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """(workdir, summary) of micro SFT (4 candidates) -> RM -> sft_select -> PPO; sft_select is
    listed after ppo, and the plan must still run it first."""
    path = tmp_path_factory.mktemp("sft_select")
    c = micro(**PIPELINE)
    assert plan(c, path) == ["sft", "rm", "sft_select", "ppo"]
    return path, run_pipeline(c, path, use_wandb=False)


def test_chosen_is_the_criterions_best_and_the_summary_lists_every_candidate(selected):
    path, summary = selected
    s = summary["sft_select"]
    rows = s["candidates"]
    assert [r["step"] for r in rows] == candidates.evenly_spaced(16, 4) == [4, 8, 12, 16]
    assert all(set(r) == {"step", "val_loss", "rm_score", "gold"} for r in rows)
    assert s["criterion"] == "rm_score" and s["chosen"] == max(rows, key=lambda r: r["rm_score"])
    assert s["chosen_step"] == s["chosen"]["step"]
    assert s["best_by"] == {"val_loss": min(rows, key=lambda r: r["val_loss"])["step"],
                            "rm_score": s["chosen_step"], "gold": max(rows, key=lambda r: r["gold"])["step"]}
    _assert_same(_raw(checkpoint.final_path(path, "sft_select")), _raw(candidates.path(path, "sft", s["chosen_step"])))


def test_choose_is_argmin_or_argmax_and_skips_nan():
    rows = [{"step": 1, "val_loss": 2.0, "rm_score": 0.5}, {"step": 2, "val_loss": 1.0, "rm_score": float("nan")},
            {"step": 3, "val_loss": 1.5, "rm_score": 0.7}, {"step": 4, "val_loss": 1.0, "rm_score": -1.0}]
    assert sel.choose(rows, "val_loss")["step"] == 2  # the first of equals
    assert sel.choose(rows, "rm_score")["step"] == 3  # NaN never chosen
    with pytest.raises(UserError, match="no candidate has a finite gold score"):
        sel.choose([{"step": 1, "gold": float("nan")}], "gold")


def test_ppo_starts_from_the_chosen_candidate(selected):
    path, summary = selected
    ctx = build_context(micro(**PIPELINE), path, use_wandb=False)
    chosen = candidates.load(path, "sft", summary["sft_select"]["chosen_step"], ctx.base.params)
    _assert_same(jax.device_get(load_sft(ctx)), jax.device_get(chosen))
    # PPO's held-out NLL of its SFT policy (its start and KL reference) is the chosen candidate's
    nll = _heldout_nll(ctx, "sft_val", chosen, chosen, "nll", "tax")["nll_sft"]
    assert summary["ppo"]["heldout_nll_sft"] == pytest.approx(nll, rel=1e-6)
    if summary["sft_select"]["chosen_step"] != 16:  # then the last candidate (plain SFT) differs
        last = candidates.load(path, "sft", 16, ctx.base.params)
        assert _heldout_nll(ctx, "sft_val", last, last, "nll", "tax")["nll_sft"] != pytest.approx(nll, rel=1e-6)


def test_each_criterion_by_hand(selected):
    path, summary = selected
    ctx = build_context(micro(**PIPELINE), path, use_wandb=False)
    step = 8
    params = candidates.load(path, "sft", step, ctx.base.params)
    row = next(r for r in summary["sft_select"]["candidates"] if r["step"] == step)
    sc = sel.Scoring(ctx)
    # val_loss: summed NLL of the completion tokens over their count, one unpadded row at a time
    val = ctx.data.arrays("sft_val", pack=False)
    nll, count = 0.0, 0.0
    for tokens, mask, loss_mask in zip(val["tokens"], val["segment_ids"], val["loss_mask"]):
        n = int(mask.sum())
        logits = np.asarray(forward(ctx.base.graphdef, params, jnp.asarray(tokens[None, :n]),
                                    jnp.ones((1, n), jnp.int32)), np.float64)[0]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        target = loss_mask[1:n].astype(bool)
        nll -= logp[np.arange(n - 1), tokens[1:n]][target].sum()
        count += target.sum()
    # float32 logits of other shapes (batched, padded) than here: each token's log-prob within a few
    # float32 ulps of its size (~1e-6 relative), and the mean over ~1,000 tokens no worse
    assert row["val_loss"] == pytest.approx(nll / count, rel=1e-5)
    assert sel.val_loss(sc, step, params) == pytest.approx(row["val_loss"], rel=1e-6)
    # rm_score: the RM's output at each sample's last real token, one unpadded sample at a time
    s = sc.samples(step, params, draw=0)
    from rlhf_jax.stages.reward import trained_reward
    reward, rm, _, _ = trained_reward(ctx)
    member = jax.tree.map(lambda x: x[0], rm)  # one RM: k = 1
    scores = []
    for i in range(len(s["prompt"])):
        seq = np.concatenate([s["prompt"][i][s["prompt_mask"][i] > 0], s["response"][i][s["response_mask"][i] > 0]])
        values = forward(reward.graphdef, member, jnp.asarray(seq[None]), jnp.ones((1, len(seq)), jnp.int32))
        scores.append(float(np.asarray(values)[0, -1]))
    assert len(scores) == 16 * 2
    # the batched scores see padding (never attended) and other shapes: float32 rounding of scores
    # of order 1, ~1e-6 each, well inside 1e-5
    assert row["rm_score"] == pytest.approx(np.mean(scores), rel=1e-4, abs=1e-5)
    # gold: the task world's gold reward of other samples (another draw) of the same prompts
    g = sc.samples(step, params, draw=1)
    assert not np.array_equal(g["response"], s["response"])
    prompts = decode(ctx.tokenizer, g["prompt"], g["prompt_mask"])
    responses = decode(ctx.tokenizer, g["response"], g["response_mask"])
    gold = [synthetic.gold_reward(p, r, ctx.world.length_coef) for p, r in zip(prompts, responses)]
    assert row["gold"] == pytest.approx(np.mean(gold), rel=1e-9)


def test_a_killed_selection_keeps_the_candidates_it_scored(selected, tmp_path):
    path, summary = selected
    work = tmp_path / "w"
    shutil.copytree(path, work)
    shutil.rmtree(work / "sft_select")
    shutil.rmtree(work / "ppo")
    # as if killed after scoring the first candidate (with a score no run would give)
    (work / "sft_select").mkdir()
    config = micro(**{**PIPELINE, "stages": "sft_select"})
    fake = {"4": {"val_loss": 9.0, "rm_score": 99.0, "gold": 0.0}}
    (work / "sft_select" / "scores.json").write_text(json.dumps(
        {"settings": sel.settings_fingerprint(config), "scores": fake}))
    ctx = build_context(config, work, use_wandb=False)
    resumed = run_stages(ctx, ["sft_select"])["sft_select"]
    assert resumed["chosen_step"] == 4 and resumed["candidates"][0]["rm_score"] == 99.0
    assert resumed["candidates"][1:] == summary["sft_select"]["candidates"][1:]
    # scores kept under other settings (here: fewer prompts) are not reused
    shutil.rmtree(work / "sft_select" / "final")
    (work / "sft_select" / "summary.json").unlink()
    other = micro(**{**PIPELINE, "stages": "sft_select", "sft_select.n_prompts": 8})
    assert sel.settings_fingerprint(other) != sel.settings_fingerprint(config)
    assert sel.settings_fingerprint(micro(**{**PIPELINE, "ppo.kl_coef": 0.5})) == sel.settings_fingerprint(config)
    again = run_stages(build_context(other, work, use_wandb=False), ["sft_select"])["sft_select"]
    assert again["candidates"][0]["rm_score"] != 99.0 and again["n_prompts"] == 8


def test_selection_without_candidates_says_how_to_keep_them(micro_trained, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(micro_trained[0], work)
    ctx = build_context(micro(stages="sft_select", **{"sft.candidates": 4}), work, use_wandb=False)
    with pytest.raises(UserError, match=re.escape("stage sft kept no candidates; run it with "
                                                  "--config.sft.candidates=8")):
        run_stages(ctx, ["sft_select"])


@pytest.mark.parametrize("changes, words", [
    ({"sft_select.criterion": "reward"}, "config.sft_select.criterion: 'reward' is not one of "
                                         "('val_loss', 'rm_score', 'gold')"),
    ({"sft_select.report": "val_loss,bleu"}, "config.sft_select.report: 'bleu' is not one of"),
    ({"stages": "sft,rm,sft_select", "sft.candidates": 0}, "config.sft.candidates: stage sft_select chooses"),
    ({"sft.candidates": -1}, "config.sft.candidates: must be >= 0"),
    ({"sft_select.n_samples": 0}, "config.sft_select.n_prompts: n_prompts and n_samples must be >= 1"),
    ({"sft_select.temperature": 0.0}, "config.sft_select.temperature: must be > 0"),
    ({"sft_select.rm_workdir": "/nonexistent/run"}, "config.sft_select.rm_workdir: '/nonexistent/run' holds no"),
    ({"data.source": "files", "data.sft_train": "x.jsonl", "data.rm_train": "y.jsonl", "sft_select.report": "gold"},
     "config.sft_select.report: 'gold' needs a gold reward"),
])
def test_bad_config_names_the_field(changes, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        validate_config(micro(**changes))


def test_criteria_decide_what_the_stage_needs():
    assert sel.needs(micro(**{"sft_select.report": "val_loss", "sft_select.criterion": "val_loss"})) == ("sft",)
    assert sel.needs(micro()) == ("sft", "rm")
    assert sel.needs(micro(**{"sft_select.rm_workdir": "/some/run"})) == ("sft",)


def test_rm_of_another_workdir_scores_as_the_local_one(selected, tmp_path):
    """sft_select.rm_workdir: the finished RM of another run, with no RM in this workdir."""
    path, summary = selected
    work = tmp_path / "w"
    shutil.copytree(path, work, ignore=shutil.ignore_patterns("rm", "sft_select", "ppo"))
    config = micro(**{**PIPELINE, "stages": "sft_select", "sft_select.rm_workdir": str(path)})
    assert sel.needs(config) == ("sft",) and plan(config, work) == ["sft_select"]
    got = run_stages(build_context(config, work, use_wandb=False), ["sft_select"])["sft_select"]
    # the same RM on the same samples (re-tokenised from their text, which the task world's
    # tokenizer round-trips): float32 scores of another batch layout
    for mine, local in zip(got["candidates"], summary["sft_select"]["candidates"]):
        assert mine["rm_score"] == pytest.approx(local["rm_score"], rel=1e-4, abs=1e-5)
        assert (mine["val_loss"], mine["gold"]) == (local["val_loss"], local["gold"])


def test_eval_and_shared_sweep_stages_follow_the_choice(tmp_path):
    from rlhf_jax.stages import evaluation
    from rlhf_jax.sweep.runner import share_stages
    c = micro(**{"stages": "sft,rm,eval,sft_select", "sft.candidates": 4, "evaluate.policies": "sft=stage:sft"})
    assert "sft_select" in evaluation.needs(c)  # stage:sft is the chosen candidate once selected
    assert plan(c, tmp_path) == ["sft", "rm", "sft_select", "eval"]

    class Run:  # the runner's Run as share_stages reads it
        def __init__(self, seed, workdir):
            self.seed, self.workdir = seed, workdir

    source, fresh = Run(0, tmp_path / "a"), Run(0, tmp_path / "b")
    (source.workdir / "sft" / "candidates" / "step_4").mkdir(parents=True)
    (source.workdir / "sft" / "candidates" / "step_4" / "x").write_text("params")
    (source.workdir / "sft" / "summary.json").write_text("{}")
    assert share_stages(fresh, [source, fresh], ("sft",)) == ["sft"]
    assert (fresh.workdir / "sft" / "candidates" / "step_4" / "x").read_text() == "params"

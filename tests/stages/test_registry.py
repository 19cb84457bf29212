"""The stage layer: registry order and hand-offs, missing inputs, strict variants, and the fixes
an outside read of the maths asked for (each checked against an independent computation)."""
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import base
from configs.instructgpt import get_config
from rlhf_jax import checkpoint
from rlhf_jax.context import build_context
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import prompt_arrays, ranking_arrays, sft_arrays
from rlhf_jax.eval.policy_eval import compare_policies
from rlhf_jax.models import init_model
from rlhf_jax.objectives import bon as bon_lib
from rlhf_jax.rewards import ModelReward
from rlhf_jax.stages import STAGES, MissingInputError, plan, register_stage, run_stages
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages.reward import STD_FLOOR, aggregator
from rlhf_jax.stages import rm as rm_stage
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train import sft as sft_lib
from rlhf_jax.train import optim
from tests.children import child_env
from tests import tolerance as tol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.micro import CFG, TCFG, TOK, WORLD  # noqa: E402


def micro(stages: str):
    c = get_config("micro")
    c.stages = stages
    return c


# --- the registry and the runner -------------------------------------------------------------

def test_plan_runs_needs_first_and_keeps_the_listed_order_otherwise(tmp_path):
    assert plan(micro("ppo,rm,sft"), tmp_path) == ["sft", "rm", "ppo"]
    assert plan(micro("sft,dpo,rm,bon"), tmp_path) == ["sft", "dpo", "rm", "bon"]
    fine = get_config("micro")
    fine.fgrm.components, fine.stages = "wrong:word:0.3", "ppo,fgrm,rm,sft"
    assert plan(fine, tmp_path) == ["sft", "fgrm", "rm", "ppo"]  # fine-grained PPO needs fgrm and the RM


def test_missing_input_fails_before_anything_is_built(tmp_path):
    with pytest.raises(MissingInputError, match=r"stage 'ppo' needs .*sft/final from stage 'sft'"):
        plan(micro("ppo"), tmp_path)
    with pytest.raises(ValueError, match=r"stage 'grpo' is not one of \('sft', 'rm'"):
        plan(micro("sft,grpo"), tmp_path)
    env = child_env(1)
    out = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro",
                          "--workdir", str(tmp_path / "w"), "--config.stages=rm,ppo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "stage 'rm' needs" in out.stderr and "sft/final" in out.stderr
    assert not (tmp_path / "w" / "rm").exists()  # nothing was built or written


def test_a_new_stage_is_one_registration_and_reads_hand_off_files(tmp_path):
    @register_stage("echo_test", needs=lambda c: ("sft",), produces_params=False)
    def echo(ctx):
        summary = {"sft_steps": checkpoint.read_summary(ctx.workdir, "sft")["steps"],
                   "sft_params": int(sum(x.size for x in jax.tree.leaves(load_sft(ctx))))}
        checkpoint.save_final(ctx.workdir, "echo_test", None, summary)
        return summary
    try:
        c = micro("echo_test,sft")
        assert plan(c, tmp_path) == ["sft", "echo_test"]
        summary = run_stages(build_context(c, tmp_path, use_wandb=False))
        assert summary["echo_test"]["sft_steps"] == summary["sft"]["steps"] == 8
        # the hand-off is a file: the stage runs alone on the workdir, in a fresh context
        (tmp_path / "echo_test" / "summary.json").unlink()
        again = run_stages(build_context(micro("echo_test"), tmp_path, use_wandb=False))
        assert again["echo_test"] == summary["echo_test"]
    finally:
        STAGES._entries.pop("echo_test")


def test_stage_reads_are_derived_from_the_block_the_declarations_and_the_needs():
    from rlhf_jax.stages.registry import stage_reads
    from configs import imdb
    c = imdb.get_config("ppo")  # clf, sft, prefs, rm, ppo: the gold reward is the classifier of stage clf
    assert set(stage_reads("ppo", c)) == {"ppo", "heldout", "sampling", "sft", "rm", "inform", "clf"}
    assert set(stage_reads("prefs", c)) == {"sampling", "sft", "clf"}  # no block of its own
    assert set(stage_reads("ppo", imdb.get_config("ppo_gold"))) == {"ppo", "heldout", "sampling", "sft", "clf"}
    fine = get_config("micro")
    fine.fgrm.components = "wrong:word:0.3"
    assert {"fgrm", "rm"} <= set(stage_reads("bon", fine)) and "fgrm" not in stage_reads("bon", micro("bon"))
    assert STAGES["eval"].block == "evaluate" and STAGES["fgrm"].block == "fgrm"
    assert ({s.name for s in STAGES._entries.values() if s.trains}
            == {"sft", "rm", "fgrm", "ppo", "dpo", "kto", "online_dpo", "rs", "clf", "active"})


def test_every_trained_block_gets_the_shared_checks_clf_included():
    from rlhf_jax.errors import ConfigError
    from rlhf_jax.stages.validate import validate_config
    for block in ("sft", "rm", "fgrm", "ppo", "dpo", "kto", "online_dpo", "rs", "clf"):
        c = micro("sft")
        c[block].lr = -1.0
        with pytest.raises(ConfigError, match=rf"config\.{block}\.lr: -1\.0 must be a positive number"):
            validate_config(c)
        c = micro("sft")
        c[block].optimizer = "sgd"
        with pytest.raises(ConfigError, match=rf"config\.{block}\.optimizer: must be 'adamw' or 'rmsprop'"):
            validate_config(c)


def test_choice_fields_are_checked_against_their_registries():
    from rlhf_jax.errors import ConfigError
    from rlhf_jax.stages.validate import validate_config
    for field, value, words in (("sampling.sampler", "greedy", "config.sampling.sampler: must be one of ('gumbel', "
                                 "'inverse_cdf')"),
                                ("inform.kl_form", "sum", "config.inform.kl_form: must be one of ('per_dim_sum', "
                                 "'mean_then_kl')"),
                                ("evaluate.judges", "gold,oracle", "each must be one of ('gold', 'rm', 'llm', "
                                 "'llm_rating')")):
        c = micro("sft")
        section, name = field.split(".")
        c[section][name] = value
        with pytest.raises(ConfigError, match=re.escape(words)):
            validate_config(c)


def test_old_config_names_fail_naming_the_new_ones(tmp_path):
    from rlhf_jax.errors import ConfigError
    from rlhf_jax.stages.validate import validate_config
    c = micro("sft")
    c.ppo.top_k = 5  # a config file that still sets the old field
    with pytest.raises(ConfigError, match=r"config\.ppo\.top_k: was renamed: use config\.sampling\.top_k"):
        validate_config(c)
    c = micro("sft")
    c.fg = c.fgrm
    with pytest.raises(ConfigError, match=r"config\.fg\.\w+: was renamed: use config\.fgrm\."):
        validate_config(c)
    env = child_env(1)
    for flag, words in (("--config.fg.lr=0.1", "config.fg.lr: was renamed: use config.fgrm.lr"),
                        ("--config.eval.n_prompts=8", "config.eval.n_prompts: was renamed: use config.heldout.n_prompts"),
                        ("--config.ppo.max_new_tokens=8",
                         "config.ppo.max_new_tokens: was renamed: use config.sampling.max_new_tokens")):
        out = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro",
                              "--workdir", str(tmp_path / "w"), flag], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    from rlhf_jax.sweep.spec import resolve_config
    with pytest.raises(ConfigError, match=r"config\.ppo\.sampler: was renamed: use config\.sampling\.sampler"):
        resolve_config("configs/instructgpt.py:micro", {"ppo.sampler": "inverse_cdf"})


# --- strict variants -------------------------------------------------------------------------

def test_unknown_or_mistyped_variants_fail_with_the_valid_ones():
    from configs.ablations import ensembles, inform
    from configs import dpo
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['wc0'\]; valid: .*wco \(worst case"):
        ensembles.get_config("wc0")
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['betta0.1'\]"):
        inform.get_config("betta0.1")
    with pytest.raises(ValueError, match="choose one loss"):
        dpo.get_config("ipo,simpo")
    assert inform.get_config("beta0.01,micro").inform.beta == 0.01


def test_ablation_configs_pass_the_model_and_data_variants_through():
    from configs.ablations import best_of_n, ensembles, fine_grained, inform
    from configs import dpo
    for module, variant in ((ensembles, "wco"), (inform, "inform"), (best_of_n, "hackable"),
                            (fine_grained, "holistic"), (dpo, "ipo")):
        c = module.get_config(f"{variant},smollm2_hh")
        assert c.model.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and c.data.source == "files", module
        assert c.rm.center_coef == 0.0  # the papers' RM: no centring term
    assert ensembles.get_config("wco").rm.center_coef == 0.01  # the tiny world sets it as a variant setting
    assert base().rm.center_coef == 0.0


def test_the_smollm2_configs_follow_where_the_gguf_was_put(monkeypatch, tmp_path):
    from configs import eval as eval_config
    from configs import instructgpt
    monkeypatch.delenv("RLHF_JAX_SMOLLM2", raising=False)
    monkeypatch.delenv("RLHF_JAX_CACHE", raising=False)
    assert instructgpt.get_config("smollm2_hh").model.path == "~/.cache/rlhf_jax/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setenv("RLHF_JAX_CACHE", str(tmp_path))  # where tools/fetch_smollm2.py writes then
    assert instructgpt.get_config("smollm2_hh").model.path == str(tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setenv("RLHF_JAX_SMOLLM2", str(tmp_path / "m.gguf"))
    assert instructgpt.get_config("smollm2_hh").model.path == str(tmp_path / "m.gguf")
    assert eval_config.get_config("smollm2").model.path == str(tmp_path / "m.gguf")


# --- the fixes -------------------------------------------------------------------------------

def test_end_of_run_kl_uses_the_sampling_temperature():
    policy, ref = init_model(CFG, seed=0), init_model(CFG, seed=5)
    arrays, _ = prompt_arrays(synthetic.prompts(WORLD, 16), TOK, TCFG)
    prompts = {"prompt": arrays["tokens"], "prompt_mask": arrays["mask"]}
    sampling = ppo_lib.sampling_config(base().sampling, TOK, 0.5, max_new_tokens=5)
    out, _ = compare_policies(policy.graphdef, TOK, prompts, sampling, jax.random.key(3), ref.params, policy.params,
                              None, None, None)
    from rlhf_jax.generate import generate
    gen = generate(policy.graphdef, policy.params, prompts["prompt"], prompts["prompt_mask"], jax.random.key(3),
                   sampling)
    kl = lambda T: float(np.mean(ppo_lib.sequence_kl(policy.graphdef, policy.params, ref.params, prompts["prompt"],
                                                     prompts["prompt_mask"], gen.tokens_BxN,
                                                     gen.mask_BxN.astype(np.float32), T)))
    # the same sums of log pi - log pi_ref over 5 tokens, maybe in another program: per token two
    # forward chains and log-softmaxes over the vocabulary at the log-probs' size (< 10 here)
    per_token = 2 * tol.forward(CFG, TCFG.max_prompt_len + 5, 10.0, extra=CFG.vocab_size)
    assert out["kl_final"] == pytest.approx(kl(0.5), rel=0, abs=5 * per_token)
    assert abs(kl(0.5) - kl(1.0)) > 0.01  # the two temperatures give different numbers


def test_reward_centring_reads_one_demonstration_per_row_when_sft_packs(tmp_path):
    c = micro("sft")
    c.sft.pack = True
    ctx = build_context(c, tmp_path, use_wandb=False)
    packed = ctx.data.arrays("sft_train")
    tokens, mask = rm_stage.demonstrations(ctx)
    assert len(packed["tokens"]) < len(tokens) == c.data.n_sft  # packing merges rows; centring does not
    assert mask.max() == 1 and (mask.sum(1) > 0).all()
    unpacked, _ = sft_arrays(ctx.data.records("sft_train"), ctx.tokenizer, ctx.data.tcfg)
    np.testing.assert_array_equal(tokens, unpacked["tokens"])


def test_rmsprop_follows_pytorch():
    torch = pytest.importorskip("torch")
    w0 = np.array([0.5, -1.0, 2.0], np.float32)
    grads = [np.array([0.1, -0.3, 0.02], np.float32), np.array([-0.2, 0.05, 0.4], np.float32)]
    tx, _ = optim.make_optimizer(0.01, 10, schedule_kind="constant", max_grad_norm=None, optimizer="rmsprop")
    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    tw = torch.tensor(w0.copy(), requires_grad=True)
    opt = torch.optim.RMSprop([tw], lr=0.01)  # alpha 0.99, eps 1e-8 added outside the square root
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
        tw.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_adamw_b2_and_eps_come_from_the_config_block():
    block = base().ppo
    block.update(b2=0.999, eps=1e-5, max_grad_norm=0.0, warmup_steps=0)
    w, g = jnp.array([1.0, -2.0]), jnp.array([0.3, 1e-6])

    def first_update(tx):
        return np.asarray(tx.update(g, tx.init(w), w)[0])
    ours = first_update(optim.from_config(block, 10)[0])
    np.testing.assert_allclose(ours, first_update(optax.adamw(block.lr, b1=0.9, b2=0.999, eps=1e-5, weight_decay=0.0)),
                               rtol=1e-6)
    # eps matters for a small gradient: 1e-8 (the default) moves that weight far more
    default = first_update(optax.adamw(block.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    assert abs(default[1]) > 10 * abs(ours[1])


def test_held_out_sft_loss_in_batches_cut_to_their_length():
    """validation_loss takes rows in order of length and cuts each batch after its longest row
    (32-column steps): the same token NLL as one uncut batch of every row, from narrower batches."""
    import dataclasses
    tcfg = dataclasses.replace(TCFG, max_len=100)  # rows of 10-16 tokens padded to 100 ...
    records = synthetic.sft_records(WORLD, 21)
    records[3] = {**records[3], "completion": " ".join([records[3]["completion"]] * 12)}  # ... and one of 42
    model = init_model(CFG.replace(max_seq_len=128), seed=0)
    arrays, _ = sft_arrays(records, TOK, tcfg)
    ends = arrays["segment_ids"].astype(bool).sum(1)
    assert ends.max() == 42 and np.sort(ends)[-2] <= 32  # one long row: the other batches can be cut
    evaluate, widths = sft_lib.make_sft_eval(model.graphdef), []

    def spy(params, batch):
        widths.append(batch["tokens"].shape[1])
        return evaluate(params, batch)

    batched = sft_lib.validation_loss(spy, model.params, arrays, 8)
    assert widths == [32, 32, 64]  # 21 rows in batches of 8: the longest in the last, cut at 64 of 100 columns
    whole = evaluate(model.params, arrays)
    chain = tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.head_dim, tcfg.max_len)
    rel = tol.f32(chain + CFG.vocab_size + int(whole["tokens"]))
    assert batched["val_loss"] == pytest.approx(float(whole["nll"] / whole["tokens"]), rel=rel)


def test_held_out_evaluation_covers_every_row():
    model = init_model(CFG, seed=0)
    arrays, _ = sft_arrays(synthetic.sft_records(WORLD, 37), TOK, TCFG)  # 37 = 2 x 16 + 5
    evaluate = sft_lib.make_sft_eval(model.graphdef)
    batched = sft_lib.validation_loss(evaluate, model.params, arrays, 16)
    whole = evaluate(model.params, arrays)
    # batches of 16 against one of 37: the forward chain, the log-softmax and the sum over the
    # tokens (the NLLs share a sign: relative to the total)
    chain = tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.head_dim, TCFG.max_len)
    rel = tol.f32(chain + CFG.vocab_size + int(whole["tokens"]))
    assert batched["val_loss"] == pytest.approx(float(whole["nll"] / whole["tokens"]), rel=rel)
    scalar = init_model(CFG, head="scalar", seed=1)
    rankings, _ = ranking_arrays(synthetic.ranking_records(WORLD, 21, k=3), TOK, TCFG)
    acc = rm_lib.held_out_accuracy(rm_lib.make_rm_eval(scalar.graphdef), scalar.params, rankings, 8)
    scores = np.asarray(rm_lib.score_rankings(scalar.graphdef, scalar.params, rankings))
    wins = [(b, i, j) for b in range(21) for i in range(3) for j in range(3)
            if rankings["ranks"][b, i] < rankings["ranks"][b, j]]
    assert acc["val_accuracy"] == pytest.approx(np.mean([scores[b, i] > scores[b, j] for b, i, j in wins]))


def test_best_of_n_leaves_prompts_without_a_gold_score_out():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    gold_missing = gold.copy()
    gold_missing[2, 3] = np.nan
    curve = bon_lib.bon_curve(proxy, gold_missing, [1, 4, 8])
    keep = [0, 1, 3, 4]
    for row in curve:
        assert row["gold"] == pytest.approx(bon_lib.bon_estimate(proxy[keep], gold[keep], row["n"]))
        assert row["gold_prompts"] == 4
    zeroed = bon_lib.bon_estimate(proxy, np.nan_to_num(gold_missing), 8)
    assert curve[-1]["gold"] != pytest.approx(zeroed)  # counting it as gold 0 would have moved the estimate


def _fake_ctx(**rm_changes):
    c = base()
    c.rm.update(members=3, aggregate="uwo", **rm_changes)
    return types.SimpleNamespace(config=c)


def test_ensemble_penalty_has_its_own_lambda_and_divisor_per_use():
    s = jnp.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])  # 3 members, 2 sequences
    ppo = aggregator(_fake_ctx(), {}, "ppo")(s)  # Coste et al.'s PPO code: lambda 0.1, divisor k - 1
    bon = aggregator(_fake_ctx(), {}, "bon")(s)  # their best-of-n: lambda 0.5, divisor k
    np.testing.assert_allclose(ppo, [3.0 - 0.1 * 8 / 2, 4.0 - 0.1 * 24 / 2], rtol=1e-6)
    np.testing.assert_allclose(bon, [3.0 - 0.5 * 8 / 3, 4.0 - 0.5 * 24 / 3], rtol=1e-6)


def test_a_zero_demonstration_spread_is_not_divided_by():
    s = jnp.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
    agg = aggregator(_fake_ctx(znorm=True, normalize=True), {"demonstration_std": [0.0, 1.0, 2.0]}, "ppo")
    assert np.isfinite(np.asarray(agg(s))).all()
    model = init_model(CFG, head="scalar", seed=1)
    arrays, _ = sft_arrays(synthetic.sft_records(WORLD, 4), TOK, TCFG)
    reward = ModelReward(model.graphdef, scale=max(0.0, STD_FLOOR))
    assert np.isfinite(np.asarray(reward.score(model.params, arrays["tokens"], arrays["segment_ids"], 8))).all()


def test_one_reward_model_is_an_ensemble_of_one(tmp_path):
    """rm.members = 1 trains, saves and is read through the ensemble's one path: the hand-off has a
    member axis of 1, the per-member summary fields are lists of one, the held-out loss is the model's
    own, and the using stages' reward is the single model's score divided by its demonstration spread."""
    from rlhf_jax.stages.handoff import load_stacked
    from rlhf_jax.stages.reward import reward_model, trained_reward
    c = micro("sft,rm")
    c.rm.update(members=1, steps=4, znorm=True)
    ctx = build_context(c, tmp_path, use_wandb=False)
    rm = run_stages(ctx)["rm"]
    assert len(rm["demonstration_std"]) == len(rm["demonstration_mean_before_centering"]) == 1
    assert rm["val_accuracy_members"] == [rm["val_accuracy"]] == [rm["val_accuracy_member_mean"]]
    model = reward_model(ctx, seed=c.seed + 1)
    stacked = load_stacked(ctx, "rm", model.params, 1)
    assert all(x.shape[0] == 1 for x in jax.tree.leaves(stacked))
    one = jax.tree.map(lambda x: x[0], stacked)
    # the held-out numbers are the single model's (centring shifts every score alike: the same
    # loss and accuracy up to the rounding of the shifted scores)
    _, val = rm_stage.preference_arrays(ctx)
    single = rm_lib.held_out_accuracy(rm_lib.make_rm_eval(model.graphdef, c.rm.margin), one, val, 16)
    assert single["val_accuracy"] == pytest.approx(rm["val_accuracy"], abs=1 / 64)  # a tie may turn
    assert single["val_loss"] == pytest.approx(rm["val_loss"], rel=1e-5)
    reward, params, _, value_init = trained_reward(ctx, "ppo")
    tokens, mask = (jnp.asarray(x[:16]) for x in rm_stage.demonstrations(ctx))
    expected = ModelReward(model.graphdef, scale=rm["demonstration_std"][0]).score(one, tokens, mask, 1)
    got = reward.score(params, tokens, mask, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), value_init, one))

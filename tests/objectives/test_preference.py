"""Preference losses (DPO family, SimPO, ORPO): losses against hand-computed values, K-wise pairing,
cached = live reference, the stage."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base
from configs.dpo import get_config
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import TokenizeConfig, ranking_arrays
from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.objectives.preference import SequenceLogprobs, pair_losses, preference_loss
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.train import dpo as dpo_lib
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.state import TrainState
from tests import tolerance as tol

softplus = lambda x: math.log1p(math.exp(x))  # -log sigmoid(-x)


def hp(**changes):
    """The config's dpo block with `changes` (the losses read their settings from it)."""
    c = base().dpo
    c.update(changes)
    return c


def dpo_loss(policy, ref, ranks, valid, beta):
    """The DPO loss of summed log-probs (the counts do not enter the sum reduction)."""
    ones = jnp.ones_like(policy)
    return preference_loss("dpo", SequenceLogprobs(policy, ones), SequenceLogprobs(ref, ones), ranks, valid,
                           hp(beta=beta))


@pytest.mark.parametrize("kind, expected", [
    ("dpo", softplus(-0.05)),
    ("cdpo", 0.9 * softplus(-0.05) + 0.1 * softplus(0.05)),
    ("robust", (0.9 * softplus(-0.05) - 0.1 * softplus(0.05)) / 0.8),
    ("ipo", (0.5 - 1 / (2 * 0.1)) ** 2),
])
def test_pair_losses_by_hand(kind, expected):
    got = float(pair_losses(jnp.float32(0.5), 0.1, kind, 0.1 if kind in ("cdpo", "robust") else 0.0))
    assert got == pytest.approx(expected, rel=1e-6)


def test_kwise_pairs_and_prompt_weights():
    # prompt 0: a strict ranking of 3 (3 pairs); prompt 1: one pair and an empty slot
    policy = jnp.array([[-1.0, -2.0, -4.0], [-3.0, -1.0, 0.0]])
    ref = jnp.array([[-1.5, -1.5, -1.5], [-2.0, -2.0, 0.0]])
    ranks = jnp.array([[0, 1, 2], [1, 0, -1]])
    valid = jnp.array([[1, 1, 1], [1, 1, 0]])
    beta = 0.5
    loss, m = dpo_loss(policy, ref, ranks, valid, beta)
    r0 = [0.5, -0.5, -2.5]  # policy - ref, prompt 0
    p0 = [softplus(-beta * (r0[i] - r0[j])) for i, j in ((0, 1), (0, 2), (1, 2))]
    r1 = [-1.0, 1.0]  # prompt 1: response 1 is better
    p1 = softplus(-beta * (r1[1] - r1[0]))
    assert float(loss) == pytest.approx((np.mean(p0) + p1) / 2, rel=1e-6)
    assert float(m["pairs"]) == 4 and float(m["reward_accuracy"]) == 1.0
    margins = [r0[0] - r0[1], r0[0] - r0[2], r0[1] - r0[2], r1[1] - r1[0]]
    assert float(m["reward_margin"]) == pytest.approx(beta * np.mean(margins), rel=1e-6)
    assert float(m["reward_chosen"]) == pytest.approx(beta * np.mean([r0[0], r0[0], r0[1], r1[1]]), rel=1e-6)


def test_sequence_logprob_reductions():
    logp = jnp.array([[-1.0, -2.0, -3.0, -9.0]])
    mask = jnp.array([[0, 1, 1, 0]])
    seq = SequenceLogprobs((logp * mask).sum(-1), mask.sum(-1).astype(jnp.float32))
    assert float(seq.reduce("sum")[0]) == -5.0
    assert float(seq.reduce("mean")[0]) == -2.5


def test_simpo_by_hand():
    # two responses, the first preferred: summed log-probs -4 over 2 tokens and -9 over 3 tokens
    policy = SequenceLogprobs(jnp.array([[-4.0, -9.0]]), jnp.array([[2.0, 3.0]]))
    loss, m = preference_loss("simpo", policy, None, jnp.array([[0, 1]]), jnp.array([[1, 1]]),
                              hp(loss="simpo", beta=2.0, simpo_gamma=1.0))
    r_w, r_l = 2.0 * -2.0, 2.0 * -3.0  # beta times the mean token log-prob
    assert float(loss) == pytest.approx(softplus(-(r_w - r_l - 1.0)), rel=1e-6)
    assert float(m["reward_margin"]) == pytest.approx(r_w - r_l) and float(m["reward_accuracy"]) == 1.0


def test_orpo_by_hand():
    policy = SequenceLogprobs(jnp.array([[-1.0, -3.6]]), jnp.array([[2.0, 3.0]]))
    loss, m = preference_loss("orpo", policy, None, jnp.array([[0, 1]]), jnp.array([[1, 1]]),
                              hp(loss="orpo", orpo_lambda=0.1))
    lp_w, lp_l = -0.5, -1.2  # mean token log-probs
    odds = lambda lp: lp - math.log(1.0 - math.exp(lp))
    expected = -lp_w + 0.1 * softplus(-(odds(lp_w) - odds(lp_l)))  # NLL of the chosen + lambda * L_OR
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m["reward_chosen"]) == pytest.approx(odds(lp_w), rel=1e-5)


def test_orpo_with_three_responses_imitates_only_the_best():
    """K = 3: the NLL goes to each prompt's top-ranked response once, not to every pair's winner.
    Prompt 0 ranks three responses; prompt 1 has two (the second is best) and an empty slot;
    prompt 2 has two responses tied at the top over a third (their NLLs are averaged)."""
    lp = [[-0.5, -1.2, -2.0], [-1.5, -0.8, -9.0], [-0.6, -1.0, -3.0]]  # mean token log-probs
    counts = jnp.array([[2.0, 4.0, 1.0], [2.0, 5.0, 1.0], [1.0, 2.0, 3.0]])
    policy = SequenceLogprobs(jnp.array(lp) * counts, counts)
    ranks = jnp.array([[0, 1, 2], [1, 0, -1], [0, 0, 1]])
    valid = jnp.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    loss, m = preference_loss("orpo", policy, None, ranks, valid, hp(loss="orpo", orpo_lambda=0.1))
    odds = lambda x: x - math.log(1.0 - math.exp(x))
    l_or = lambda w, l: softplus(-(odds(w) - odds(l)))  # -log sigmoid of the log-odds ratio
    p0 = 0.5 + 0.1 * np.mean([l_or(-0.5, -1.2), l_or(-0.5, -2.0), l_or(-1.2, -2.0)])
    p1 = 0.8 + 0.1 * l_or(-0.8, -1.5)
    p2 = (0.6 + 1.0) / 2 + 0.1 * np.mean([l_or(-0.6, -3.0), l_or(-1.0, -3.0)])
    assert float(loss) == pytest.approx((p0 + p1 + p2) / 3, rel=1e-5)
    # the old rule (the NLL of every pair's winner) gives prompt 0 (0.5 + 0.5 + 1.2) / 3 instead of 0.5
    old_p0 = (0.5 + 0.5 + 1.2) / 3 + (p0 - 0.5)
    assert abs(float(loss) - (old_p0 + p1 + p2) / 3) > 0.05
    assert float(m["pairs"]) == 6


def test_reference_free_losses_refuse_nothing_and_reference_losses_need_one():
    policy = SequenceLogprobs(jnp.array([[-1.0, -2.0]]), jnp.array([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="needs reference"):
        preference_loss("ipo", policy, None, jnp.array([[0, 1]]), jnp.array([[1, 1]]), hp(loss="ipo"))
    with pytest.raises(ValueError, match="preference loss 'kto' is not one of"):
        preference_loss("kto", policy, None, jnp.array([[0, 1]]), jnp.array([[1, 1]]), hp())


TOK = synthetic.tokenizer()
WORLD = synthetic.WorldConfig(seed=0, max_items=4)
CFG = PRESETS["test"].replace(vocab_size=len(TOK), eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)


@pytest.fixture(scope="module")
def rankings():
    arrays, _ = ranking_arrays(synthetic.ranking_records(WORLD, 16, k=3), TOK, TokenizeConfig(max_len=16, max_prompt_len=8))
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def test_response_logprobs_match_one_sequence_at_a_time(rankings):
    from rlhf_jax.models.model import apply
    from rlhf_jax.objectives.lm import token_logprobs
    model = init_model(CFG, seed=0)
    got = np.asarray(dpo_lib.response_logprobs(model.graphdef, model.params, rankings).sum_BxK)
    for b, k in ((0, 0), (3, 2), (7, 1)):
        t, m, lm = (rankings[x][b, k] for x in ("tokens", "mask", "loss_mask"))
        n = int(m.sum())
        logits, _ = apply(model.graphdef, model.params, t[None, :n])
        want = float((token_logprobs(logits[0, :-1], t[1:n]) * lm[1:n]).sum())
        # one unpadded row against the padded batch: the forward chain, the log-softmax and the sum
        # over at most 16 tokens (log-probs share a sign: relative to the sum)
        chain = tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.head_dim, 16) + CFG.vocab_size + 16
        assert got[b, k] == pytest.approx(want, rel=tol.f32(chain), abs=0)


def test_at_the_reference_the_loss_is_log2_and_cached_equals_live(rankings):
    model = init_model(CFG, seed=0)
    ref = jax.tree.map(jnp.copy, model.params)
    batch = {**rankings, "ref_logp": jnp.asarray(dpo_lib.reference_logprobs(model.graphdef, ref, rankings, 8))}
    tx, sched = make_optimizer(1e-3, 10)
    runs = {}
    for cached in (True, False):
        step = jax.jit(dpo_lib.make_dpo_step(model.graphdef, tx, sched, hp(beta=0.1, cache_reference=cached)))
        state = TrainState(jax.tree.map(jnp.copy, model.params), tx.init(model.params), jnp.zeros((), jnp.int32))
        hist = []
        for i in range(3):
            state, m = step(state, batch, jax.random.key(i), None if cached else ref)
            hist.append({k: float(v) for k, v in m.items()})
        runs[cached] = hist
    assert runs[True][0]["loss"] == pytest.approx(math.log(2), rel=1e-5)
    # cached against live reference log-probs: two programs for one forward pass, so the metrics
    # differ by the chain's bound at the log-probs' size. Adam may flip coordinates whose gradient
    # is within rounding of zero (+-lr each): that moves a metric by such a gradient times lr,
    # second order, left out.
    chain = tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.head_dim, 16) + CFG.vocab_size + 16
    atol = tol.f32(chain, float(np.abs(np.asarray(batch["ref_logp"])).max()))
    # at the reference every pair ties up to rounding: the policy's log-probs (inside the step) and
    # the cached reference's (another program) may differ in the last bits, on some CPUs, so each
    # margin is within beta x 2 x atol of 0 and its sign is rounding, not signal
    assert abs(runs[True][0]["reward_margin"]) <= 0.1 * 2 * atol
    for a, b in zip(runs[True], runs[False]):
        for k in a:
            if k == "reward_accuracy":  # a step function of margins that can sit within rounding of 0
                continue
            assert a[k] == pytest.approx(b[k], rel=tol.f32(chain), abs=atol), k
    assert runs[True][-1]["loss"] < runs[True][0]["loss"]


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_stage_builds_no_reference(tmp_path, monkeypatch, loss):
    def no_reference(*args, **kwargs):
        raise AssertionError("a reference-free loss computed reference log-probs")
    monkeypatch.setattr(dpo_lib, "reference_logprobs", no_reference)
    c = get_config(f"micro,{loss}")
    c.dpo.steps = 3
    d = run_pipeline(c, tmp_path, use_wandb=False)["dpo"]
    assert c.dpo.loss == loss and d["steps"] == 3
    for key in ("val_loss", "val_reward_accuracy", "kl_final", "gold_reward_final"):
        assert np.isfinite(d[key]), key


def test_dpo_stage_runs_from_the_cli_config(tmp_path):
    c = get_config("micro")
    c.log.wandb = "disabled"
    summary = run_pipeline(c, tmp_path, use_wandb=False)
    d = summary["dpo"]
    for key in ("val_reward_accuracy", "val_reward_margin", "val_reward_chosen", "val_reward_rejected",
                "kl_final", "gold_reward_sft", "gold_reward_final", "win_rate_vs_sft"):
        assert key in d and np.isfinite(d[key]), key
    assert (tmp_path / "dpo" / "final").exists() and (tmp_path / "dpo" / "metrics.jsonl").exists()
    assert d["val_reward_chosen"] - d["val_reward_rejected"] == pytest.approx(d["val_reward_margin"], abs=1e-5)

"""Online DPO: the pair labelling by hand, one step's loss against the offline preference loss on
the pairs it sampled, config errors, and (slow) the stage from configs/dpo.py with the gold
annotator, killed and resumed. The stage with the RM annotator runs in tests/train/test_lora.py."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base
from configs.dpo import get_config
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import prompt_arrays
from rlhf_jax.errors import ConfigError
from rlhf_jax.models import init_model
from rlhf_jax.objectives.preference import preference_loss
from rlhf_jax.objectives.reward import pair_matrix
from rlhf_jax.rewards import Reward
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.stages.validate import validate_config
from rlhf_jax.train import dpo as dpo_lib
from rlhf_jax.train import online_dpo as online_lib
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.ppo import sampling_config
from rlhf_jax.train.state import TrainState
from tests import tolerance as tol
from tests.micro import CFG, TCFG, TOK, WORLD, numbers


def test_the_higher_score_is_chosen_and_ties_or_undefined_scores_make_no_pair():
    score = jnp.array([[1.0, 0.5], [0.2, 0.7], [0.3, 0.3], [np.nan, 1.0], [-2.0, -1.0]])
    ranks, valid = online_lib.label_pairs(score)
    np.testing.assert_array_equal(ranks, [[0, 1], [1, 0], [0, 0], [0, 0], [1, 0]])
    np.testing.assert_array_equal(valid, [[1, 1], [1, 1], [1, 1], [0, 0], [1, 1]])
    wins = np.asarray(pair_matrix(ranks, valid))
    # prompt 0: response 0 beats 1; prompts 1 and 4: response 1 beats 0; the tie and the NaN: no pair
    want = np.zeros((5, 2, 2))
    want[0, 0, 1] = want[1, 1, 0] = want[4, 1, 0] = 1
    np.testing.assert_array_equal(wins, want)


def hp(**changes):
    c = base().online_dpo
    c.update(changes)
    return c


class TokenSumMod3(Reward):
    """A stand-in annotator whose scores tie often: the sum of the response's token ids mod 3."""

    def rewards(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        return ((tokens_BxT[:, n_prompt:] * mask_BxT[:, n_prompt:]).sum(1) % 3).astype(jnp.float32)


def test_one_step_is_the_offline_preference_loss_on_the_pairs_it_sampled():
    """With one update per iteration the step's loss is `preference_loss` at the pre-update policy on
    its sampled pairs, written as an offline ranking batch (prompt + response, loss_mask on the
    response) and labelled by hand from the annotator's scores, ties left out."""
    policy = init_model(CFG, seed=0)
    reference = init_model(CFG, seed=1).params  # not the policy: the implicit rewards are not 0
    c = hp(epochs=1, minibatches=1, beta=0.5, lr=1e-2, warmup_steps=0)
    sampling = sampling_config(base().sampling, TOK, 1.0, max_new_tokens=5)
    tx, sched = make_optimizer(c.lr, 4)
    models = online_lib.OnlineModels(policy.graphdef, TokenSumMod3())
    step = jax.jit(online_lib.make_online_dpo_step(c, sampling, models, tx, sched))
    arrays, _ = prompt_arrays(synthetic.prompts(WORLD, 8), TOK, TCFG)
    batch = {"prompt": jnp.asarray(arrays["tokens"]), "prompt_mask": jnp.asarray(arrays["mask"])}
    params = jax.tree.map(jnp.copy, policy.params)
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    new, metrics, pairs = step(state, batch, jax.random.key(3), {"reference": reference, "reward": None})

    p = {k: np.asarray(v) for k, v in pairs._asdict().items()}
    np.testing.assert_array_equal(p["prompt_BxP"], np.repeat(arrays["tokens"], 2, 0))  # prompt-major
    s = ((p["response_BxN"] * p["response_mask_BxN"]).sum(1) % 3).reshape(8, 2)
    np.testing.assert_array_equal(p["score_B"], s.reshape(-1))
    ranks = np.stack([s[:, 0] < s[:, 1], s[:, 1] < s[:, 0]], 1).astype(np.int32)
    tied = s[:, 0] == s[:, 1]
    assert 0 < tied.sum() < 8  # the case needs both ties and pairs
    offline = {"tokens": np.concatenate([p["prompt_BxP"], p["response_BxN"]], 1),
               "mask": np.concatenate([p["prompt_mask_BxP"], p["response_mask_BxN"]], 1),
               "loss_mask": np.concatenate([np.zeros_like(p["prompt_mask_BxP"]), p["response_mask_BxN"]], 1)}
    offline = {k: jnp.asarray(v.reshape(8, 2, -1)) for k, v in offline.items()}

    @jax.jit
    def offline_loss(policy_params, ref_params, batch, ranks):
        logp = dpo_lib.response_logprobs(policy.graphdef, policy_params, batch)
        ref = dpo_lib.response_logprobs(policy.graphdef, ref_params, batch)
        return logp, ref, preference_loss("dpo", logp, ref, ranks, jnp.ones((8, 2), bool), c)

    logp, ref, (want, m) = offline_loss(policy.params, reference, offline, jnp.asarray(ranks))
    # h = four summed log-probs of up to T = 13 tokens, each a forward pass in another program
    # (tests/tolerance.py); the loss moves by at most beta x |dh|
    T = offline["tokens"].shape[-1]
    scale = float(np.abs(np.asarray(ref.sum_BxK)).max())
    atol = 4 * c.beta * tol.f32(tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.head_dim, T)
                                + CFG.vocab_size + T, scale)
    assert abs(float(want) - np.log(2)) > 10 * atol  # a loss that is not its value at the reference
    assert float(metrics["loss"]) == pytest.approx(float(want), abs=atol)
    for k in ("reward_chosen", "reward_rejected", "reward_margin"):
        assert float(metrics[k]) == pytest.approx(float(m[k]), abs=atol), k
    assert float(metrics["frac_tied"]) == pytest.approx(tied.mean(), rel=1e-6)
    chosen = np.where(ranks[:, 0] == 0, s[:, 0], s[:, 1])[~tied]
    rejected = np.where(ranks[:, 0] == 0, s[:, 1], s[:, 0])[~tied]
    assert float(metrics["score_chosen"]) == pytest.approx(chosen.mean(), rel=1e-6)
    assert float(metrics["score_rejected"]) == pytest.approx(rejected.mean(), rel=1e-6)
    # the k1 KL of the samples to the reference, at the pre-update policy
    assert float(metrics["kl"]) == pytest.approx(float((logp.sum_BxK - ref.sum_BxK).mean()),
                                                 abs=2 * atol / c.beta)
    assert int(new.step) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)))


@pytest.mark.slow
def test_online_dpo_with_the_gold_annotator_resumes_exactly(tmp_path):
    """configs/dpo.py:micro,online,gold_reward: SFT, then online DPO labelled by the task world's
    gold reward through a host callback; killed after iteration 2 and resumed, it ends with the
    numbers of an uninterrupted run and logs every iteration once. Kept out of the default run for
    its time: a step with a host callback is compiled anew in every process (XLA's persistent cache
    does not hold it). The RM annotator runs in the default suite (tests/train/test_lora.py)."""
    c = get_config("micro,online,gold_reward")
    assert c.stages == "sft,online_dpo" and c.online_dpo.reward == "gold"
    c.heldout.n_prompts = 16
    straight = run_pipeline(c, tmp_path / "straight", use_wandb=False)
    c.debug_stop_after.online_dpo = 2
    with pytest.raises(SystemExit):
        run_pipeline(c, tmp_path / "resumed", use_wandb=False)
    c.debug_stop_after.online_dpo = 0
    resumed = run_pipeline(c, tmp_path / "resumed", use_wandb=False)
    assert numbers(resumed) == numbers(straight)
    summary = resumed["online_dpo"]
    log = [json.loads(line) for line in open(tmp_path / "resumed" / "online_dpo" / "metrics.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        for key in ("loss", "reward_accuracy", "reward_margin", "score_chosen", "score_rejected", "frac_tied",
                    "gold_reward", "kl"):
            assert np.isfinite(r[key]), key
        if r["frac_tied"] < 1:  # the annotator is the gold reward: the chosen scores above the rejected
            assert r["score_chosen"] > r["score_rejected"]
        # the annotator's mean score over the 2B responses is the gold reward the hook computes on the host
        assert r["score"] == pytest.approx(r["gold_reward"], rel=1e-6)
    for key in ("gold_reward_sft", "gold_reward_final", "kl_final", "win_rate_vs_sft"):
        assert np.isfinite(summary[key]), key
    assert summary["sampled_responses"] == 2 * 8 * 3 and summary["updates"] == 3 * 2
    assert (tmp_path / "resumed" / "online_dpo" / "samples.json").exists()


@pytest.mark.parametrize("field, value, words", [
    ("online_dpo.minibatches", 3, "config.online_dpo.minibatches: must divide online_dpo.batch_size=8"),
    ("online_dpo.reward", "judge", "config.online_dpo.reward: must be 'rm'"),
    ("online_dpo.loss", "kpo", "config.online_dpo.loss: must be one of"),
    ("online_dpo.temperature", 0.0, "config.online_dpo.temperature: must be > 0"),
])
def test_invalid_online_dpo_fields_are_named(field, value, words):
    c = get_config("micro,online,ipo")
    assert c.online_dpo.loss == "ipo"  # a loss variant sets the online block's loss too
    c.online_dpo[field.split(".")[1]] = value
    with pytest.raises(ConfigError, match=re.escape(words)):
        validate_config(c)

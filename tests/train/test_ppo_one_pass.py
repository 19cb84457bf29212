"""PPO's one-pass update (1 epoch of 1 minibatch): the gradient taken through the scoring's forward
pass (`jax.vjp`) equals the two-pass step's, which runs the forward again inside the update."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import base
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import prompt_arrays, sft_arrays
from rlhf_jax.models import init_model
from rlhf_jax.rewards import ModelReward
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train.state import PPOState
from tests import tolerance as tol
from tests.micro import CFG, TCFG, TOK, WORLD

NEW = 5  # new tokens a rollout: sequences of TCFG.max_prompt_len + NEW = 13 positions


def _hp(**changes):
    hp = base().ppo
    hp.update({"minibatches": 1, "epochs": 1, "grad_accum": 1, **changes})
    return hp


def _setup(hp, cfg=CFG, critic=True, group=1, ptx=False):
    lm = init_model(cfg, seed=0)
    scalar = init_model(cfg, head="scalar", seed=1)
    models = ppo_lib.PPOModels(lm.graphdef, scalar.graphdef if critic else None, ModelReward(scalar.graphdef))
    params = {"policy": lm.params, **({"value": scalar.params} if critic else {})}
    copy = lambda t: jax.tree.map(jnp.copy, t)
    # the pretrained reference a step away from the policy, so that the KL terms are not all zero
    ref = jax.tree.map(lambda x: x + 0.01 * jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), lm.params)
    constants = {"reference": ref, "reward": copy(scalar.params)}
    arrays, _ = prompt_arrays(synthetic.prompts(WORLD, 8 // group), TOK, TCFG)
    batch = {"prompt": jnp.asarray(arrays["tokens"]), "prompt_mask": jnp.asarray(arrays["mask"])}
    if ptx:
        p, _ = sft_arrays(synthetic.sft_records(WORLD, 4, "ptx"), TOK, TCFG)
        batch.update({k: jnp.asarray(v) for k, v in p.items() if k in ppo_lib.PTX_KEYS})
    sampling = ppo_lib.sampling_config(base().sampling, TOK, hp.temperature, NEW)
    return models, params, constants, batch, sampling


def _step(hp, models, params, constants, batch, sampling, reuse):
    tx = optax.sgd(1.0)  # the new parameters are the old ones minus the gradient
    state = PPOState(params, tx.init(params), jnp.zeros((), jnp.int32), jnp.float32(0.05), None)
    step = jax.jit(ppo_lib.make_ppo_step(hp, sampling, models, tx, lambda s: 1.0, reuse_forward=reuse))
    compiled = step.lower(state, batch, jax.random.key(3), constants).compile()
    new, metrics, episodes = compiled(state, batch, jax.random.key(3), constants)
    grads = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), params, new.params)
    return grads, {k: float(v) for k, v in metrics.items()}, episodes, compiled.as_text().count(" dot(")


CASES = {
    # PPO with GAE and a value model; the chunked log-probs (no B x T x V logits), InstructGPT's ptx
    # term, an entropy bonus
    "gae_chunked_ptx": (_hp(ptx_coef=0.5, ent_coef=0.01), dict(cfg=CFG.replace(logits_chunk=4), ptx=True)),
    # critic-free, full logits: GRPO's groups, the KL as a loss term
    "grpo": (_hp(advantage_estimator="grpo", group_size=2, policy_loss="grpo", kl_estimator="k3"),
             dict(critic=False, group=2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_pass_gradient_equals_the_two_pass_step(case):
    hp, kw = CASES[case]
    setup = _setup(hp, **kw)
    g1, m1, e1, dots1 = _step(hp, *setup, reuse=True)
    g2, m2, e2, dots2 = _step(hp, *setup, reuse=False)
    # the same episodes: the rollout's sampling does not depend on how the update is taken
    np.testing.assert_array_equal(np.asarray(e1.response_BxN), np.asarray(e2.response_BxN))
    # the only differences are roundings: the two-pass step's update forward on permuted rows, its
    # old log-probs from another program than the new (a ratio within rounding of 1, exactly 1 here),
    # the sums over the batch in another order. Per coordinate: the gradient chain at 8 x 13
    # positions, with GAE's recursion and the whitening over the same (tests/tolerance.py, as the
    # sharded-step tests), relative to the largest gradient; metrics to the chain's relative bound
    chain = tol.gradient_chain(kw.get("cfg", CFG), 13, 3 * 8 * 13 + (8 * 16 if kw.get("ptx") else 0))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g2)):
        scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-30)
        np.testing.assert_allclose(a, b, rtol=0, atol=tol.f32(chain, scale) + tol.f32(1, 1.0),
                                   err_msg=jax.tree_util.keystr(path))
    # and the gradient is not trivially zero: every trained model moved
    for name, tree in g1.items():
        assert max(float(np.abs(x).max()) for x in jax.tree.leaves(tree)) > 1e-4, name
    for k in ("loss", "policy_loss", "entropy", "kl", "score", "advantage_mean", "grad_norm", "ptx_loss",
              "value_loss", "kl_loss"):
        if k in m2:
            # the policy loss and the advantages' mean are means of whitened (or group-normalised)
            # advantages times ratios of 1: terms of mean magnitude <= 1 that cancel to about 0, so
            # their rounding is relative to 1, not to the result
            scale = 1.0 if k in ("policy_loss", "advantage_mean") else 1e-3
            np.testing.assert_allclose(m1[k], m2[k], rtol=tol.f32(chain), atol=tol.f32(chain, scale), err_msg=k)
    assert m1["ratio_max"] == 1.0  # the old log-probs are the new: exactly on policy
    assert ("value_loss" in m1) == (case != "grpo") and ("ptx_loss" in m1) == (case == "gae_chunked_ptx")
    # one forward pass of the trained models fewer: fewer matmuls in the compiled program
    assert dots1 < dots2, (dots1, dots2)


def test_one_pass_is_the_default_only_where_it_is_exact():
    assert ppo_lib.one_pass(_hp()) and not ppo_lib.one_pass(_hp(minibatches=2))
    assert not ppo_lib.one_pass(_hp(epochs=2)) and not ppo_lib.one_pass(_hp(grad_accum=2))
    hp = _hp(minibatches=2)
    models, *_ , sampling = _setup(hp)
    with pytest.raises(ValueError, match="reuse_forward needs ppo.epochs = ppo.minibatches = ppo.grad_accum = 1"):
        ppo_lib.make_ppo_step(hp, sampling, models, optax.sgd(1.0), lambda s: 1.0, reuse_forward=True)

"""KTO: the loss on a two-example batch against a hand-computed value, z0 detached, the mismatched
pairing, the model-level loss against the pure one."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base
from rlhf_jax.data import synthetic
from rlhf_jax.data.records import binary_from_preferences
from rlhf_jax.data.tokenize import TokenizeConfig, ranking_arrays
from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.models.forward import sequence_logprobs
from rlhf_jax.objectives.kto import kto_loss
from rlhf_jax.train import kto as kto_lib
from tests import tolerance as tol

sigmoid = lambda x: 1.0 / (1.0 + math.exp(-x))

# a two-example batch: example 0 desirable, example 1 undesirable; summed log-probs of the policy
# and the reference of each example (x_i, y_i) and of its mismatched pair (x_0, y_1), (x_1, y_0)
POLICY, REF = [-3.0, -4.0], [-5.0, -3.0]  # r = 2.0, -1.0
KL_POLICY, KL_REF = [-6.0, -5.5], [-7.0, -5.0]  # r(x_0, y_1) = 1.0, r(x_1, y_0) = -0.5


def two_examples(beta=0.1, lambda_d=1.0, lambda_u=1.5, kl_policy=KL_POLICY):
    ratio = jnp.array(POLICY) - jnp.array(REF)
    kl_ratio = jnp.array(kl_policy) - jnp.array(KL_REF)
    return kto_loss(ratio, kl_ratio, jnp.array([1, 0]), jnp.array([1, 1]), beta, lambda_d, lambda_u)


def test_two_example_batch_against_the_hand_computed_loss():
    loss, m = two_examples()
    # z0 = max(0, (1.0 + -0.5) / 2) = 0.25
    # desirable:   v = 1.0 * sigmoid(0.1 * (2.0 - 0.25)) = sigmoid(0.175) = 0.543638
    # undesirable: v = 1.5 * sigmoid(0.1 * (0.25 - -1.0)) = 1.5 * sigmoid(0.125) = 0.796814
    # loss = ((1.0 - 0.543638) + (1.5 - 0.796814)) / 2 = 0.579774
    v_d, v_u = sigmoid(0.175), 1.5 * sigmoid(0.125)
    assert float(m["z0"]) == pytest.approx(0.25, rel=1e-6) and float(m["kl"]) == pytest.approx(0.25, rel=1e-6)
    assert float(loss) == pytest.approx(((1.0 - v_d) + (1.5 - v_u)) / 2, rel=1e-6)
    assert float(loss) == pytest.approx(0.579774, abs=1e-6)
    assert float(m["value_desirable"]) == pytest.approx(v_d, rel=1e-6)
    assert float(m["value_undesirable"]) == pytest.approx(v_u, rel=1e-6)
    assert float(m["reward_desirable"]) == pytest.approx(0.2, rel=1e-6)  # beta * r
    assert float(m["reward_undesirable"]) == pytest.approx(-0.1, rel=1e-6)
    assert float(m["desirable_fraction"]) == 0.5


def test_a_negative_kl_estimate_is_clamped_to_zero():
    # mismatched ratios -2.0 and -0.5: their mean -1.25 < 0, so z0 = 0
    loss, m = two_examples(lambda_u=1.0, kl_policy=[-9.0, -5.5])
    assert float(m["kl"]) == pytest.approx(-1.25, rel=1e-6) and float(m["z0"]) == 0.0
    assert float(loss) == pytest.approx(((1 - sigmoid(0.2)) + (1 - sigmoid(0.1))) / 2, rel=1e-6)


def test_padding_rows_count_nowhere():
    ratio, kl_ratio = jnp.array([2.0, -1.0, 50.0]), jnp.array([1.0, -0.5, 80.0])
    padded = kto_loss(ratio, kl_ratio, jnp.array([1, 0, 1]), jnp.array([1, 1, 0]), 0.1, 1.0, 1.5)
    plain = two_examples()
    for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(plain)):
        assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_no_gradient_flows_through_z0():
    ratio = jnp.array(POLICY) - jnp.array(REF)
    kl_ratio = jnp.array(KL_POLICY) - jnp.array(KL_REF)
    loss = lambda r, k: kto_loss(r, k, jnp.array([1, 0]), jnp.array([1, 1]), 0.1, 1.0, 1.5)[0]
    g_ratio, g_kl = jax.grad(loss, argnums=(0, 1))(ratio, kl_ratio)
    assert np.all(np.asarray(g_kl) == 0.0)
    # d/dr of (lambda - v) / B with z0 a constant: -lambda * beta * s (1 - s) / 2, s the sigmoid
    s_d, s_u = sigmoid(0.175), sigmoid(0.125)
    assert float(g_ratio[0]) == pytest.approx(-1.0 * 0.1 * s_d * (1 - s_d) / 2, rel=1e-5)
    assert float(g_ratio[1]) == pytest.approx(+1.5 * 0.1 * s_u * (1 - s_u) / 2, rel=1e-5)


TOK = synthetic.tokenizer()
WORLD = synthetic.WorldConfig(seed=0, max_items=4)
TCFG = TokenizeConfig(max_len=16, max_prompt_len=8)
CFG = PRESETS["test"].replace(vocab_size=len(TOK), d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                              eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)


def test_each_prompt_is_paired_with_another_prompts_response():
    records = binary_from_preferences(synthetic.ranking_records(WORLD, 12, k=3, split="train"))
    partner = kto_lib.mismatched_partners(records, seed=0)
    assert sorted(partner) == list(range(len(records)))  # a cyclic shift: every response used once
    assert all(records[j]["prompt"] != records[i]["prompt"] for i, j in enumerate(partner))
    assert list(kto_lib.mismatched_partners(records[:2], seed=3)) == [1, 0]
    arrays = kto_lib.binary_arrays(records, TOK, TCFG, seed=0)
    # slot 1 of row i is row i's prompt with its partner's response, tokenised as one example
    i = 5
    one, _ = ranking_arrays([{"prompt": records[i]["prompt"], "ranks": [0, 1],
                              "responses": [records[i]["response"], records[partner[i]]["response"]]}], TOK, TCFG)
    np.testing.assert_array_equal(arrays["tokens"][i], one["tokens"][0])
    np.testing.assert_array_equal(arrays["loss_mask"][i], one["loss_mask"][0])
    assert list(arrays["desirable"]) == [int(r["label"]) for r in records] and arrays["valid"].all()


def test_the_model_loss_is_the_pure_loss_and_its_gradient_skips_the_mismatched_pairs():
    records = binary_from_preferences(synthetic.ranking_records(WORLD, 8, k=3, split="train"))
    batch = {k: jnp.asarray(v) for k, v in kto_lib.binary_arrays(records, TOK, TCFG, seed=0).items()}
    model = init_model(CFG, seed=0)
    ref = jax.tree.map(lambda x: 0.8 * x, model.params)  # another policy: ratios away from 0
    hp = base().kto
    loss_fn = kto_lib.make_kto_loss(model.graphdef, hp)
    seq = lambda p, k: sequence_logprobs(model.graphdef, p, batch["tokens"][:, k], batch["mask"][:, k],
                                         batch["loss_mask"][:, k])[0]

    @jax.jit  # one program: the stage's loss and gradient, and the pure loss on one slot at a time
    def compute(p):
        ref_0, ref_1 = seq(ref, 0), seq(ref, 1)
        cached = {**batch, "ref_logp": jnp.stack([ref_0, ref_1], 1)}
        loss, g = jax.value_and_grad(lambda q: loss_fn(q, cached, None, None)[0])(p)
        kl_ratio = seq(p, 1) - ref_1
        want, _ = kto_loss(seq(p, 0) - ref_0, kl_ratio, batch["desirable"], batch["valid"], hp.beta, hp.lambda_d,
                           hp.lambda_u)
        # the gradient of the matched examples alone with z0 a constant: the mismatched pairs get none
        z0 = jnp.full_like(kl_ratio, jnp.maximum(kl_ratio.mean(), 0.0))
        g_want = jax.grad(lambda q: kto_loss(seq(q, 0) - ref_0, z0, batch["desirable"], batch["valid"], hp.beta,
                                             hp.lambda_d, hp.lambda_u)[0])(p)
        return loss, want, g, g_want, jnp.abs(ref_0).max() + jnp.abs(ref_1).max()

    loss, want, g, g_want, scale = compute(model.params)
    # the same log-prob sums in other orders (both slots from one batch against one slot): each
    # ratio and z0 within two forward chains at the log-probs' size, and the loss moves by at most
    # lambda * beta / 4 per unit of them (the sigmoid's slope), twice (r and z0)
    chain = tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.head_dim, 16) + CFG.vocab_size + 16
    atol = max(hp.lambda_d, hp.lambda_u) * hp.beta * tol.f32(chain, float(scale))
    assert float(loss) == pytest.approx(float(want), abs=atol) and float(loss) != 0.5
    n = tol.gradient_chain(CFG, 16, batch["tokens"].shape[0] * 16)
    g_scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(g_want))
    assert g_scale > 0
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol.f32(n, g_scale))

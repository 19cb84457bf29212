"""Losses, GAE, KL estimators and the KL controller against hand-computed values."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.objectives import ppo
from rlhf_jax.objectives.reward import bradley_terry_loss


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_kwise_weights_each_prompt_once():
    # prompt 0: K=3 strict ranking; prompt 1: a pair (third slot empty)
    scores = jnp.array([[2.0, 1.0, 0.0], [0.5, 1.5, 9.0]])
    ranks = jnp.array([[0, 1, 2], [0, 1, -1]])
    valid = jnp.array([[1, 1, 1], [1, 1, 0]])
    loss, m = bradley_terry_loss(scores, ranks, valid)
    p0 = -(math.log(sig(1.0)) + math.log(sig(2.0)) + math.log(sig(1.0))) / 3
    p1 = -math.log(sig(-1.0))
    assert float(loss) == pytest.approx((p0 + p1) / 2, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(3 / 4) and float(m["pairs"]) == 4
    loss_m, _ = bradley_terry_loss(scores, ranks, valid, margin=0.5)
    p1m = -math.log(sig(-1.5))
    p0m = -(2 * math.log(sig(0.5)) + math.log(sig(1.5))) / 3
    assert float(loss_m) == pytest.approx((p0m + p1m) / 2, rel=1e-6)
    loss_c, _ = bradley_terry_loss(scores, ranks, valid, center_coef=0.1)
    center = 0.1 * ((9 + 4 + 1) / 3 + 4.0) / 2
    assert float(loss_c) == pytest.approx((p0 + p1) / 2 + center, rel=1e-6)


def test_ties_are_not_pairs():
    loss, m = bradley_terry_loss(jnp.array([[1.0, 0.0, 3.0]]), jnp.array([[0, 1, 1]]), jnp.array([[1, 1, 1]]))
    assert float(m["pairs"]) == 2
    assert float(loss) == pytest.approx(-(math.log(sig(1.0)) + math.log(sig(-2.0))) / 2, rel=1e-6)


def test_kl_estimators():
    logp, ref = jnp.array([[-1.0, -2.0]]), jnp.array([[-1.5, -1.0]])
    l = np.array([0.5, -1.0])
    np.testing.assert_allclose(ppo.kl_estimate(logp, ref, "k1")[0], l, rtol=1e-6)
    np.testing.assert_allclose(ppo.kl_estimate(logp, ref, "k2")[0], l ** 2 / 2, rtol=1e-6)
    np.testing.assert_allclose(ppo.kl_estimate(logp, ref, "k3")[0], np.exp(-l) - 1 + l, rtol=1e-6)
    assert (np.asarray(ppo.kl_estimate(logp, ref, "k3")) >= 0).all()
    with pytest.raises(ValueError):
        ppo.kl_estimate(logp, ref, "k4")


def reference_gae(r, v, gamma, lam):
    adv, last = [0.0] * len(r), 0.0
    for t in reversed(range(len(r))):
        nv = v[t + 1] if t + 1 < len(r) else 0.0
        delta = r[t] + gamma * nv - v[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_hand_computed_and_masked():
    rewards = jnp.array([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = jnp.array([[0.5, 0.6, 0.7], [0.1, 0.2, 99.0]])
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])  # row 1 ends after two tokens: its third value is ignored
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    np.testing.assert_allclose(adv[0], [0.46575, 0.385, 0.3], rtol=1e-6)
    np.testing.assert_allclose(adv[1], reference_gae([0.0, 2.0], [0.1, 0.2], 1.0, 0.95) + [0.0], rtol=1e-6)
    np.testing.assert_allclose(ret, (adv + values) * mask, rtol=1e-6)
    adv_g, _ = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    np.testing.assert_allclose(adv_g[0], reference_gae([0, 0, 1], [0.5, 0.6, 0.7], 0.9, 0.5), rtol=1e-6)


def test_token_rewards_put_the_score_on_the_last_token():
    kl = jnp.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    r = ppo.token_rewards(jnp.array([1.0, -1.0]), kl, mask, 0.5)
    np.testing.assert_allclose(r, [[-0.05, -0.1, 1 - 0.15], [-1 - 0.2, 0, 0]], rtol=1e-6)


def test_policy_and_value_losses():
    adv = jnp.array([[1.0, -1.0]])
    old = jnp.log(jnp.array([[0.5, 0.5]]))
    new = jnp.log(jnp.array([[0.75, 0.75]]))  # ratio 1.5 on both tokens
    loss, m = ppo.policy_loss(new, old, adv, jnp.ones((1, 2)), clip_eps=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(1.5, 1.2) = 1.5
    assert float(loss) == pytest.approx((-1.2 + 1.5) / 2, rel=1e-6)
    assert float(m["clipfrac"]) == pytest.approx(0.5)
    v, v_old, ret = jnp.array([[1.0, 0.0]]), jnp.array([[0.5, 0.1]]), jnp.array([[2.0, 0.0]])
    vl, _ = ppo.value_loss(v, v_old, ret, jnp.ones((1, 2)), clip_eps=0.2)
    # token 0: max((1-2)^2, (0.7-2)^2) = 1.69; token 1: max(0, (0-0)^2) = 0
    assert float(vl) == pytest.approx(0.5 * (1.69 + 0.0) / 2, rel=1e-6)


def test_whitening():
    x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    mask = jnp.array([[1, 1, 1, 0]])
    w = ppo.masked_whiten(x, mask)
    np.testing.assert_allclose(w[0, :3], np.array([-1, 0, 1]) / np.sqrt(2 / 3), rtol=1e-5)
    assert float(w[0, 3]) == 0.0
    kept = ppo.masked_whiten(x, mask, shift_mean=False)
    np.testing.assert_allclose(kept[0, :3], 2 + np.array([-1, 0, 1]) / np.sqrt(2 / 3), rtol=1e-5)


def test_adaptive_kl_controller():
    # Ziegler et al. example values: init 0.15, target 6, horizon 10000
    assert float(ppo.adaptive_kl_update(0.15, 12.0, 6.0, 10000, 512)) == pytest.approx(0.15 * (1 + 0.2 * 512 / 1e4))
    assert float(ppo.adaptive_kl_update(0.15, 5.4, 6.0, 10000, 512)) == pytest.approx(0.15 * (1 - 0.1 * 512 / 1e4))
    assert float(ppo.adaptive_kl_update(0.15, 0.0, 6.0, 10000, 512)) == pytest.approx(0.15 * (1 - 0.2 * 512 / 1e4))


def test_entropy_of_uniform():
    logits = jnp.zeros((1, 2, 4))
    assert float(ppo.entropy(logits, jnp.ones((1, 2)))) == pytest.approx(math.log(4), rel=1e-6)

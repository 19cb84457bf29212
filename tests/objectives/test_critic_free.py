"""The critic-free advantage estimators and the policy losses (objectives/ppo.py) against
hand-computed values: a group of 3 with known rewards, the leave-one-out baseline, REINFORCE++'s
batch-normalised returns, ReMax's greedy baseline, GRPO / Dr. GRPO / DAPO / GSPO normalisation
and clipping, DAPO's overlong penalty and dynamic sampling."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax.objectives import ppo as P

# float32 sums and divisions of a handful of O(1) numbers: a few ulps
RTOL = 1e-6


def inputs(score_B, kl_BxN=None, mask_BxN=None, G=3, baseline_B=None, N=2):
    """Sequence scores placed on each response's last token (as score_rollout does)."""
    B = len(score_B)
    mask = jnp.ones((B, N)) if mask_BxN is None else jnp.asarray(mask_BxN, jnp.float32)
    placed = jnp.asarray(score_B, jnp.float32)[:, None] * P.at_last_token(mask)
    kl = jnp.zeros((B, N)) if kl_BxN is None else jnp.asarray(kl_BxN, jnp.float32)
    return P.AdvantageInputs(placed, kl, mask, None, baseline_B, G)


HP = ml_collections.ConfigDict({"gamma": 1.0, "lam": 0.95, "whiten_rewards": False, "whiten_advantages": False})


def run(name, inp, kl_coef=0.0):
    adv, returns = P.ADVANTAGE_ESTIMATORS[name].fn(inp, jnp.float32(kl_coef), HP)
    return np.asarray(adv), returns


def test_grpo_group_of_three():
    # groups [1, 2, 6] and [0, 0, 3]: mean 3, unbiased std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7)
    adv, returns = run("grpo", inputs([1.0, 2.0, 6.0, 0.0, 0.0, 3.0], kl_BxN=np.full((6, 2), 5.0)), kl_coef=1.0)
    assert returns is None
    g1 = np.array([-2.0, -1.0, 3.0]) / (math.sqrt(7) + 1e-6)
    g2 = np.array([-1.0, -1.0, 2.0]) / (math.sqrt(3) + 1e-6)  # mean 1, std sqrt((1 + 1 + 4) / 2)
    expected = np.concatenate([g1, g2])
    # the same advantage on every token of a response, and the KL is not in it (it is a loss term)
    np.testing.assert_allclose(adv, np.stack([expected, expected], 1), rtol=RTOL)
    assert P.ADVANTAGE_ESTIMATORS["grpo"].kl == "loss" and not P.ADVANTAGE_ESTIMATORS["grpo"].critic


def test_dr_grpo_drops_the_std():
    adv, _ = run("dr_grpo", inputs([1.0, 2.0, 6.0]))
    np.testing.assert_allclose(adv[:, 0], [-2.0, -1.0, 3.0], rtol=RTOL)


def test_rloo_leave_one_out_with_the_kl_folded_in():
    # R = score - beta * sum_t kl_t; response 0 has KL 1 + 1 = 2, beta 0.5: R = [0, 2, 6]
    kl = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    adv, _ = run("rloo", inputs([1.0, 2.0, 6.0], kl_BxN=kl), kl_coef=0.5)
    np.testing.assert_allclose(adv[:, 0], [0 - (2 + 6) / 2, 2 - (0 + 6) / 2, 6 - (0 + 2) / 2], rtol=RTOL)
    np.testing.assert_allclose(adv[:, 1], adv[:, 0], rtol=0)


def test_reinforce_pp_returns_normalised_over_the_batch():
    # token rewards: -beta kl_t, plus the score on the last token; response 1 has one token
    mask = np.array([[1.0, 1.0], [1.0, 0.0]])
    kl = np.array([[0.4, 0.2], [1.0, 0.0]])
    adv, _ = run("reinforce_pp", inputs([3.0, -1.0], kl_BxN=kl, mask_BxN=mask, G=1), kl_coef=0.5)
    r = np.array([[-0.2, -0.1 + 3.0], [-0.5 - 1.0, 0.0]])
    returns = np.array([[r[0, 0] + r[0, 1], r[0, 1]], [r[1, 0], 0.0]])  # gamma 1, summed to the end
    live = returns[mask > 0]
    expected = (returns - live.mean()) / math.sqrt(live.var() + 1e-8) * mask
    np.testing.assert_allclose(adv, expected, rtol=1e-5)


def test_remax_greedy_baseline():
    kl = np.array([[0.5, 0.5], [0.0, 0.0]])
    adv, _ = run("remax", inputs([2.0, 1.0], kl_BxN=kl, G=1, baseline_B=jnp.array([1.5, 1.5])), kl_coef=0.2)
    np.testing.assert_allclose(adv[:, 0], [2.0 - 0.2 * 1.0 - 1.5, 1.0 - 1.5], rtol=RTOL)
    assert P.ADVANTAGE_ESTIMATORS["remax"].greedy


def test_only_gae_needs_a_critic():
    assert [n for n, e in P.ADVANTAGE_ESTIMATORS.items() if e.critic] == ["gae"]


# --- policy losses: two responses, lengths 2 and 1, ratio exp(l) per token -------------------

MASK = jnp.array([[1.0, 1.0], [1.0, 0.0]])
OLD = jnp.zeros((2, 2))


def loss(kind, log_ratio, adv, **kw):
    value, metrics = P.policy_loss(jnp.asarray(log_ratio, jnp.float32), OLD, jnp.asarray(adv, jnp.float32), MASK,
                                   kind=kind, **kw)
    return float(value), metrics


def test_normalisations():
    adv = np.array([[1.0, 1.0], [-2.0, 0.0]])
    # at ratio 1 each token contributes -A: tokens (-1, -1, 2)
    assert loss("ppo", np.zeros((2, 2)), adv)[0] == pytest.approx((-1 - 1 + 2) / 3, rel=RTOL)
    assert loss("dapo", np.zeros((2, 2)), adv)[0] == pytest.approx((-1 - 1 + 2) / 3, rel=RTOL)
    assert loss("grpo", np.zeros((2, 2)), adv)[0] == pytest.approx(((-1 - 1) / 2 + 2 / 1) / 2, rel=RTOL)
    assert loss("dr_grpo", np.zeros((2, 2)), adv)[0] == pytest.approx((-1 - 1 + 2) / (2 * 2), rel=RTOL)


def test_clip_higher():
    # a positive advantage at ratio 1.25: PPO's symmetric clip stops it at 1.2, DAPO's 0.28 does not
    lr = np.log(np.array([[1.25, 1.25], [1.0, 1.0]]))
    adv = np.array([[1.0, 1.0], [0.0, 0.0]])
    sym, m = loss("ppo", lr, adv, clip_eps=0.2)
    high, m_high = loss("dapo", lr, adv, clip_eps=0.2, clip_eps_high=0.28)
    assert sym == pytest.approx(-2 * 1.2 / 3, rel=RTOL) and float(m["clipfrac"]) == pytest.approx(2 / 3)
    assert high == pytest.approx(-2 * 1.25 / 3, rel=RTOL) and float(m_high["clipfrac"]) == 0.0
    # the low side is still 1 - clip_eps: a negative advantage at ratio 0.7 is held at 0.8
    low, _ = loss("dapo", np.log(np.array([[0.7, 0.7], [1.0, 1.0]])), -adv, clip_eps=0.2, clip_eps_high=0.28)
    assert low == pytest.approx(2 * 0.8 / 3, rel=RTOL)


def test_gspo_sequence_ratio():
    # response 0: token log-ratios 0.1 and 0.3 -> s = exp(0.2); response 1: one token at -0.1
    lr = np.array([[0.1, 0.3], [-0.1, 5.0]])  # the padded token's 5.0 must not count
    adv = np.array([[2.0, 2.0], [-1.0, 0.0]])
    wide, m = loss("gspo", lr, adv, clip_eps=0.5)
    assert wide == pytest.approx((-2 * math.exp(0.2) + math.exp(-0.1)) / 2, rel=RTOL)
    assert float(m["ratio_max"]) == pytest.approx(math.exp(0.2), rel=RTOL)
    narrow, m = loss("gspo", lr, adv, clip_eps=3e-4, clip_eps_high=4e-4)  # both ratios clipped
    assert narrow == pytest.approx((-2 * (1 + 4e-4) + (1 - 3e-4)) / 2, rel=RTOL)
    assert float(m["clipfrac"]) == 1.0


def test_gspo_gradient_is_the_sequence_ratios():
    """d/dl_t of -A s with s = exp(mean_t l_t): -A s / |y| on each live token, 0 on padding."""
    adv = jnp.array([[2.0, 2.0], [-1.0, 0.0]])
    g = jax.grad(lambda lr: P.policy_loss(lr, OLD, adv, MASK, clip_eps=0.5, kind="gspo")[0])(
        jnp.array([[0.1, 0.3], [-0.1, 5.0]]))
    s0, s1 = math.exp(0.2), math.exp(-0.1)
    np.testing.assert_allclose(np.asarray(g), [[-2 * s0 / 2 / 2, -2 * s0 / 2 / 2], [s1 / 2, 0.0]], rtol=1e-5)


def test_aggregate_weights_recombine_slices():
    """Two slices, each normalised its own way and weighted by `aggregate_weight`, give the whole."""
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 6.0, 0.0], [7.0, 8.0, 9.0]])
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    for how in ("token", "sequence", "constant"):
        w = [float(P.aggregate_weight(mask[i:i + 2], how)) for i in (0, 2)]
        parts = [float(P.aggregate(x[i:i + 2], mask[i:i + 2], how)) for i in (0, 2)]
        whole = float(P.aggregate(x, mask, how))
        assert np.dot(w, parts) / sum(w) == pytest.approx(whole, rel=RTOL), how


def test_overlong_penalty():
    # max 10 tokens, buffer 4: no penalty up to 6, then (6 - |y|) / 4 down to -1 at 10
    out = P.overlong_penalty(jnp.array([3.0, 6.0, 7.0, 9.0, 10.0]), 10, 4)
    np.testing.assert_allclose(np.asarray(out), [0.0, 0.0, -0.25, -0.75, -1.0], rtol=RTOL)


def test_dynamic_sampling_keeps_groups_that_differ_first():
    # groups of 2: [1, 1] all equal, [0, 1] differ, [2, 2] equal, [3, 0] differ
    order, differs = P.dynamic_sampling_order(jnp.array([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 3.0, 0.0]), 2)
    assert order.tolist() == [1, 3, 0, 2] and differs.tolist() == [True, True, False, False]

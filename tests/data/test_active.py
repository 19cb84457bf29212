"""Active selection of comparisons: every strategy against picks worked out by hand.

The case: 2 prompts with K = 3 responses, so 6 candidates c0..c5 = (p, i, j) in
`candidate_pairs` order (0,0,1) (0,0,2) (0,1,2) (1,0,1) (1,0,2) (1,1,2), scored by 2 members A
and B. The scores were built from the members' mean M = (A + B) / 2 and half-gap G = (A - B) / 2,
since the mean difference on (i, j) is M_i - M_j and, with two members, the variance (ddof 0) of
the differences is (G_i - G_j)^2:

    prompt 0: M = [1, 0.5, 2], G = [-1, 0.5, 1]    -> A = [0, 1, 3],        B = [2, 0, 1]
    prompt 1: M = [0, 0.75, 3], G = [0, 3, -1.75] -> A = [0, 3.75, 1.25], B = [0, -2.25, 4.75]

    candidate        c0     c1    c2     c3     c4      c5
    d_A = A_i - A_j  -1     -3    -2    -3.75  -1.25   2.5
    d_B = B_i - B_j   2      1    -1     2.25  -4.75  -7
    mean d            0.5   -1    -1.5  -0.75  -3     -2.25
    Var d (ddof 0)    2.25   4     0.25  9      3.0625 22.5625

Every number is a multiple of 1/16, exact in float64, so the variances compare exactly.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import active as A
from rlhf_jax.registry import UnknownNameError

SCORES = np.array([[[0, 1, 3], [0, 3.75, 1.25]],       # member A [P = 2, K = 3]
                   [[2, 0, 1], [0, -2.25, 4.75]]])     # member B
CANDIDATES = A.candidate_pairs(2, 3)
MEAN_D = np.array([0.5, -1, -1.5, -0.75, -3, -2.25])
VAR_D = np.array([2.25, 4, 0.25, 9, 3.0625, 22.5625])


def pick(strategy, budget=6, scores=SCORES, seed=0, **kw):
    return A.select(strategy, CANDIDATES, scores, budget, np.random.default_rng(seed), **kw)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_candidate_pairs_and_the_hand_table():
    assert CANDIDATES.tolist() == [[0, 0, 1], [0, 0, 2], [0, 1, 2], [1, 0, 1], [1, 0, 2], [1, 1, 2]]
    assert A.candidate_pairs(1, 4)[:, 1:].tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    p, i, j = CANDIDATES.T
    d = SCORES[:, p, i] - SCORES[:, p, j]
    np.testing.assert_array_equal(d, [[-1, -3, -2, -3.75, -1.25, 2.5], [2, 1, -1, 2.25, -4.75, -7]])
    np.testing.assert_array_equal(d.mean(0), MEAN_D)
    np.testing.assert_array_equal(d.var(0), VAR_D)


def test_disagreement_orders_by_the_members_variance():
    # Var: c5 22.5625 > c3 9 > c1 4 > c4 3.0625 > c0 2.25 > c2 0.25
    sel = pick("disagreement")
    assert sel.chosen.tolist() == [5, 3, 1, 4, 0, 2]
    np.testing.assert_array_equal(sel.scores, [22.5625, 9, 4, 3.0625, 2.25, 0.25])
    assert pick("disagreement", budget=2).chosen.tolist() == [5, 3]


def test_uncertainty_of_the_ensemble_mean_picks_probabilities_nearest_one_half():
    # |mean d|: c0 0.5 < c3 0.75 < c1 1 < c2 1.5 < c5 2.25 < c4 3; score min(P, 1 - P)
    sel = pick("uncertainty")
    assert sel.chosen.tolist() == [0, 3, 1, 2, 5, 4]
    by_hand = [min(sigmoid(m), 1 - sigmoid(m)) for m in MEAN_D[[0, 3, 1, 2, 5, 4]]]
    # each side is a few float64 roundings (exp, sum, division; 1 - P) from the exact value, and
    # 1 - P carries P's error relative to P >= 1/2 onto a value <= 1/2: within 8 eps of each other
    np.testing.assert_allclose(sel.scores, by_hand, rtol=8 * np.finfo(np.float64).eps, atol=0)
    assert sel.scores[0] == pytest.approx(1 / (1 + math.exp(0.5)), rel=1e-15)


def test_uncertainty_of_a_single_rm():
    # member A alone (k = 1): |d_A| c0 1 < c4 1.25 < c2 2 < c5 2.5 < c1 3 < c3 3.75
    sel = pick("uncertainty", budget=3, scores=SCORES[:1])
    assert sel.chosen.tolist() == [0, 4, 2]
    np.testing.assert_allclose(sel.scores, [sigmoid(-1), sigmoid(-1.25), sigmoid(-2)], rtol=1e-15, atol=0)


def test_diverse_disagreement_caps_each_prompt_cluster():
    # the disagreement order c5 c3 c1 c4 c0 c2 is prompts 1 1 0 1 0 0
    one = pick("diverse_disagreement")  # default: one cluster per prompt, one comparison each
    assert one.chosen.tolist() == [5, 1]  # c3 is skipped (prompt 1 is full); then both are full
    np.testing.assert_array_equal(one.scores, [22.5625, 4])
    assert pick("diverse_disagreement", per_cluster=2).chosen.tolist() == [5, 3, 1, 0]  # c4, c2 skipped
    assert pick("diverse_disagreement", budget=3, per_cluster=2).chosen.tolist() == [5, 3, 1]
    # both prompts in one cluster: the cap counts them together
    assert pick("diverse_disagreement", clusters=[7, 7], per_cluster=3).chosen.tolist() == [5, 3, 1]
    assert pick("diverse_disagreement", clusters=[0, 1], per_cluster=1).chosen.tolist() == [5, 1]
    # a cap no cluster reaches is plain disagreement
    assert pick("diverse_disagreement", per_cluster=3).chosen.tolist() == pick("disagreement").chosen.tolist()


def test_random_is_uniform_without_replacement_and_fixed_by_the_seed():
    sel = pick("random", budget=4, seed=3)
    assert len(set(sel.chosen.tolist())) == 4 and set(sel.chosen.tolist()) <= set(range(6))
    np.testing.assert_array_equal(sel.scores, np.zeros(4))
    assert pick("random", budget=4, seed=3).chosen.tolist() == sel.chosen.tolist()
    assert pick("random", budget=6).chosen.tolist() == np.random.default_rng(0).permutation(6).tolist()
    # first picks over 6000 seeds: each candidate 1000 times in expectation (binomial sd 28.9);
    # 6 sd either side fails by chance with probability 1e-8 per candidate
    firsts = np.bincount([pick("random", budget=1, seed=s).chosen[0] for s in range(6000)], minlength=6)
    assert np.all(np.abs(firsts - 1000) < 6 * math.sqrt(6000 * (1 / 6) * (5 / 6))), firsts


def test_ties_fall_in_the_generators_order():
    # all members agree on every difference: every variance is 0, a six-way tie
    agree = np.stack([SCORES[0], SCORES[0]])
    for seed in range(3):
        got = pick("disagreement", scores=agree, seed=seed).chosen.tolist()
        assert got == np.random.default_rng(seed).permutation(6).tolist()
        assert got == pick("disagreement", scores=agree, seed=seed).chosen.tolist()
    orders = {tuple(pick("disagreement", scores=agree, seed=s).chosen) for s in range(20)}
    assert len(orders) > 1
    # a tie only reorders its own members: d = +-0.5 on c0 and c1 tie in uncertainty, ahead of the rest
    symmetric = np.array([[[0, 0.5, -0.5], [0, 2, 5]]])  # c0 d = -0.5, c1 d = 0.5, c2 d = 1, c3 -2 ...
    seen = set()
    for s in range(20):
        sel = pick("uncertainty", scores=symmetric, seed=s)
        assert sel.scores[0] == sel.scores[1] and set(sel.chosen[:2].tolist()) == {0, 1}
        assert sel.chosen[2:].tolist() == [2, 3, 5, 4]  # |d| 1, 2, 3, 5
        seen.add(tuple(sel.chosen[:2].tolist()))
    assert seen == {(0, 1), (1, 0)}


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "disagreement", "diverse_disagreement"])
def test_budget_beyond_the_candidates_returns_them_all_and_zero_returns_none(strategy):
    sel = pick(strategy, budget=100, per_cluster=3)
    assert sorted(sel.chosen.tolist()) == list(range(6)) and len(sel.scores) == 6
    assert pick(strategy, budget=0).chosen.tolist() == []
    # jax arrays in, numpy out
    again = pick(strategy, budget=100, scores=jnp.asarray(SCORES, jnp.float32), per_cluster=3)
    assert isinstance(again.chosen, np.ndarray) and again.chosen.tolist() == sel.chosen.tolist()


def test_disagreement_needs_two_members():
    for strategy in ("disagreement", "diverse_disagreement"):
        with pytest.raises(ValueError, match=r"k >= 2 .* k=1"):
            pick(strategy, scores=SCORES[:1])


def test_unknown_strategy_lists_the_registered_ones():
    with pytest.raises(UnknownNameError, match="'entropy' is not one of .*'random', 'uncertainty', "
                                               "'disagreement', 'diverse_disagreement'"):
        pick("entropy")
    assert A.SELECTION_STRATEGIES.names() == ("random", "uncertainty", "disagreement", "diverse_disagreement")


@pytest.mark.parametrize("kwargs, match", [
    ({"scores": SCORES[0]}, r"\[k, n_prompts, K\], got shape \(2, 3\)"),
    ({"scores": np.where(SCORES == 3, np.nan, SCORES)}, "1 non-finite"),
    ({"budget": -1}, "budget=-1"),
    ({"per_cluster": 0}, "per_cluster=0"),
    ({"clusters": [0, 1, 2]}, r"shape \(2,\)"),
])
def test_bad_input_fails_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pick("disagreement", **kwargs)


@pytest.mark.parametrize("row", [[2, 0, 1], [0, 1, 1], [0, 0, 3], [-1, 0, 1]])
def test_bad_candidate_rows_are_named(row):
    bad = np.concatenate([CANDIDATES, [row]])
    with pytest.raises(ValueError, match=rf"candidates row 6 = \[{row[0]}, {row[1]}, {row[2]}\]"):
        A.select("uncertainty", bad, SCORES, 3, np.random.default_rng(0))


def test_member_scores_lays_out_members_prompts_and_responses():
    """A fake vmapped ensemble of 2 members, member m's score of a row = (m + 1) * its last real
    token; P = 3 prompts of K = 2 responses (6 rows) in chunks of 4 (a ragged last chunk)."""
    def score_members(params, tokens, mask):
        last = jnp.take_along_axis(tokens, mask.sum(1, keepdims=True) - 1, 1)[:, 0]
        return params[:, None] * last[None].astype(jnp.float32)

    tokens = np.arange(3 * 2 * 4).reshape(3, 2, 4)
    mask = np.ones_like(tokens)
    mask[1, 0, 2:] = 0  # row (prompt 1, response 0) ends at column 1: token 9
    got = A.member_scores(score_members, jnp.array([1.0, 2.0]), tokens, mask, chunk=4)
    last = np.array([[3, 7], [9, 15], [19, 23]], np.float64)
    np.testing.assert_array_equal(got, np.stack([last, 2 * last]))
    assert A.select("disagreement", A.candidate_pairs(3, 2), got, 1, np.random.default_rng(0)).chosen.tolist() == [1]

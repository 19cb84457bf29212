"""rlhf_jax.rewards: every implementation of the `Reward` interface against values computed by
hand on a tiny case.

The model-backed rewards run on a "readable" scalar-head model: its blocks add nothing to the
residual stream (attention and MLP output projections are zero) and token t's embedding is
sqrt(D) * e_(t mod D), so after the final RMSNorm its value at every position is a known
function of that position's token alone:

    value(t) = bias + slope * (t mod D) * sqrt(D / (1 + eps))

which makes "read at the last real token" (and every other placement) checkable by hand.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import synthetic
from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.objectives.ensemble import aggregate
from rlhf_jax.objectives.finegrained import Component
from rlhf_jax.rewards import EnsembleReward, GoldReward, ModelReward, Reward, SequenceReward, place
from rlhf_jax.rewards.classifier import ClassifierReward
from rlhf_jax.rewards.finegrained import FineGrainedReward

CFG = PRESETS["test"]
D = CFG.d_model
GAIN = np.sqrt(D / (1 + CFG.norm_eps))  # RMSNorm of a one-hot vector of norm sqrt(D)
TOK = synthetic.tokenizer()  # word level: <pad> 0, <bos> 1, <eos> 2, ..., "sort" 4, "0".."9" 7..16
EOS = TOK.eos_token_id
# A value passes through an rsqrt and three float32 products or sums, with no accumulation (one
# non-zero term in the head's dot product); the values and their terms stay below 32 in size, where
# a float32 ulp is 1.9e-6 (3.8e-6 at 32), so a value is within 4 ulps = 1.5e-5 of its exact size.
ATOL = 1.5e-5


def readable(slope: float, bias: float, seed: int = 0):
    """(graphdef, params) of the readable scalar-head model (module docstring)."""
    model = init_model(CFG, head="scalar", seed=seed)
    p = jax.tree.map(jnp.asarray, model.params)
    p["blocks"] = {**p["blocks"], "wo": jnp.zeros_like(p["blocks"]["wo"]),
                   "w_down": jnp.zeros_like(p["blocks"]["w_down"])}
    p["embed"] = jnp.sqrt(float(D)) * jnp.eye(D)[jnp.arange(CFG.vocab_size) % D]
    p["head"] = {"kernel": slope * jnp.arange(D, dtype=jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    return model.graphdef, p


def value(token: int, slope: float, bias: float) -> float:
    return bias + slope * (token % D) * GAIN


def stack(*params):
    return jax.tree.map(lambda *x: jnp.stack(x), *params)


# Two rows of prompt (P = 2) + response (N = 4): row 0 has a left-padded prompt and a response
# ending in EOS with one padding column after it; row 1 is full. Last real tokens: EOS, 16.
N_PROMPT = 2
TOKENS = np.array([[0, 9, 12, 5, EOS, 0],
                   [7, 8, 13, 14, 15, 16]], np.int32)
MASK = np.array([[0, 1, 1, 1, 1, 0],
                 [1, 1, 1, 1, 1, 1]], np.int32)


def test_place_puts_a_sequence_score_on_the_last_response_token_and_score_sums():
    class Fixed(SequenceReward):
        def sequence_score(self, params, tokens_BxT, mask_BxT):
            return jnp.array([2.0, -1.0])

    class PerToken(Reward):
        def rewards(self, params, tokens_BxT, mask_BxT, n_prompt):
            return jnp.array([[1.0, 2.0, 0.5, 0.0], [0.5, 0.5, 0.5, 0.25]])

    args = (None, jnp.asarray(TOKENS), jnp.asarray(MASK), N_PROMPT)
    np.testing.assert_array_equal(Fixed().placed(*args), [[0, 0, 2.0, 0], [0, 0, 0, -1.0]])
    np.testing.assert_array_equal(Fixed().score(*args), [2.0, -1.0])
    np.testing.assert_array_equal(PerToken().placed(*args), [[1.0, 2.0, 0.5, 0.0], [0.5, 0.5, 0.5, 0.25]])
    np.testing.assert_array_equal(PerToken().score(*args), [3.5, 1.75])
    np.testing.assert_array_equal(place(jnp.array([3.0]), jnp.array([[1, 0, 0]])), [[3.0, 0, 0]])


@pytest.mark.parametrize("scale", [None, 4.0])
def test_model_reward_reads_the_last_real_token_and_divides_by_its_scale(scale):
    slope, bias = 0.125, -0.5
    graphdef, params = readable(slope, bias)
    reward = ModelReward(graphdef, scale)
    expected = np.array([value(EOS, slope, bias), value(16, slope, bias)]) / (scale or 1.0)
    got = jax.jit(lambda p, t, m: reward.score(p, t, m, N_PROMPT))(params, TOKENS, MASK)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    placed = reward.placed(params, jnp.asarray(TOKENS), jnp.asarray(MASK), N_PROMPT)
    np.testing.assert_allclose(placed, [[0, 0, expected[0], 0], [0, 0, 0, expected[1]]], rtol=0, atol=ATOL)


def test_ensemble_reward_aggregates_its_members_scores():
    members = [(0.125, -0.5), (-0.25, 1.0), (0.0625, 2.0)]
    graphdef = readable(*members[0])[0]
    params = stack(*(readable(s, b)[1] for s, b in members))
    by_hand = np.array([[value(EOS, s, b), value(16, s, b)] for s, b in members])  # [k, B]
    scores = EnsembleReward(graphdef, None).member_scores(params, TOKENS, MASK)
    np.testing.assert_allclose(scores, by_hand, rtol=0, atol=ATOL)
    worst = EnsembleReward(graphdef, lambda s: aggregate(s, "min"))
    np.testing.assert_allclose(worst.score(params, TOKENS, MASK, N_PROMPT), by_hand.min(0), rtol=0, atol=ATOL)
    # the members' errors reach the mean (<= ATOL) and half the std (<= 0.5 sqrt(3/2) ATOL), plus
    # the std's own rounding (a few ulps of ~20): under 2 ATOL
    penalised = EnsembleReward(graphdef, lambda s: aggregate(s, "mean_std", 0.5, 1))
    np.testing.assert_allclose(penalised.score(params, TOKENS, MASK, N_PROMPT),
                               by_hand.mean(0) - 0.5 * by_hand.std(0, ddof=1), rtol=0, atol=2 * ATOL)
    # an ensemble of one with the mean is the single model
    one = EnsembleReward(graphdef, lambda s: aggregate(s, "mean"))
    np.testing.assert_allclose(one.score(stack(readable(*members[1])[1]), TOKENS, MASK, N_PROMPT),
                               ModelReward(graphdef).score(readable(*members[1])[1], TOKENS, MASK, N_PROMPT),
                               rtol=0, atol=ATOL)


def test_gold_reward_scores_the_decoded_texts_on_the_host_and_inside_jit():
    seen = []

    def fn(prompts, responses):  # 10 x prompt words + response words; NaN for an empty response
        seen.append((prompts, responses))
        return [10 * len(p.split()) + len(r.split()) if r else np.nan for p, r in zip(prompts, responses)]

    gold = GoldReward(fn, TOK)
    # "sort 3 1" -> "1 3 <eos>" (EOS is no text); "max 2" (left-padded) -> an empty response
    tokens = np.array([[4, 10, 8, 8, 10, EOS], [0, 6, 9, 0, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]], np.int32)
    host = gold.host_scores(tokens[:, :3], mask[:, :3], tokens[:, 3:], mask[:, 3:])
    np.testing.assert_array_equal(host, [32.0, np.nan])
    assert seen[-1] == (["sort 3 1", "max 2"], ["1 3", ""])
    jitted = jax.jit(lambda t, m: gold.score(None, t, m, 3))(tokens, mask)
    assert jitted.dtype == jnp.float32
    np.testing.assert_array_equal(jitted, [32.0, np.nan])


def test_classifier_reward_reads_the_last_text_token_with_eos_masked_out():
    slope, bias = 0.125, -1.0
    graphdef, params = readable(slope, bias)
    # "sort 3 1" + "1 3 <eos>" ends in EOS, "sort 3 1" + "1 3 0" was cut off; "max 2" + "9" is shorter
    prompt = np.array([[4, 10, 8], [4, 10, 8], [0, 6, 9]], np.int32)
    pmask = np.array([[1, 1, 1], [1, 1, 1], [0, 1, 1]], np.int32)
    response = np.array([[8, 10, EOS], [8, 10, 7], [16, 0, 0]], np.int32)
    rmask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0]], np.int32)
    logits = np.array([value(10, slope, bias), value(7, slope, bias), value(16, slope, bias)])
    for output, expected in (("logit", logits), ("prob", 1 / (1 + np.exp(-logits)))):
        reward = ClassifierReward(graphdef, params, TOK, output, chunk=2)  # 3 rows: two chunks, the last padded
        host = reward.host_scores(prompt, pmask, response, rmask)
        np.testing.assert_allclose(host, expected, rtol=0, atol=ATOL)
        tokens, mask = np.concatenate([prompt, response], 1), np.concatenate([pmask, rmask], 1)
        jitted = jax.jit(lambda p, t, m: reward.score(p, t, m, 3))(params, tokens, mask)
        np.testing.assert_allclose(jitted, expected, rtol=0, atol=ATOL)
        texts = reward.fn(["sort 3 1", "max 2"], [" 1 3", " 9"])
        np.testing.assert_allclose(texts, expected[[0, 2]], rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="must be one of"):
        ClassifierReward(graphdef, params, TOK, "probability")


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("holistic", [False, True])
def test_fine_grained_reward_places_each_models_segment_rewards_by_hand(mode, holistic):
    # token 9 ends a sentence; "a" rewards sentences (w 0.3), "b" the whole response (w 0.5)
    classes = np.zeros((CFG.vocab_size, 3), bool)
    classes[9, 0] = True
    components = [Component("a", "sentence", 0.3, ("a",)), Component("b", "response", 0.5, ("b",))]
    (a_slope, a_bias), (b_slope, b_bias), (h_slope, h_bias) = (0.125, -6.7), (-0.125, 0.5), (0.125, 0.0)
    graphdef, a = readable(a_slope, a_bias)
    b, rm = readable(b_slope, b_bias)[1], readable(h_slope, h_bias)[1]
    # the prompt's 9 is no sentence end of the response; the response's sentence ends: 9 and its last token, 3
    tokens = np.array([[9, 10, 11, 9, 12, 10, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1, 0]], np.int32)
    weight, mean, std = 2.0, 1.0, 4.0
    reward = FineGrainedReward(graphdef, components, classes, mode=mode,
                               holistic=(graphdef, weight, mean, std) if holistic else None)
    got = reward.rewards((stack(a, b), rm if holistic else None), jnp.asarray(tokens), jnp.asarray(mask), 2)

    def r(v, w):
        return w * (np.sign(v) if mode == "hard" else 2 / (1 + np.exp(-v)) - 1)

    va9, va10, vb10 = value(9, a_slope, a_bias), value(10, a_slope, a_bias), value(10, b_slope, b_bias)
    assert va9 < -0.3 and va10 > 0.3 and vb10 < -0.3  # hard signs far from the threshold
    last = r(va10, 0.3) + r(vb10, 0.5)
    if holistic:
        last += weight * (value(10, h_slope, h_bias) - mean) / std
    np.testing.assert_allclose(got, [[0.0, r(va9, 0.3), 0.0, last, 0.0]], rtol=0, atol=ATOL)
    np.testing.assert_allclose(reward.score((stack(a, b), rm if holistic else None), tokens, mask, 2),
                               [r(va9, 0.3) + last], rtol=0, atol=ATOL)


@pytest.mark.parametrize("ensemble", [False, True])
def test_samples_of_a_prompt_are_scored_packed_as_padded(ensemble):
    # best-of-n's samples (score_in_chunks): each prompt once, its responses after it, scores read
    # at each response's last token. A random model (a readable one would hide a response seeing
    # its sibling); three left-padded prompts x four right-padded responses, one of them 1 token
    from rlhf_jax.rewards import score_in_chunks
    rng = np.random.default_rng(0)
    P, N = 6, 5
    prompts = [rng.integers(3, CFG.vocab_size, n).tolist() for n in (6, 3, 4)]
    tokens, mask = np.zeros((12, P + N), np.int32), np.zeros((12, P + N), np.int32)
    for i in range(12):
        p, r = prompts[i // 4], rng.integers(3, CFG.vocab_size, [1, 5, 3, 4][i % 4]).tolist()
        tokens[i, P - len(p):P], mask[i, P - len(p):P] = p, 1
        tokens[i, P:P + len(r)], mask[i, P:P + len(r)] = r, 1
    tokens[11], mask[11] = tokens[9], mask[9]  # a repeated sample: it must tie with its copy
    models = [init_model(CFG, head="scalar", seed=s) for s in (0, 1)]
    if ensemble:
        reward = EnsembleReward(models[0].graphdef, lambda s: aggregate(s, "mean_std", 0.5, 1))
        params = stack(*(m.params for m in models))
    else:
        reward, params = ModelReward(models[0].graphdef, 4.0), models[0].params
    padded = np.asarray(jax.jit(lambda p, t, m: reward.score(p, t, m, P))(params, tokens, mask))
    packed = score_in_chunks(reward, params, tokens, mask, P)
    # the same float32 sums over the same keys in rows of another length: rounding only
    np.testing.assert_allclose(packed, padded, rtol=1e-5, atol=1e-6)
    assert packed[11] == packed[9]  # scored once: a tie stays a tie (a judge's 1/2)
    assert np.ptp(padded) > 1e-2  # the scores differ: a misread slot would show
    np.testing.assert_allclose(score_in_chunks(reward, params, tokens, mask, 0), padded, rtol=1e-5, atol=1e-6)

"""Parameter and compute dtypes come from the config; logits and losses stay float32."""
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.models.hf import from_host_params
from rlhf_jax.objectives.lm import next_token_loss, shifted_token_logprobs, token_logprobs


def test_bfloat16_params_and_compute():
    f32 = init_model(PRESETS["test"], seed=0)
    cfg16 = PRESETS["test"].replace(param_dtype="bfloat16", dtype="bfloat16")
    host = jax.tree.map(np.asarray, f32.params)
    b16 = from_host_params(cfg16, host)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(b16.params))
    tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % 128
    logits16, _ = b16(tokens)
    logits32, _ = f32(tokens)
    assert logits16.dtype == jnp.float32
    # bf16 keeps ~3 significant digits: close to float32, but not equal
    diff = float(jnp.max(jnp.abs(logits16 - logits32)))
    assert 1e-5 < diff < 0.05, diff
    loss, n = next_token_loss(logits16, tokens, np.ones_like(tokens))
    assert loss.dtype == jnp.float32 and int(n) == 22


def test_mixed_precision_float32_params_bf16_compute():
    cfg = PRESETS["test"].replace(dtype="bfloat16")
    model = init_model(cfg, seed=0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.params))
    hidden_model = init_model(cfg, head="none", seed=0)
    hidden, _ = hidden_model(np.zeros((1, 4), np.int32))
    assert hidden.dtype == jnp.bfloat16


def test_token_logprobs_hand_computed():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    targets = jnp.array([[1, 2]])
    np.testing.assert_allclose(np.asarray(token_logprobs(logits, targets)), np.log([[0.25, 0.8]]), rtol=1e-6)
    # temperature 2 flattens: p ∝ sqrt(p)
    p = np.sqrt([0.1, 0.1, 0.8])
    np.testing.assert_allclose(float(token_logprobs(logits, targets, 2.0)[0, 1]), np.log(p[2] / p.sum()),
                               rtol=1e-6)
    # one predicted token (position 0 -> token 2 under [.5, .25, .25]): -log 0.25
    loss, n = next_token_loss(logits, jnp.array([[0, 2]]), jnp.array([[0, 1]]))
    np.testing.assert_allclose(float(loss), -np.log(0.25), rtol=1e-6)
    assert int(n) == 1


def test_shifted_token_logprobs_hand_computed_and_equal_to_sliced_logits():
    # column t is log p(tokens[t + 1]) under logits[t]; the last column's logits predict nothing
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]]]))
    tokens = jnp.array([[0, 2, 1]])
    got = shifted_token_logprobs(logits, tokens)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(np.asarray(got), np.log([[0.25, 0.1]]), rtol=1e-6)
    # the same numbers as slicing the logits first, at a model's shape: each column's log-sum-exp
    # is a reduction over its own V logits, so the two differ by at most a few float32 ulps
    big = jax.random.normal(jax.random.key(0), (3, 17, 1000)) * 4
    toks = jax.random.randint(jax.random.key(1), (3, 17), 0, 1000)
    want = token_logprobs(big[:, :-1], toks[:, 1:])
    np.testing.assert_allclose(np.asarray(shifted_token_logprobs(big, toks)), np.asarray(want), rtol=0, atol=1e-5)

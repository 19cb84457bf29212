"""layers.swiglu: silu(gate) * up with a hand-written backward. The forward is the expression
itself; the cotangents are checked against the float64 derivative, against torch's autograd,
and, through a whole decoder, against JAX's autodiff of the plain expression."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from rlhf_jax.models import forward as F
from rlhf_jax.models import init_model
from rlhf_jax.models import layers as L
from tests import tolerance as tol
from tests.models.test_memory_options import CFG, close

# An element's cotangent is a product of a few float32 roundings: sigmoid (exp, add, divide), then
# 1 - s, g (1 - s), 1 + ..., s (...), d u, and the last product: at most 10 on one chain, each of
# relative size <= eps / 2 at the magnitude of the largest factor product, |d u| (1 + |g|).
CHAIN = 10


def _inputs(n=4096):
    rng = np.random.default_rng(0)
    g = rng.normal(0, 4, n).astype(np.float32)
    g[:8] = [-80, -40, -17, -1e-3, 0, 1e-3, 17, 80]  # saturated sigmoid at both ends and around 0
    u, d = (rng.normal(0, 2, n).astype(np.float32) for _ in range(2))
    return g, u, d


def test_forward_is_the_expression_and_the_cotangents_the_derivative():
    g, u, d = _inputs()
    np.testing.assert_array_equal(L.swiglu(g, u), jax.nn.silu(g) * u)
    out, vjp = jax.vjp(L.swiglu, g, u)
    dg, du = vjp(jnp.asarray(d))
    g64, u64, d64 = (x.astype(np.float64) for x in (g, u, d))
    s = 1 / (1 + np.exp(-g64))
    want_dg, want_du = d64 * u64 * (s + g64 * s * (1 - s)), d64 * g64 * s
    scale_g, scale_u = np.abs(d64 * u64) * (1 + np.abs(g64)), np.abs(d64 * g64)
    assert np.all(np.abs(np.asarray(dg) - want_dg) <= tol.f32_worst(CHAIN, scale_g) + 1e-30)
    assert np.all(np.abs(np.asarray(du) - want_du) <= tol.f32_worst(CHAIN, scale_u) + 1e-30)
    assert np.all(np.isfinite(np.asarray(dg))) and np.all(np.isfinite(np.asarray(du)))
    # torch's autograd of the same expression: another implementation, float32 both sides
    tg, tu = (torch.tensor(x, requires_grad=True) for x in (g, u))
    (torch.nn.functional.silu(tg) * tu).backward(torch.tensor(d))
    assert np.all(np.abs(np.asarray(dg) - tg.grad.numpy()) <= 2 * tol.f32_worst(CHAIN, scale_g) + 1e-30)
    assert np.all(np.abs(np.asarray(du) - tu.grad.numpy()) <= 2 * tol.f32_worst(CHAIN, scale_u) + 1e-30)


def test_a_decoders_gradients_equal_autodiff_of_the_plain_expression(monkeypatch):
    assert CFG.mlp == "swiglu" and CFG.activation == "silu"  # the model takes layers.swiglu
    cfg = CFG.replace(n_layers=3)
    model = init_model(cfg, seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (4, 16)), jnp.int32)
    loss = lambda p: jnp.mean(jax.nn.log_softmax(F.forward(model.graphdef, p, tokens))[..., 5])
    ours = jax.grad(loss)(model.params)
    monkeypatch.setattr(L, "swiglu", lambda gate, up: jax.nn.silu(gate) * up)
    plain = jax.grad(loss)(model.params)
    close(ours, plain)  # two operation orders of one gradient: test_memory_options' tolerance
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(ours)) > 1e-3  # not vacuous

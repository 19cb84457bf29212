"""A block weight that is never formed in full: W = dequant(W0) + scale * A @ B, applied as
x W0 + scale * (x A) B inside the layer that uses it.

LoRA's adapters (`rlhf_jax/train/lora.py`) and the int8 bases of `lora_int8` reach the decoder
as `LowRank` leaves of the parameter tree in place of the plain arrays. The layer scan slices
them like any other weight, so each layer dequantises its own int8 matrix and applies its own
adapters; no full-size merged copy of the model's matrices (or its cotangent) exists during a
step, only one layer's at a time.

Shapes (stacked over layers, as the scan receives them; one layer drops the leading L):
base [L, *in, *out] (float, or int8 with `base_scale` [L, 1.., *out] per output column),
a [L, fan_in, r], b [L, r, fan_out]; `in_dims` says how many of base's dimensions after the
layer axis are inputs (wo maps heads x head_dim -> d_model: 2).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LowRank:
    base: jax.Array
    a: jax.Array | None = None
    b: jax.Array | None = None
    base_scale: jax.Array | None = None
    scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    in_dims: int = dataclasses.field(default=1, metadata=dict(static=True))

    # the decoder reads a weight as `variable[...]` and casts it with `.astype(dtype)`
    def __getitem__(self, index):
        if index is not Ellipsis:
            raise TypeError("a LowRank weight is read whole (`[...]`)")
        return self

    @property
    def shape(self):
        return self.base.shape

    def astype(self, dtype) -> "LowRank":
        """The float weight parts in `dtype`; an int8 base is dequantised here, one layer at a time."""
        base = self.base
        if self.base_scale is not None:
            base = base.astype(jnp.float32) * self.base_scale
        cast = (lambda x: None if x is None else x.astype(dtype))
        return LowRank(base.astype(dtype), cast(self.a), cast(self.b), None, self.scale, self.in_dims)

    def dense(self) -> jax.Array:
        """The full matrix (for checks): dequant(W0) + scale * A @ B, in float32."""
        w = self.astype(jnp.float32)
        if w.a is None:
            return w.base
        return w.base + self.scale * jnp.einsum("...ir,...ro->...io", w.a, w.b).reshape(w.base.shape)

    def apply(self, x: jax.Array, eqn: str | None = None) -> jax.Array:
        """x W: `eqn` is the einsum of the plain weight (None: `x @ W`)."""
        w = self.base
        out = x @ w if eqn is None else jnp.einsum(eqn, x, w)
        if self.a is None:
            return out
        k = self.in_dims
        fan_in = math.prod(x.shape[x.ndim - k:])
        low = low_rank_product(x.reshape(-1, fan_in), self.a, self.b)
        return out + (self.scale * low).reshape(out.shape).astype(out.dtype)


@jax.custom_vjp
def low_rank_product(x_NxI: jax.Array, a_IxR: jax.Array, b_RxO: jax.Array) -> jax.Array:
    """(x A) B for N rows, with a backward pass that transposes only the rank-r operands.

    Autodiff's backward gives dB = (x A)^T dY, and XLA:CPU laid it out by transposing the N x O
    cotangent dY (N tokens by 1,536 MLP columns at the SmolLM2 shape) instead of the N x r product
    x A: two 1,536 x 1,280 copies per layer and step, about 1 s of a LoRA SFT step of 8 x 160
    tokens (tools/profile_ops.py --lora 8). Written out, every large operand is read in place:
    dB = (x A)^T dY and dA = x^T (dY B^T) as einsums over the rows, dx = (dY B^T) A^T. The same
    sums as autodiff's (tests/train/test_lora.py)."""
    return (x_NxI @ a_IxR) @ b_RxO


def _low_rank_forward(x, a, b):
    xa = x @ a
    return xa @ b, (x, a, b, xa)


def _low_rank_backward(res, d_NxO):
    x, a, b, xa = res
    g_NxR = d_NxO @ b.T
    grads = (g_NxR @ a.T, jnp.einsum("nr,ni->ir", g_NxR, x), jnp.einsum("nr,no->ro", xa, d_NxO))
    return tuple(g.astype(p.dtype) for g, p in zip(grads, (x, a, b)))  # each in its primal's dtype, as autodiff


low_rank_product.defvjp(_low_rank_forward, _low_rank_backward)


def project(x: jax.Array, w, eqn: str | None = None) -> jax.Array:
    """x W for a plain weight array (exactly the einsum / matmul as written) or a `LowRank` one."""
    if isinstance(w, LowRank):
        return w.apply(x, eqn)
    return x @ w if eqn is None else jnp.einsum(eqn, x, w)


def densify(tree):
    """`tree` with every `LowRank` weight replaced by its full float32 matrix."""
    return jax.tree.map(lambda x: x.dense() if isinstance(x, LowRank) else x, tree,
                        is_leaf=lambda x: isinstance(x, LowRank))

"""Pure functions the decoder is built from: norms, rotary embeddings, attention, feed-forward.

Shapes: B batch, T query length, S key length, D model width, H query heads,
G key/value heads, R = H // G heads per group, K head dim, F feed-forward width.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig

NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


def norm(x_BxTxD, scale_D, bias_D, cfg: ModelConfig):
    """LayerNorm or RMSNorm computed in float32, returned in the input dtype."""
    x = x_BxTxD.astype(jnp.float32)
    if cfg.norm == "layernorm":
        x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + cfg.norm_eps)
    x = x * scale_D.astype(jnp.float32)
    if bias_D is not None:
        x = x + bias_D.astype(jnp.float32)
    return x.astype(x_BxTxD.dtype)


@jax.custom_vjp
def swiglu(gate, up):
    """silu(gate) * up, the gated MLP's hidden layer. Its backward computes sigmoid(gate) once
    and both cotangents from the saved pre-activations; autodiff of the same expression saves
    more and recomputes SiLU's derivative inside the fusions that feed the weight-gradient dots
    (docs/benchmarks.md, per operation)."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(saved, d):
    gate, up = saved
    s = jax.nn.sigmoid(gate)
    # d silu(g) / dg = s + g s (1 - s) = s (1 + g (1 - s))
    return d * up * (s * (1 + gate * (1 - s))), d * gate * s


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def activation(x, name: str):
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.relu(x)


def rope_inv_freq(cfg: ModelConfig) -> jnp.ndarray:
    """Inverse frequencies of the rotated dims, with the family's theta and scaling."""
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    scaling = cfg.rope_scaling_dict
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp between
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_mid = (wavelen <= original / low) & (wavelen >= original / high)
    return jnp.where(is_mid, mid, scaled)


def apply_rope(x_BxTxHxK, positions_BxT, cfg: ModelConfig):
    """Rotate the first `rotary_dim` dims of each head (rotate-half layout, as in transformers)."""
    rot = cfg.rotary_dim
    half = rot // 2
    angles_BxTxh = positions_BxT[..., None].astype(jnp.float32) * rope_inv_freq(cfg)
    cos = jnp.cos(angles_BxTxh)[:, :, None, :]
    sin = jnp.sin(angles_BxTxh)[:, :, None, :]
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2, rest = x[..., :half], x[..., half:rot], x[..., rot:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


def attention_mask(q_index_T, k_index_S, q_segment_BxT, k_segment_BxS, window: int | None, q_parent_BxT=None,
                   positions_BxT=None):
    """Causal mask that never crosses segments and never attends to padding (segment 0).

    Indices are slot numbers in the (cache) sequence, so left padding and packed
    segments both work: segments are contiguous, and pads carry segment id 0.
    `q_parent_BxT`: a segment each query also sees (its own id where there is none), so one
    prompt segment can be shared by several response segments packed after it: each response
    then sees the prompt and itself, exactly as it would in a sequence of its own. Those rows
    give `positions_BxT` (queries and keys alike), and a sliding window then counts positions,
    not slots: a response packed after its siblings is as far from its prompt as on its own.
    """
    causal_TxS = k_index_S[None, :] <= q_index_T[:, None]
    if window is not None and positions_BxT is None:
        causal_TxS &= q_index_T[:, None] - k_index_S[None, :] < window
    same_BxTxS = q_segment_BxT[:, :, None] == k_segment_BxS[:, None, :]
    if q_parent_BxT is not None:
        same_BxTxS |= q_parent_BxT[:, :, None] == k_segment_BxS[:, None, :]
    if window is not None and positions_BxT is not None:
        same_BxTxS &= positions_BxT[:, :, None] - positions_BxT[:, None, :] < window
    real_BxS = k_segment_BxS != 0
    return causal_TxS[None] & same_BxTxS & real_BxS[:, None, :]


def attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS, dropout_rng=None, dropout_rate=0.0):
    """Grouped-query softmax attention; scores and softmax in float32."""
    B, T, H, K = q_BxTxHxK.shape
    G = k_BxSxGxK.shape[2]
    q = q_BxTxHxK.reshape(B, T, G, H // G, K)
    scores_BxGxRxTxS = jnp.einsum("btgrk,bsgk->bgrts", q, k_BxSxGxK,
                                  preferred_element_type=jnp.float32) / math.sqrt(K)
    scores_BxGxRxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxGxRxTxS, NEG_INF)
    probs = jax.nn.softmax(scores_BxGxRxTxS, axis=-1)
    if dropout_rng is not None and dropout_rate > 0:
        keep = jax.random.bernoulli(dropout_rng, 1 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1 - dropout_rate), 0)
    out = jnp.einsum("bgrts,bsgk->btgrk", probs.astype(v_BxSxGxK.dtype), v_BxSxGxK)
    return out.reshape(B, T, H, K)


def dropout(x, rng, rate: float):
    if rng is None or rate <= 0:
        return x
    keep = jax.random.bernoulli(rng, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0).astype(x.dtype)


def fused_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS, *, aligned: bool, window: int | None = None,
                    implementation: str | None = None):
    """`attention` through `jax.nn.dot_product_attention` (no dropout): out_BxTxHxK.

    The whole mask (causal, padding, packed segments, sliding window) is passed as a boolean
    B x 1 x T x S mask, so every case `attention_mask` builds is exact. When query and key slots
    are the same 0..T-1 (`aligned`: no KV cache) the causal structure and the window are also
    declared (`is_causal`, `local_window_size`): redundant with the mask under XLA, they let
    cuDNN skip the masked blocks. implementation: None (JAX's choice, XLA today), "xla" or "cudnn".
    """
    K = q_BxTxHxK.shape[-1]
    local = (window - 1, 0) if aligned and window is not None else None
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask=mask_BxTxS[:, None],
                                        scale=1.0 / math.sqrt(K), is_causal=aligned, local_window_size=local,
                                        implementation=implementation)

"""The decoder: one Flax NNX module for GPT-2, Llama/Mistral/Qwen2/SmolLM2 and GPT-NeoX/Pythia.

The layer weights are stacked along a leading `layers` axis and the blocks run under
`jax.lax.scan`, so a 30-layer model compiles as fast as a 1-layer one. Every parameter
carries `logical_axes` metadata that `rlhf_jax.sharding` maps onto the device mesh.

Heads (see `heads.py`) turn the final hidden states into LM logits or a scalar per token;
policy, reference, value model and reward model are this module with different heads.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from rlhf_jax.models import layers as L
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.heads import make_head
from rlhf_jax.models.lowrank import project

# ModelConfig.remat -> the jax.checkpoint policy of each block ("none": no jax.checkpoint at all)
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_dots": jax.checkpoint_policies.dots_saveable,
}

class KVCache(NamedTuple):
    """Decoding cache. S is the cache length (prompt + new tokens). Under per-layer decoding
    (`Transformer.__call__`'s `layers`) k and v are tuples of L arrays [B, S, G, K] instead."""

    k_LxBxSxGxK: jax.Array
    v_LxBxSxGxK: jax.Array
    segment_ids_BxS: jax.Array  # 0 marks empty or padding slots
    index: jax.Array  # int32 scalar: next slot to write

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "KVCache":
        dtype = dtype or jnp.dtype(cfg.dtype)
        shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), jnp.int32),
                   jnp.zeros((), jnp.int32))


def _param(rngs: nnx.Rngs, shape, axes, cfg: ModelConfig, init: str = "normal", std: float = 0.02):
    dtype = jnp.dtype(cfg.param_dtype)
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class Blocks(nnx.Module):
    """All transformer blocks, weights stacked on a leading layer axis."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        Ly, D, H, G, K, F = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
        std_out = 0.02 / (2 * cfg.n_layers) ** 0.5  # GPT-2's scaled init of residual projections
        p = lambda shape, axes, **kw: _param(rngs, (Ly, *shape), ("layers", *axes), cfg, **kw)
        self.attn_norm_scale = p((D,), ("norm",), init="ones")
        self.mlp_norm_scale = p((D,), ("norm",), init="ones")
        if cfg.norm == "layernorm":
            self.attn_norm_bias = p((D,), ("norm",), init="zeros")
            self.mlp_norm_bias = p((D,), ("norm",), init="zeros")
        self.wq = p((D, H, K), ("embed", "heads", "head_dim"))
        self.wk = p((D, G, K), ("embed", "kv_heads", "head_dim"))
        self.wv = p((D, G, K), ("embed", "kv_heads", "head_dim"))
        self.wo = p((H, K, D), ("heads", "head_dim", "embed"), std=std_out)
        if cfg.qkv_bias:
            self.bq = p((H, K), ("heads", "head_dim"), init="zeros")
            self.bk = p((G, K), ("kv_heads", "head_dim"), init="zeros")
            self.bv = p((G, K), ("kv_heads", "head_dim"), init="zeros")
        if cfg.out_bias:
            self.bo = p((D,), ("norm",), init="zeros")
            self.b_down = p((D,), ("norm",), init="zeros")
        if cfg.mlp == "swiglu":
            self.w_gate = p((D, F), ("embed", "mlp"))
            if cfg.mlp_bias:
                self.b_gate = p((F,), ("mlp",), init="zeros")
        self.w_up = p((D, F), ("embed", "mlp"))
        if cfg.mlp_bias:
            self.b_up = p((F,), ("mlp",), init="zeros")
        self.w_down = p((F, D), ("mlp", "embed"), std=std_out)

    def weights(self) -> dict[str, jax.Array]:
        return {name: v[...] for name, v in vars(self).items() if isinstance(v, nnx.Param)}

    def per_layer(self) -> list[dict[str, jax.Array]]:
        """One weight dict per layer (slices of the stacked weights: a copy of them)."""
        stacked = self.weights()
        n_layers = jax.tree.leaves(stacked)[0].shape[0]
        return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n_layers)]


def _block(cfg: ModelConfig, w, x_BxTxD, positions_BxT, mask_BxTxS, cache_kv, cache_index, rng):
    """One pre-norm block. `cache_kv` is this layer's (k, v) cache or None."""
    dt = jnp.dtype(cfg.dtype)
    w = {k: v.astype(dt) for k, v in w.items()}
    rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)

    h = L.norm(x_BxTxD, w["attn_norm_scale"], w.get("attn_norm_bias"), cfg)
    q = project(h, w["wq"], "btd,dhk->bthk")
    k = project(h, w["wk"], "btd,dgk->btgk")
    v = project(h, w["wv"], "btd,dgk->btgk")
    if cfg.qkv_bias:
        q, k, v = q + w["bq"], k + w["bk"], v + w["bv"]
    if cfg.position == "rope":
        q = L.apply_rope(q, positions_BxT, cfg)
        k = L.apply_rope(k, positions_BxT, cfg)
    if cache_kv is not None:
        k = jax.lax.dynamic_update_slice_in_dim(cache_kv[0], k.astype(cache_kv[0].dtype), cache_index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache_kv[1], v.astype(cache_kv[1].dtype), cache_index, axis=1)
        new_kv = (k, v)
    else:
        new_kv = None
    if cfg.attention_impl == "xla_manual":
        att = L.attention(q, k.astype(dt), v.astype(dt), mask_BxTxS, rngs[0], cfg.attn_dropout_rate)
    else:
        att = L.fused_attention(q, k.astype(dt), v.astype(dt), mask_BxTxS, aligned=cache_kv is None,
                                window=cfg.sliding_window,
                                implementation="cudnn" if cfg.attention_impl == "cudnn" else None)
    att = project(att, w["wo"], "bthk,hkd->btd")
    if cfg.out_bias:
        att = att + w["bo"]
    att = L.dropout(att, rngs[1], cfg.dropout_rate)

    if cfg.parallel_residual:
        h2 = L.norm(x_BxTxD, w["mlp_norm_scale"], w.get("mlp_norm_bias"), cfg)
        return x_BxTxD + att + _mlp(cfg, w, h2, rngs[2]), new_kv
    x_BxTxD = x_BxTxD + att
    h2 = L.norm(x_BxTxD, w["mlp_norm_scale"], w.get("mlp_norm_bias"), cfg)
    return x_BxTxD + _mlp(cfg, w, h2, rngs[2]), new_kv


def _mlp(cfg: ModelConfig, w, h_BxTxD, rng):
    up = project(h_BxTxD, w["w_up"]) + (w["b_up"] if cfg.mlp_bias else 0)
    if cfg.mlp == "swiglu":
        gate = project(h_BxTxD, w["w_gate"]) + (w["b_gate"] if cfg.mlp_bias else 0)
        hidden = L.swiglu(gate, up) if cfg.activation == "silu" else L.activation(gate, cfg.activation) * up
    else:
        hidden = L.activation(up, cfg.activation)
    out = project(hidden, w["w_down"]) + (w["b_down"] if cfg.out_bias else 0)
    return L.dropout(out, rng, cfg.dropout_rate)


class Transformer(nnx.Module):
    """Decoder backbone plus one head ("lm", "scalar", or "none" for hidden states).

    Call with tokens_BxT; positions default to 0..T-1 and segment ids to all ones; parent ids
    (optional) give each token a segment it also attends to (`layers.attention_mask`).
    Returns (outputs, cache): logits_BxTxV (float32), values_BxT (float32) or hidden_BxTxD;
    `features=True` returns the final (normed) hidden states whatever the head.
    `layers` (`Blocks.per_layer()`, made once outside a decode loop) runs the layers unrolled on
    those per-layer weights instead of scanning the stacked ones; the cache's k and v are then
    tuples of per-layer arrays (`per_layer_cache`).
    """

    def __init__(self, cfg: ModelConfig, *, head: str = "lm", rngs: nnx.Rngs):
        self.cfg = cfg
        self.head_kind = head
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)
        if cfg.position == "learned":
            self.pos_embed = _param(rngs, (cfg.max_seq_len, cfg.d_model), ("pos", "embed"), cfg, std=0.01)
        self.blocks = Blocks(cfg, rngs=rngs)
        self.final_norm_scale = _param(rngs, (cfg.d_model,), ("norm",), cfg, init="ones")
        if cfg.norm == "layernorm":
            self.final_norm_bias = _param(rngs, (cfg.d_model,), ("norm",), cfg, init="zeros")
        self.head = make_head(head, cfg, rngs=rngs)

    def __call__(self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None, cache: KVCache | None = None,
                 dropout_rng=None, features: bool = False, parent_ids_BxT=None, layers=None):
        cfg = self.cfg
        B, T = tokens_BxT.shape
        if segment_ids_BxT is None:
            segment_ids_BxT = jnp.ones((B, T), jnp.int32)
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        dt = jnp.dtype(cfg.dtype)
        x = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dt)
        if cfg.position == "learned":
            x = x + jnp.take(self.pos_embed[...], positions_BxT, axis=0).astype(dt)
        rng_embed, rng_layers = (jax.random.split(dropout_rng) if dropout_rng is not None else (None, None))
        x = L.dropout(x, rng_embed, cfg.dropout_rate)

        if cache is None:
            idx = jnp.arange(T, dtype=jnp.int32)
            mask = L.attention_mask(idx, idx, segment_ids_BxT, segment_ids_BxT, cfg.sliding_window, parent_ids_BxT,
                                    positions_BxT if parent_ids_BxT is not None else None)
            start = None
        else:
            if parent_ids_BxT is not None:
                raise ValueError("parent_ids_BxT (shared prompt segments) is for full passes, not cached decoding")
            start = cache.index
            key_segments = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids_BxS, segment_ids_BxT, start, 1)
            mask = L.attention_mask(start + jnp.arange(T, dtype=jnp.int32),
                                    jnp.arange(key_segments.shape[1], dtype=jnp.int32),
                                    segment_ids_BxT, key_segments, cfg.sliding_window)

        def body(x, xs):
            w, kv, rng = xs
            x, new_kv = _block(cfg, w, x, positions_BxT, mask, kv, start, rng)
            return x, new_kv

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat])
        layer_rngs = jax.random.split(rng_layers, cfg.n_layers) if rng_layers is not None else None
        kv = (cache.k_LxBxSxGxK, cache.v_LxBxSxGxK) if cache is not None else None
        if layers is None:
            x, new_kv = jax.lax.scan(body, x, (self.blocks.weights(), kv, layer_rngs), unroll=cfg.scan_unroll)
        else:
            outs = []
            for i, w in enumerate(layers):
                x, layer_kv = body(x, (w, None if kv is None else (kv[0][i], kv[1][i]),
                                       None if layer_rngs is None else layer_rngs[i]))
                outs.append(layer_kv)
            new_kv = None if kv is None else tuple(tuple(o[j] for o in outs) for j in (0, 1))
        x = L.norm(x, self.final_norm_scale[...],
                   self.final_norm_bias[...] if cfg.norm == "layernorm" else None, cfg)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(new_kv[0], new_kv[1], key_segments, cache.index + T)
        return (x if features else self.head(x, self)), new_cache


def per_layer_cache(cache: KVCache) -> KVCache:
    """`cache` with k and v as tuples of per-layer arrays, as per-layer decoding reads them."""
    return cache._replace(k_LxBxSxGxK=tuple(cache.k_LxBxSxGxK), v_LxBxSxGxK=tuple(cache.v_LxBxSxGxK))

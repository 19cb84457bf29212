"""Heads on top of the decoder's final hidden states.

- "lm": next-token logits (tied to the embedding or its own matrix), float32.
- "scalar": one number per token, for the value model and the reward model; the reward is
  read at the last real token with `last_token_values`. Init N(0, 1/sqrt(D+1)), bias 0
  (InstructGPT / N+ implementation details).
- "inform": the information-bottleneck reward head of InfoRM (Miao et al. 2024): a bias-free
  encoder D -> 2L (mean and log variance of the latent z), a bias-free decoder L -> 1. Called
  like the scalar head it returns the evaluation-mode score g(mu) at every token, so PPO,
  best-of-n and the judge use an InfoRM exactly as they use a scalar RM; training samples z
  through `encode` / `decode` (see `rlhf_jax.train.rm`).
- "none": the hidden states themselves (feature extraction).
"""
from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig
from rlhf_jax.registry import Registry

HEADS = Registry("head")  # every head a decoder can carry
REWARD_HEADS = Registry("reward head")  # the heads a reward model can carry (config rm.head)


def register_head(name: str, reward: bool = False):
    def add(cls):
        HEADS.register(name, cls)
        if reward:
            REWARD_HEADS.register(name, cls)
        return cls
    return add


@register_head("lm")
class LMHead(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.tied = cfg.tie_embeddings
        if not self.tied:
            value = 0.02 * jax.random.normal(rngs.params(), (cfg.d_model, cfg.vocab_size), jnp.float32)
            self.kernel = nnx.Param(value.astype(cfg.param_dtype), logical_axes=("embed", "vocab"))

    def __call__(self, hidden_BxTxD, model) -> jax.Array:
        dt = hidden_BxTxD.dtype
        if self.tied:
            logits = jnp.einsum("btd,vd->btv", hidden_BxTxD, model.embed[...].astype(dt),
                                preferred_element_type=jnp.float32)
        else:
            logits = jnp.einsum("btd,dv->btv", hidden_BxTxD, self.kernel[...].astype(dt),
                                preferred_element_type=jnp.float32)
        return logits.astype(jnp.float32)


@register_head("scalar", reward=True)
class ScalarHead(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        std = 1.0 / (cfg.d_model + 1) ** 0.5
        self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), (cfg.d_model,), jnp.float32),
                                logical_axes=("embed",))
        self.bias = nnx.Param(jnp.zeros((), jnp.float32), logical_axes=())

    def __call__(self, hidden_BxTxD, model) -> jax.Array:
        values = jnp.einsum("btd,d->bt", hidden_BxTxD.astype(jnp.float32), self.kernel[...])
        return values + self.bias[...]


@register_head("inform", reward=True)
class InfoHead(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        L = cfg.latent_dim
        enc = jax.random.normal(rngs.params(), (cfg.d_model, 2 * L), jnp.float32) / cfg.d_model ** 0.5
        self.encoder = nnx.Param(enc, logical_axes=("embed", "latent"))
        self.decoder = nnx.Param(jax.random.normal(rngs.params(), (L,), jnp.float32) / (L + 1) ** 0.5,
                                 logical_axes=("latent",))
        # a constant offset: it cancels in every pairwise loss and is set only by centring the
        # scores on the demonstrations, like the scalar head's bias
        self.bias = nnx.Param(jnp.zeros((), jnp.float32), logical_axes=())

    def encode(self, hidden_BxD):
        """(mu, log variance) of q(z | h), each [..., L]."""
        stats = hidden_BxD.astype(jnp.float32) @ self.encoder[...]
        return jnp.split(stats, 2, axis=-1)

    def decode(self, z):
        return z @ self.decoder[...] + self.bias[...]

    def __call__(self, hidden_BxTxD, model) -> jax.Array:
        mu, _ = self.encode(hidden_BxTxD)
        return self.decode(mu)


class NoHead(nnx.Module):
    def __call__(self, hidden_BxTxD, model) -> jax.Array:
        return hidden_BxTxD


def make_head(kind: str, cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The registered head `kind`, or "none" for the hidden states themselves."""
    if kind == "none":
        return NoHead()
    return HEADS[kind](cfg, rngs=rngs)


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
    """Index of the last real (mask=1) token per row; works for left and right padding."""
    T = mask_BxT.shape[1]
    idx = jnp.where(mask_BxT.astype(bool), jnp.arange(T)[None, :], -1)
    return jnp.max(idx, axis=1).clip(0)


def last_token_values(values_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """values_B: the scalar head's output at each row's last real token."""
    return jnp.take_along_axis(values_BxT, last_token_index(mask_BxT)[:, None], axis=1)[:, 0]

"""LoRA (Hu et al., 2021) as a view of the parameter tree: W = W0 + (alpha / r) * A @ B.

Only the adapters are trained: they form the train state (so the optimizer moments and the
checkpoints are adapter-sized), the base weights are passed to the step as a frozen
constant, and `view` hands the model the base and adapters as `LowRank` weights, applied inside
each layer (x W0 + s (x A) B) rather than merged up front. The stage saves the merged weights
(`merge`), so every later stage sees an ordinary parameter tree.

Stacked block weights are [L, *in, *out]; `IN_DIMS` says how many of the dimensions after
the layer axis are inputs (wo maps heads x head_dim -> d_model).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.lowrank import LowRank

IN_DIMS = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(IN_DIMS)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __post_init__(self):
        unknown = [t for t in self.targets if t not in IN_DIMS]
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets {unknown or '(none)'} must be some of {sorted(IN_DIMS)}")
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be > 0, got {self.rank}")


def _split(name: str, shape) -> tuple[int, int, int]:
    """(layers, fan_in, fan_out) of a stacked block weight."""
    k = IN_DIMS[name]
    return shape[0], math.prod(shape[1:1 + k]), math.prod(shape[1 + k:])


def init(base_params, cfg: LoRAConfig, rng) -> dict:
    """Adapters for every target: A ~ N(0, 1/fan_in), B = 0, so the merged model starts as the base."""
    adapters = {}
    for i, name in enumerate(cfg.targets):
        w = base_params["blocks"][name]
        L, fan_in, fan_out = _split(name, w.shape)
        a = jax.random.normal(jax.random.fold_in(rng, i), (L, fan_in, cfg.rank), jnp.float32) / np.sqrt(fan_in)
        adapters[name] = {"a": a, "b": jnp.zeros((L, cfg.rank, fan_out), jnp.float32)}
    return adapters


def delta(name: str, shape, adapter, scale: float):
    L, fan_in, fan_out = _split(name, shape)
    return (scale * jnp.einsum("lir,lro->lio", adapter["a"], adapter["b"])).reshape(shape)


def merge(base_params, adapters, cfg: LoRAConfig):
    """The parameter tree the model runs with: base weights plus the scaled low-rank updates."""
    blocks = dict(base_params["blocks"])
    for name, adapter in adapters.items():
        w = blocks[name]
        blocks[name] = (w.astype(jnp.float32) + delta(name, w.shape, adapter, cfg.scale)).astype(w.dtype)
    return {**base_params, "blocks": blocks}


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# --- LoRA for any stage: the trainable part, the frozen base, and the view between them ---------

def split(full_params, cfg: LoRAConfig, rng, extras: tuple[str, ...] = ()) -> dict:
    """The trainable part of a LoRA model: fresh adapters, plus copies of the `extras` subtrees
    that train in full (a reward model's or value model's new head). The frozen base is the
    full tree itself (its `extras` are ignored by `view`)."""
    return {"adapters": init(full_params, cfg, rng), **{k: jax.tree.map(jnp.copy, full_params[k]) for k in extras}}


def view(base, trainable: dict, cfg: LoRAConfig):
    """The parameters the model runs with: each adapted (or int8) block matrix as a `LowRank`
    weight, W0 + (alpha / r) A B applied inside its layer as x W0 + (alpha / r) (x A) B, so no
    full-size merged (or dequantised) copy of the matrices exists in the step; the trainable
    extras in place of the base's."""
    return {**lowrank_base(base, trainable["adapters"], cfg.scale),
            **{k: v for k, v in trainable.items() if k != "adapters"}}


def full(base, trainable: dict, cfg: LoRAConfig):
    """The ordinary parameter tree of base + adapters (merged, dequantised) with the trainable
    extras: what a stage saves and hands on."""
    return {**merge(dequantize(base), trainable["adapters"], cfg),
            **{k: v for k, v in trainable.items() if k != "adapters"}}


def lowrank_base(params, adapters: dict | None = None, scale: float = 1.0):
    """`params` with every int8 block matrix, and every one with an adapter, as a `LowRank`
    weight (dequantised and adapted one layer at a time inside the decoder); the rest as is."""
    adapters = adapters or {}
    blocks = dict(params.get("blocks", {}))
    for name, w in blocks.items():
        q = isinstance(w, dict) and "int8" in w
        ad = adapters.get(name)
        if ad is None and not q:
            continue
        blocks[name] = LowRank(w["int8"] if q else w, None if ad is None else ad["a"],
                               None if ad is None else ad["b"], w["scale"] if q else None, scale, IN_DIMS[name])
    return {**params, "blocks": blocks} if blocks else params


def wrap_loss(loss_fn, cfg: LoRAConfig):
    """loss_fn(full_params, batch, rng, constants) as a loss of the trainable part:
    loss(trainable, batch, rng, (base, constants)) — the base travels as a frozen constant."""
    def lora_loss(trainable, batch, rng, constants):
        base, inner = constants
        return loss_fn(view(base, trainable, cfg), batch, rng, inner)
    return lora_loss


def from_block(block) -> LoRAConfig | None:
    """The LoRA settings of a stage's config block (None when lora_rank is 0)."""
    if not block.get("lora_rank", 0):
        return None
    return LoRAConfig(block.lora_rank, block.lora_alpha, tuple(t for t in block.lora_targets.split(",") if t))


# --- an int8 base (QLoRA's idea): the frozen matrices stored in 8 bits, dequantised in the step ---

def quantize(base_params, targets: tuple[str, ...] = tuple(IN_DIMS)) -> dict:
    """The base with each target block matrix as int8 and a float32 scale per output column
    (absmax over its fan-in): 4x smaller than float32. Other parameters stay as they are."""
    blocks = dict(base_params["blocks"])
    for name in targets:
        w = blocks[name].astype(jnp.float32)
        k = IN_DIMS[name]
        axes = tuple(range(1, 1 + k))  # reduce over the fan-in dims, per layer and output column
        scale = jnp.maximum(jnp.abs(w).max(axis=axes, keepdims=True), 1e-12) / 127.0
        blocks[name] = {"int8": jnp.round(w / scale).astype(jnp.int8), "scale": scale}
    return {**base_params, "blocks": blocks}


def dequantize(params):
    """Float32 weights from `quantize`'s int8 ones (a no-op on an ordinary tree)."""
    blocks = params.get("blocks", {})
    if not any(isinstance(v, dict) and "int8" in v for v in blocks.values()):
        return params
    out = {k: (v["int8"].astype(jnp.float32) * v["scale"] if isinstance(v, dict) and "int8" in v else v)
           for k, v in blocks.items()}
    return {**params, "blocks": out}

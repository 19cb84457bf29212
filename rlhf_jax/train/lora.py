"""LoRA (Hu et al., 2021) as a view of the parameter tree: W = W0 + (alpha / r) * A @ B.

Only the adapters are trained: they form the train state (so the optimizer moments and the
checkpoints are adapter-sized), the base weights are passed to the step as a frozen
constant, and `merge` builds the weights the model runs with. The stage saves the merged
weights, so every later stage sees an ordinary parameter tree.

Stacked block weights are [L, *in, *out]; `IN_DIMS` says how many of the dimensions after
the layer axis are inputs (wo maps heads x head_dim -> d_model).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

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

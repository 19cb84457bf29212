"""Optimizers: AdamW or RMSprop with warmup + cosine (or constant) schedule, clipping, trainable
filters; every trained stage builds its optimizer from its config block with `from_config`."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax


def schedule(lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine", min_lr_ratio: float = 0.1):
    """Linear warmup to `lr`, then cosine decay to lr * min_lr_ratio (or constant)."""
    if kind == "constant":
        decay = optax.constant_schedule(lr)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup_steps), alpha=min_lr_ratio)
    else:
        raise ValueError(f"schedule {kind!r} must be 'cosine' or 'constant'")
    if warmup_steps <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])


def freeze_mask(params, freeze_layers: int = 0, freeze_embeddings: bool = False):
    """1.0 where a parameter trains, 0.0 where frozen; block weights are masked per layer."""
    def one(path, x):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        if name.startswith("blocks/") and freeze_layers > 0:
            keep = (jnp.arange(x.shape[0]) >= freeze_layers).astype(x.dtype)
            return keep.reshape((-1,) + (1,) * (x.ndim - 1))
        if freeze_embeddings and name in ("embed", "pos_embed"):
            return jnp.zeros((), x.dtype)
        return jnp.ones((), x.dtype)

    return jax.tree_util.tree_map_with_path(one, params)


def mask_updates(mask) -> optax.GradientTransformation:
    """Multiply the final updates by `mask` (so weight decay cannot move frozen weights either)."""
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m, updates, mask), state

    return optax.GradientTransformation(init, update)


def make_optimizer(lr: float, total_steps: int, *, warmup_steps: int = 0, schedule_kind: str = "cosine",
                   min_lr_ratio: float = 0.1, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8, mask: Any = None,
                   optimizer: str = "adamw", rmsprop_decay: float = 0.99):
    """A clipped AdamW, or RMSprop with PyTorch's semantics (the DPO paper's optimizer: squared-
    gradient average with decay 0.99, eps added outside the square root), and its schedule."""
    sched = schedule(lr, total_steps, warmup_steps, schedule_kind, min_lr_ratio)
    parts = []
    if max_grad_norm:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    if optimizer == "adamw":
        parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    elif optimizer == "rmsprop":
        parts.append(optax.rmsprop(sched, decay=rmsprop_decay, eps=eps, eps_in_sqrt=False))
        if weight_decay:
            raise ValueError("rmsprop with weight_decay is not supported; set weight_decay=0")
    else:
        raise ValueError(f"optimizer {optimizer!r} must be 'adamw' or 'rmsprop'")
    if mask is not None:
        parts.append(mask_updates(mask))
    return optax.chain(*parts), sched


OPTIMIZER_FIELDS = ("lr", "warmup_steps", "schedule", "min_lr_ratio", "weight_decay", "max_grad_norm", "optimizer",
                    "b1", "b2", "eps", "rmsprop_decay")


def from_config(block: Mapping, total_steps: int, mask: Any = None):
    """(optimizer, schedule) from a stage's config block, which holds every OPTIMIZER_FIELDS entry."""
    c = {k: block[k] for k in OPTIMIZER_FIELDS}
    return make_optimizer(c["lr"], total_steps, warmup_steps=c["warmup_steps"], schedule_kind=c["schedule"],
                          min_lr_ratio=c["min_lr_ratio"], weight_decay=c["weight_decay"],
                          max_grad_norm=c["max_grad_norm"], b1=c["b1"], b2=c["b2"], eps=c["eps"], mask=mask,
                          optimizer=c["optimizer"], rmsprop_decay=c["rmsprop_decay"])

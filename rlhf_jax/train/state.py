"""Train-state pytrees and the one helper that compiles a step with explicit shardings."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhf_jax import sharding as shd


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


class PPOState(NamedTuple):
    params: Any  # {"policy": ..., "value": ...}
    opt_state: Any
    step: jax.Array
    kl_coef: jax.Array
    ema: Any  # EMA of the policy parameters (or None)


def shardings_of(tree) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


def commit(tree, mesh: Mesh):
    """Place every leaf on `mesh`: mesh-sharded leaves stay as they are, the rest are replicated.

    A step's output is always committed to its out_shardings; an input that is not (a fresh
    `jnp.zeros`, an optimizer count) would make the second call compile again.
    """
    replicated = NamedSharding(mesh, P())

    def one(x):
        sharding = x.sharding if isinstance(getattr(x, "sharding", None), NamedSharding) else replicated
        return jax.device_put(x, sharding)

    return jax.tree.map(one, tree)


def compile_step(fn: Callable, state, batch_example, mesh: Mesh, rules=shd.DEFAULT_RULES, *,
                 constants=None, donate: bool = True, outputs: bool = False):
    """jit `fn(state, batch, rng[, constants])` with explicit in/out shardings and a donated state.

    Returns (jitted step, the state committed to its shardings). The state keeps the shardings
    it was created with; batch arrays are split over the batch mesh axes on their leading
    dimension; the rng and the metrics are replicated. `constants` (frozen models) keep their
    own shardings and are passed by position after the rng. With `outputs`, the step returns a
    third value (e.g. the PPO episodes) whose sharding the compiler chooses.
    """
    state = commit(state, mesh)
    if constants is not None:
        constants = commit(constants, mesh)
    state_sh = shardings_of(state)
    batch_sh = jax.tree.map(lambda x: shd.batch_sharding(mesh, x.ndim, rules), batch_example)
    replicated = NamedSharding(mesh, P())
    in_sh = (state_sh, batch_sh, replicated) + ((shardings_of(constants),) if constants is not None else ())
    out_sh = (state_sh, replicated) + ((None,) if outputs else ())
    return jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh,
                   donate_argnums=(0,) if donate else ()), state

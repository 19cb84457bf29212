"""Seeds as a vmapped axis: S seeds of a stage's step in one program equal S separate runs."""
import os
import sys

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import benchmark_seeds as bs  # noqa: E402


@pytest.mark.parametrize("stage", ["sft", "ppo"])  # the RM: tests/test_ensemble.py
def test_vmapped_seeds_equal_separate_runs(stage):
    # plain SGD: the update is linear in the gradient, so the check sees the vmapped computation
    # itself (Adam's first steps turn a 1e-9 gradient difference into a sign, hence lr-sized)
    step, per_seed = bs.seed_setup(stage, seeds=3, batch=16, tx=optax.sgd(1e-2))
    with_constants = per_seed[0][2] is not None
    call = (lambda s, b, r, c: step(s, b, r, c)) if with_constants else (lambda s, b, r, c: step(s, b, r))
    keys = jax.random.split(jax.random.key(0), 3)
    states, batches = bs.stack([p[0] for p in per_seed]), bs.stack([p[1] for p in per_seed])
    constants = bs.stack([p[2] for p in per_seed]) if with_constants else None
    many, one = jax.jit(jax.vmap(call)), jax.jit(call)
    separate = [(s, None) for s, _, _ in per_seed]
    for _ in range(2):
        states, metrics_S = many(states, batches, keys, constants)[:2]
        separate = [one(s, b, k, c)[:2] for (_, b, c), (s, _), k in zip(per_seed, separate, keys)]
    for i, (state, metrics) in enumerate(separate):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=2e-6), states.params,
                     state.params)
        assert float(metrics_S["loss"][i]) == pytest.approx(float(metrics["loss"]), rel=1e-5, abs=1e-6)

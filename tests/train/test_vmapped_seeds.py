"""Seeds as a vmapped axis: S seeds of a stage's step in one program equal S separate runs."""
import os
import sys

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools"))
import benchmark_seeds as bs  # noqa: E402

from tests import tolerance as tol  # noqa: E402


@pytest.mark.parametrize("stage", ["sft", "ppo"])  # the RM: tests/objectives/test_ensemble.py
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
    moved = np.zeros(3)  # per seed: the sum over steps of the largest parameter change in a step
    for _ in range(2):
        states, metrics_S = many(states, batches, keys, constants)[:2]
        before = [s.params for s, _ in separate]
        separate = [one(s, b, k, c)[:2] for (_, b, c), (s, _), k in zip(per_seed, separate, keys)]
        moved += [max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                      zip(jax.tree.leaves(s.params), jax.tree.leaves(p))) for (s, _), p in zip(separate, before)]
    # SGD's step is lr * gradient: two orderings differ by the gradient chain's relative error
    # (tests/tolerance.py) times the step. SFT: one update per step over 16 x 24 positions. PPO:
    # epochs x minibatches updates per step (each no larger than the step, assumed), on 8 x 34
    # positions per minibatch, plus GAE's backward recursion and the whitening over the batch
    # (2 x 16 x 34); a sampled token could also flip on a last-bit tie of two logits (not seen).
    cfg = bs.model_cfg()
    if stage == "sft":
        updates, chain = 1, tol.gradient_chain(cfg, 24, 16 * 24)
    else:
        hp, T = bs.base().ppo, bs.TCFG.max_prompt_len + bs.base().sampling.max_new_tokens
        updates, chain = hp.epochs * hp.minibatches, tol.gradient_chain(cfg, T, 8 * T) + 2 * 16 * T
    for i, (state, metrics) in enumerate(separate):
        atol = tol.f32(chain, updates * moved[i])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=0, atol=atol), states.params,
                     state.params)
        assert moved[i] > 20 * atol  # the steps are far larger than the tolerance: a wrong one fails
        # the last step's loss: a forward pass and its mean (the parameters' difference adds about
        # lr * |g|^2 * f32(chain), below that at lr 1e-2 and |g|^2 of order 1 at initialisation)
        assert float(metrics_S["loss"][i]) == pytest.approx(float(metrics["loss"]), rel=tol.f32(chain), abs=0)

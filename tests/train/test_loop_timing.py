"""The training loop's timings (rlhf_jax/train/loop.py): `seconds` is the loop's whole time, a
stall included; `median_step_seconds` is what one step costs, which a stall (a checkpoint, the
process stopped a while) does not move."""
import time

import jax
import jax.numpy as jnp
import pytest

from rlhf_jax.train.loop import run_loop

STEP_S = 0.03
STALL_S = 0.9


def _loop(total: int, stall_at: int | None):
    add = jax.jit(lambda s: s + 1.0)

    def step_fn(state, batch, rng):
        time.sleep(STALL_S if batch == stall_at else STEP_S)  # host time, as a step's own time is
        state = add(state)
        return state, {"loss": state}

    counter = iter(range(1, total + 1))
    return run_loop("test", step_fn, jnp.zeros(()), lambda: next(counter), total_steps=total,
                    rng=jax.random.key(0))


def test_the_median_step_time_ignores_a_stall_the_total_keeps():
    result = _loop(12, stall_at=7)
    assert result.steps == 12 and float(result.state) == 12.0
    # 10 gaps (steps 3-12), one with the stall: their mean would be 0.117 s, their median is a step's
    assert STEP_S <= result.median_step_seconds < 2 * STEP_S, result.median_step_seconds
    assert result.seconds >= 11 * STEP_S + STALL_S


@pytest.mark.parametrize("total", [1, 2])
def test_no_median_before_a_third_step(total):
    """The first two steps hold the compiles: with fewer than three there is no step time."""
    assert _loop(total, stall_at=None).median_step_seconds is None

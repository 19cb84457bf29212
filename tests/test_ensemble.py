"""Reward-model ensembles: aggregators by hand, the vmapped step equals k separate steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import TokenizeConfig, ranking_arrays
from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.objectives.ensemble import aggregate
from rlhf_jax.rewards import EnsembleReward
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.state import TrainState

S = jnp.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])  # k=3 members, B=2 sequences


@pytest.mark.parametrize("kind, lam, ddof, expected", [
    ("mean", 0.0, 0, [3.0, 4.0]),
    ("min", 0.0, 0, [1.0, 2.0]),
    ("median", 0.0, 0, [3.0, 2.0]),
    ("uwo", 0.5, 0, [3.0 - 0.5 * 8 / 3, 4.0 - 0.5 * 24 / 3]),  # Var with divisor k
    ("uwo", 0.5, 1, [3.0 - 0.5 * 8 / 2, 4.0 - 0.5 * 24 / 2]),  # divisor k - 1
    ("mean_std", 0.5, 1, [3.0 - 0.5 * 2.0, 4.0 - 0.5 * np.sqrt(12.0)]),
])
def test_aggregators_by_hand(kind, lam, ddof, expected):
    np.testing.assert_allclose(aggregate(S, kind, lam, ddof), expected, rtol=1e-6)


def test_znorm_before_aggregating():
    got = aggregate(S, "min", mean_K=jnp.array([1.0, 2.0, 6.0]), std_K=jnp.array([1.0, 0.5, 2.0]))
    np.testing.assert_allclose(got, [min(0.0, 2.0, -0.5), min(1.0, 0.0, 1.0)], rtol=1e-6)


def test_vmapped_ensemble_step_equals_separate_steps():
    tok = synthetic.tokenizer()
    cfg = PRESETS["test"].replace(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    arrays, _ = ranking_arrays(synthetic.ranking_records(synthetic.WorldConfig(seed=0), 24, k=3), tok,
                               TokenizeConfig(max_len=16, max_prompt_len=8))
    k = 3
    members = [init_model(cfg, head="scalar", seed=i).params for i in range(k)]
    batches = [{key: v[i * 8:(i + 1) * 8] for key, v in arrays.items()} for i in range(k)]  # own data per member
    tx, sched = make_optimizer(1e-2, 10, warmup_steps=2)
    graphdef = init_model(cfg, head="scalar", seed=0).graphdef
    single = rm_lib.make_rm_step(graphdef, tx, sched, center_coef=0.01)
    separate = []
    for p, b in zip(members, batches):
        state = TrainState(p, tx.init(p), jnp.zeros((), jnp.int32))
        for i in range(2):
            state, m = jax.jit(single)(state, b, jax.random.key(i))
        separate.append((state, m))
    stacked = rm_lib.stack(members)
    state = TrainState(stacked, jax.vmap(tx.init)(stacked), jnp.zeros((k,), jnp.int32))
    batch = {key: np.stack([b[key] for b in batches], 1) for key in batches[0]}
    step = jax.jit(rm_lib.ensemble_step(single))
    for i in range(2):
        state, m = step(state, batch, jax.random.key(i))
    for i, (s, mi) in enumerate(separate):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=2e-6), state.params, s.params)
    assert float(m["loss"]) == pytest.approx(np.mean([float(mi["loss"]) for _, mi in separate]), rel=1e-5)
    assert float(m["accuracy_min"]) == pytest.approx(min(float(mi["accuracy"]) for _, mi in separate))
    scores = EnsembleReward(graphdef, None).member_scores(state.params, jnp.asarray(batches[0]["tokens"][:, 0]),
                                                          jnp.asarray(batches[0]["mask"][:, 0]))
    assert scores.shape == (k, 8)

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
from tests import tolerance as tol

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
    # Adam with eps_adam = 1, the gradient clip norm: its update is Lipschitz in the gradient, so
    # the two programs' last-bit gradient differences stay small in the parameters (at eps 1e-8
    # a coordinate with a near-zero gradient moves by +-lr either way: tests/tolerance.py)
    b1, b2, eps_adam = 0.9, 0.95, 1.0
    tx, sched = make_optimizer(1e-2, 10, warmup_steps=2, b1=b1, b2=b2, eps=eps_adam)
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
    # the tolerance: a gradient coordinate's error is the gradient chain's (forward, backward, sum
    # over 8 x 3 x 16 positions) plus the clip's (the global norm sums every squared coordinate, and
    # scales coordinates <= 1); the warmup's learning rates are 0 then 5e-3, so the parameters at
    # step 1 are equal and only the step-1 update can differ
    n_params = sum(x.size for x in jax.tree.leaves(members[0]))
    grad_err = tol.f32(tol.gradient_chain(cfg, 16, 8 * 3 * 16)) + tol.f32(n_params)
    atol = tol.adam_steps_tol([float(sched(0)), float(sched(1))], b1, b2, eps_adam, grad_err)
    for i, (s, mi) in enumerate(separate):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=0, atol=atol), state.params, s.params)
    # the check can fail: the step moves parameters by far more than the tolerance, so a member
    # stepped on another member's data (or not stepped, or at another step's learning rate) fails it
    update = max(float(np.abs(np.asarray(a) - b).max())
                 for a, b in zip(jax.tree.leaves(separate[0][0].params), jax.tree.leaves(members[0])))
    assert update > 20 * atol, (update, atol)  # 1.5e-3 against 1.2e-6 on the machine this was written on
    # the loss at step 1 is a forward pass at equal parameters: the chain to one score, then the
    # mean over 24 responses (the Bradley-Terry terms are 1-Lipschitz in the scores)
    assert float(m["loss"]) == pytest.approx(np.mean([float(mi["loss"]) for _, mi in separate]), rel=0,
                                             abs=tol.f32(tol.decoder_chain(cfg.d_model, cfg.d_ff, cfg.n_layers,
                                                                           cfg.head_dim, 16) + 24))
    assert float(m["accuracy_min"]) == pytest.approx(min(float(mi["accuracy"]) for _, mi in separate))
    scores = EnsembleReward(graphdef, None).member_scores(state.params, jnp.asarray(batches[0]["tokens"][:, 0]),
                                                          jnp.asarray(batches[0]["mask"][:, 0]))
    assert scores.shape == (k, 8)
    assert rm_lib.stacked_params(state) is state.params
    assert [jax.tree.map(jnp.shape, p) for p in rm_lib.member_params(state)] == \
        [jax.tree.map(jnp.shape, p) for p in members]


def test_ensemble_of_one_is_the_single_step():
    """k = 1 runs the member's own step (no vmap) on the member alone (`member_state`, as every
    stage keeps it): the state and metrics are the single model's, bit for bit, under Adam's
    ordinary eps."""
    tok = synthetic.tokenizer()
    cfg = PRESETS["test"].replace(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    arrays, _ = ranking_arrays(synthetic.ranking_records(synthetic.WorldConfig(seed=0), 8, k=3), tok,
                               TokenizeConfig(max_len=16, max_prompt_len=8))
    model = init_model(cfg, head="scalar", seed=0)
    tx, sched = make_optimizer(1e-2, 10)
    single = rm_lib.make_rm_step(model.graphdef, tx, sched)
    batch = {key: jnp.asarray(v) for key, v in arrays.items()}
    plain_state, plain_m = jax.jit(single)(TrainState(model.params, tx.init(model.params), jnp.zeros((), jnp.int32)),
                                           batch, jax.random.key(0))
    alone = rm_lib.member_state([model.params], tx)  # no member axis: the step counter is a scalar
    assert alone.step.ndim == 0 and jax.tree.map(jnp.shape, alone.params) == jax.tree.map(jnp.shape, model.params)
    new, m = jax.jit(rm_lib.ensemble_step(single), donate_argnums=0)(
        alone, jax.tree.map(lambda x: x[:, None], batch), jax.random.key(0))
    assert plain_m["loss"] != 0 and float(m["loss"]) == float(plain_m["loss"])
    assert float(m["accuracy_min"]) == float(plain_m["accuracy"])
    (params,) = rm_lib.member_params(new)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(new.step) == 1
    for a, b in zip(jax.tree.leaves(rm_lib.stacked_params(new)), jax.tree.leaves(params)):  # the member axis back
        assert a.shape == (1, *b.shape)
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b))

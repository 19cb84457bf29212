"""The pipeline: steps compile once, sharded steps equal unsharded ones, exact resume, config errors."""
import json
import re
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base
from rlhf_jax import checkpoint, hostenv
from rlhf_jax import workdir as workdirs
from rlhf_jax import sharding as shd
from rlhf_jax.context import ConfigError, build_context
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import prompt_arrays, ranking_arrays, sft_arrays
from rlhf_jax.models import init_model
from rlhf_jax.rewards import ModelReward
from rlhf_jax.stages import run_stages
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.stages.validate import validate_config
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train import sft as sft_lib
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.state import PPOState, TrainState, commit, compile_step
from tests.children import child_env
from tests import tolerance as tol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.micro import CFG, TCFG, TOK, WORLD  # noqa: E402


def ppo_hp(**changes):
    """The config's ppo block with `changes`."""
    hp = base().ppo
    hp.update(changes)
    return hp


def sampling(hp, max_new_tokens: int = 5):
    """The config's sampling at PPO's rollout temperature, `max_new_tokens` long."""
    return ppo_lib.sampling_config(base().sampling, TOK, hp.temperature, max_new_tokens)


def _mesh(shape):
    if shape is None:
        return shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return shd.make_mesh(shape)


# Adam with eps at the gradient clip norm: its update is Lipschitz in the gradient, so the sharded
# and single-device runs' last-bit gradient differences stay small (at eps 1e-8 a coordinate with a
# near-zero gradient moves by +-lr either way: tests/tolerance.py)
B1, B2, EPS_ADAM = 0.9, 0.95, 1.0
UPDATES = {"sft": 3, "rm": 3, "ppo": 3 * 2 * 2, "grpo": 3 * 2 * 2, "ppo1": 3}  # optimizer updates in `_run`'s three steps


def _optimizer():
    return make_optimizer(1e-2, 10, warmup_steps=2, b1=B1, b2=B2, eps=EPS_ADAM)


def _tolerance(kind, params) -> tuple[float, float]:
    """(state atol, metric rtol) for `_run`: the gradient chain's error (tests/tolerance.py; PPO:
    minibatches of 4 x 13 positions, GAE's recursion and the whitening over 8 x 13) plus the clip's
    (the global norm sums every squared coordinate), through Adam's updates at the warmup's rates.
    Adam's moments differ by at most 2 x the gradient's error. Growth through later gradients
    (lr x Hessian per update) is neglected."""
    seq, positions = {"sft": (16, 8 * 16), "rm": (16, 8 * 3 * 16), "ppo": (13, 4 * 13 + 2 * 8 * 13),
                      "grpo": (13, 4 * 13 + 2 * 8 * 13),  # GRPO: 8 episodes, group sums instead of GAE
                      "ppo1": (13, 8 * 13 + 2 * 8 * 13)}[kind]  # one minibatch of 8: the one-pass update
    chain = tol.gradient_chain(CFG, seq, positions)
    grad_err = tol.f32(chain) + tol.f32(sum(x.size for x in jax.tree.leaves(params)))
    _, sched = _optimizer()
    atol = tol.adam_steps_tol([float(sched(i)) for i in range(UPDATES[kind])], B1, B2, EPS_ADAM, grad_err)
    return max(atol, 2 * grad_err), tol.f32(chain)


def _build(kind, mesh):
    """(step, state, batches, constants) for one stage on `mesh`."""
    lm = init_model(CFG, seed=0, mesh=mesh)
    tx, sched = _optimizer()
    if kind == "sft":
        arrays, _ = sft_arrays(synthetic.sft_records(WORLD, 24), TOK, TCFG)
        state = TrainState(lm.params, jax.jit(tx.init)(lm.params), jnp.zeros((), jnp.int32))
        step = sft_lib.make_sft_step(lm.graphdef, tx, sched)
        batches = [{k: v[i * 8:(i + 1) * 8] for k, v in arrays.items()} for i in range(3)]
        return (*compile_step(step, state, shd.shard_batch(batches[0], mesh), mesh), batches, None)
    scalar = init_model(CFG, head="scalar", seed=1, mesh=mesh)
    if kind == "rm":
        arrays, _ = ranking_arrays(synthetic.ranking_records(WORLD, 24, k=3), TOK, TCFG)
        state = TrainState(scalar.params, jax.jit(tx.init)(scalar.params), jnp.zeros((), jnp.int32))
        step = rm_lib.make_rm_step(scalar.graphdef, tx, sched, center_coef=0.01)  # gives the bias a gradient
        batches = [{k: v[i * 8:(i + 1) * 8] for k, v in arrays.items()} for i in range(3)]
        return (*compile_step(step, state, shd.shard_batch(batches[0], mesh), mesh), batches, None)
    # GRPO: 4 prompts x G = 2 responses (8 episodes, as PPO's), groups split across batch shards
    # by the repeat inside the step; no value model
    grpo = kind == "grpo"
    hp = ppo_hp(minibatches=2, epochs=2, ema_decay=0.9, **(dict(
        advantage_estimator="grpo", group_size=2, policy_loss="grpo", kl_estimator="k3") if grpo else {}))
    if kind == "ppo1":  # one epoch of one minibatch: the update through the scoring's forward pass
        hp.update(minibatches=1, epochs=1)
        assert ppo_lib.one_pass(hp)
    models = ppo_lib.PPOModels(lm.graphdef, None if grpo else scalar.graphdef, ModelReward(scalar.graphdef))
    params = {"policy": lm.params} if grpo else {"policy": lm.params, "value": scalar.params}
    copy = lambda t: jax.tree.map(jnp.copy, t)
    state = PPOState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32), jnp.float32(0.05),
                     copy(lm.params))
    arrays, _ = prompt_arrays(synthetic.prompts(WORLD, 24), TOK, TCFG)
    n = 4 if grpo else 8
    batches = [{"prompt": arrays["tokens"][i * n:(i + 1) * n], "prompt_mask": arrays["mask"][i * n:(i + 1) * n]}
               for i in range(3)]
    constants = commit({"reference": copy(lm.params), "reward": copy(scalar.params)}, mesh)
    step, state = compile_step(ppo_lib.make_ppo_step(hp, sampling(hp), models, tx, sched), state,
                               shd.shard_batch(batches[0], mesh), mesh, constants=constants, outputs=True)
    return step, state, batches, constants


def _run(kind, mesh_shape):
    mesh = _mesh(mesh_shape)
    step, state, batches, constants = _build(kind, mesh)
    extra = (constants,) if constants is not None else ()
    history = []
    for i, b in enumerate(batches):
        state, metrics, *_ = step(state, shd.shard_batch(b, mesh), jax.random.key(i), *extra)
        history.append({k: np.asarray(v) for k, v in metrics.items()})
    return step, jax.tree.map(np.asarray, jax.device_get(state)), history


@pytest.mark.devices(8)
@pytest.mark.parametrize("kind", ["sft", "rm", "ppo", "grpo", "ppo1"])
def test_step_compiles_once_and_sharded_equals_single_device(kind):
    step, state1, hist1 = _run(kind, None)
    assert step._cache_size() == 1  # three steps, one compilation
    _, state8, hist8 = _run(kind, (2, 2, 2) if kind != "ppo" else (8, 1, 1))  # grpo: 4 prompts on 4 batch shards
    atol, rtol = _tolerance(kind, state1.params)
    for a, b in zip(hist1, hist8):
        for k in a:  # a metric: a forward pass (rtol) at parameters within atol of each other
            np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=rtol, err_msg=f"{kind} metric {k}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=0), state1, state8)


from tests.micro import micro, numbers as _numbers  # noqa: E402


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, micro_trained):
    straight = micro_trained[1]  # the uninterrupted micro run
    assert set(straight) == {"sft", "rm", "ppo"}
    # stop mid-SFT and mid-PPO (after their checkpoints), as a kill would, then run again
    for stop in ({"debug_stop_after.sft": 5}, {"debug_stop_after.ppo": 2}):
        with pytest.raises(SystemExit):
            run_pipeline(micro(**stop), tmp_path / "resumed", use_wandb=False)
    resumed = run_pipeline(micro(), tmp_path / "resumed", use_wandb=False)
    assert _numbers(resumed) == _numbers(straight)
    log = [json.loads(l) for l in open(tmp_path / "resumed" / "ppo" / "metrics.jsonl")]
    assert [r["step"] for r in log if "score" in r] == [1, 2, 3, 4]
    # each launch recorded its machine and where it found the run: what a stage's times came from
    launches = workdirs.launches(tmp_path / "resumed")
    assert [(r["finished"], r["in_progress"]) for r in launches] == [([], []), ([], ["sft"]), (["sft", "rm"], ["ppo"])]
    assert all(r["boot_id"] == hostenv.boot_id() and r["processes"] == 1 for r in launches)


@pytest.mark.parametrize("field, value, words", [
    ("stages", "sft,grpo", "config.stages: 'grpo' is not one of"),
    ("rm.aggregate", "max", "config.rm.aggregate: must be one of"),
    ("dpo.label_smoothing", 0.1, "config.dpo.label_smoothing: only cdpo and robust use it"),
    ("ppo.minibatches", 3, "config.ppo.minibatches: must divide ppo.batch_size=16"),
    ("ppo.kl_estimator", "k5", "config.ppo.kl_estimator"),
    ("ppo.advantage_estimator", "vtrace", "config.ppo.advantage_estimator: must be one of"),
    ("ppo.policy_loss", "trpo", "config.ppo.policy_loss: must be one of"),
    ("ppo.group_size", 3, "config.ppo.group_size: must be >= 1 and divide ppo.batch_size=16"),
    ("ppo.dynamic_sampling", 2, "config.ppo.dynamic_sampling: needs groups"),
    ("ppo.advantage_estimator", "grpo", "config.ppo.group_size: must be >= 2"),
    pytest.param("sft.batch_size", 30, "config.sft.batch_size: 30 must be a positive multiple of the 8",
                 marks=pytest.mark.devices(8)),
    ("ppo.ptx_coef", 1.0, "config.ppo.ptx_batch_size: must be > 0"),
    ("data.max_prompt_len", 40, "config.data.max_prompt_len: must be below data.max_len"),
    ("sft.lora_targets", "wq,embed", "config.sft.lora_targets: ['embed'] are not among"),
    ("rm.head", "mlp", "config.rm.head: must be 'scalar' or 'inform'"),
    ("inform.kl_form", "sum", "config.inform.kl_form: must be one of"),
    # the task world would replace the file by its own rankings without a word
    ("data.rm_train", "labels.jsonl", "config.data.rm_train: = 'labels.jsonl' is read only with data.source = 'files'"),
])
def test_invalid_configs_name_the_field(field, value, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        validate_config(micro(**{field: value}))


def test_lora_sft_stage_trains_adapters_and_resumes(tmp_path):
    overrides = {"stages": "sft", "sft.lora_rank": 4, "sft.lora_targets": "wq,wv,w_up", "sft.lr": 3e-2, "sft.epochs": 3,
                 "sft.warmup_steps": 0}
    straight = build_context(micro(**overrides), tmp_path / "straight", use_wandb=False)
    summary = run_stages(straight)["sft"]
    # micro model: L=2, d=32, 4 heads x 8, 2 kv heads x 8, d_ff=64; r * (fan_in + fan_out) per target
    assert summary["trainable_params"] == 2 * 4 * ((32 + 32) + (32 + 16) + (32 + 64))
    final, base = load_sft(straight), straight.base.params
    changed = {k for k in base["blocks"] if not np.allclose(final["blocks"][k], base["blocks"][k])}
    assert changed == {"wq", "wv", "w_up"}
    np.testing.assert_array_equal(final["embed"], base["embed"])
    val = straight.data.arrays("sft_val")
    evaluate = sft_lib.make_sft_eval(straight.base.graphdef)
    before = sft_lib.validation_loss(evaluate, base, val, 32)["val_loss"]
    assert summary["val_loss"] < before - 0.15  # measured: 3.12 -> 2.90 (random-init base, 3 targets)
    with pytest.raises(SystemExit):
        run_pipeline(micro(**overrides, **{"debug_stop_after.sft": 5}), tmp_path / "resumed", use_wandb=False)
    resumed = run_pipeline(micro(**overrides), tmp_path / "resumed", use_wandb=False)["sft"]
    assert _numbers({"sft": resumed}) == _numbers({"sft": summary})


def test_ptx_term_adds_coef_times_the_pretraining_loss():
    """ppo_loss with ptx = the PPO loss + ptx_coef x the policy's token NLL on the ptx batch."""
    lm = init_model(CFG, seed=0)
    scalar = init_model(CFG, head="scalar", seed=1)
    prompts, _ = prompt_arrays(synthetic.prompts(WORLD, 8), TOK, TCFG)
    ptx, _ = sft_arrays(synthetic.sft_records(WORLD, 8, "ptx"), TOK, TCFG)
    ptx = {k: jnp.asarray(v) for k, v in ptx.items()}
    models = ppo_lib.PPOModels(lm.graphdef, scalar.graphdef, ModelReward(scalar.graphdef))
    cfg0, cfg = ppo_hp(), ppo_hp(ptx_coef=0.7)
    state = PPOState({"policy": lm.params, "value": scalar.params}, None, 0, jnp.float32(0.05), None)
    data, _ = ppo_lib.rollout(cfg0, sampling(cfg0), models, state,
                              {"reference": lm.params, "reward": scalar.params},
                              {"prompt": prompts["tokens"], "prompt_mask": prompts["mask"]}, jax.random.key(0))
    without, _ = ppo_lib.ppo_loss(cfg0, models, state.params, data, ptx)
    with_ptx, metrics = ppo_lib.ppo_loss(cfg, models, state.params, data, ptx)
    out = sft_lib.make_sft_eval(lm.graphdef)(lm.params, ptx)
    nll, count = out["nll"], out["tokens"]
    assert float(count) > 20
    # the ptx NLL in the PPO loss against the SFT evaluation's: two programs for the forward chain,
    # the log-softmax and the sum over the tokens (NLLs share a sign: relative); the difference of
    # the two PPO losses adds each one's rounding at its own size
    chain = tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.head_dim, TCFG.max_len) + CFG.vocab_size
    rel = tol.f32(chain + int(count))
    np.testing.assert_allclose(float(metrics["ptx_loss"]), float(nll / count), rtol=rel)
    atol = 0.7 * rel * float(nll / count) + tol.f32(chain, 2 * max(abs(float(with_ptx)), abs(float(without))))
    np.testing.assert_allclose(float(with_ptx - without), 0.7 * float(nll / count), rtol=0, atol=atol)


def test_ppo_ptx_pipeline_logs_the_ptx_loss(tmp_path):
    """With one epoch of one minibatch, the first iteration's ptx term is computed before any
    update, with the SFT parameters, on a ptx batch that holds every ptx row: the logged ptx_loss
    is the SFT policy's token NLL on the ptx set, computed here from the saved checkpoint."""
    n_ptx = 16
    c = micro(**{"ppo.ptx_coef": 1.0, "ppo.ptx_batch_size": n_ptx, "data.n_ptx": n_ptx, "ppo.iterations": 2,
                 "ppo.minibatches": 1, "ppo.epochs": 1})
    run_pipeline(c, tmp_path, use_wandb=False)
    log = [json.loads(l) for l in open(tmp_path / "ppo" / "metrics.jsonl")]
    ptx = [r["ptx_loss"] for r in log if "ptx_loss" in r]
    assert len(ptx) == 2
    ctx = build_context(c, tmp_path, use_wandb=False)
    arrays = ctx.data.arrays("ptx")
    assert len(arrays["tokens"]) == n_ptx
    sft = checkpoint.load_final(tmp_path, "sft", ctx.base.params)
    out = sft_lib.make_sft_eval(ctx.base.graphdef)(sft, {k: jnp.asarray(v) for k, v in arrays.items()})
    # the two sides sum the same float32 token NLLs in different orders: each sum is within
    # (n - 1) * 2**-24 of the exact one, under 3e-5 relative for n < 500 tokens
    assert 2 * n_ptx < float(out["tokens"]) < 500
    assert ptx[0] == pytest.approx(float(out["nll"] / out["tokens"]), rel=3e-5)
    # the second iteration's policy has left the SFT one unless the first update's learning rate
    # was 0 (a warm-up that starts at 0): then its ptx term repeats the first up to the order of
    # the sum (its batch is the same 16 rows in the next epoch's permutation: the bound above;
    # 1.6e-7 relative measured on one device, equal to the bit on 8)
    lr = [r["lr"] for r in log if "ptx_loss" in r]
    if lr[0] == 0.0:
        assert ptx[1] == pytest.approx(ptx[0], rel=3e-5)
    else:
        assert ptx[1] != ptx[0]


def test_cli_sigterm_saves_a_checkpoint(tmp_path):
    env = child_env(1)
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro", "--workdir", str(work),
           "--config.sft.epochs=50", "--config.sft.save_every=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = work / "sft" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size < 200):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143, out[-2000:]
    assert "checkpoint saved at step" in out
    steps = sorted(int(p.name) for p in (work / "sft" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 50 * 8

"""LoRA over an int8 base in PPO and DPO: the reference is the policy's own frozen base with the
adapters off (dequantised), so at step 0 the policy equals its reference: PPO's KL is 0 and
DPO's implicit reward margin is 0 (loss log 2), up to float32 rounding of two forward passes."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import ranking_arrays
from rlhf_jax.models import abstract_model, init_model
from rlhf_jax.models import forward as F
from rlhf_jax.rewards import ModelReward
from rlhf_jax.train import dpo as dpo_lib
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.state import PPOState, TrainState
from tests import tolerance as tol
from tests.micro import CFG, TCFG, TOK, WORLD

LORA = lora_lib.LoRAConfig(rank=4, alpha=8.0)


def sft_like(seed: int = 0):
    """The tiny model as a trained one is: block matrices 8x their initial scale and the final norm's
    10x, so the log-probs spread over -7 to -1 nats instead of sitting at uniform (-log 22). Then
    int8 rounding moves them by about 0.1 nats, several hundred times float32 rounding's bound
    (an initialised model's nearly uniform log-probs move by little more than that bound)."""
    model = init_model(CFG, seed=seed)
    blocks = {k: (v * 8.0 if k in lora_lib.IN_DIMS else v) for k, v in model.params["blocks"].items()}
    return model.graphdef, {**model.params, "blocks": blocks, "final_norm_scale": model.params["final_norm_scale"] * 10}


def logprob_tol(seq: int, values, n_sum: int = 0) -> float:
    """Two forward passes of the tiny model over `seq` tokens on equal weights, in two programs
    (tests/tolerance.py): the chain to a log-prob is the forward pass and the log-softmax over
    the vocabulary, plus `n_sum` additions when the values compared are sums over tokens; at the
    largest magnitude of the values compared."""
    return tol.forward(CFG, seq, values, extra=CFG.vocab_size + n_sum)


# --- PPO -------------------------------------------------------------------------------------

def _prompts(B: int = 8, P: int = 6):
    """Left-padded prompts of random tokens (no EOS, no padding id)."""
    tokens = jax.random.randint(jax.random.key(3), (B, P), 3, CFG.vocab_size)
    mask = (jnp.arange(P)[None] >= (jnp.arange(B) % 3)[:, None]).astype(jnp.int32)
    return {"prompt": jnp.where(mask > 0, tokens, TOK.pad_token_id), "prompt_mask": mask}


@pytest.fixture(scope="module")
def ppo_int8():
    graphdef, sft = sft_like()
    value_gd, value_init = abstract_model(CFG, "scalar")[0], init_model(CFG, head="scalar", seed=1).params
    hp = base().ppo
    hp.update(batch_size=8, minibatches=2, epochs=1, lora_rank=LORA.rank, lora_int8=True)
    sampling = ppo_lib.sampling_config(base().sampling, TOK, hp.temperature, max_new_tokens=6)
    models = ppo_lib.PPOModels(graphdef, value_gd, ModelReward(value_gd), LORA)
    # the PPO stage's layout: the policy's int8 base is the reference, the value model's is the RM's
    constants = {"reference": lora_lib.quantize(sft), "reward": value_init,
                 "value_base": lora_lib.quantize(value_init)}
    params = {"policy": lora_lib.split(sft, LORA, jax.random.key(0)),
              "value": lora_lib.split(value_init, LORA, jax.random.key(1), extras=("head",))}
    tx, sched = make_optimizer(1e-2, 4, schedule_kind="constant")
    state = PPOState(params, tx.init(params), jnp.zeros((), jnp.int32), jnp.asarray(hp.kl_coef, jnp.float32), None)
    return hp, sampling, models, tx, sched, state, constants, sft


def test_ppo_int8_reference_is_the_policy_with_adapters_off(ppo_int8):
    """Scoring at step 0: the reference's log-probs are the policy's (the same dequantised base,
    B = 0), so every token's KL is 0; the full-precision SFT, which is not what the adapters sit
    on, would give a KL well above rounding."""
    hp, sampling, models, _, _, state, constants, sft = ppo_int8
    batch = _prompts()
    data, metrics = jax.jit(lambda s, c, b, r: ppo_lib.rollout(hp, sampling, models, s, c, b, r))(
        state, constants, batch, jax.random.key(7))
    maskf = np.asarray(data.response_mask_BxN)
    N, T = maskf.shape[1], data.tokens_BxT.shape[1]
    seq = (data.tokens_BxT, data.mask_BxT, data.positions_BxT)
    P_len = T - N
    logp = np.asarray(data.logp_BxN)
    ref_fn = jax.jit(lambda p: F.response_logprobs(models.policy, p, seq, P_len, N, hp.temperature))
    ref_int8 = np.asarray(ref_fn(lora_lib.dequantize(constants["reference"]))) * maskf
    ref_fp = np.asarray(ref_fn(sft)) * maskf
    assert maskf.sum() > 8
    per_token = logprob_tol(T, logp)
    seq_tol = logprob_tol(T, logp.sum(1), n_sum=N)  # a sequence's summed log-probs
    np.testing.assert_allclose(logp, ref_int8, rtol=0, atol=per_token)
    # the logged KL: mean over sequences of the summed per-token log-ratios
    assert abs(float(metrics["kl"])) <= seq_tol, float(metrics["kl"])
    # the full-precision SFT, as the reference, fails both checks (measured: its KL -0.0073, 16x
    # seq_tol; a sampled KL's terms have both signs, so only "above the bound" is asserted)
    kl_fp = float(((logp - ref_fp) * maskf).sum(1).mean())
    assert np.abs(logp - ref_fp).max() > 10 * per_token
    assert abs(kl_fp) > seq_tol, kl_fp


def test_ppo_int8_iterations_run_and_move_the_adapters(ppo_int8):
    """Three PPO iterations (rollout and update) with LoRA over int8 bases: finite metrics, the
    first rollout's KL within rounding of 0, the adapters' B moved off 0."""
    hp, sampling, models, tx, sched, state, constants, _ = ppo_int8
    step = jax.jit(ppo_lib.make_ppo_step(hp, sampling, models, tx, sched))
    # the first iteration's rollout, as the step draws it (its log-probs set the rounding scale)
    first, _ = jax.jit(lambda s, c, b, r: ppo_lib.rollout(hp, sampling, models, s, c, b, r))(
        state, constants, _prompts(), jax.random.split(jax.random.key(10))[0])
    N, T = first.response_BxN.shape[1], first.tokens_BxT.shape[1]
    kls = []
    for i in range(3):
        state, metrics, _ = step(state, _prompts(), jax.random.key(10 + i), constants)
        assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), metrics
        kls.append(float(metrics["kl"]))
    assert abs(kls[0]) <= logprob_tol(T, first.logp_BxN.sum(1), n_sum=N), kls
    assert float(jnp.abs(state.params["policy"]["adapters"]["wq"]["b"]).max()) > 0
    assert constants["reference"]["blocks"]["wq"]["int8"].dtype == jnp.int8


# --- DPO -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dpo_int8():
    graphdef, sft = sft_like()
    arrays, _ = ranking_arrays(synthetic.ranking_records(WORLD, 8, k=3), TOK, TCFG)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    hp = base().dpo
    hp.update(beta=0.5, lora_rank=LORA.rank, lora_int8=True)
    tx, sched = make_optimizer(1e-2, 4, schedule_kind="constant")
    return graphdef, sft, lora_lib.quantize(sft), batch, hp, tx, sched


def _policy_logp(graphdef, sft, base_q, batch):
    """The step-0 policy's summed response log-probs [B, K]: the int8 base with adapters at B = 0."""
    view = lora_lib.view(base_q, lora_lib.split(sft, LORA, jax.random.key(0)), LORA)
    return np.asarray(jax.jit(lambda p: dpo_lib.response_logprobs(graphdef, p, batch).sum_BxK)(view))


@pytest.mark.parametrize("cached", [False, True])
def test_dpo_int8_step0_margin_zero_and_loss_log2(dpo_int8, cached):
    """The reference (live: the frozen base as the step's constant; cached: its log-probs computed
    once) is the int8 base with adapters off: at step 0 every implicit reward is 0, so the margin
    is 0 and each pair's loss is -log sigmoid(0) = log 2, whatever beta. With the full-precision
    SFT's log-probs as the reference the implicit rewards are far from 0."""
    graphdef, sft, base_q, batch, hp, tx, sched = dpo_int8
    params = lora_lib.split(sft, LORA, jax.random.key(0))
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    step = jax.jit(dpo_lib.make_dpo_step(graphdef, tx, sched, hp, LORA))
    if cached:
        ref = dpo_lib.reference_logprobs(graphdef, base_q, batch, batch_size=4)
        batch, constants = {**batch, "ref_logp": jnp.asarray(ref)}, (base_q, None)
    else:
        constants = (base_q, base_q)  # the stage's layout: one frozen tree, the reference too
    _, metrics = step(state, batch, jax.random.key(0), constants)
    # an implicit reward is beta times the difference of two sums of up to T token log-probs
    T = batch["tokens"].shape[-1]
    reward_tol = hp.beta * logprob_tol(T, _policy_logp(graphdef, sft, base_q, batch), n_sum=T)
    for key in ("reward_chosen", "reward_rejected"):
        assert abs(float(metrics[key])) <= reward_tol, (key, float(metrics[key]))
    assert abs(float(metrics["reward_margin"])) <= 2 * reward_tol, float(metrics["reward_margin"])
    # d(-log sigmoid(x))/dx = -1/2 at 0: the loss moves by at most half the margin's error, plus
    # the rounding of log sigmoid and of the means over pairs and prompts (16 roundings)
    assert abs(float(metrics["loss"]) - math.log(2)) <= reward_tol + tol.f32(16, math.log(2))
    if cached:
        fp = dpo_lib.reference_logprobs(graphdef, sft, batch, batch_size=4)
        _, wrong = step(state, {**batch, "ref_logp": jnp.asarray(fp)}, jax.random.key(0), constants)
        assert max(abs(float(wrong[k])) for k in ("reward_chosen", "reward_rejected")) > 10 * reward_tol, wrong


def test_dpo_int8_reference_logprobs_are_the_int8_base_not_the_sft(dpo_int8):
    """The cached reference of an int8 base is the dequantised base's log-probs (the step-0
    policy's), and differs from the full-precision SFT's by far more than rounding."""
    graphdef, sft, base_q, batch, hp, _, _ = dpo_int8
    ref = dpo_lib.reference_logprobs(graphdef, base_q, batch, batch_size=4)
    policy = _policy_logp(graphdef, sft, base_q, batch)
    T = batch["tokens"].shape[-1]
    bound = logprob_tol(T, policy, n_sum=T)
    np.testing.assert_allclose(ref, policy, rtol=0, atol=bound)
    fp = dpo_lib.reference_logprobs(graphdef, sft, batch, batch_size=4)
    assert np.abs(fp - policy).max() > 10 * bound

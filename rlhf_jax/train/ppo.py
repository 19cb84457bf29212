"""PPO for language models: rollout, scoring, GAE and the clipped update in one jitted step.

Roles: policy (from SFT), frozen reference (SFT), value model (from the RM), frozen RM.
Every detail of RLHF_NOTES section 3 is a field of `PPOConfig`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.models.model import apply
from rlhf_jax.objectives import ppo as P
from rlhf_jax.objectives.lm import next_token_loss, token_logprobs
from rlhf_jax.train.rm import score_sequences
from rlhf_jax.train.state import PPOState


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 16
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    whiten_rewards: bool = False
    reward_clip: float = 0.0  # 0 disables
    missing_eos_penalty: float | None = -1.0  # None keeps the RM score
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    clip_eps: float = 0.2
    vf_clip: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    epochs: int = 4
    minibatches: int = 1
    ptx_coef: float = 0.0
    ema_decay: float = 0.0  # 0 disables; InstructGPT 0.992
    eos_token_id: int = 0
    pad_token_id: int = 0

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, eos_token_ids=(self.eos_token_id,), pad_token_id=self.pad_token_id)


def sequence_inputs(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN):
    tokens = jnp.concatenate([prompt_BxP, response_BxN], 1)
    mask = jnp.concatenate([prompt_mask_BxP, response_mask_BxN], 1).astype(jnp.int32)
    return tokens, mask, jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)


def response_logits(graphdef, params, seq, n_prompt: int, n_resp: int):
    """Logits that predict each response token (columns P-1 .. P+N-2)."""
    tokens, mask, positions = seq
    logits, _ = apply(graphdef, params, tokens, positions_BxT=positions, segment_ids_BxT=mask)
    return logits[:, n_prompt - 1:n_prompt + n_resp - 1]


def response_values(graphdef, params, seq, n_prompt: int, n_resp: int):
    tokens, mask, positions = seq
    values, _ = apply(graphdef, params, tokens, positions_BxT=positions, segment_ids_BxT=mask)
    return values[:, n_prompt - 1:n_prompt + n_resp - 1]


def reward_function(reward):
    """graphdefs[2]: a scalar-head model's GraphDef (scored at the EOS), or any function
    (rm_params, tokens, mask) -> [B] scores (an ensemble, an InfoRM)."""
    if callable(reward):
        return reward
    return lambda params, tokens, mask: score_sequences(reward, params, tokens, mask)


def rollout(cfg: PPOConfig, graphdefs, state: PPOState, constants, batch, rng):
    """Sample, score and compute advantages. Returns a dict of [B, ...] arrays and metrics."""
    gen = generate(graphdefs[0], state.params["policy"], batch["prompt"], batch["prompt_mask"], rng, cfg.sampling())
    return score_rollout(cfg, graphdefs, state, constants, batch["prompt"], batch["prompt_mask"],
                         gen.tokens_BxN, gen.mask_BxN)


def score_rollout(cfg: PPOConfig, graphdefs, state: PPOState, constants, prompt, prompt_mask, resp, resp_mask):
    """The scoring phase: policy, reference, value and reward forward passes, rewards, GAE."""
    policy_gd, value_gd, reward = graphdefs
    ref_params, rm_params = constants
    P_len, N = prompt.shape[1], resp.shape[1]
    seq = sequence_inputs(prompt, prompt_mask, resp, resp_mask)
    # log-probs at the sampling temperature, for the policy and the reference alike
    logp = token_logprobs(response_logits(policy_gd, state.params["policy"], seq, P_len, N), resp, cfg.temperature)
    ref_logp = token_logprobs(response_logits(policy_gd, ref_params, seq, P_len, N), resp, cfg.temperature)
    values = response_values(value_gd, state.params["value"], seq, P_len, N)
    maskf = resp_mask.astype(jnp.float32)
    has_eos = jnp.any((resp == cfg.eos_token_id) & (resp_mask > 0), axis=1)
    if hasattr(reward, "placed"):  # fine-grained: rewards already on the response tokens [B, N]
        score = reward.placed(rm_params, seq[0], seq[1]) * maskf
        penalty_at = P.at_last_token(maskf)
        has_eos_ = has_eos[:, None]
    else:
        score = reward_function(reward)(rm_params, seq[0], seq[1])
        penalty_at, has_eos_ = 1.0, has_eos
    if cfg.missing_eos_penalty is not None:
        score = jnp.where(has_eos_, score, cfg.missing_eos_penalty * penalty_at)
    if cfg.reward_clip:
        score = jnp.clip(score, -cfg.reward_clip, cfg.reward_clip)
    logp, ref_logp, values = logp * maskf, ref_logp * maskf, values * maskf
    kl = P.kl_estimate(logp, ref_logp, cfg.kl_estimator) * maskf
    rewards = P.token_rewards(score, kl, maskf, state.kl_coef)
    if cfg.whiten_rewards:
        rewards = P.masked_whiten(rewards, maskf, shift_mean=False)
    advantages, returns = P.gae(rewards, values, maskf, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = P.masked_whiten(advantages, maskf)
    seq_kl_k1 = ((logp - ref_logp) * maskf).sum(1)
    seq_score = score.sum(1) if score.ndim == 2 else score
    data = {"tokens": seq[0], "mask": seq[1], "positions": seq[2], "response": resp, "response_mask": maskf,
            "logp": logp, "values": values, "advantages": advantages, "returns": returns}
    metrics = {
        "score": seq_score.mean(), "kl": seq_kl_k1.mean(), "kl_estimator_sum": kl.sum(1).mean(),
        "reward": (seq_score - state.kl_coef * kl.sum(1)).mean(), "response_length": maskf.sum(1).mean(),
        "frac_no_eos": 1.0 - has_eos.mean(), "kl_coef": state.kl_coef,
        "advantage_mean": P.masked_mean(advantages, maskf), "return_mean": P.masked_mean(returns, maskf),
        "value_mean": P.masked_mean(values, maskf), "negative_kl_frac": (seq_kl_k1 < 0).mean(),
    }
    return data, metrics


def ppo_loss(cfg: PPOConfig, graphdefs, params, mb, ptx):
    policy_gd, value_gd, _ = graphdefs
    P_len = mb["tokens"].shape[1] - mb["response"].shape[1]
    N = mb["response"].shape[1]
    seq = (mb["tokens"], mb["mask"], mb["positions"])
    logits = response_logits(policy_gd, params["policy"], seq, P_len, N) / cfg.temperature
    logp = token_logprobs(logits, mb["response"])
    values = response_values(value_gd, params["value"], seq, P_len, N)
    mask = mb["response_mask"]
    pg, pg_m = P.policy_loss(logp, mb["logp"], mb["advantages"], mask, cfg.clip_eps)
    vf, vf_m = P.value_loss(values, mb["values"], mb["returns"], mask, cfg.vf_clip)
    ent = P.entropy(logits, mask)
    loss = pg + cfg.vf_coef * vf - cfg.ent_coef * ent
    metrics = {"policy_loss": pg, "value_loss": vf, "entropy": ent, **pg_m, **vf_m}
    if cfg.ptx_coef and ptx is not None:
        ptx_logits, _ = apply(policy_gd, params["policy"], ptx["tokens"], positions_BxT=ptx["positions"],
                              segment_ids_BxT=ptx["segment_ids"])
        ptx_loss, _ = next_token_loss(ptx_logits, ptx["tokens"], ptx["loss_mask"])
        loss = loss + cfg.ptx_coef * ptx_loss
        metrics["ptx_loss"] = ptx_loss
    return loss, metrics


def update(cfg: PPOConfig, graphdefs, tx, params, opt_state, data, batch, rng):
    """The update phase: `epochs` x `minibatches` clipped-PPO (+ ptx) steps as one scan."""
    B = data["tokens"].shape[0]
    mb_size = B // cfg.minibatches
    ptx = {k: batch[k] for k in ("tokens", "loss_mask", "segment_ids", "positions") if k in batch} or None
    if ptx is not None:
        ptx = jax.tree.map(lambda x: x.reshape(cfg.minibatches, -1, *x.shape[1:]), ptx)
    perms = jax.vmap(lambda k: jax.random.permutation(k, B))(jax.random.split(rng, cfg.epochs))
    order = perms.reshape(cfg.epochs * cfg.minibatches, mb_size)

    def minibatch(carry, xs):
        params, opt_state = carry
        idx, j = xs
        mb = jax.tree.map(lambda x: x[idx], data)
        ptx_mb = jax.tree.map(lambda x: x[j], ptx) if ptx is not None else None
        (loss, m), grads = jax.value_and_grad(lambda p: ppo_loss(cfg, graphdefs, p, mb, ptx_mb),
                                              has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {**m, "loss": loss,
                                                                   "grad_norm": optax.global_norm(grads)}

    mb_ids = jnp.tile(jnp.arange(cfg.minibatches), cfg.epochs)
    (params, opt_state), upd = jax.lax.scan(minibatch, (params, opt_state), (order, mb_ids))
    return params, opt_state, upd


def make_ppo_step(cfg: PPOConfig, graphdefs, tx, schedule):
    """(state, batch, rng, constants) -> (state, metrics): one PPO iteration, fully on device.

    batch: prompt, prompt_mask [B, P] (+ ptx tokens/loss_mask/segment_ids/positions [Bp, T]).
    constants: (reference params, reward-model params), frozen.
    """
    def step(state: PPOState, batch, rng, constants):
        rng_gen, rng_perm = jax.random.split(rng)
        data, metrics = rollout(cfg, graphdefs, state, constants, batch, rng_gen)
        B = data["tokens"].shape[0]
        params, opt_state, upd = update(cfg, graphdefs, tx, state.params, state.opt_state, data, batch, rng_perm)
        kl_coef = state.kl_coef
        if cfg.adaptive_kl:
            kl_coef = P.adaptive_kl_update(kl_coef, metrics["kl"], cfg.kl_target, cfg.kl_horizon, B)
        ema = state.ema
        if cfg.ema_decay:
            ema = jax.tree.map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p, ema, params["policy"])
        metrics = {**metrics, **{k: v.mean() for k, v in upd.items()}, "ratio_max": upd["ratio_max"].max(),
                   "lr": schedule(state.step), "prompt": batch["prompt"], "prompt_mask": batch["prompt_mask"],
                   "response": data["response"], "response_mask": data["response_mask"]}
        return PPOState(params, opt_state, state.step + 1, kl_coef, ema), metrics

    return step


def sequence_kl(graphdef, policy_params, ref_params, prompt, prompt_mask, response, response_mask, temperature):
    """Per-sequence sum of log pi - log pi_ref over the response (the k1 estimate of KL)."""
    seq = sequence_inputs(prompt, prompt_mask, response, response_mask)
    P_len, N = prompt.shape[1], response.shape[1]
    logp = token_logprobs(response_logits(graphdef, policy_params, seq, P_len, N), response, temperature)
    ref = token_logprobs(response_logits(graphdef, ref_params, seq, P_len, N), response, temperature)
    return ((logp - ref) * response_mask).sum(1)

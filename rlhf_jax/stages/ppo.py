"""Stage "ppo": PPO of the SFT policy against the trained reward with a KL tether to the SFT
model (InstructGPT), PPO-ptx, EMA of the policy; the SFT and the final policy are then
compared on held-out prompts. With an InfoRM reward, the rollouts' latents are tracked.

The same stage runs the critic-free methods: `ppo.advantage_estimator` = grpo, dr_grpo, rloo,
reinforce_pp or remax builds, trains and saves no value model (configs/critic_free.py)."""
from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax.eval.policy_eval import compare_policies
from rlhf_jax.models import abstract_model
from rlhf_jax.models.forward import latents, per_sequence_chunks, sequence_inputs
from rlhf_jax.objectives.ppo import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES
from rlhf_jax.sharding import batch_shards, to_host
from rlhf_jax.stages.base import Training, adapters, train
from rlhf_jax.stages.gold import gold_reward, gold_stages
from rlhf_jax.stages.handoff import load_sft, policy_stages
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.stages.reward import ppo_reward, reward_stages
from rlhf_jax.stages.sampling import sample
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import optim
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train.loop import Hook
from rlhf_jax.train.state import PPOState

SALT = 3


def check(c, need) -> None:
    p = c.ppo
    need(p.batch_size % p.minibatches == 0, "ppo.minibatches", f"must divide ppo.batch_size={p.batch_size}")
    need(p.kl_estimator in KL_ESTIMATORS, "ppo.kl_estimator", f"must be one of {KL_ESTIMATORS.names()}")
    need(p.advantage_estimator in ADVANTAGE_ESTIMATORS, "ppo.advantage_estimator",
         f"must be one of {ADVANTAGE_ESTIMATORS.names()}")
    need(p.policy_loss in POLICY_LOSSES, "ppo.policy_loss", f"must be one of {POLICY_LOSSES.names()}")
    if p.advantage_estimator in ADVANTAGE_ESTIMATORS:
        est = ADVANTAGE_ESTIMATORS[p.advantage_estimator]
        need(p.group_size >= est.min_group, "ppo.group_size",
             f"must be >= {est.min_group} with advantage_estimator={p.advantage_estimator!r}")
        need(est.critic or not p.whiten_rewards, "ppo.whiten_rewards",
             f"only the critic's estimator (gae) whitens rewards, not {p.advantage_estimator!r}")
        # the KL loss term reads ppo.kl_coef; the controller adapts the coefficient of the KL in the reward
        need(est.kl == "reward" or not p.adaptive_kl, "ppo.adaptive_kl",
             f"adapts the KL penalty in the reward; {p.advantage_estimator!r} puts the KL in the loss")
    need(p.group_size >= 1 and p.batch_size % p.group_size == 0, "ppo.group_size",
         f"must be >= 1 and divide ppo.batch_size={p.batch_size}")
    need(p.dynamic_sampling >= 0, "ppo.dynamic_sampling", "must be >= 0 (0 = off)")
    need(not p.dynamic_sampling or p.group_size > 1, "ppo.dynamic_sampling", "needs groups: ppo.group_size > 1")
    need(p.overlong_buffer >= 0, "ppo.overlong_buffer", "must be >= 0 (0 = off)")
    need(p.clip_eps_high is None or p.clip_eps_high > 0, "ppo.clip_eps_high", "must be > 0 or None (= clip_eps)")
    need(p.temperature > 0, "ppo.temperature", "must be > 0 for PPO rollouts")
    need(0 <= p.ema_decay < 1, "ppo.ema_decay", "must be in [0, 1)")
    need(not p.adaptive_kl or p.kl_target > 0, "ppo.kl_target", "must be > 0 with adaptive_kl")
    need(p.ptx_coef == 0 or p.ptx_batch_size > 0, "ppo.ptx_batch_size", "must be > 0 when ppo.ptx_coef > 0")
    need(p.ptx_batch_size % p.minibatches == 0, "ppo.ptx_batch_size", "must be a multiple of ppo.minibatches")
    need(p.reward in ("rm", "gold"), "ppo.reward", "must be 'rm' (the trained reward) or 'gold' (the gold reward)")
    need(p.reward == "rm" or c.data.gold or c.data.source == "synthetic", "ppo.reward",
         "'gold' needs a gold reward: data.gold = 'clf' or the task world")
    need(p.reward == "rm" or c.rm.head != "inform", "ppo.reward", "'gold' cannot track InfoRM latents (rm.head)")


def episodes_dict(episodes) -> dict[str, np.ndarray]:
    e = to_host(episodes)
    return {"prompt": e.prompt_BxP, "prompt_mask": e.prompt_mask_BxP, "response": e.response_BxN,
            "response_mask": e.response_mask_BxN}


def gold_hook(gold) -> Hook:
    """The gold reward of every iteration's episodes, on the host (task world)."""
    def fn(step, metrics, episodes):
        e = episodes_dict(episodes)
        scores = gold.host_scores(e["prompt"], e["prompt_mask"], e["response"], e["response_mask"])
        scores = scores[~np.isnan(scores)]
        return {"gold_reward": float(np.mean(scores))} if len(scores) else {}
    return Hook(fn)


def latent_fn(ctx, rm_params):
    """samples -> InfoRM latents [N, L] of prompt + response."""
    graphdef, _ = abstract_model(ctx.model_cfg(latent_dim=ctx.config.inform.latent_dim), "inform")
    fn = jax.jit(lambda p, t, m: latents(graphdef, p, t, m))

    def of(samples):
        tokens, mask, _ = sequence_inputs(samples["prompt"], samples["prompt_mask"], samples["response"],
                                          samples["response_mask"])
        return per_sequence_chunks(fn, rm_params, tokens, mask)
    return of


def latent_track(ctx, sft, rm_params):
    """InfoRM diagnostics: the reference is the latents of SFT samples on the training prompts."""
    from rlhf_jax.eval.latents import LatentMonitor, LatentTrack
    i, p = ctx.config.inform, ctx.config.ppo
    of = latent_fn(ctx, rm_params)
    prompts = ctx.data.records("prompts")[:i.n_reference]
    reference = of(sample(ctx, sft, prompts, 1, p.temperature, seed=ctx.config.seed * 43 + 9))
    monitor = LatentMonitor(reference, i.csi_eps, i.min_samples, i.outlier_quantile)
    return LatentTrack(monitor, of, ctx.workdir / "ppo" / "latents", i.track_every)


def prompts_per_iteration(c) -> int:
    """batch_size responses answer batch_size / group_size prompts (x dynamic_sampling: DAPO
    samples that many times the groups it keeps)."""
    return c.batch_size // c.group_size * max(c.dynamic_sampling, 1)


def preflight(ctx, need) -> None:
    c = ctx.config.ppo
    n = len(ctx.data.records("prompts"))
    need(n >= prompts_per_iteration(c), "ppo.batch_size", f"{n} prompts cannot fill one PPO batch of "
         f"{prompts_per_iteration(c)} prompts ({c.batch_size} responses)")
    shards = batch_shards(ctx.mesh)
    need(prompts_per_iteration(c) % shards == 0, "ppo.group_size", f"the {prompts_per_iteration(c)} prompts of an "
         f"iteration (ppo.batch_size / ppo.group_size) must split evenly over the mesh's {shards} batch shards")
    need(len(ctx.data.records("eval_prompts")) > 0, "heldout.n_prompts", "no held-out prompts to evaluate on")
    if c.ptx_coef:
        n = len(ctx.data.records("ptx"))
        need(n >= c.ptx_batch_size, "ppo.ptx_batch_size", f"{n} pretraining rows cannot fill a batch of "
             f"{c.ptx_batch_size}")


def alignment_tax(ctx, sft, final) -> dict:
    """Held-out NLL per token of the SFT and the final policy (InstructGPT's "alignment tax":
    what PPO costs on text the policy had learnt), with the paired difference's interval: on the
    held-out demonstrations, and with data.ptx = "world:pretrain" also on the held-out split of
    the task world's pretraining text (`pretrain_nll_*`, `alignment_tax_pretrain`), which PPO-ptx
    trains on other rows of."""
    from rlhf_jax.data.run_data import WORLD_PRETRAIN
    out = _heldout_nll(ctx, "sft_val", sft, final, "heldout_nll", "alignment_tax")
    if ctx.world is not None and ctx.config.data.ptx == WORLD_PRETRAIN:
        out.update(_heldout_nll(ctx, "ptx_val", sft, final, "pretrain_nll", "alignment_tax_pretrain"))
    return out


def _heldout_nll(ctx, records: str, sft, final, nll_key: str, tax_key: str) -> dict:
    from rlhf_jax.eval import metrics, stats
    from rlhf_jax.models import Model
    val = ctx.data.arrays(records, pack=False)
    per_token = {}
    for name, params in (("sft", sft), ("final", final)):
        model = Model(ctx.base.cfg, "lm", ctx.base.graphdef, params)
        nll_N, count_N = metrics.heldout_nll(model, val["tokens"], val["loss_mask"], val["segment_ids"],
                                             batch_size=min(ctx.config.sft.batch_size, len(val["tokens"])))
        per_token[name] = nll_N / np.maximum(count_N, 1)
    return {f"{nll_key}_sft": float(per_token["sft"].mean()), f"{nll_key}_final": float(per_token["final"].mean()),
            tax_key: stats.paired_difference(per_token["final"], per_token["sft"], seed=0).to_dict()}


def needs(c) -> tuple[str, ...]:
    """The SFT policy, the reward it optimises (the trained reward's stages unless ppo.reward =
    gold) and the gold reward's stage."""
    return policy_stages(c) + (reward_stages(c) if c.ppo.reward == "rm" else ()) + gold_stages(c)


@register_stage("ppo", trains=True, needs=needs, check=check, reads=("heldout", "sampling"), data=("prompts",),
                preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c = ctx.config.ppo
    t0 = time.perf_counter()
    sampling = ppo_lib.sampling_config(ctx.config.sampling, ctx.tokenizer, c.temperature)
    sft = load_sft(ctx)
    reward, rm, value_model = ppo_reward(ctx)
    lora = lora_lib.from_block(c)
    copy = functools.partial(jax.tree.map, jnp.copy)
    # frozen: the reference and the reward (the trained copies are separate trees); with LoRA the
    # adapters are over the frozen SFT policy (the reference) and the frozen RM (the value model's base)
    policy, reference, full_policy = adapters(ctx, c, sft, 19)
    params = {"policy": policy}
    constants = {"reference": sft if reference is None else reference, "reward": rm}
    value_gd = None
    if ADVANTAGE_ESTIMATORS[c.advantage_estimator].critic:  # a critic-free estimator builds no value model
        value_gd, value_init = value_model()
        params["value"], value_base, _ = adapters(ctx, c, value_init, 23, extras=("head",))
        if value_base is not None:
            constants["value_base"] = value_base
    models = ppo_lib.PPOModels(ctx.base.graphdef, value_gd, reward, lora)
    tx, sched = optim.from_config(c, c.iterations * c.epochs * c.minibatches)
    state = PPOState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32), jnp.asarray(c.kl_coef, jnp.float32),
                     copy(params["policy"]) if c.ema_decay else None)
    data = {"prompts": ctx.iterator(ctx.data.arrays("prompts"), prompts_per_iteration(c), SALT)}
    if c.ptx_coef:
        data["ptx"] = ctx.iterator(ctx.data.arrays("ptx"), c.ptx_batch_size, SALT + 1)
    gold = gold_reward(ctx)
    hooks = (gold_hook(gold),) if gold is not None else ()
    # InfoRM is one RM (rm's check): its latents are the first member's
    track = latent_track(ctx, sft, jax.tree.map(lambda x: x[0], rm)) if ctx.config.rm.head == "inform" else None
    if track is not None:
        hooks += (Hook(lambda step, m, episodes: track.on_rollout(step, episodes_dict(episodes))),)
    result = train(ctx, "ppo", Training(ppo_lib.make_ppo_step(c, sampling, models, tx, sched), state, data,
                                        c.iterations, constants=constants, hooks=hooks,
                                        progress_keys=("score", "kl", "gold_reward"), outputs=True), SALT)
    final_policy = result.state.ema if c.ema_decay else result.state.params["policy"]
    final_policy = full_policy(final_policy)  # the merged weights, as every later stage and the export read
    e = ctx.config.heldout
    evals, samples = compare_policies(
        ctx.base.graphdef, ctx.tokenizer, ctx.data.arrays("eval_prompts"),
        ppo_lib.sampling_config(ctx.config.sampling, ctx.tokenizer, e.temperature), jax.random.fold_in(ctx.rng, 99),
        sft, final_policy, reward, rm, gold, "ppo", e.n_report_samples)
    if track is not None:  # the SFT and final policies on the held-out prompts, in latent space
        prompts = ctx.data.records("eval_prompts")
        evals.update(track.finish(
            {name: track.latent_fn(sample(ctx, params, prompts, 1, c.temperature,
                                                 seed=ctx.config.seed * 41 + 8))
             for name, params in (("sft", sft), ("final", final_policy))},
            ctx.workdir / "ppo" / "latents.png", f"InfoRM latents: {ctx.config.name} {ctx.config.get('variant', '')}"))
    evals.update(alignment_tax(ctx, sft, final_policy))
    summary = {"steps": c.iterations, "wall_seconds": time.perf_counter() - t0, "train_seconds": result.seconds,
               "score_final": result.last_metrics.get("score"),
               "kl_coef_final": result.last_metrics.get("kl_coef"), **evals}
    checkpoint.write_json_atomic(ctx.workdir / "ppo" / "samples.json", samples)
    checkpoint.save_final(ctx.workdir, "ppo", final_policy, summary)
    return summary

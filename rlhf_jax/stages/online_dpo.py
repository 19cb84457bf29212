"""Stage "online_dpo": online DPO (Guo et al. 2024) from the SFT policy. Every iteration samples
two responses per prompt from the current policy, the annotator (`online_dpo.reward`: the
trained reward, or the gold reward itself) labels the pair, and a registered preference loss
(`online_dpo.loss`, DPO by default) trains on it against the fixed SFT reference
(`train/online_dpo.py`). The SFT and the final policy are then compared on held-out prompts,
as the dpo and ppo stages do."""
from __future__ import annotations

import time
from typing import Any

import jax

from rlhf_jax import checkpoint
from rlhf_jax.eval.policy_eval import compare_policies
from rlhf_jax.stages.base import Training, adapters, train, train_state
from rlhf_jax.stages.dpo import check_loss
from rlhf_jax.stages.gold import gold_reward, gold_stages
from rlhf_jax.stages.handoff import load_sft, policy_stages
from rlhf_jax.stages.ppo import gold_hook
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.stages.reward import reward_stages, trained_reward
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import online_dpo as online_lib
from rlhf_jax.train import optim
from rlhf_jax.train.ppo import sampling_config

SALT = 7


def check(c, need) -> None:
    o = c.online_dpo
    check_loss(o, "online_dpo", need)
    need(o.iterations > 0, "online_dpo.iterations", "must be > 0")
    need(o.epochs > 0 and o.minibatches > 0, "online_dpo.epochs", "epochs and minibatches must be > 0")
    need(o.batch_size % o.minibatches == 0, "online_dpo.minibatches",
         f"must divide online_dpo.batch_size={o.batch_size}")
    need(o.temperature > 0, "online_dpo.temperature", "must be > 0: two samples of a prompt must be able to differ")
    need(o.reward in ("rm", "gold"), "online_dpo.reward",
         "must be 'rm' (the trained reward) or 'gold' (the gold reward)")
    need(o.reward == "rm" or c.data.gold or c.data.source == "synthetic", "online_dpo.reward",
         "'gold' needs a gold reward: data.gold = 'clf' or the task world")


def preflight(ctx, need) -> None:
    c = ctx.config.online_dpo
    n = len(ctx.data.records("prompts"))
    need(n >= c.batch_size, "online_dpo.batch_size", f"{n} prompts cannot fill one batch of {c.batch_size}")
    need(len(ctx.data.records("eval_prompts")) > 0, "heldout.n_prompts", "no held-out prompts to evaluate on")


def needs(c) -> tuple[str, ...]:
    """The SFT policy (start and reference), the trained reward's stages unless the gold reward
    labels the pairs, and the gold reward's stage."""
    return policy_stages(c) + (reward_stages(c) if c.online_dpo.reward == "rm" else ()) + gold_stages(c)


def annotator(ctx):
    """(reward, params) that label the pairs: the trained reward (aggregated as for PPO) or the
    gold reward (a model's params, or None for host code reached through a callback)."""
    if ctx.config.online_dpo.reward == "rm":
        reward, params, _, _ = trained_reward(ctx, "ppo")
        return reward, params
    gold = gold_reward(ctx)
    return gold, getattr(gold, "params", None)


@register_stage("online_dpo", trains=True, needs=needs, check=check, reads=("heldout", "sampling"),
                data=("prompts",), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c = ctx.config.online_dpo
    t0 = time.perf_counter()
    graphdef = ctx.base.graphdef
    sft = load_sft(ctx)
    reward, reward_params = annotator(ctx)
    # with LoRA: adapters over the frozen SFT policy (int8 with lora_int8), which with the
    # adapters off is the reference; without: a trained copy and the SFT policy as reference
    params, base, full = adapters(ctx, c, sft, 29)
    models = online_lib.OnlineModels(graphdef, reward, lora_lib.from_block(c))
    constants = {"reference": sft if base is None else base, "reward": reward_params}
    tx, sched = optim.from_config(c, c.iterations * c.epochs * c.minibatches)
    sampling = sampling_config(ctx.config.sampling, ctx.tokenizer, c.temperature)
    gold = gold_reward(ctx)
    hooks = (gold_hook(gold),) if gold is not None else ()
    data = {"prompts": ctx.iterator(ctx.data.arrays("prompts"), c.batch_size, SALT)}
    result = train(ctx, "online_dpo", Training(
        online_lib.make_online_dpo_step(c, sampling, models, tx, sched), train_state(params, tx), data,
        c.iterations, constants=constants, hooks=hooks, outputs=True,
        progress_keys=("loss", "reward_accuracy", "score", "gold_reward")), SALT)
    final = full(result.state.params)
    e = ctx.config.heldout
    evals, samples = compare_policies(
        graphdef, ctx.tokenizer, ctx.data.arrays("eval_prompts"),
        sampling_config(ctx.config.sampling, ctx.tokenizer, e.temperature), jax.random.fold_in(ctx.rng, 99),
        sft, final, reward, reward_params, gold, "online_dpo", e.n_report_samples)
    last = result.last_metrics
    summary = {"steps": c.iterations, "updates": c.iterations * c.epochs * c.minibatches,
               "sampled_responses": 2 * c.batch_size * c.iterations, "wall_seconds": time.perf_counter() - t0,
               **{f"{k}_final": last.get(k) for k in ("score", "reward_accuracy", "frac_tied")}, **evals}
    checkpoint.write_json_atomic(ctx.workdir / "online_dpo" / "samples.json", samples)
    checkpoint.save_final(ctx.workdir, "online_dpo", final, summary)
    return summary

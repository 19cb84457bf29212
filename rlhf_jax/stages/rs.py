"""Stage "rs": rejection-sampling fine-tuning (Llama 2): SFT of the SFT policy on its best-of-N
samples under the trained reward, then judged against SFT like PPO."""
from __future__ import annotations

import time
from typing import Any

import jax

from rlhf_jax import checkpoint
from rlhf_jax.data.tokenize import decode_sampled, sft_arrays
from rlhf_jax.eval.policy_eval import compare_policies
from rlhf_jax.objectives import bon as bon_lib
from rlhf_jax.stages.bon import score_samples
from rlhf_jax.stages.gold import gold_reward, gold_stages
from rlhf_jax.stages.handoff import load_sft, policy_stages
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.stages.reward import reward_stages, trained_reward
from rlhf_jax.stages.sampling import drop_kept_samples, kept_samples, sample
from rlhf_jax.stages.sft import fine_tune
from rlhf_jax.train.ppo import sampling_config


def preflight(ctx, need) -> None:
    c = ctx.config.rs
    n = min(c.n_prompts, len(ctx.data.records("prompts")))
    need(n >= c.batch_size, "rs.batch_size", f"{n} best-of-n samples (rs.n_prompts) cannot fill one batch of "
         f"{c.batch_size}")


@register_stage("rs", trains=True, needs=lambda c: policy_stages(c) + reward_stages(c) + gold_stages(c),
                reads=("heldout", "sampling"), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c = ctx.config.rs
    t0 = time.perf_counter()
    reward, rm, _, _ = trained_reward(ctx, "bon")
    sft = load_sft(ctx)
    prompts = ctx.data.records("prompts")[:c.n_prompts]
    samples = sample(ctx, sft, prompts, c.n_samples, c.temperature, seed=ctx.config.seed * 37 + 6,
                     **kept_samples(ctx, "rs"))
    proxy, _ = score_samples(ctx, samples, reward, rm, len(prompts))
    best = bon_lib.best_index(proxy)
    # a kept sample cut at the length limit is trained without an EOS it never produced (tokenize.Unfinished)
    texts, _ = decode_sampled(ctx.tokenizer, samples["response"], samples["response_mask"])
    records = [{"prompt": r["prompt"], "completion": texts[j * c.n_samples + int(best[j])]}
               for j, r in enumerate(prompts)]
    train_arrays, _ = sft_arrays(records, ctx.tokenizer, ctx.data.tcfg)
    result, final = fine_tune(ctx, "rs", train_arrays=train_arrays, init=sft)
    evals, report = compare_policies(
        ctx.base.graphdef, ctx.tokenizer, ctx.data.arrays("eval_prompts"),
        sampling_config(ctx.config.sampling, ctx.tokenizer, ctx.config.heldout.temperature),
        jax.random.fold_in(ctx.rng, 99), sft, final, reward, rm, gold_reward(ctx), "rs",
        ctx.config.heldout.n_report_samples)
    summary = {**result, "proxy_of_kept_samples": float(proxy.max(1).mean()), "proxy_mean": float(proxy.mean()),
               **evals, "wall_seconds": time.perf_counter() - t0}
    checkpoint.write_json_atomic(ctx.workdir / "rs" / "samples.json", report)
    checkpoint.save_final(ctx.workdir, "rs", final, summary)
    drop_kept_samples(ctx, "rs")
    return summary

"""Stage "bon": best-of-n of the SFT policy under the trained reward (single, ensemble, InfoRM,
fine-grained; or the gold reward itself, the oracle ceiling): the unbiased estimate of proxy and
gold score for every n <= N, against KL_bon = log n - (n-1)/n (Gao et al. 2022)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax.objectives import bon as bon_lib
from rlhf_jax.rewards import score_in_chunks
from rlhf_jax.stages.gold import gold_reward, gold_stages
from rlhf_jax.stages.handoff import load_sft, policy_stages
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.stages.reward import reward_stages, trained_reward
from rlhf_jax.stages.sampling import drop_kept_samples, kept_samples, sample


def check(c, need) -> None:
    need(c.bon.n_samples >= 1, "bon.n_samples", "must be >= 1")
    need(c.bon.rank_by in ("rm", "gold"), "bon.rank_by", "must be 'rm' or 'gold'")
    need(c.bon.rank_by == "rm" or c.data.source == "synthetic" or c.data.gold, "bon.rank_by",
         "'gold' needs a gold reward (the task world's, or data.gold = 'clf')")
    need(c.rs.n_samples >= 1, "rs.n_samples", "must be >= 1")


def score_samples(ctx, samples: dict, reward, reward_params, n_prompts: int):
    """(proxy [P, N], gold [P, N] or None) for `sample` output with N copies per prompt."""
    tokens = np.concatenate([samples["prompt"], samples["response"]], 1)
    mask = np.concatenate([samples["prompt_mask"], samples["response_mask"]], 1).astype(np.int32)
    proxy = score_in_chunks(reward, reward_params, tokens, mask, samples["prompt"].shape[1]).reshape(n_prompts, -1)
    gold = gold_reward(ctx)
    if gold is None:
        return proxy, None
    return proxy, gold.host_scores(samples["prompt"], samples["prompt_mask"], samples["response"],
                                   samples["response_mask"]).reshape(n_prompts, -1)


def preflight(ctx, need) -> None:
    need(len(ctx.data.records("eval_prompts")) > 0, "heldout.n_prompts", "no held-out prompts for best-of-n")


@register_stage("bon", needs=lambda c: policy_stages(c) + reward_stages(c) + gold_stages(c), check=check,
                produces_params=False, reads=("heldout", "sampling"), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c = ctx.config.bon
    t0 = time.perf_counter()
    reward, rm, _, _ = trained_reward(ctx, "bon")
    prompts = ctx.data.records("eval_prompts")[:c.n_prompts]
    samples = sample(ctx, load_sft(ctx), prompts, c.n_samples, c.temperature, seed=ctx.config.seed * 31 + 5,
                     **kept_samples(ctx, "bon"))
    proxy, gold = score_samples(ctx, samples, reward, rm, len(prompts))
    if c.rank_by == "gold":  # the oracle ranker: the ceiling any proxy could reach
        proxy = gold
    ns = sorted({n for n in (2 ** i for i in range(16)) if n <= c.n_samples} | {c.n_samples})
    curve = bon_lib.bon_curve(proxy, gold, ns)
    checkpoint.write_json_atomic(ctx.workdir / "bon" / "curve.json", curve)
    best = curve[-1]
    summary = {"n_samples": c.n_samples, "n_prompts": len(prompts), "kl_best_of_N": best["kl"],
               "proxy_best_of_1": curve[0]["proxy"], "proxy_best_of_N": best["proxy"],
               "wall_seconds": time.perf_counter() - t0}
    if gold is not None:
        peak = max(curve, key=lambda r: r["gold"])
        summary.update(gold_best_of_1=curve[0]["gold"], gold_best_of_N=best["gold"], gold_peak=peak["gold"],
                       gold_peak_n=peak["n"], gold_prompts=best["gold_prompts"])
    checkpoint.save_final(ctx.workdir, "bon", None, summary)
    drop_kept_samples(ctx, "bon")
    return summary

"""End-of-stage evaluation: the SFT and the final policy sampled on the same held-out prompts,
scored by the gold reward (task world) and the trained reward, judged against each other.

A win counts 1, a tie 1/2; the judge is the gold reward when there is one, the trained
reward otherwise. `intervals` holds the 95% bootstrap intervals over the prompts (paired for
the win rate: both policies answer the same prompts). They cover the choice of evaluation
prompts and the sampling of these two policies' responses, not training: another seed (or
another CPU, whose float code differs in the last bit) trains another policy, whose numbers
can fall outside them. `interval_covers` says so in the summary; training's spread comes
from seeds (experiments/sweep.py --seeds). KL is the per-sequence sum of log pi - log pi_ref on the final policy's
own samples, with both log-probs at the temperature the samples were drawn at (1 for greedy).
"""
from __future__ import annotations

import jax
import numpy as np

from rlhf_jax import signals
from rlhf_jax.data.tokenize import decode
from rlhf_jax.eval import stats
from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.models.forward import sequence_inputs
from rlhf_jax.rewards import GoldReward, Reward
from rlhf_jax.train.ppo import sequence_kl


INTERVAL_COVERS = ("evaluation sampling only: a bootstrap over the held-out prompts and the two policies' sampled "
                   "responses to them, for these trained policies; not training randomness (another seed or CPU "
                   "trains another policy): for that, run seeds (experiments/sweep.py --seeds 0-4)")


def compare_policies(graphdef, tokenizer, prompts: dict, sampling: SamplingConfig, rng, sft_params, final_params,
                     reward: Reward | None, reward_params, gold: GoldReward | None, label: str = "ppo",
                     n_report: int = 8) -> tuple[dict, list[dict]]:
    """(metrics, report samples) for prompts {prompt, prompt_mask} [N, P] (left-padded)."""
    P = prompts["prompt"].shape[1]
    score = jax.jit(lambda p, t, m: reward.score(p, t, m, P)) if reward is not None else None
    prompt_text = decode(tokenizer, prompts["prompt"], prompts["prompt_mask"])
    out, texts, intervals, kept = {}, {}, {}, {}
    for name, params in (("sft", sft_params), ("final", final_params)):
        signals.check(f"{label} evaluation")
        gen = generate(graphdef, params, prompts["prompt"], prompts["prompt_mask"], rng, sampling)
        responses = decode(tokenizer, gen.tokens_BxN, gen.mask_BxN)
        seq = sequence_inputs(prompts["prompt"], prompts["prompt_mask"], gen.tokens_BxN, gen.mask_BxN)
        scores = np.asarray(score(reward_params, seq[0], seq[1])) if score else np.full(len(responses), np.nan)
        golds = (gold.host_scores(prompts["prompt"], prompts["prompt_mask"], gen.tokens_BxN, gen.mask_BxN)
                 if gold is not None else np.full(len(responses), np.nan))
        texts[name] = {"responses": responses, "rm": scores, "gold": golds}
        if score:
            out[f"rm_score_{name}"] = float(scores.mean())
        out[f"response_length_{name}"] = float(np.asarray(gen.mask_BxN).sum(1).mean())
        if gold is not None and not np.isnan(golds).any():
            out[f"gold_reward_{name}"] = float(np.mean(golds))
            kept[f"gold_reward_{name}"] = golds
        if name == "final":
            kl = sequence_kl(graphdef, params, sft_params, prompts["prompt"], prompts["prompt_mask"], gen.tokens_BxN,
                             gen.mask_BxN.astype(np.float32), sampling.temperature or 1.0)
            out["kl_final"] = float(np.asarray(kl).mean())
            kept["kl_final"] = np.asarray(kl, np.float64)
    judge = "gold" if "gold_reward_final" in out else "rm" if score else None
    if judge:
        a, b = np.asarray(texts["final"][judge], float), np.asarray(texts["sft"][judge], float)
        out["win_rate_vs_sft"] = float(np.mean((a > b) + 0.5 * (a == b)))
        out["judge"] = judge
        intervals["win_rate_vs_sft"] = stats.paired_win_rate(a, b, seed=0).to_dict()
    for key, values in kept.items():
        intervals[key] = stats.mean(values, seed=0).to_dict()
    out["intervals"] = intervals  # 95% bootstrap intervals over the prompts
    out["interval_covers"] = INTERVAL_COVERS
    samples = [{"prompt": p, "sft": texts["sft"]["responses"][i], label: texts["final"]["responses"][i],
                "sft_gold": _num(texts["sft"]["gold"][i]), f"{label}_gold": _num(texts["final"]["gold"][i]),
                "sft_rm": float(texts["sft"]["rm"][i]), f"{label}_rm": float(texts["final"]["rm"][i])}
               for i, p in enumerate(prompt_text[:n_report])]
    return out, samples


def _num(x) -> float | None:
    return None if np.isnan(x) else float(x)


def frontier_eval(graphdef, prompts: dict, sampling: SamplingConfig, rng, reference_params,
                  gold: GoldReward | None, view=lambda p: p):
    """`evaluate(state, step) -> {"kl", "gold_reward"}` for a training loop: the current policy's
    samples on held-out prompts {prompt, prompt_mask} (the same rng every time), their mean
    sequence KL to the reference policy and their mean gold reward: the trajectory of a run in
    the reward / KL plane of the DPO paper's IMDb figure. `view` maps the trained parameters
    to the full policy's (LoRA: adapters over the frozen base)."""
    kl_fn = jax.jit(lambda p, r, *arrays: sequence_kl(graphdef, p, r, *arrays, sampling.temperature or 1.0))

    def evaluate(state, step: int) -> dict:
        params = view(state.params)
        gen = generate(graphdef, params, prompts["prompt"], prompts["prompt_mask"], rng, sampling)
        kl = kl_fn(params, reference_params, prompts["prompt"], prompts["prompt_mask"], gen.tokens_BxN,
                   gen.mask_BxN.astype(np.float32))
        out = {"kl": float(np.asarray(kl).mean())}
        if gold is not None:
            out["gold_reward"] = float(np.nanmean(gold.host_scores(prompts["prompt"], prompts["prompt_mask"],
                                                                   gen.tokens_BxN, gen.mask_BxN)))
        return out

    return evaluate

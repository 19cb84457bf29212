"""End-of-PPO evaluation: SFT vs final policy on held-out prompts under a judge.

The judge is the gold reward when the task world provides one, the trained RM otherwise.
A win counts 1, a tie 1/2. KL is the per-sequence sum of log pi - log pi_ref on the final
policy's own samples, at the rollout temperature.
"""
from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.train import ppo as ppo_lib


def _sample(pipe, params, prompts, rng, sampling: SamplingConfig):
    return generate(pipe.base.graphdef, params, prompts["prompt"], prompts["prompt_mask"], rng, sampling)


def evaluate_policies(pipe, sft_params, final_params, rm_params, reward, cfg: ppo_lib.PPOConfig,
                      label: str = "ppo"):
    """Sample both policies on the eval prompts; gold and RM scores (RM when given), KL, win rate."""
    prompts = pipe.arrays("eval_prompts")
    e = pipe.c.eval
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=e.temperature,
                              eos_token_ids=(cfg.eos_token_id,), pad_token_id=cfg.pad_token_id)
    rng = jax.random.fold_in(pipe.rng, 99)
    out, texts = {}, {}
    rm_score = jax.jit(ppo_lib.reward_function(reward)) if rm_params is not None else None
    prompt_text = pipe.decode(prompts["prompt"], prompts["prompt_mask"])
    for name, params in (("sft", sft_params), ("final", final_params)):
        gen = _sample(pipe, params, prompts, rng, sampling)
        responses = pipe.decode(gen.tokens_BxN, gen.mask_BxN)
        seq = ppo_lib.sequence_inputs(prompts["prompt"], prompts["prompt_mask"], gen.tokens_BxN, gen.mask_BxN)
        scores = np.asarray(rm_score(rm_params, seq[0], seq[1])) if rm_score else np.full(len(responses), np.nan)
        golds = [pipe.gold(p, r) for p, r in zip(prompt_text, responses)]
        texts[name] = {"responses": responses, "rm": scores, "gold": golds}
        if rm_score:
            out[f"rm_score_{name}"] = float(scores.mean())
        out[f"response_length_{name}"] = float(np.asarray(gen.mask_BxN).sum(1).mean())
        if all(g is not None for g in golds):
            out[f"gold_reward_{name}"] = float(np.mean(golds))
        if name == "final":
            kl = ppo_lib.sequence_kl(pipe.base.graphdef, params, sft_params, prompts["prompt"],
                                     prompts["prompt_mask"], gen.tokens_BxN, gen.mask_BxN.astype(np.float32),
                                     cfg.temperature)
            out["kl_final"] = float(np.asarray(kl).mean())
    judge = "gold" if "gold_reward_final" in out else "rm" if rm_score else None
    if judge:
        a, b = np.asarray(texts["final"][judge], float), np.asarray(texts["sft"][judge], float)
        out["win_rate_vs_sft"] = float(np.mean((a > b) + 0.5 * (a == b)))
        out["judge"] = judge
    samples = [{"prompt": p, "sft": texts["sft"]["responses"][i], label: texts["final"]["responses"][i],
                "sft_gold": texts["sft"]["gold"][i], f"{label}_gold": texts["final"]["gold"][i],
                "sft_rm": float(texts["sft"]["rm"][i]), f"{label}_rm": float(texts["final"]["rm"][i])}
               for i, p in enumerate(prompt_text[:e.n_report_samples])]
    return out, samples

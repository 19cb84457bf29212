"""Policy optimisation with and without a critic: InstructGPT's PPO (GAE with a value model) and
the critic-free methods, each one advantage estimator and one policy loss of the same `ppo`
stage (rlhf_jax/objectives/ppo.py; docs/rlhf_notes.md section 13).

    python -m rlhf_jax.main --config configs/critic_free.py:grpo --workdir runs/grpo      # tiny world
    python -m rlhf_jax.main --config configs/critic_free.py:rloo,micro --workdir runs/rloo
    python -m rlhf_jax.main --config configs/critic_free.py:grpo,smollm2_hh,cpu --workdir runs/grpo_smol

Variants (one method; combine with any variant of configs/instructgpt.py for the model and data):
  ppo           GAE with a value model (the base config, for the comparison)
  grpo          GRPO: G = 4 responses per prompt, group-normalised advantages, per-response
                token means, the KL (k3) as a loss term
  dr_grpo       Dr. GRPO: no division by the group std, the token sum over a constant length
  rloo          RLOO: G = 4, leave-one-out baseline, the KL folded into the sequence reward
  reinforce_pp  REINFORCE++: token-level KL in the reward, returns z-scored over the batch
  remax         ReMax: the greedy response's reward as the baseline
  dapo          DAPO: GRPO's groups with clip-higher (0.2 / 0.28), token-level normalisation,
                dynamic sampling (2x the groups sampled, the ones whose rewards differ kept) and
                the soft overlong penalty over the last fifth of max_new_tokens
  gspo          GSPO: GRPO's groups with one ratio per response, clipped at 3e-4 / 4e-4

Equal compute: every method samples ppo.batch_size responses per iteration (batch_size / G
prompts) and takes ppo.epochs x ppo.minibatches gradient steps on them, as the base PPO does;
ReMax also decodes one greedy response per prompt, DAPO samples 2x and keeps half. Every
method keeps the base config's KL coefficient (0.05 in the task world) where its paper puts
the KL: DAPO's and Dr. GRPO's papers use none with verifiable rewards, but a learned reward
model is hackable; `--config.ppo.kl_coef=0` gives their setting.
"""
from configs import instructgpt
from configs.variants import Variants

METHODS = {
    "ppo": "InstructGPT's PPO: GAE with a value model",
    "grpo": "GRPO (Shao et al. 2024), G = 4, KL k3 in the loss",
    "dr_grpo": "Dr. GRPO (Liu et al. 2025): no std division, constant length normaliser",
    "rloo": "RLOO (Ahmadian et al. 2024), k = 4, leave-one-out baseline",
    "reinforce_pp": "REINFORCE++ (Hu 2025): token KL in the reward, batch-normalised returns",
    "remax": "ReMax (Li et al. 2023): greedy-response baseline",
    "dapo": "DAPO (Yu et al. 2025): clip-higher, token-level loss, dynamic sampling, overlong penalty",
    "gspo": "GSPO (Zheng et al. 2025): sequence-level clipped ratio",
}
VARIANTS = instructgpt.VARIANTS | Variants("configs/critic_free.py", METHODS)
GROUP = 4  # responses per prompt of the grouped methods (the GRPO paper's 64 does not fit a tiny batch)


def get_config(arg: str | None = None):
    chosen = VARIANTS.parse(arg, "grpo")
    methods = [v for v in chosen if v in METHODS]
    if len(methods) > 1:
        raise ValueError(f"configs/critic_free.py: choose one method, got {methods}")
    method = methods[0] if methods else "grpo"
    c = instructgpt.get_config(instructgpt.base_variants(chosen))
    c.name = "critic_free"
    c.variant = arg or "grpo"
    p = c.ppo
    if method != "ppo":
        p.whiten_rewards = False  # the estimators normalise as their papers do
    if method in ("grpo", "dr_grpo", "dapo", "gspo"):
        p.update(advantage_estimator="dr_grpo" if method == "dr_grpo" else "grpo", group_size=GROUP,
                 kl_estimator="k3", policy_loss=method)
    if method == "dapo":
        p.update(clip_eps=0.2, clip_eps_high=0.28, dynamic_sampling=2,
                 overlong_buffer=max(1, c.sampling.max_new_tokens // 5))
    if method == "gspo":
        p.update(clip_eps=3e-4, clip_eps_high=4e-4)
    if method == "rloo":
        p.update(advantage_estimator="rloo", group_size=GROUP)
    if method in ("reinforce_pp", "remax"):
        p.advantage_estimator = method
    return c

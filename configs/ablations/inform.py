"""InfoRM (Miao et al., NeurIPS 2024): a reward model with an information bottleneck.

    python -m rlhf_jax.main --config configs/ablations/inform.py:inform,hackable --workdir runs/inform_hack
    python -m rlhf_jax.main --config configs/ablations/inform.py:standard,hackable --workdir runs/standard_hack

The RM's head maps the EOS hidden state to the mean and log variance of a latent z
(`inform.latent_dim`, 128), and the decoder maps z to the reward; training adds
`inform.beta` (0.1) times the KL of q(z | x, y) to N(0, I): `per_dim_sum` as in the paper,
`mean_then_kl` as in the released code. During PPO the latents of the rollouts are tracked:
the cluster separation index (CSI) and the Mahalanobis outlier rate against the SFT latents
are logged every `inform.track_every` iterations (latent/csi, latent/outlier_rate), and the
end of the stage writes ppo/latents.npz and ppo/latents.png (a 2-D projection). Best-of-n
then ranks SFT samples by the same RM.

Variants: inform (default), standard (the scalar-head baseline under the same budget),
mean_then_kl, beta<x> (bottleneck weight, e.g. beta0.01), znorm (reward divided by its spread on
the SFT demonstrations: the bottleneck shrinks the reward's scale), hackable (RMs trained on
perturbed reference answers: the setting in which a standard RM is over-optimised), and any
variant of configs/instructgpt.py (micro for tests).
"""
from configs import instructgpt
from configs.variants import Variants

VARIANTS = instructgpt.VARIANTS | Variants("configs/ablations/inform.py", {
    "inform": "the InfoRM head", "standard": "the scalar-head baseline", "mean_then_kl": "the released code's KL",
    "znorm": "reward divided by its demonstration spread", "hackable": "RMs on perturbed answers"},
    numeric={"beta": "the bottleneck weight"})


def get_config(arg: str | None = None):
    variants = VARIANTS.parse(arg, "inform")
    c = instructgpt.get_config(instructgpt.base_variants(variants))
    c.name, c.variant = "inform", arg or "inform"
    c.stages = "sft,rm,ppo,bon"
    c.rm.head = "scalar" if "standard" in variants else "inform"
    c.inform.kl_form = "mean_then_kl" if "mean_then_kl" in variants else "per_dim_sum"
    if VARIANTS.number(variants, "beta") is not None:
        c.inform.beta = VARIANTS.number(variants, "beta")
    c.rm.znorm = "znorm" in variants  # divide the reward by its spread on the demonstrations
    if "hackable" in variants:
        c.data.rm_from_policy = False
    if "micro" in variants:
        c.inform.update(latent_dim=8, track_every=2, n_reference=32)
        c.bon.update(n_samples=8, n_prompts=16)
    return c

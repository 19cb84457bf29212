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
mean_then_kl, beta0.01 / beta1 (bottleneck weight), znorm (reward divided by its spread on the
SFT demonstrations: the bottleneck shrinks the reward's scale), hackable (RMs trained on perturbed
reference answers: the setting in which a standard RM is over-optimised), micro (tests).
"""
from configs import instructgpt


def get_config(arg: str | None = None):
    variants = (arg or "inform").split(",")
    c = instructgpt.get_config(",".join(v for v in variants if v in ("tiny", "micro")) or None)
    c.name, c.variant = "inform", arg or "inform"
    c.stages = "sft,rm,ppo,bon"
    c.rm.head = "scalar" if "standard" in variants else "inform"
    c.inform.kl_form = "mean_then_kl" if "mean_then_kl" in variants else "per_dim_sum"
    for v in variants:
        if v.startswith("beta"):
            c.inform.beta = float(v[4:])
    c.rm.znorm = "znorm" in variants  # divide the reward by its spread on the demonstrations
    if "hackable" in variants:
        c.data.rm_from_policy = False
    if "micro" in variants:
        c.inform.update(latent_dim=8, track_every=2, n_reference=32)
        c.bon.update(n_samples=8, n_prompts=16)
    return c

"""Composite reward models (Coste et al. 2023): k = 5 RMs differing only in seed, one vmapped step.

    python -m rlhf_jax.main --config configs/ablations/ensembles.py:wco --workdir runs/ens_wco
    python -m rlhf_jax.main --config configs/ablations/ensembles.py:uwo,hackable --workdir runs/ens_uwo_hack

Variants: single (one RM, the baseline), mean, wco (min), uwo (mean - 0.1 Var, divisor k; add
`ddof1` for k - 1), median, mean_std; `znorm` z-normalises members first; `hackable` trains
the RMs on perturbed reference answers instead of ranked SFT samples, the setting in which a
standard RM is over-optimised (its score rises while the gold reward falls). The stages run
SFT, the RM(s), PPO with the aggregated reward, and best-of-n under the same reward.
"""
from configs import instructgpt


def get_config(arg: str | None = None):
    variants = (arg or "wco").split(",")
    c = instructgpt.get_config(",".join(v for v in variants if v in ("tiny", "micro")) or None)
    c.name, c.variant = "ensembles", arg or "wco"
    c.stages = "sft,rm,ppo,bon"
    if "single" not in variants:
        c.rm.members = 5
    for name, agg in (("mean", "mean"), ("wco", "min"), ("uwo", "uwo"), ("median", "median"),
                      ("mean_std", "mean_std")):
        if name in variants:
            c.rm.aggregate = agg
    c.rm.uncertainty_coef = 0.1  # lambda for PPO (0.5 in the best-of-n experiments)
    c.rm.variance_ddof = 1 if "ddof1" in variants else 0
    c.rm.znorm = "znorm" in variants
    if "hackable" in variants:
        c.data.rm_from_policy = False
    if "micro" in variants:
        c.bon.update(n_samples=8, n_prompts=16)
    return c

"""Composite reward models (Coste et al. 2023): k = 5 RMs differing only in seed, one vmapped step.

    python -m rlhf_jax.main --config configs/ablations/ensembles.py:wco --workdir runs/ens_wco
    python -m rlhf_jax.main --config configs/ablations/ensembles.py:uwo,hackable --workdir runs/ens_uwo_hack
    python -m rlhf_jax.main --config configs/ablations/ensembles.py:wco,smollm2_hh --workdir runs/ens_smol

Variants: single (one RM, the baseline), mean, wco (min), uwo (mean - lambda Var), median,
mean_std; the penalty follows Coste et al. per use (rm.uncertainty: PPO lambda 0.1 with divisor
k - 1, best-of-n lambda 0.5 with divisor k); `ddof0` / `ddof1` force divisor k / k - 1 for
both; `znorm` z-normalises members first; `hackable` trains the RMs on perturbed reference
answers instead of ranked SFT samples, the setting in which a standard RM is over-optimised
(its score rises while the gold reward falls); and any variant of configs/instructgpt.py.
The stages run SFT, the RM(s), PPO with the aggregated reward, and best-of-n under the same reward.
"""
from configs import instructgpt
from configs.variants import Variants

AGGREGATES = {"mean": "mean", "wco": "min", "uwo": "uwo", "median": "median", "mean_std": "mean_std"}
VARIANTS = instructgpt.VARIANTS | Variants("configs/ablations/ensembles.py", {
    "single": "one RM, the baseline", "mean": "mean of 5", "wco": "worst case (min) of 5",
    "uwo": "uncertainty-weighted (mean - lambda Var) of 5", "median": "median of 5",
    "mean_std": "mean - lambda std of 5", "ddof0": "variance divisor k", "ddof1": "variance divisor k - 1",
    "znorm": "z-normalise members on the demonstrations", "hackable": "RMs on perturbed answers"})


def get_config(arg: str | None = None):
    variants = VARIANTS.parse(arg, "wco")
    c = instructgpt.get_config(instructgpt.base_variants(variants))
    c.name, c.variant = "ensembles", arg or "wco"
    c.stages = "sft,rm,ppo,bon"
    if "single" not in variants:
        c.rm.members = 5
    for name, agg in AGGREGATES.items():
        if name in variants:
            c.rm.aggregate = agg
    for ddof in (0, 1):
        if f"ddof{ddof}" in variants:
            c.rm.uncertainty.ppo.ddof = c.rm.uncertainty.bon.ddof = ddof
    c.rm.znorm = "znorm" in variants
    if "hackable" in variants:
        c.data.rm_from_policy = False
    if "micro" in variants:
        c.bon.update(n_samples=8, n_prompts=16)
    return c

"""Preference optimisation in place of RM + PPO: SFT, then a preference loss on the same rankings
the RM would see.

    python -m rlhf_jax.main --config configs/dpo.py --workdir runs/dpo                 # DPO, tiny world
    python -m rlhf_jax.main --config configs/dpo.py:ipo --workdir runs/ipo
    python -m rlhf_jax.main --config configs/dpo.py:simpo --workdir runs/simpo
    python -m rlhf_jax.main --config configs/dpo.py:cdpo --workdir runs/cdpo --config.dpo.beta=0.5

Variants (combine with commas): the loss: dpo (default), cdpo, robust, ipo, simpo (beta 2,
gamma 1: Meng et al.'s range), orpo (lambda 0.1); mean (per-token mean of the log-probs instead
of the sum, DPO family); live_ref (reference log-probs on the fly instead of cached); and any
variant of configs/instructgpt.py (tiny, micro, smollm2_hh, small) for the model and data.
"""
from configs import instructgpt
from configs.variants import Variants

LOSSES = ("dpo", "cdpo", "robust", "ipo", "simpo", "orpo")
VARIANTS = instructgpt.VARIANTS | Variants("configs/dpo.py", {
    "dpo": "DPO", "cdpo": "conservative DPO (label smoothing 0.1)", "robust": "robust DPO (eps 0.1)",
    "ipo": "IPO (beta plays tau)", "simpo": "SimPO (reference-free, beta 2, gamma 1)",
    "orpo": "ORPO (reference-free, SFT + odds-ratio term, lambda 0.1)",
    "mean": "per-token mean of the response log-probs (DPO family)",
    "live_ref": "reference log-probs computed live, not cached"})


def get_config(arg: str | None = None):
    variants = VARIANTS.parse(arg, "dpo")
    c = instructgpt.get_config(instructgpt.base_variants(variants))
    c.name = "dpo"
    c.variant = arg or "dpo"
    c.stages = "sft,dpo"
    losses = [v for v in variants if v in LOSSES]
    if len(losses) > 1:
        raise ValueError(f"configs/dpo.py: choose one loss, got {losses}")
    c.dpo.loss = losses[0] if losses else "dpo"
    if c.dpo.loss in ("cdpo", "robust"):
        c.dpo.label_smoothing = 0.1
    if c.dpo.loss == "simpo":
        c.dpo.update(beta=2.0, simpo_gamma=1.0)
    if "mean" in variants:
        c.dpo.logprob_reduction = "mean"
    if "live_ref" in variants:
        c.dpo.cache_reference = False
    if "micro" in variants:
        c.dpo.update(batch_size=16, save_every=4)
    if "smollm2_hh" in variants:
        c.dpo.update(batch_size=16, lr=5e-7, warmup_steps=150, optimizer="rmsprop")
    if "small" in variants:
        c.dpo.update(steps=4, batch_size=4, warmup_steps=0, save_every=0)
    return c

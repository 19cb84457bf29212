"""DPO in place of RM + PPO: SFT, then a DPO-family stage on the same rankings the RM would see.

    python -m rlhf_jax.main --config configs/dpo.py --workdir runs/dpo                 # DPO, tiny world
    python -m rlhf_jax.main --config configs/dpo.py:ipo --workdir runs/ipo
    python -m rlhf_jax.main --config configs/dpo.py:cdpo --workdir runs/cdpo --config.dpo.beta=0.5

Variants (combine with commas): dpo (default), cdpo, robust, ipo; mean (per-token mean of the
log-probs instead of the sum); live_ref (reference log-probs on the fly instead of cached);
micro (test size); any variant of configs/instructgpt.py (e.g. smollm2_hh) for the data and model.
"""
from configs import instructgpt


def get_config(arg: str | None = None):
    variants = (arg or "dpo").split(",")
    c = instructgpt.get_config(",".join(v for v in variants if v in ("tiny", "micro", "smollm2_hh", "small")) or None)
    c.name = "dpo"
    c.variant = arg or "dpo"
    c.stages = "sft,dpo"
    for loss in ("cdpo", "robust", "ipo"):
        if loss in variants:
            c.dpo.loss = loss
    if c.dpo.loss in ("cdpo", "robust"):
        c.dpo.label_smoothing = 0.1
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

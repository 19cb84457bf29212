"""Proxy reward models of their own size for the over-optimisation experiments (Gao et al. 2022).

    python -m rlhf_jax.main --config experiments/configs/overopt.py:hackable --workdir runs/gao \
        --config.rm.overrides.d_model=128

configs/ablations/best_of_n.py (SFT, the RM, best-of-n) plus PPO, with the RM trained from
scratch (`rm.init = random`) at the width `rm.overrides.d_model`: its head_dim (d_model / 4,
4 heads, 2 KV heads) and d_ff (2 d_model) follow it, so one grid key sets the whole size.
Depth stays the policy's (2 layers). Variants: those of best_of_n.py (`hackable`: the RM on
perturbed reference answers, where a proxy gets over-optimised; `micro` for tests).
"""
import ml_collections

from configs.ablations import best_of_n


def get_config(arg: str | None = None):
    c = best_of_n.get_config(arg or "hackable")
    c.name = "overopt"
    c.stages = "sft,rm,bon,ppo"
    c.rm.init = "random"
    d_model = ml_collections.FieldReference(int(c.model.overrides.d_model))
    c.rm.overrides = ml_collections.ConfigDict({
        "d_model": d_model, "n_heads": 4, "n_kv_heads": 2, "head_dim": d_model // 4, "d_ff": d_model * 2})
    return c

"""Best-of-n and rejection sampling (Gao et al. 2022; Touvron et al. 2023): no RL.

    python -m rlhf_jax.main --config configs/ablations/best_of_n.py --workdir runs/bon
    python -m rlhf_jax.main --config configs/ablations/best_of_n.py:hackable --workdir runs/bon_hack

Stages: SFT, the RM, `bon` (N samples per held-out prompt from the SFT policy; the unbiased
best-of-n estimate of proxy and gold score for n = 1, 2, 4, ..., N against KL_bon, written to
bon/curve.json and bon_curves.png) and `rs` (SFT of the SFT policy on its best-of-N samples
under the RM, then judged against SFT like PPO). Variants: `hackable` (RM on perturbed
answers: gold peaks then falls as n grows), `ensemble` (5 members, WCO), `oracle` (rank by the
gold reward: the ceiling), and any variant of configs/instructgpt.py.
"""
from configs import instructgpt
from configs.variants import Variants

VARIANTS = instructgpt.VARIANTS | Variants("configs/ablations/best_of_n.py", {
    "hackable": "RM on perturbed answers", "ensemble": "5 RMs, worst case", "oracle": "rank by the gold reward"})


def get_config(arg: str | None = None):
    variants = VARIANTS.parse(arg, "tiny")
    c = instructgpt.get_config(instructgpt.base_variants(variants))
    c.name, c.variant = "best_of_n", arg or "tiny"
    c.stages = "sft,rm,bon,rs"
    c.bon.update(n_samples=256, n_prompts=128)
    if "hackable" in variants:
        c.data.rm_from_policy = False
    if "ensemble" in variants:
        c.rm.update(members=5, aggregate="min")
    if "oracle" in variants:  # rank by the gold reward itself: the ceiling of best-of-n
        c.bon.rank_by = "gold"
    if "micro" in variants:
        c.bon.update(n_samples=16, n_prompts=16)
        c.rs.update(n_samples=4, batch_size=32, save_every=0)
    return c

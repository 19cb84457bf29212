"""Active selection of the comparisons to label (stage "active"; docs/rlhf_notes.md section 12).

    python -m rlhf_jax.main --config configs/ablations/active.py:disagreement --workdir runs/active_dis
    python -m rlhf_jax.main --config configs/ablations/active.py:random,micro --workdir runs/active_micro

Variants: the selection strategy (random, uncertainty, disagreement, diverse = diverse_disagreement),
`perturbed` (the pool's responses are perturbed answers, not SFT samples), and any variant of
configs/instructgpt.py. The stages: SFT, then the rounds of stage active (label, retrain an
ensemble of 4 RMs, select) at budgets of 64 to 1024 labelled comparisons.
"""
from configs import instructgpt
from configs.variants import Variants

STRATEGIES = {"random": "random", "uncertainty": "uncertainty", "disagreement": "disagreement",
              "diverse": "diverse_disagreement"}
VARIANTS = instructgpt.VARIANTS | Variants("configs/ablations/active.py", {
    "random": "random comparisons (the baseline)", "uncertainty": "pair probability of the ensemble mean nearest 1/2",
    "disagreement": "largest variance of the members' score differences",
    "diverse": "disagreement, at most active.per_cluster picks per prompt and round",
    "perturbed": "the pool's responses are perturbed answers, not SFT samples"})


def get_config(arg: str | None = None):
    variants = VARIANTS.parse(arg, "random")
    c = instructgpt.get_config(instructgpt.base_variants(variants))
    c.name, c.variant = "active", arg or "random"
    c.stages = "sft,active"
    for name, strategy in STRATEGIES.items():
        if name in variants:
            c.active.strategy = strategy
    if "perturbed" in variants:
        c.data.rm_from_policy = False
    if "micro" in variants:
        c.active.update(budgets="16,32,48", members=2, pool_prompts=32, eval_prompts=16, bon_prompts=8, bon_n=4,
                        min_steps=4, epochs=1, batch_size=16)
    return c

"""Which seeds a run's reward-model score heads are drawn from (plain arithmetic, no JAX: the
experiment scripts check two runs' heads before they start anything)."""
from __future__ import annotations


def head_seeds(seed: int, members: int) -> list[int]:
    """The seeds a run of `seed` draws its reward models' score heads from, one per member. Two
    runs whose lists share a seed start a reward model from the same head, and with `rm.init`
    base or sft from the same backbone too: after training on disjoint pairs the chat form's gold
    RM and seed 0's proxy kept heads at cosine 1.000 (experiments/README.md), so one cannot judge
    the other independently (rlhf_jax.stages.gold refuses it)."""
    return [seed + 1 + i for i in range(members)]


def stored_head_seeds(fields: dict) -> set[int]:
    """`head_seeds` of a run from its stored, flattened config (WORKDIR/config.json)."""
    return set(head_seeds(int(fields["seed"]), int(fields.get("rm.members", 1))))

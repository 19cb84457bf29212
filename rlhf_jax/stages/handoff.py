"""What a stage reads of a finished stage's parameters in the workdir (WORKDIR/<stage>/final)."""
from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import checkpoint


def load_sft(ctx):
    """The SFT policy's parameters (WORKDIR/sft/final)."""
    return checkpoint.load_final(ctx.workdir, "sft", ctx.base.params)


def load_stacked(ctx, stage: str, member_params, k: int):
    """A stage's k >= 1 members stacked on a leading axis (ensemble, fine-grained categories)."""
    return load_members(ctx.workdir, stage, member_params, k)


def load_members(workdir, stage: str, member_params, k: int):
    """WORKDIR/<stage>/final as k members stacked on axis 0, each sharded like `member_params`
    (the member axis not split, so one RM keeps the layout of a single model)."""
    def like(x):
        sharding = x.sharding
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
        return jax.ShapeDtypeStruct((k, *x.shape), x.dtype, sharding=sharding)

    return checkpoint.load_final(workdir, stage, jax.tree.map(like, member_params))

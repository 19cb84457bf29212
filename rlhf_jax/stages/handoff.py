"""What a stage reads of a finished stage's parameters in the workdir (WORKDIR/<stage>/final)."""
from __future__ import annotations

import jax

from rlhf_jax import checkpoint
from rlhf_jax.train import rm as rm_lib


def load_sft(ctx):
    """The SFT policy's parameters (WORKDIR/sft/final)."""
    return checkpoint.load_final(ctx.workdir, "sft", ctx.base.params)


def load_stacked(ctx, stage: str, member_params, k: int):
    """A stage's k stacked members (ensemble, fine-grained categories), replicated."""
    like = jax.eval_shape(lambda p: rm_lib.stack([p] * k), member_params)
    replicated = jax.sharding.NamedSharding(ctx.mesh, jax.sharding.PartitionSpec())
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), like)
    return checkpoint.load_final(ctx.workdir, stage, like)

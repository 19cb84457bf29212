"""What a stage reads of a finished stage's parameters in the workdir (WORKDIR/<stage>/final)."""
from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import checkpoint
from rlhf_jax.stages.registry import finished, listed

SELECT = "sft_select"  # the stage that chooses among SFT's candidates


def sft_stage(workdir) -> str:
    """The stage whose final parameters are the SFT policy: sft_select (the candidate it chose)
    once it has finished in the workdir, else sft."""
    return SELECT if finished(workdir, SELECT) else "sft"


def load_sft(ctx):
    """The SFT policy's parameters: WORKDIR/sft_select/final once stage sft_select has finished
    there, else WORKDIR/sft/final."""
    return checkpoint.load_final(ctx.workdir, sft_stage(ctx.workdir), ctx.base.params)


def policy_stages(c) -> tuple[str, ...]:
    """What a stage starting from the SFT policy needs: sft, and sft_select when it is listed
    (so that it runs first and the stage starts from the chosen candidate)."""
    return ("sft", SELECT) if SELECT in listed(c) else ("sft",)


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

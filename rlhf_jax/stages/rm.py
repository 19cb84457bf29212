"""Stage "rm": `rm.members` = k >= 1 reward models on the SFT backbone (or the base model, `rm.init`;
scalar or InfoRM head), K-wise Bradley-Terry on rankings. Members differ only in seed (head init and
data order) and train together in one step vmapped over the member axis; one RM is an ensemble of
one. Then each member's bias is shifted so the SFT demonstrations score 0 on average (`rm.normalize`).
WORKDIR/rm/final holds the members stacked on axis 0 for every k; the summary's per-member fields
(demonstration_mean_before_centering, demonstration_std, val_accuracy_members) are lists of k."""
from __future__ import annotations

import time
from typing import Any

from rlhf_jax import checkpoint
from rlhf_jax import sharding as shd
from rlhf_jax.models.heads import REWARD_HEADS
from rlhf_jax.objectives.ensemble import AGGREGATORS
from rlhf_jax.objectives.inform import KL_FORMS
from rlhf_jax.rewards import EnsembleReward
from rlhf_jax.stages.base import Training, adapters, stack_batches, train
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages.preferences import check_preference_sizes, preference_arrays, preference_stages
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.stages.reward import reward_model
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import optim
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train.heads import head_seeds

SALT = 2


def check(c, need) -> None:
    r, i = c.rm, c.inform
    need(r.members >= 1, "rm.members", "must be >= 1")
    need(r.init in ("sft", "base", "random"), "rm.init",
         "must be 'sft' (the SFT policy), 'base' (the base model) or 'random' (a fresh model of rm.overrides' size)")
    need(r.init == "random" or not r.overrides, "rm.overrides", "another architecture needs rm.init='random'")
    need(not (r.lora_rank and r.init == "random"), "rm.lora_rank", "LoRA needs a pretrained backbone (rm.init sft/base)")
    need(r.pairs in ("kwise", "shuffled"), "rm.pairs", "must be 'kwise' (each prompt's pairs in one example) or "
         "'shuffled' (independent pairs)")
    need(r.head in REWARD_HEADS, "rm.head", "must be " + " or ".join(map(repr, REWARD_HEADS.names())))
    need(r.head == "scalar" or r.members == 1, "rm.head", "an InfoRM ensemble is not supported (rm.members = 1)")
    need(i.kl_form in KL_FORMS, "inform.kl_form", f"must be one of {KL_FORMS.names()}")
    need(i.latent_dim > 0, "inform.latent_dim", "must be > 0")
    need(i.beta >= 0, "inform.beta", "must be >= 0")
    need(0 < i.outlier_quantile < 1, "inform.outlier_quantile", "must be in (0, 1)")
    need(i.min_samples >= 1, "inform.min_samples", "must be >= 1")
    need(r.aggregate in AGGREGATORS, "rm.aggregate", f"must be one of {AGGREGATORS.names()}")
    for use in ("ppo", "bon"):
        need(r.uncertainty[use].ddof in (0, 1), f"rm.uncertainty.{use}.ddof", "must be 0 (divide by k) or 1 (k - 1)")
    need(not r.znorm or r.normalize, "rm.znorm", "needs rm.normalize (the statistics come from centring)")
    need(r.members > 1 or r.aggregate == "mean", "rm.aggregate", "aggregators need rm.members > 1")
    need(not r.pack or r.head == "scalar", "rm.pack", "packs the scalar head's rankings only (rm.head = 'scalar')")
    need(not r.pack or r.grad_accum == 1, "rm.pack", "needs rm.grad_accum = 1 (a microbatch slice would cut the "
         "packed rows apart from their rankings)")


def demonstrations(ctx):
    """The SFT demonstrations one per row (never packed: one score per demonstration)."""
    arrays = ctx.data.arrays("sft_train", pack=False)
    return arrays["tokens"], arrays["segment_ids"]


def preflight(ctx, need) -> None:
    check_preference_sizes(ctx, need, "rm")


def needs(c) -> tuple[str, ...]:
    """The SFT policy: as the backbone (rm.init = sft) or as the sampler of the ranked responses."""
    ranks_sft_samples = c.data.rm_from_policy and c.data.source == "synthetic"
    return (("sft",) if c.rm.init == "sft" or ranks_sft_samples else ()) + preference_stages(c)


# data.gold: the RM never judges with the gold reward, so a workdir whose RM has run takes another judge
# without retraining it (a stage that made its rankings with the gold, prefs, still refuses the change)
@register_stage("rm", trains=True, needs=needs, check=check, reads=("inform", "sampling"), data=("rm_train",),
                ignores=("rm.aggregate", "rm.uncertainty", "rm.znorm", "data.gold"),
                preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c, k = ctx.config.rm, ctx.config.rm.members
    t0 = time.perf_counter()
    train_arrays, val = preference_arrays(ctx, shuffled_pairs=c.pairs == "shuffled")
    names = [f"train_{i}" for i in range(k)]
    data = {name: ctx.iterator(train_arrays, c.batch_size, SALT + 1000 * i) for i, name in enumerate(names)}
    total = c.steps or c.epochs * data[names[0]].steps_per_epoch
    heads = [reward_model(ctx, seed=s) for s in head_seeds(ctx.config.seed, k)]
    graphdef = heads[0].graphdef
    if c.init == "random":  # a fresh model of its own size (rm.overrides), backbone included
        members = [h.params for h in heads]
    else:
        backbone = load_sft(ctx) if c.init == "sft" else ctx.base.params
        members = [rm_lib.init_from_sft(backbone, h.params) for h in heads]
    tx, sched = optim.from_config(c, total)
    ib = ctx.config.inform
    lora = lora_lib.from_block(c)
    single = rm_lib.make_rm_step(graphdef, tx, sched, c.margin, c.center_coef,
                                 ib_beta=ib.beta if c.head == "inform" else None, kl_form=ib.kl_form,
                                 microbatches=c.grad_accum, lora=lora)
    # with LoRA: adapters and a head per member over one frozen backbone they all share (the first's)
    first, base, full = adapters(ctx, c, members[0], 13, extras=("head",))
    members = [first] + [adapters(ctx, c, m, 13 + i, extras=("head",), base=base)[0]
                         for i, m in enumerate(members[1:], 1)]
    constants = None if base is None else (base, None)
    # k members on axis 0 of the state (one member: the state alone) and axis 1 of the batch (axis
    # 0 stays the data axis), one step vmapped over them
    combine = rm_lib.packed_batches(shd.batch_shards(ctx.mesh)) if c.pack else stack_batches
    training = Training(rm_lib.ensemble_step(single), rm_lib.member_state(members, tx), data,
                        total, constants=constants, combine=combine, progress_keys=("loss", "accuracy"))
    result = train(ctx, "rm", training, SALT)
    members = [full(p) for p in rm_lib.member_params(result.state)]  # full weights, as later stages read them
    val_bs = min(c.batch_size, len(val["tokens"]))
    summary = {"steps": total, "members": k, "train_accuracy": result.last_metrics.get("accuracy"),
               "train_seconds": result.seconds,  # the training loop alone (what TRL's trainer.train() times)
               "median_step_seconds": result.median_step_seconds}  # this run's (since its last resume)
    # each member's and the members' mean's (how they are aggregated is the using stage's choice)
    reward = EnsembleReward(graphdef, lambda s: s.mean(0))
    t1 = time.perf_counter()
    summary.update(rm_lib.ensemble_held_out(graphdef, rm_lib.stack(members), val, val_bs, reward.aggregate,
                                            reward.member_scores, c.margin))
    summary["held_out_seconds"] = time.perf_counter() - t1
    if c.normalize:  # each member's bias shifted so the SFT demonstrations score 0 on average
        t1 = time.perf_counter()
        tokens, mask = demonstrations(ctx)
        centred = [rm_lib.center_on_demonstrations(graphdef, p, tokens, mask) for p in members]
        members = [p for p, _, _ in centred]
        summary["demonstration_mean_before_centering"] = [mean for _, mean, _ in centred]
        summary["demonstration_std"] = [std for _, _, std in centred]
        summary["centering_seconds"] = time.perf_counter() - t1
    params = rm_lib.stack(members)  # saved with the member axis for every k
    summary["wall_seconds"] = time.perf_counter() - t0
    checkpoint.save_final(ctx.workdir, "rm", params, summary)
    return summary

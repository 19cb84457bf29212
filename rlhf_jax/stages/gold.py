"""The gold reward every stage judges with: the task world's, the classifier of stage clf
(`data.gold = "clf"`), rebuilt from the workdir, or the reward model of another run's workdir
(`data.gold = "rm:WORKDIR"`, its stage rm: a gold RM trained on pairs the run never sees)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax.data import synthetic
from rlhf_jax.errors import UserError
from rlhf_jax.models import init_model
from rlhf_jax.rewards import GoldReward
from rlhf_jax.rewards.classifier import ClassifierReward
from rlhf_jax.rewards.rm_gold import RMGoldReward
from rlhf_jax.stages.handoff import load_members
from rlhf_jax.stages.registry import listed
from rlhf_jax.train.heads import head_seeds, stored_head_seeds

RM_GOLD = "rm:"  # data.gold = "rm:WORKDIR": the finished stage rm of that workdir


def classifier_model(ctx):
    """A freshly initialised gold classifier: a scalar-head decoder of the base model's
    architecture with `clf.overrides`, initialised from `clf.seed` (not the run's seed: every
    seed of a sweep is judged by the same classifier)."""
    return init_model(ctx.model_cfg(**dict(ctx.config.clf.overrides)), head="scalar", seed=ctx.config.clf.seed,
                      mesh=ctx.mesh)


def gold_stages(c) -> tuple[str, ...]:
    """The stages whose outputs make up the gold reward (`data.gold`)."""
    return ("clf",) if c.data.gold == "clf" else ()


def gold_reward(ctx) -> GoldReward | None:
    """The gold reward: the classifier of stage clf (`data.gold = "clf"`), another run's reward
    model (`"rm:WORKDIR"`), else the task world's gold reward over decoded text (None outside the
    task world)."""
    if ctx.config.data.gold.startswith(RM_GOLD):
        return rm_gold(ctx, ctx.config.data.gold)
    if ctx.config.data.gold == "clf":
        model = classifier_model(ctx)
        return ClassifierReward(model.graphdef, checkpoint.load_final(ctx.workdir, "clf", model.params), ctx.tokenizer,
                                ctx.config.clf.output)
    if ctx.world is None:
        return None
    coef = ctx.world.length_coef

    def one(prompt: str, response: str) -> float:
        try:
            return synthetic.gold_reward(prompt, response, coef)
        except ValueError:  # not a task-world prompt: no gold score
            return float("nan")

    return GoldReward(lambda prompts, responses: np.array([one(p, r) for p, r in zip(prompts, responses)]),
                      ctx.tokenizer)


def rm_gold_workdir(spec: str) -> Path:
    """WORKDIR of data.gold = "rm:WORKDIR"."""
    return Path(spec[len(RM_GOLD):]).expanduser()


def check_independent(config, gold_fields: dict, spec: str) -> None:
    """Refuse a gold RM whose score heads were drawn from a seed this run's own reward model
    (stage rm listed) draws from: both would start from the same head (`head_seeds`)."""
    if "rm" not in listed(config) or "seed" not in gold_fields:
        return
    shared = sorted(stored_head_seeds(gold_fields) & set(head_seeds(config.seed, config.rm.members)))
    if shared:
        raise UserError(f"data.gold = {spec!r}: the gold RM (seed {gold_fields['seed']}) drew its score head from "
                        f"seed {shared[0]}, as this run's reward model does (seed {config.seed}, rm.members "
                        f"{config.rm.members}; member i's head: seed + 1 + i): both would start from one head, "
                        f"and the gold would not judge this run's RM independently. Train the gold RM with a seed "
                        f"no judged run uses (e.g. --config.seed=100 in its workdir)")


def rm_gold(ctx, spec: str) -> RMGoldReward:
    """The finished stage rm of another workdir as the gold reward: its k members on the base
    model's architecture with a scalar head (rm.init sft or base there), averaged."""
    workdir = rm_gold_workdir(spec)
    summary = checkpoint.read_summary(workdir, "rm")
    if summary is None:
        raise UserError(f"data.gold = {spec!r}: {workdir / 'rm'} has no finished reward model "
                        f"(run stage rm there first)")
    stored = workdir / "config.json"
    if stored.exists():
        fields = json.loads(stored.read_text()).get("config", {})
        odd = {k: v for k, v in fields.items() if (k == "rm.head" and v != "scalar")
               or (k == "rm.init" and v == "random")}
        if odd:
            raise UserError(f"data.gold = {spec!r}: the gold RM must be a scalar-head RM on the base model's "
                            f"architecture; {stored} has {odd}")
        check_independent(ctx.config, fields, spec)
    scalar = init_model(ctx.model_cfg(), head="scalar", seed=0, mesh=ctx.mesh)
    params = load_members(workdir, "rm", scalar.params, int(summary.get("members", 1)))
    return RMGoldReward(scalar.graphdef, params, ctx.tokenizer, ctx.data.tcfg)

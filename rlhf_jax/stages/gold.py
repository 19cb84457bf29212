"""The gold reward every stage judges with: the task world's, or the classifier of stage clf
(`data.gold = "clf"`), rebuilt from the workdir."""
from __future__ import annotations

import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax.data import synthetic
from rlhf_jax.models import init_model
from rlhf_jax.rewards import GoldReward
from rlhf_jax.rewards.classifier import ClassifierReward


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
    """The gold reward: the classifier of stage clf (`data.gold = "clf"`), else the task world's
    gold reward over decoded text (None outside the task world)."""
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

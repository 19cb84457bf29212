"""The trained reward a stage optimises or ranks by, rebuilt from the workdir: the RM's members
aggregated (one RM is an ensemble of one) or the fine-grained composite (and PPO's choice of it
or the gold reward)."""
from __future__ import annotations

import functools

import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax.models import init_model
from rlhf_jax.objectives import ensemble as ensemble_lib
from rlhf_jax.objectives.finegrained import parse_components, token_classes
from rlhf_jax.rewards import EnsembleReward
from rlhf_jax.rewards.finegrained import FineGrainedReward
from rlhf_jax.stages.gold import gold_reward
from rlhf_jax.stages.handoff import load_sft, load_stacked
from rlhf_jax.train import rm as rm_lib


STD_FLOOR = 1e-6  # a reward spread below this (a constant reward) is not divided by


def reward_model(ctx, seed: int):
    """A freshly initialised reward model of the configured head (scalar or InfoRM) and
    architecture (the base model's, with `rm.overrides`)."""
    cfg = ctx.model_cfg(latent_dim=ctx.config.inform.latent_dim, **dict(ctx.config.rm.overrides))
    return init_model(cfg, head=ctx.config.rm.head, seed=seed, mesh=ctx.mesh)


def category_model(ctx, seed: int):
    return init_model(ctx.model_cfg(), head="scalar", seed=seed, mesh=ctx.mesh)


def aggregator(ctx, rm_summary: dict, use: str):
    """scores [k, B] -> [B] as the config says for `use` ("ppo" or "bon": Coste et al. use
    another lambda and variance divisor for each), z-normalised by the demonstration statistics."""
    c = ctx.config.rm
    stats = {}
    if c.znorm:
        stats = {"mean_K": np.zeros(c.members, np.float32),
                 "std_K": np.maximum(np.asarray(rm_summary["demonstration_std"], np.float32), STD_FLOOR)}
    lam, ddof = c.uncertainty[use].coef, c.uncertainty[use].ddof
    return functools.partial(ensemble_lib.aggregate, kind=c.aggregate, lam=lam, ddof=ddof, **stats)


def reward_stages(c) -> tuple[str, ...]:
    """The stages whose outputs make up the trained reward."""
    if c.fgrm.components:
        return ("fgrm",) + (("rm",) if c.fgrm.holistic_weight else ())
    return ("rm",)


def trained_reward(ctx, use: str = "ppo"):
    """(reward, params, value graphdef, value init) of the trained reward in the workdir.

    The RM's k >= 1 members (scalar or InfoRM head, read at the EOS) aggregated as `rm.aggregate`
    says (one RM: k = 1 and the mean, divided by its demonstration spread with rm.znorm), or the
    fine-grained composite. The value model is the RM's architecture, started from the first member.
    """
    c = ctx.config
    scalar = reward_model(ctx, seed=c.seed + 1)
    if c.fgrm.components:
        return fine_grained_reward(ctx, scalar)
    summary = checkpoint.read_summary(ctx.workdir, "rm") or {}
    params = load_stacked(ctx, "rm", scalar.params, c.rm.members)
    reward = EnsembleReward(scalar.graphdef, aggregator(ctx, summary, use))
    return reward, params, scalar.graphdef, rm_lib.unstack(params, c.rm.members)[0]


def fine_grained_reward(ctx, scalar):
    """The fine-grained reward: params = (stacked category models, holistic RM or None); the
    value model starts from the holistic RM if there is one."""
    f = ctx.config.fgrm
    components = parse_components(f.components)
    cats = load_stacked(ctx, "fgrm", category_model(ctx, seed=0).params, len(components))
    rm, holistic = None, None
    if f.holistic_weight:
        rm = rm_lib.unstack(load_stacked(ctx, "rm", scalar.params, 1), 1)[0]  # one RM (fgrm's check)
        std = ((checkpoint.read_summary(ctx.workdir, "rm") or {}).get("demonstration_std") or [1.0])[0]
        holistic = (scalar.graphdef, f.holistic_weight, 0.0, max(std, STD_FLOOR))  # centred on demonstrations
    reward = FineGrainedReward(scalar.graphdef, components, token_classes(ctx.tokenizer), f.min_words, f.reward,
                               holistic)
    value_init = rm if rm is not None else rm_lib.unstack(cats, len(components))[0]
    return reward, (cats, rm), scalar.graphdef, value_init


def ppo_reward(ctx):
    """(reward, params, value) PPO optimises: the trained reward (`ppo.reward = "rm"`) or the gold
    reward itself (`"gold"`: the gold classifier, or the task world's gold through a host
    callback). value() -> (graphdef, init) of the value model, called only when the advantage
    estimator needs a critic: from the RM's first member, or with the gold reward (no RM to start
    from) the SFT policy with a fresh scalar head."""
    if ctx.config.ppo.reward == "rm":
        reward, params, value_gd, value_init = trained_reward(ctx, "ppo")
        return reward, params, lambda: (value_gd, value_init)
    gold = gold_reward(ctx)

    def value():
        model = category_model(ctx, seed=ctx.config.seed + 1)
        return model.graphdef, rm_lib.init_from_sft(load_sft(ctx), model.params)

    return gold, getattr(gold, "params", None), value  # params: a model's (classifier, another run's RM) or None

"""What several stages do the same way: read a finished stage's parameters, sample a policy,
rank its samples in the task world, and rebuild the trained reward and the gold reward (the
task world's, or the gold classifier of stage clf) from the workdir."""
from __future__ import annotations

import functools

import jax
import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import decode, prompt_arrays
from rlhf_jax.generate import sample_rows
from rlhf_jax.models import init_model
from rlhf_jax.objectives import ensemble as ensemble_lib
from rlhf_jax.objectives.finegrained import parse_components, token_classes
from rlhf_jax.rewards import EnsembleReward, GoldReward, ModelReward
from rlhf_jax.rewards.classifier import ClassifierReward
from rlhf_jax.rewards.finegrained import FineGrainedReward
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train.ppo import sampling_config


def load_sft(ctx):
    """The SFT policy's parameters (WORKDIR/sft/final)."""
    return checkpoint.load_final(ctx.workdir, "sft", ctx.base.params)


def sample(ctx, params, prompt_records: list[dict], copies: int, temperature: float, seed: int,
           max_new_tokens: int | None = None) -> dict[str, np.ndarray]:
    """`copies` samples per prompt (rows prompt-major) from an LM-head policy: host arrays
    prompt, prompt_mask, response, response_mask."""
    arrays, _ = prompt_arrays(prompt_records, ctx.tokenizer, ctx.data.tcfg)
    cfg = sampling_config(ctx.config.sampling, ctx.tokenizer, temperature, max_new_tokens)
    return sample_rows(ctx.base.graphdef, params, arrays["tokens"], arrays["mask"], copies, cfg, seed)


def sample_texts(ctx, params, prompt_records: list[dict], copies: int, temperature: float, seed: int
                 ) -> list[list[str]]:
    """`copies` decoded responses per prompt."""
    s = sample(ctx, params, prompt_records, copies, temperature, seed)
    texts = decode(ctx.tokenizer, s["response"], s["response_mask"])
    return [texts[j * copies:(j + 1) * copies] for j in range(len(prompt_records))]


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


def as_pairs(records: list[dict]) -> list[dict]:
    """Every ranked pair of every ranking as its own record (ties dropped)."""
    from rlhf_jax.data.records import ranking_pairs
    out = []
    for r in records:
        if "responses" not in r:
            out.append(r)
            continue
        out += [{"prompt": r["prompt"], "chosen": r["responses"][w], "rejected": r["responses"][l]}
                for w, l in ranking_pairs(r["ranks"])]
    return out


PREFS = "stage:prefs"  # data.rm_train: the rankings stage prefs wrote (K SFT samples ranked by the gold reward)


def preference_stages(c) -> tuple[str, ...]:
    """The stages whose outputs are the preference data (`data.rm_train = "stage:prefs"`)."""
    return ("prefs",) if c.data.rm_train == PREFS else ()


def preference_arrays(ctx, shuffled_pairs: bool = False) -> tuple[dict, dict]:
    """The rankings the RM (or DPO) trains on: from files; from stage prefs (`data.rm_train =
    "stage:prefs"`: K samples of the SFT policy per prompt ranked by the gold reward); or, in the
    task world with `data.rm_from_policy`, the annotators' rankings of K samples of the SFT policy (InstructGPT).
    `shuffled_pairs`: the training rankings broken into independent pairs (each response scored
    once per pair it is in, the pairs shuffled apart): the setting InstructGPT reports overfits."""
    c = ctx.config
    if c.data.rm_train == PREFS and not ctx.data.derived("rm_train"):  # stage prefs: gold-ranked SFT samples
        from rlhf_jax.stages import prefs
        for split in ("train", "val"):
            ctx.data.set_records(f"rm_{split}", prefs.load(ctx.workdir, split))
    elif ctx.world is not None and c.data.rm_from_policy and not ctx.data.derived("rm_train"):
        sft = load_sft(ctx)
        for split, n in (("train", c.data.n_rankings), ("val", c.data.n_rankings_val)):
            prompts = synthetic.prompts(ctx.world, n, "rm_" + split)
            samples = sample_texts(ctx, sft, prompts, 2 * c.data.k, 1.0, seed=c.seed * 7919 + (split == "val"))
            ctx.data.set_records(f"rm_{split}", synthetic.rank_samples(
                ctx.world, [p["prompt"] for p in prompts], samples, c.data.k, split))
    if shuffled_pairs and not ctx.data.derived("rm_train_pairs"):
        ctx.data.set_records("rm_train_pairs", as_pairs(ctx.data.records("rm_train")))
    return ctx.data.arrays("rm_train_pairs" if shuffled_pairs else "rm_train"), ctx.data.arrays("rm_val")


def check_preference_sizes(ctx, need, block: str) -> None:
    """Enough rankings for one batch of config[block] (the task world ranks SFT samples later:
    its count is the config's)."""
    c = ctx.config
    if ctx.world is not None or c.data.rm_train == PREFS:
        n = c.data.n_rankings
    else:
        n = len(ctx.data.records("rm_train"))
    need(n >= c[block].batch_size, f"{block}.batch_size", f"{n} rankings cannot fill one batch of {c[block].batch_size}")


def reward_model(ctx, seed: int):
    """A freshly initialised reward model of the configured head (scalar or InfoRM) and
    architecture (the base model's, with `rm.overrides`)."""
    cfg = ctx.model_cfg(latent_dim=ctx.config.inform.latent_dim, **dict(ctx.config.rm.overrides))
    return init_model(cfg, head=ctx.config.rm.head, seed=seed, mesh=ctx.mesh)


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


STD_FLOOR = 1e-6  # a reward spread below this (a constant reward) is not divided by


def load_stacked(ctx, stage: str, member_params, k: int):
    """A stage's k stacked members (ensemble, fine-grained categories), replicated."""
    like = jax.eval_shape(lambda p: rm_lib.stack([p] * k), member_params)
    replicated = jax.sharding.NamedSharding(ctx.mesh, jax.sharding.PartitionSpec())
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), like)
    return checkpoint.load_final(ctx.workdir, stage, like)


def reward_stages(c) -> tuple[str, ...]:
    """The stages whose outputs make up the trained reward."""
    if c.fgrm.components:
        return ("fgrm",) + (("rm",) if c.fgrm.holistic_weight else ())
    return ("rm",)


def trained_reward(ctx, use: str = "ppo"):
    """(reward, params, value graphdef, value init) of the trained reward in the workdir.

    One RM (scalar or InfoRM head, read at the EOS; divided by its demonstration spread with
    rm.znorm), an aggregated ensemble, or the fine-grained composite. The value model is the
    RM's architecture, started from (the first member of) the RM.
    """
    c = ctx.config
    scalar = reward_model(ctx, seed=c.seed + 1)
    if c.fgrm.components:
        return fine_grained_reward(ctx, scalar)
    summary = checkpoint.read_summary(ctx.workdir, "rm") or {}
    if c.rm.members == 1:
        params = checkpoint.load_final(ctx.workdir, "rm", scalar.params)
        scale = max(summary["demonstration_std"], STD_FLOOR) if c.rm.znorm else None
        return ModelReward(scalar.graphdef, scale), params, scalar.graphdef, params
    params = load_stacked(ctx, "rm", scalar.params, c.rm.members)
    reward = EnsembleReward(scalar.graphdef, aggregator(ctx, summary, use))
    return reward, params, scalar.graphdef, rm_lib.unstack(params, c.rm.members)[0]


def ppo_reward(ctx):
    """(reward, params, value graphdef, value init) PPO optimises: the trained reward
    (`ppo.reward = "rm"`) or the gold reward itself (`"gold"`: the gold classifier, or the task
    world's gold through a host callback). With the gold reward there is no RM to start the value
    model from, so it starts from the SFT policy with a fresh scalar head."""
    if ctx.config.ppo.reward == "rm":
        return trained_reward(ctx, "ppo")
    gold = gold_reward(ctx)
    value = category_model(ctx, seed=ctx.config.seed + 1)
    params = gold.params if isinstance(gold, ClassifierReward) else None
    return gold, params, value.graphdef, rm_lib.init_from_sft(load_sft(ctx), value.params)


def category_model(ctx, seed: int):
    return init_model(ctx.model_cfg(), head="scalar", seed=seed, mesh=ctx.mesh)


def fine_grained_reward(ctx, scalar):
    """The fine-grained reward: params = (stacked category models, holistic RM or None); the
    value model starts from the holistic RM if there is one."""
    f = ctx.config.fgrm
    components = parse_components(f.components)
    cats = load_stacked(ctx, "fgrm", category_model(ctx, seed=0).params, len(components))
    rm, holistic = None, None
    if f.holistic_weight:
        rm = checkpoint.load_final(ctx.workdir, "rm", scalar.params)
        std = (checkpoint.read_summary(ctx.workdir, "rm") or {}).get("demonstration_std", 1.0)
        holistic = (scalar.graphdef, f.holistic_weight, 0.0, max(std, STD_FLOOR))  # centred on demonstrations
    reward = FineGrainedReward(scalar.graphdef, components, token_classes(ctx.tokenizer), f.min_words, f.reward,
                               holistic)
    value_init = rm if rm is not None else rm_lib.unstack(cats, len(components))[0]
    return reward, (cats, rm), scalar.graphdef, value_init

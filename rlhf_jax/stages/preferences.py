"""The preference data the reward model and the DPO stage train on: rankings from files, from
stage prefs (`data.rm_train = "stage:prefs"`, read from WORKDIR/prefs/final), or the task
world's annotators ranking samples of the SFT policy."""
from __future__ import annotations

from rlhf_jax import checkpoint
from rlhf_jax.data import synthetic
from rlhf_jax.data.records import ranking_pairs
from rlhf_jax.data.sources import read_records
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages.sampling import sample_texts


def as_pairs(records: list[dict]) -> list[dict]:
    """Every ranked pair of every ranking as its own record (ties dropped)."""
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


def load(workdir, split: str) -> list[dict]:
    """One split's rankings, as stage prefs wrote them (WORKDIR/prefs/final/{split}.jsonl.gz)."""
    path = checkpoint.final_path(workdir, "prefs") / f"{split}.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: stage 'prefs' has not finished; run it first (--config.stages=prefs,...)")
    records, _ = read_records(path, "ranking")
    return records


def preference_arrays(ctx, shuffled_pairs: bool = False) -> tuple[dict, dict]:
    """The rankings the RM (or DPO) trains on: from files; from stage prefs (`data.rm_train =
    "stage:prefs"`: K samples of the SFT policy per prompt ranked by the gold reward); or, in the
    task world with `data.rm_from_policy`, the annotators' rankings of K samples of the SFT policy (InstructGPT).
    `shuffled_pairs`: the training rankings broken into independent pairs (each response scored
    once per pair it is in, the pairs shuffled apart): the setting InstructGPT reports overfits."""
    prepare_rankings(ctx)
    if shuffled_pairs and not ctx.data.derived("rm_train_pairs"):
        ctx.data.set_records("rm_train_pairs", as_pairs(ctx.data.records("rm_train")))
    return ctx.data.arrays("rm_train_pairs" if shuffled_pairs else "rm_train"), ctx.data.arrays("rm_val")


def prepare_rankings(ctx) -> None:
    """Make records rm_train / rm_val the rankings `preference_arrays` describes (stage prefs'
    or the task world's rankings of SFT samples are derived here, once per run)."""
    c = ctx.config
    if c.data.rm_train == PREFS and not ctx.data.derived("rm_train"):  # stage prefs: gold-ranked SFT samples
        for split in ("train", "val"):
            ctx.data.set_records(f"rm_{split}", load(ctx.workdir, split))
    elif ctx.world is not None and c.data.rm_from_policy and not ctx.data.derived("rm_train"):
        sft = load_sft(ctx)
        for split, n in (("train", c.data.n_rankings), ("val", c.data.n_rankings_val)):
            prompts = synthetic.prompts(ctx.world, n, "rm_" + split)
            samples = sample_texts(ctx, sft, prompts, 2 * c.data.k, 1.0, seed=c.seed * 7919 + (split == "val"))
            ctx.data.set_records(f"rm_{split}", synthetic.rank_samples(
                ctx.world, [p["prompt"] for p in prompts], samples, c.data.k, split))


def check_preference_sizes(ctx, need, block: str) -> None:
    """Enough rankings for one batch of config[block] (the task world ranks SFT samples later:
    its count is the config's)."""
    c = ctx.config
    if ctx.world is not None or c.data.rm_train == PREFS:
        n = c.data.n_rankings
    else:
        n = len(ctx.data.records("rm_train"))
    need(n >= c[block].batch_size, f"{block}.batch_size", f"{n} rankings cannot fill one batch of {c[block].batch_size}")

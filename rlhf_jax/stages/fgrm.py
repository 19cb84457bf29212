"""Stage "fgrm": fine-grained reward models (Wu et al. 2023), one per-segment classifier per
component of `fgrm.components`, trained together in one step vmapped over the categories, on
span-annotated responses (the task world's, or a fine_grained file / corpus:qa_feedback)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from rlhf_jax import checkpoint
from rlhf_jax.data import synthetic
from rlhf_jax.data.run_data import read_source
from rlhf_jax.models import abstract_model
from rlhf_jax.objectives.finegrained import parse_components, token_classes
from rlhf_jax.stages.base import Training, train
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages.registry import listed, register_stage
from rlhf_jax.stages.reward import category_model
from rlhf_jax.stages.sampling import sample_texts
from rlhf_jax.train import finegrained as fg_lib
from rlhf_jax.train import optim
from rlhf_jax.train import rm as rm_lib

SALT = 7


def check(c, need) -> None:
    f = c.fgrm
    try:
        components = parse_components(f.components)
    except ValueError as e:
        need(False, "fgrm.components", str(e))
    need(not ("fgrm" in listed(c) and not components), "fgrm.components", "stage fgrm needs at least one component")
    need(f.reward in ("hard", "soft"), "fgrm.reward", "must be 'hard' or 'soft'")
    need(f.init in ("sft", "base"), "fgrm.init", "must be 'sft' (the SFT policy) or 'base' (the base model)")
    need(f.data != "policy" or c.data.source == "synthetic", "fgrm.data",
         "'policy' needs the task world's span oracle (data.source = synthetic)")
    need(not (components and f.holistic_weight and (c.rm.members > 1 or c.rm.head != "scalar")),
         "fgrm.holistic_weight",
         "the holistic part of a fine-grained reward must be one scalar RM (rm.members = 1, rm.head = scalar)")


def policy_span_records(ctx, n: int, split: str) -> list[dict]:
    """The SFT policy's own samples on the task world's prompts, annotated by its span oracle
    (as Wu et al. annotate their policy's outputs)."""
    prompts = synthetic.prompts(ctx.world, n, "fg_" + split)
    texts = sample_texts(ctx, load_sft(ctx), prompts, 1, 1.0, seed=ctx.config.seed * 61 + (split == "val"))
    return [{"prompt": p["prompt"], "response": t[0], "spans": synthetic.error_spans(p["prompt"], t[0])}
            for p, t in zip(prompts, texts) if t[0].strip()]


def span_records(ctx) -> tuple[list[dict], list[dict]]:
    """(train, held-out) span-annotated responses: perturbed answers or the SFT policy's samples
    (`fgrm.data = "policy"`) in the task world, or a fine_grained file / corpus."""
    f = ctx.config.fgrm
    if ctx.world is not None and f.data == "policy":
        return policy_span_records(ctx, f.n_train, "train"), policy_span_records(ctx, f.n_val, "val")
    if ctx.world is not None and not f.data:
        return (synthetic.finegrained_records(ctx.world, f.n_train, "train"),
                synthetic.finegrained_records(ctx.world, f.n_val, "val"))
    records = read_source(f.data, "fine_grained", ctx.config.data.policy)
    n_val = max(1, int(len(records) * ctx.config.data.val_fraction))
    return records[n_val:n_val + f.n_train], records[:n_val]


def preflight(ctx, need) -> None:
    f = ctx.config.fgrm
    n = f.n_train if ctx.world is not None and f.data in ("", "policy") else len(span_records(ctx)[0])
    need(n >= f.batch_size, "fgrm.batch_size", f"{n} annotated responses cannot fill one batch of {f.batch_size}")


def needs(c) -> tuple[str, ...]:
    """The SFT policy: as the categories' backbone (fgrm.init = sft) or as the annotated sampler."""
    return ("sft",) if c.fgrm.init == "sft" or c.fgrm.data == "policy" else ()


@register_stage("fgrm", trains=True, needs=needs, check=check, reads=("sampling",), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    f = ctx.config.fgrm
    t0 = time.perf_counter()
    components = parse_components(f.components)
    train_r, val_r = span_records(ctx)
    classes = token_classes(ctx.tokenizer)
    make = lambda r: fg_lib.segment_arrays(r, ctx.tokenizer, ctx.data.tcfg, components, classes, f.min_words)
    (train_arrays, stats), (val, _) = make(train_r), make(val_r)
    print(f"[fgrm] {len(train_r)} train / {len(val_r)} val responses, {stats}", flush=True)
    init = load_sft(ctx) if f.init == "sft" else ctx.base.params
    members = [rm_lib.init_from_sft(init, category_model(ctx, seed=ctx.config.seed + 101 + j).params)
               for j in range(len(components))]
    graphdef = abstract_model(ctx.model_cfg(), "scalar")[0]
    it = ctx.iterator(train_arrays, f.batch_size, SALT)
    total = f.steps or f.epochs * it.steps_per_epoch
    tx, sched = optim.from_config(f, total)
    step = rm_lib.ensemble_step(fg_lib.make_segment_step(graphdef, tx, sched, f.grad_accum))
    result = train(ctx, "fgrm", Training(step, rm_lib.member_state(members, tx), {"train": it}, total,
                                         progress_keys=("loss", "accuracy")), SALT)
    stacked = rm_lib.stacked_params(result.state)  # the component axis for every k
    held = fg_lib.held_out(graphdef, stacked, val, min(f.batch_size, len(val["tokens"])),
                           [c.name for c in components])
    summary = {"steps": total, "components": [dataclasses.asdict(c) for c in components],
               "train_segments": stats["segments"], "train_positive_rate": stats["positive_rate"],
               **{f"{name}_{key}": v for name, m in held.items() for key, v in m.items()},
               "wall_seconds": time.perf_counter() - t0}
    checkpoint.save_final(ctx.workdir, "fgrm", stacked, summary)
    return summary

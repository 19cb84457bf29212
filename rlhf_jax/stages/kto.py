"""Stage "kto": KTO (Ethayarajh et al. 2024) from the SFT policy on unpaired binary feedback.

The examples are a file of binary feedback (`kto.data`: records of kind "binary", the first
`data.val_fraction` held out), or the preference data the dpo stage would train on converted
(`records.binary_from_preferences`: each ranking's top-ranked responses desirable, its
bottom-ranked ones undesirable, a pair's chosen and rejected likewise; `kto.unpair` keeps both
sides of a prompt or one). The reference is the frozen SFT policy (with LoRA the frozen base under
the adapters), its log-probs of every example and its mismatched pair cached in one pass before
training. The stage ends like dpo: held-out metrics, the SFT and the final policy compared on the
held-out prompts (gold reward, KL), samples.json, the final parameters."""
from __future__ import annotations

import time
from typing import Any

import jax

from rlhf_jax import checkpoint
from rlhf_jax.data.records import UNPAIR, binary_from_preferences
from rlhf_jax.data.run_data import read_source
from rlhf_jax.eval.policy_eval import compare_policies, frontier_eval
from rlhf_jax.stages.base import Training, adapters, train, train_state
from rlhf_jax.stages.gold import gold_reward, gold_stages
from rlhf_jax.stages.handoff import load_sft, policy_stages
from rlhf_jax.stages.preferences import check_preference_sizes, preference_stages, prepare_rankings
from rlhf_jax.stages.registry import listed, register_stage
from rlhf_jax.train import dpo as dpo_lib
from rlhf_jax.train import kto as kto_lib
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import optim
from rlhf_jax.train.ppo import sampling_config
from rlhf_jax.train.state import commit

SALT = 13
LAMBDA_RATIO = (1.0, 4.0 / 3.0)  # the paper's range for lambda_D n_D / (lambda_U n_U)


def check(c, need) -> None:
    k = c.kto
    need(k.beta > 0, "kto.beta", "must be > 0")
    need(k.lambda_d > 0, "kto.lambda_d", "must be > 0")
    need(k.lambda_u > 0, "kto.lambda_u", "must be > 0")
    need(k.unpair in UNPAIR, "kto.unpair", f"must be one of {UNPAIR}")
    need(k.eval_every >= 0, "kto.eval_every", "must be >= 0 (0 = no trajectory)")
    need(c.data.source != "files" or "kto" not in listed(c) or bool(k.data) or bool(c.data.rm_train), "kto.data",
         "with data.source = 'files' stage kto needs binary feedback (kto.data) or preference data to "
         "convert (data.rm_train)")


def needs(c) -> tuple[str, ...]:
    return policy_stages(c) + (() if c.kto.data else preference_stages(c)) + gold_stages(c)


def binary_records(ctx) -> tuple[list[dict], list[dict]]:
    """(train, held-out) binary-feedback records, read or converted once per run."""
    c = ctx.config
    if not ctx.data.derived("kto_train"):
        if c.kto.data:
            records = read_source(c.kto.data, "binary", c.data.policy)
            n_val = max(1, int(len(records) * c.data.val_fraction))
            train_records, val_records = records[n_val:], records[:n_val]
        else:
            prepare_rankings(ctx)
            train_records, val_records = (binary_from_preferences(ctx.data.records(f"rm_{split}"), c.kto.unpair,
                                                                  seed=c.seed * 31 + i)
                                          for i, split in enumerate(("train", "val")))
        ctx.data.set_records("kto_train", train_records)
        ctx.data.set_records("kto_val", val_records)
    return ctx.data.records("kto_train"), ctx.data.records("kto_val")


def preflight(ctx, need) -> None:
    c = ctx.config
    if c.kto.data:
        n = len(binary_records(ctx)[0])
        need(n >= c.kto.batch_size, "kto.batch_size", f"{n} examples cannot fill one batch of {c.kto.batch_size}")
    else:
        check_preference_sizes(ctx, need, "kto")  # a conversion keeps at least one example per ranking
    need(len(ctx.data.records("eval_prompts")) > 0, "heldout.n_prompts", "no held-out prompts to evaluate on")


def balance(records: list[dict], c) -> dict[str, float]:
    """Desirable and undesirable counts and lambda_D n_D / (lambda_U n_U), which the paper keeps in [1, 4/3]."""
    n_d = sum(r["label"] for r in records)
    n_u = len(records) - n_d
    ratio = c.lambda_d * n_d / (c.lambda_u * n_u) if n_u else None
    if ratio is None or not LAMBDA_RATIO[0] <= ratio <= LAMBDA_RATIO[1]:
        print(f"[kto] lambda_d n_D / (lambda_u n_U) = {c.lambda_d} * {n_d} / ({c.lambda_u} * {n_u}) = {ratio}, "
              "outside the paper's [1, 4/3]: set kto.lambda_d / kto.lambda_u to bring it in", flush=True)
    return {"n_desirable": n_d, "n_undesirable": n_u, "lambda_ratio": ratio}


@register_stage("kto", trains=True, needs=needs, check=check, reads=("heldout", "sampling"), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c = ctx.config.kto
    t0 = time.perf_counter()
    train_records, val_records = binary_records(ctx)
    counts = balance(train_records, c)
    tcfg, tok = ctx.data.tcfg, ctx.tokenizer
    train_arrays = kto_lib.binary_arrays(train_records, tok, tcfg, seed=ctx.config.seed * 1000 + SALT)
    val = kto_lib.binary_arrays(val_records, tok, tcfg, seed=ctx.config.seed * 1000 + SALT + 1)
    sft = load_sft(ctx)
    graphdef = ctx.base.graphdef
    val_bs = min(c.batch_size, len(val["tokens"]))
    # with LoRA the frozen base under the adapters is the reference (adapters off): one frozen copy
    params, base, full = adapters(ctx, c, sft, 19)
    ref = commit(sft, ctx.mesh) if base is None else base
    # one pass of the reference over both slots (example, mismatched pair), before training
    val["ref_logp"] = dpo_lib.reference_logprobs(graphdef, ref, val, val_bs)
    train_arrays["ref_logp"] = dpo_lib.reference_logprobs(graphdef, ref, train_arrays, c.batch_size)
    del ref
    it = ctx.iterator(train_arrays, c.batch_size, SALT)
    total = c.steps or c.epochs * it.steps_per_epoch
    tx, sched = optim.from_config(c, total)
    lora = lora_lib.from_block(c)
    sampling = sampling_config(ctx.config.sampling, tok, ctx.config.heldout.temperature)
    evaluate = None  # the trajectory: KL to SFT and gold reward on the held-out prompts every eval_every steps
    if c.eval_every:
        evaluate = frontier_eval(graphdef, ctx.data.arrays("eval_prompts"), sampling, jax.random.fold_in(ctx.rng, 98),
                                 sft, gold_reward(ctx), full)
    result = train(ctx, "kto", Training(kto_lib.make_kto_step(graphdef, tx, sched, c, lora), train_state(params, tx),
                                        {"train": it}, total, constants=None if base is None else (base, None),
                                        evaluate=evaluate, eval_every=c.eval_every,
                                        progress_keys=("loss", "kl", "reward_desirable", "reward_undesirable")),
                   SALT)
    final = full(result.state.params)
    held_out = kto_lib.held_out_metrics(graphdef, final, val, val_bs, c)
    evals, samples = compare_policies(
        graphdef, tok, ctx.data.arrays("eval_prompts"), sampling, jax.random.fold_in(ctx.rng, 99), sft, final,
        None, None, gold_reward(ctx), "kto", ctx.config.heldout.n_report_samples)
    summary = {"steps": total, "wall_seconds": time.perf_counter() - t0, **counts,
               "train_kl": result.last_metrics.get("kl"), **held_out, **evals}
    checkpoint.write_json_atomic(ctx.workdir / "kto" / "samples.json", samples)
    checkpoint.save_final(ctx.workdir, "kto", final, summary)
    return summary

"""Stage "active": which comparisons to label, chosen in rounds (docs/rlhf_notes.md section 12).

The task world's simulated annotators label comparisons (prompt, response i, response j) from a
fixed pool: `active.pool_prompts` prompts with `active.k` distinct responses each (samples of the
SFT policy with `data.rm_from_policy`, topped up with perturbed answers; else perturbed answers
only), every one of their C(k, 2) pairs a candidate. Round r labels comparisons until
`active.budgets[r]` are labelled in all, then trains an ensemble of `active.members` reward models
from the SFT backbone on every label so far (Bradley-Terry, each member its own head init and data
order, for max(min_steps, epochs x batches) steps), evaluates it, and scores the pool. The first
round's comparisons are drawn at random; each later round's by `active.strategy` (a registered
`rlhf_jax.data.active.SELECTION_STRATEGIES` entry) from the candidates not yet labelled, under the
ensemble trained in the round before. A comparison the annotator ties is spent but not trained on
(counted).

Evaluated each round, on responses no round sees: `accuracy_gold`, the ensemble mean's agreement
with the gold reward's order over every pair of the k responses of `active.eval_prompts` held-out
prompts whose gold rewards differ; `accuracy_annotator`, its agreement with one annotator label
of each of those pairs (what the rm stage's val_accuracy measures); and best-of-n of the SFT policy
under the ensemble mean (`bon_gold`: the gold reward of the best of `active.bon_n` samples of each
of `active.bon_prompts` held-out prompts, the unbiased estimate of `objectives.bon`).

WORKDIR/active/rounds.jsonl holds one row per round; WORKDIR/active/state.json the labels so far
(a run resumes after its last finished round). The summary lists each round's metrics and holds
`accuracy_gold_b{budget}` / `bon_gold_b{budget}` per budget for the sweep runner.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlhf_jax import checkpoint, distributed, signals
from rlhf_jax.data import active as active_lib
from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import decode, ranking_arrays
from rlhf_jax.objectives import bon as bon_lib
from rlhf_jax.rewards import EnsembleReward, score_in_chunks
from rlhf_jax.stages.base import stack_batches
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages.registry import listed, register_stage
from rlhf_jax.stages.reward import reward_model
from rlhf_jax.stages.sampling import sample, sample_texts
from rlhf_jax.train import optim
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train.heads import head_seeds
from rlhf_jax.train.loop import run_loop
from rlhf_jax.train.state import commit, compile_step

SALT = 23
CLUSTERS = ("prompt", "task")  # one cluster per prompt; or per task type and list length


def budgets(c) -> list[int]:
    return [int(b) for b in str(c.active.budgets).split(",") if b.strip()]


def check(c, need) -> None:
    a = c.active
    need(a.strategy in active_lib.SELECTION_STRATEGIES, "active.strategy",
         f"must be one of {active_lib.SELECTION_STRATEGIES.names()}")
    try:
        b = budgets(c)
    except ValueError:
        b = []
    need(bool(b) and all(x > 0 for x in b) and all(x < y for x, y in zip(b, b[1:])), "active.budgets",
         f"{a.budgets!r} must be increasing positive counts of labelled comparisons, e.g. '64,128,256'")
    need(a.k >= 2, "active.k", "needs at least 2 responses per prompt")
    need(a.members >= 2 or a.strategy not in ("disagreement", "diverse_disagreement"), "active.members",
         f"strategy {a.strategy!r} needs an ensemble of at least 2 members")
    need(a.clusters in CLUSTERS, "active.clusters", f"must be one of {CLUSTERS}")
    need(a.per_cluster >= 0, "active.per_cluster", "must be >= 0 (0 = an even share of the round's picks)")
    need(min(a.pool_prompts, a.eval_prompts, a.bon_prompts, a.bon_n, a.members) >= 1, "active.pool_prompts",
         "pool_prompts, eval_prompts, bon_prompts, bon_n and members must be >= 1")
    if "active" not in listed(c):
        return
    need(c.data.source == "synthetic", "data.source", "stage active labels with the task world's simulated annotators")
    need(not b or b[-1] <= a.pool_prompts * a.k * (a.k - 1) // 2, "active.budgets",
         f"{b[-1] if b else 0} comparisons exceed the pool's {a.pool_prompts} x C({a.k}, 2) candidates")
    need(not b or b[0] >= a.batch_size, "active.budgets", f"the first budget cannot fill one batch of {a.batch_size}")


def response_sets(ctx, sft, n: int, split: str, seed: int) -> list[dict]:
    """n task-world prompts of the split, each with k distinct responses."""
    c, a = ctx.config, ctx.config.active
    prompts = synthetic.prompts(ctx.world, n, split)
    drawn = (sample_texts(ctx, sft, prompts, 2 * a.k, 1.0, seed) if c.data.rm_from_policy
             else [[] for _ in prompts])
    rng = synthetic._rng(ctx.world, "active_fill/" + split)
    return [{"prompt": p["prompt"], "responses": synthetic.fill_responses(ctx.world, p["prompt"], d, a.k, rng),
             "ranks": list(range(a.k))} for p, d in zip(prompts, drawn)]


def clusters(ctx, pool: list[dict]) -> np.ndarray:
    if ctx.config.active.clusters == "prompt":
        return np.arange(len(pool))
    keys = [(lambda t, items: f"{t}/{len(items)}")(*synthetic.parse_prompt(r["prompt"])) for r in pool]
    names = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([names[k] for k in keys])


def label(ctx, pool, chosen: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """[prompt, winner, loser] per labelled comparison; a tie is [prompt, i, j, -1] (not trained on)."""
    out = []
    for p, i, j in chosen.tolist():
        r = pool[p]
        ranks = synthetic.annotate(r["prompt"], [r["responses"][i], r["responses"][j]], ctx.world, rng)
        out.append([p, i, j, -1] if ranks[0] == ranks[1] else ([p, i, j] if ranks[0] < ranks[1] else [p, j, i]))
    return out


def train_members(ctx, pool, labels: list[list[int]], round_: int, compiled: dict):
    """An ensemble trained from the SFT backbone on the labelled pairs; returns (stacked params,
    graphdef, steps, last loss). `compiled` keeps the jitted step per step count across rounds."""
    c, a = ctx.config, ctx.config.active
    pairs = [{"prompt": pool[p]["prompt"], "chosen": pool[p]["responses"][w], "rejected": pool[p]["responses"][l]}
             for p, w, l, *tie in labels if not tie]
    arrays, _ = ranking_arrays(pairs, ctx.tokenizer, ctx.data.tcfg)
    names = [f"train_{m}" for m in range(a.members)]
    data = {name: ctx.iterator(arrays, a.batch_size, SALT + 1000 * m + 17 * round_) for m, name in enumerate(names)}
    total = a.steps or max(a.min_steps, a.epochs * data[names[0]].steps_per_epoch)
    heads = [reward_model(ctx, seed=s) for s in head_seeds(c.seed, a.members)]
    sft = load_sft(ctx)
    members = [rm_lib.init_from_sft(sft, h.params) for h in heads]
    tx, sched = optim.from_config(a, total)
    step = rm_lib.ensemble_step(rm_lib.make_rm_step(heads[0].graphdef, tx, sched, 0.0, c.rm.center_coef))
    state = rm_lib.member_state(members, tx)
    fresh = {n: dataclasses.replace(it, epoch=0, index=0) for n, it in data.items()}  # the example leaves data as is
    example = ctx.shard(stack_batches({n: next(it) for n, it in fresh.items()}))
    if total in compiled:  # the same number of steps: the same schedule, so the same program
        fn, state = compiled[total], commit(state, ctx.mesh)
    else:
        fn, state = compile_step(step, state, example, ctx.mesh)
        compiled[total] = fn
    result = run_loop(f"active/round{round_}", fn, state,
                      lambda: ctx.shard(stack_batches({n: next(it) for n, it in data.items()})), total_steps=total,
                      rng=jax.random.fold_in(ctx.rng, SALT * 1000 + round_))
    stacked = rm_lib.stacked_params(result.state)  # the member axis for every k
    return stacked, heads[0].graphdef, total, result.last_metrics.get("loss")


def pair_accuracy(scores_PxK: np.ndarray, gold_PxK: np.ndarray, labels_PxKxK: np.ndarray) -> dict[str, float]:
    """Agreement of the scores' order with the gold order (pairs whose gold differs) and with one
    annotator label per pair (labels[p, i, j] = 1 when the annotator preferred i to j, i < j);
    equal scores count half (a constant reward scores 1/2)."""
    i, j = np.triu_indices(scores_PxK.shape[1], 1)
    ds, dg = scores_PxK[:, i] - scores_PxK[:, j], gold_PxK[:, i] - gold_PxK[:, j]
    agree = lambda d, first_wins: np.where(d == 0, 0.5, (d > 0) == first_wins)
    untied = dg != 0
    gold = float(np.mean(agree(ds[untied], dg[untied] > 0))) if untied.any() else float("nan")
    ann = float(np.mean(agree(ds, labels_PxKxK[:, i, j] == 1)))
    return {"accuracy_gold": gold, "accuracy_annotator": ann, "eval_pairs_untied": int(untied.sum())}


def eval_sets(ctx, sft):
    """The held-out pairs (arrays, gold [P, k], annotator labels) and the best-of-n samples (tokens, gold [P, n])."""
    a, w = ctx.config.active, ctx.world
    held = response_sets(ctx, sft, a.eval_prompts, "active_eval", ctx.config.seed * 7919 + 3)
    arrays, _ = ranking_arrays(held, ctx.tokenizer, ctx.data.tcfg)
    gold = np.array([[synthetic.gold_reward(r["prompt"], x, w.length_coef) for x in r["responses"]] for r in held])
    rng = synthetic._rng(w, "active_eval_labels")
    labels = np.zeros((len(held), a.k, a.k), np.int8)
    for p, r in enumerate(held):
        for i, j in zip(*np.triu_indices(a.k, 1)):
            ranks = synthetic.annotate(r["prompt"], [r["responses"][i], r["responses"][j]], w, rng)
            labels[p, i, j] = ranks[0] < ranks[1]
    prompts = synthetic.prompts(w, a.bon_prompts, "eval")
    s = sample(ctx, sft, prompts, a.bon_n, ctx.config.bon.temperature, seed=ctx.config.seed * 31 + 5)
    bon_tokens = np.concatenate([s["prompt"], s["response"]], 1)
    bon_mask = np.concatenate([s["prompt_mask"], s["response_mask"]], 1).astype(np.int32)
    texts = decode(ctx.tokenizer, s["response"], s["response_mask"])
    bon_gold = np.array([synthetic.gold_reward(prompts[n // a.bon_n]["prompt"], t, w.length_coef)
                         for n, t in enumerate(texts)]).reshape(len(prompts), a.bon_n)
    return arrays, gold, labels, (bon_tokens, bon_mask, s["prompt"].shape[1], bon_gold)


def _save_state(path: Path, state: dict) -> None:
    if not distributed.primary():  # on several processes process 0 writes
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def preflight(ctx, need) -> None:
    need(ctx.world is not None, "data.source", "stage active needs the task world")


@register_stage("active", trains=True, needs=lambda c: ("sft",), check=check, produces_params=False,
                reads=("rm.center_coef", "sampling", "bon.temperature", "data.world", "data.rm_from_policy"),
                preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c, a = ctx.config, ctx.config.active
    t0 = time.perf_counter()
    out = ctx.workdir / "active"
    if distributed.primary():
        out.mkdir(parents=True, exist_ok=True)
    sft = load_sft(ctx)
    pool = response_sets(ctx, sft, a.pool_prompts, "active_pool", c.seed * 7919 + 2)
    pool_arrays, _ = ranking_arrays(pool, ctx.tokenizer, ctx.data.tcfg)
    candidates = active_lib.candidate_pairs(len(pool), a.k)
    cluster = clusters(ctx, pool)
    val_arrays, val_gold, val_labels, (bon_tokens, bon_mask, n_prompt, bon_gold) = eval_sets(ctx, sft)
    plan = budgets(c)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"round": -1, "labels": [], "rows": []}
    if state["round"] < 0:  # the first round: random comparisons
        rng = np.random.default_rng([c.seed, SALT, 0])
        first = active_lib.select("random", candidates, np.zeros((1, len(pool), a.k)), plan[0], rng)
        state["labels"] = label(ctx, pool, candidates[first.chosen], rng)
    rows, compiled = state["rows"], {}
    for r in range(state["round"] + 1, len(plan)):
        signals.check("active")
        tr = time.perf_counter()
        labels = state["labels"]
        params, graphdef, steps, loss = train_members(ctx, pool, labels, r, compiled)
        te = time.perf_counter()
        reward = EnsembleReward(graphdef, lambda s: s.mean(0))
        val = active_lib.member_scores(reward.member_scores, params, val_arrays["tokens"], val_arrays["mask"])
        row = {"round": r, "labelled": len(labels), "ties": sum(len(x) == 4 for x in labels), "steps": steps,
               "train_loss": loss, **pair_accuracy(val.mean(0), val_gold, val_labels)}
        proxy = score_in_chunks(reward, params, bon_tokens, bon_mask, n_prompt).reshape(bon_gold.shape)
        curve = bon_lib.bon_curve(proxy, bon_gold, [1, a.bon_n])
        row.update(bon_gold=curve[-1]["gold"], bon_gold_n1=curve[0]["gold"], bon_proxy=curve[-1]["proxy"],
                   train_seconds=te - tr, eval_seconds=time.perf_counter() - te)
        if r + 1 < len(plan):  # choose and label the next round's comparisons under this round's ensemble
            ts = time.perf_counter()
            scores = active_lib.member_scores(reward.member_scores, params, pool_arrays["tokens"], pool_arrays["mask"])
            done = {(p, min(i, j), max(i, j)) for p, i, j, *_ in labels}
            left = np.array([k for k, (p, i, j) in enumerate(candidates.tolist()) if (p, i, j) not in done])
            add = plan[r + 1] - len(labels)
            per = a.per_cluster or -(-add // len(np.unique(cluster)))
            rng = np.random.default_rng([c.seed, SALT, r + 1])
            pick = active_lib.select(a.strategy, candidates[left], scores, add, rng, clusters=cluster,
                                     per_cluster=per)
            new = label(ctx, pool, candidates[left][pick.chosen], rng)
            row.update(selected=len(new), selection_seconds=time.perf_counter() - ts,
                       selected_gold_gap=float(np.mean([abs(gold_gap(pool, ctx.world, x)) for x in new])),
                       selected_ties=sum(len(x) == 4 for x in new))
            state["labels"] = labels + new
        row["round_seconds"] = time.perf_counter() - tr
        rows.append(row)
        print(f"[active] round {r}: {row['labelled']} labelled, accuracy (gold) {row['accuracy_gold']:.3f}, "
              f"best-of-{a.bon_n} gold {row['bon_gold']:.3f}", flush=True)
        state.update(round=r, rows=rows)
        if distributed.primary():
            with (out / "rounds.jsonl").open("w") as f:
                f.writelines(json.dumps(x) + "\n" for x in rows)
        _save_state(state_path, state)
    writer = ctx.writer("active", ("accuracy_gold", "bon_gold"))
    try:
        for row in rows:
            writer.write(row["labelled"], {k: v for k, v in row.items() if isinstance(v, (int, float))})
    finally:
        writer.close()
    summary = {"strategy": a.strategy, "budgets": plan, "members": a.members, "pool_candidates": len(candidates),
               "rounds": rows, "wall_seconds": time.perf_counter() - t0}
    for row in rows:
        summary[f"accuracy_gold_b{row['labelled']}"] = row["accuracy_gold"]
        summary[f"accuracy_annotator_b{row['labelled']}"] = row["accuracy_annotator"]
        summary[f"bon_gold_b{row['labelled']}"] = row["bon_gold"]
    summary.update(accuracy_gold_final=rows[-1]["accuracy_gold"], bon_gold_final=rows[-1]["bon_gold"])
    checkpoint.save_final(ctx.workdir, "active", None, summary)
    return summary


def gold_gap(pool, world, labelled: list[int]) -> float:
    """The gold reward difference of a labelled comparison's two responses (how hard it was)."""
    p, i, j = labelled[:3]
    r = pool[p]
    return (synthetic.gold_reward(r["prompt"], r["responses"][i], world.length_coef)
            - synthetic.gold_reward(r["prompt"], r["responses"][j], world.length_coef))

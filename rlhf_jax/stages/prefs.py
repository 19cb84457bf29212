"""Stage "prefs": preference data from the policy itself, as in the DPO paper's IMDb experiment:
K = data.k samples of the SFT policy per prompt, ranked by the gold reward (the gold
classifier of stage clf, or the task world's gold), so each prompt gives up to C(K, 2) pairs.
The reward model and DPO both read these rankings (`data.rm_train = "stage:prefs"`), from
WORKDIR/prefs/final/{train,val}.jsonl.gz: ranking records (prompt, responses, ranks, and
"ended": False for a response cut at the length limit before any EOS, which the reward model then
reads at its last sampled token, as PPO's rewards do), with the gold scores and the sampled token
ids (prompt_ids, response_ids) beside them for inspection.

Prompts: the task world's RM prompts, or, from files, the first data.n_rankings of the
training prompts and the last data.n_rankings_val of them (held-out rankings). A prompt's
responses are deduplicated and empty ones dropped; a prompt left with fewer than two, or with
all its responses tied, gives no ranking (counted in the summary).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from rlhf_jax import checkpoint, distributed
from rlhf_jax.data import synthetic
from rlhf_jax.data.records import ended_flags, ranking_pairs
from rlhf_jax.data.tokenize import decode_sampled
from rlhf_jax.stages.gold import gold_reward, gold_stages
from rlhf_jax.stages.handoff import load_sft
from rlhf_jax.stages.preferences import PREFS
from rlhf_jax.stages.registry import register_stage
from rlhf_jax.stages.sampling import sample

SPLITS = ("train", "val")


def check(c, need) -> None:
    if c.data.rm_train != PREFS:
        return
    need(c.data.k >= 2, "data.k", "stage prefs needs at least 2 samples per prompt to rank")
    need(c.data.gold == "clf" or c.data.source == "synthetic", "data.gold",
         "stage prefs ranks by the gold reward: set data.gold = 'clf' (or use the task world's)")


def ranking_prompts(ctx, split: str) -> list[dict]:
    """The prompts of one split's rankings (see the module docstring)."""
    d = ctx.config.data
    n = d.n_rankings if split == "train" else d.n_rankings_val
    if ctx.world is not None:
        return synthetic.prompts(ctx.world, n, "rm_" + split)
    pool = ctx.data.records("prompts")
    return pool[:n] if split == "train" else pool[len(pool) - n:]


def preflight(ctx, need) -> None:
    d = ctx.config.data
    if ctx.world is None:
        n = len(ctx.data.records("prompts"))
        need(n >= d.n_rankings + d.n_rankings_val, "data.n_prompts",
             f"{n} prompts cannot hold {d.n_rankings} training and {d.n_rankings_val} held-out rankings apart")


def rank(prompts: list[str], responses: list[list[str]], scores: np.ndarray,
         response_ids: list[list[list[int]]] | None = None) -> tuple[list[dict], dict]:
    """Ranking records (0 = highest score, equal scores tied) of each prompt's distinct non-empty
    responses, with their scores (and the sampled token ids, when given: the text can tokenise
    otherwise); (records, counts of the prompts dropped and why)."""
    records, dropped = [], {"fewer_than_2_distinct": 0, "all_tied": 0}
    response_ids = response_ids or [[None] * len(texts) for texts in responses]
    for prompt, texts, row, ids in zip(prompts, responses, scores, response_ids):
        keep, kept_ids = {}, []
        for text, score, seq in zip(texts, row, ids):
            if text.strip() and text not in keep:
                keep[text] = float(score)
                kept_ids.append(seq)
        if len(keep) < 2:
            dropped["fewer_than_2_distinct"] += 1
            continue
        values = np.array(list(keep.values()))
        if np.all(values == values[0]):
            dropped["all_tied"] += 1
            continue
        ranks = np.unique(-values, return_inverse=True)[1]  # dense: 0 best, ties share a rank
        records.append({"prompt": prompt, "responses": list(keep), "ranks": [int(r) for r in ranks],
                        "ended": ended_flags(list(keep)), "scores": list(keep.values()),
                        **({"response_ids": kept_ids} if kept_ids[0] else {})})
    return records, dropped


def _write(directory, split: str, records: list[dict]) -> None:
    with gzip.open(directory / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


@register_stage("prefs", block=None, needs=lambda c: ("sft",) + gold_stages(c), check=check,
                reads=("sampling",), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c, k = ctx.config, ctx.config.data.k
    t0 = time.perf_counter()
    sft, gold = load_sft(ctx), gold_reward(ctx)
    out = checkpoint.final_path(ctx.workdir, "prefs")
    tmp = out.with_name("final.tmp")
    primary = distributed.primary()  # on several processes process 0 writes the rankings
    if primary:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    summary: dict[str, Any] = {"k": k}
    for split in SPLITS:
        prompts = ranking_prompts(ctx, split)
        s = sample(ctx, sft, prompts, k, 1.0, seed=c.seed * 7907 + 13 + (split == "val"))
        scores = gold.host_scores(s["prompt"], s["prompt_mask"], s["response"], s["response_mask"])
        texts, _ = decode_sampled(ctx.tokenizer, s["response"], s["response_mask"])
        ids = [[int(t) for t, m in zip(row, mask) if m] for row, mask in zip(s["response"], s["response_mask"])]
        records, dropped = rank([p["prompt"] for p in prompts], [texts[i * k:(i + 1) * k] for i in range(len(prompts))],
                                scores.reshape(len(prompts), k), [ids[i * k:(i + 1) * k] for i in range(len(prompts))])
        prompt_ids = {p["prompt"]: [int(t) for t, m in zip(s["prompt"][i * k], s["prompt_mask"][i * k]) if m]
                      for i, p in enumerate(prompts)}
        records = [{**r, "prompt_ids": prompt_ids[r["prompt"]]} for r in records]
        if primary:
            _write(tmp, split, records)
        ends = (s["response"] == ctx.tokenizer.eos_token_id) & (s["response_mask"] > 0)
        best_minus_worst = [max(r["scores"]) - min(r["scores"]) for r in records]
        summary[split] = {"prompts": len(prompts), "rankings": len(records),
                          "pairs": sum(len(ranking_pairs(r["ranks"])) for r in records),
                          "dropped": dropped, "gold_mean": float(np.nanmean(scores)),
                          "gold_best_minus_worst": float(np.mean(best_minus_worst)) if records else None,
                          "response_tokens": float(s["response_mask"].sum(1).mean()),
                          "frac_with_eos": float(ends.any(1).mean())}
        print(f"[prefs] {split}: {summary[split]}", flush=True)
    if primary:
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    summary["wall_seconds"] = time.perf_counter() - t0
    checkpoint.save_final(ctx.workdir, "prefs", None, summary)
    return summary

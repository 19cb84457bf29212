"""Stage "sft_select": InstructGPT's choice of the SFT checkpoint. InstructGPT trained SFT for 16
epochs, past the validation-loss minimum, and kept the checkpoint the reward model scored highest
on a validation set, finding that this tracks human preference better than validation loss.

Stage sft keeps `sft.candidates` = n parameter snapshots at evenly spaced steps (the last one its
final step). This stage scores every candidate by each criterion of `sft_select.report` plus
`sft_select.criterion` (the registry `CRITERIA` below):

    val_loss  token-weighted NLL of the held-out demonstrations              (lower is better)
    rm_score  mean reward-model score of the candidate's samples for the first
              n_prompts held-out prompts (n_samples each, at `temperature`)   (higher is better)
    gold      mean gold reward (the task world's, or data.gold) of other samples
              for the same prompts: the oracle, a diagnostic a real run lacks (higher is better)

and saves the best candidate by `criterion` as WORKDIR/sft_select/final. Every candidate is
sampled with the same seeds (common random numbers across candidates); gold scores samples of
another seed than rm_score's, so that the gold of the RM's choice is an unbiased estimate. Once this stage has finished in a workdir, its final parameters ARE the SFT policy every
later stage reads (`handoff.load_sft`: PPO's start and KL reference, DPO's reference, ...).

The reward model is this run's trained reward (stage rm, or fgrm) as PPO would optimise it, or
`sft_select.rm_workdir`'s finished stage rm. The summary lists every candidate's scores, the
step each criterion would choose (`best_by`) and the chosen one's scores; each candidate's scores
are kept in WORKDIR/sft_select/scores.json as they are computed (with the fingerprint of the
config fields they depend on), so a killed stage resumes with the candidates it has not scored.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax import workdir as workdirs
from rlhf_jax.errors import UserError
from rlhf_jax.registry import Registry
from rlhf_jax.rewards import score_in_chunks
from rlhf_jax.stages import candidates
from rlhf_jax.stages.gold import RM_GOLD, gold_reward, gold_stages, rm_gold
from rlhf_jax.stages.registry import listed, register_stage, stage_reads
from rlhf_jax.stages.reward import reward_stages, trained_reward
from rlhf_jax.stages.sampling import sample
from rlhf_jax.train import sft as sft_lib


@dataclasses.dataclass(frozen=True)
class Criterion:
    score: Callable  # (Scoring, step, params) -> float
    better: str  # "min" or "max"
    needs: Callable  # config -> the stages its score reads
    usable: Callable = lambda c: None  # config -> why it cannot be used (None: it can)


CRITERIA = Registry("SFT selection criterion")


def names(c) -> list[str]:
    """The criteria the stage scores every candidate by: `criterion` first, then `report`."""
    s = c.sft_select
    return list(dict.fromkeys([s.criterion] + [n.strip() for n in s.report.split(",") if n.strip()]))


class Scoring:
    """What the criteria share over one run of the stage: the held-out data, the reward models
    (built on first use) and the current candidate's samples (each draw once, for every criterion)."""

    def __init__(self, ctx):
        self.ctx, self.c = ctx, ctx.config.sft_select
        self.prompts = ctx.data.records("eval_prompts")[:self.c.n_prompts]
        self.seed = ctx.config.seed * 53 + 7  # one seed for every candidate
        self._samples: dict[tuple[int, int], dict] = {}
        self._cache: dict[str, Any] = {}

    def samples(self, step: int, params, draw: int) -> dict[str, np.ndarray]:
        """The candidate's samples of draw `draw` (the same seed for every candidate; another
        seed for each draw), kept while the stage scores this candidate."""
        if (step, draw) not in self._samples:
            self._samples = {k: v for k, v in self._samples.items() if k[0] == step}
            self._samples[step, draw] = sample(self.ctx, params, self.prompts, self.c.n_samples, self.c.temperature,
                                               self.seed + 1000 * draw)
        return self._samples[step, draw]

    def once(self, key: str, build: Callable):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def val_loss(sc: Scoring, step: int, params) -> float:
    """Token-weighted NLL of the held-out demonstrations (as stage sft reports it)."""
    ctx = sc.ctx
    val = sc.once("val", lambda: ctx.data.arrays("sft_val"))
    evaluate = sc.once("evaluate", lambda: sft_lib.make_sft_eval(ctx.base.graphdef))
    bs = min(ctx.config.sft.batch_size, len(val["tokens"]))
    return sft_lib.validation_loss(evaluate, params, val, bs)["val_loss"]


def _host_reward(sc: Scoring):
    """samples -> scores [N] of the reward model the rm_score criterion asks."""
    ctx, wd = sc.ctx, sc.c.rm_workdir
    if wd:
        other = rm_gold(ctx, RM_GOLD + wd)  # another run's finished RM, its members averaged
        return lambda s: other.host_scores(s["prompt"], s["prompt_mask"], s["response"], s["response_mask"])
    reward, params, _, _ = trained_reward(ctx, "ppo")  # the reward PPO would optimise

    def scores(s):
        tokens = np.concatenate([s["prompt"], s["response"]], 1)
        mask = np.concatenate([s["prompt_mask"], s["response_mask"]], 1).astype(np.int32)
        return score_in_chunks(reward, params, tokens, mask, s["prompt"].shape[1])
    return scores


def rm_score(sc: Scoring, step: int, params) -> float:
    """Mean reward-model score of the candidate's samples."""
    fn = sc.once("rm", lambda: _host_reward(sc))
    return float(np.mean(fn(sc.samples(step, params, draw=0))))


def gold(sc: Scoring, step: int, params) -> float:
    """Mean gold reward of the candidate's samples: other samples than rm_score's, so the gold of
    the candidate rm_score chose is not biased up by the sampling noise rm_score chose it on."""
    reward = sc.once("gold", lambda: gold_reward(sc.ctx))
    s = sc.samples(step, params, draw=1)
    values = reward.host_scores(s["prompt"], s["prompt_mask"], s["response"], s["response_mask"])
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _gold_usable(c) -> str | None:
    if c.data.source == "synthetic" or c.data.gold:
        return None
    return "'gold' needs a gold reward: the task world (data.source = 'synthetic') or data.gold"


CRITERIA.register("val_loss", Criterion(val_loss, "min", lambda c: ()))
CRITERIA.register("rm_score", Criterion(rm_score, "max", lambda c: () if c.sft_select.rm_workdir else reward_stages(c)))
CRITERIA.register("gold", Criterion(gold, "max", gold_stages, _gold_usable))


def check(c, need) -> None:
    s = c.sft_select
    for field, value in [("criterion", s.criterion)] + [("report", n) for n in names(c)[1:]]:
        need(value in CRITERIA, f"sft_select.{field}", f"{value!r} is not one of {CRITERIA.names()}")
    for name in names(c):
        why = CRITERIA[name].usable(c)
        need(why is None, "sft_select.criterion" if name == s.criterion else "sft_select.report", str(why))
    need(s.n_prompts >= 1 and s.n_samples >= 1, "sft_select.n_prompts", "n_prompts and n_samples must be >= 1")
    need(s.temperature > 0, "sft_select.temperature", "must be > 0")
    need(not s.rm_workdir or (Path(s.rm_workdir).expanduser() / "rm" / "summary.json").exists(),
         "sft_select.rm_workdir", f"{s.rm_workdir!r} holds no finished stage rm")
    if "sft_select" in listed(c):
        need(c.sft.candidates >= 1, "sft.candidates", "stage sft_select chooses among SFT's candidates: "
             "set sft.candidates > 0 (e.g. 8)")


def needs(c) -> tuple[str, ...]:
    """SFT (its candidates) and what the criteria read (the trained reward, the gold classifier)."""
    out = ("sft",)
    for name in names(c):
        if name in CRITERIA:
            out += CRITERIA[name].needs(c)
    return tuple(dict.fromkeys(out))


def settings_fingerprint(c) -> str:
    """The fingerprint of every config field this stage's scores depend on (its reads, its
    needs' reads and the run-wide fields): the scores a killed run kept are reused only under
    the same ones."""
    reads = {"sft_select": stage_reads("sft_select", c)}
    return workdirs.fingerprint({k: v for k, v in workdirs.flatten(c).items() if workdirs.readers(k, reads)})


def preflight(ctx, need) -> None:
    need(len(ctx.data.records("eval_prompts")) > 0, "heldout.n_prompts", "no held-out prompts to sample")


def choose(rows: list[dict], criterion: str) -> dict:
    """The row best by `criterion` (the first of equals; NaN scores never chosen)."""
    sign = 1.0 if CRITERIA[criterion].better == "min" else -1.0
    finite = [r for r in rows if np.isfinite(r[criterion])]
    if not finite:
        raise UserError(f"sft_select: no candidate has a finite {criterion} score")
    return min(finite, key=lambda r: sign * r[criterion])


@register_stage("sft_select", needs=needs, check=check, reads=("heldout", "sampling"), preflight=preflight)
def run(ctx) -> dict[str, Any]:
    c = ctx.config.sft_select
    t0 = time.perf_counter()
    steps = (checkpoint.read_summary(ctx.workdir, "sft") or {}).get("candidate_steps")
    if not steps:
        raise UserError(f"{checkpoint.summary_path(ctx.workdir, 'sft')}: stage sft kept no candidates; run it "
                        f"with --config.sft.candidates=8 (--fresh to start over)")
    criteria = names(ctx.config)
    out = ctx.workdir / "sft_select"
    out.mkdir(parents=True, exist_ok=True)
    done_path = out / "scores.json"
    settings = settings_fingerprint(ctx.config)
    stored = json.loads(done_path.read_text()) if done_path.exists() else {}
    done = stored.get("scores", {}) if stored.get("settings") == settings else {}  # scored under this config only
    sc = Scoring(ctx)
    rows = []
    for step in steps:
        row = done.get(str(step), {})
        missing = [k for k in criteria if k not in row]
        if missing:
            params = candidates.load(ctx.workdir, "sft", step, ctx.base.params)
            row.update({k: CRITERIA[k].score(sc, step, params) for k in missing})
            done[str(step)] = row
            # a killed stage resumes after this candidate
            checkpoint.write_json_atomic(done_path, {"settings": settings, "scores": done})
            print(f"[sft_select] step {step}: " + ", ".join(f"{k} {row[k]:.4f}" for k in criteria), flush=True)
        rows.append({"step": step, **{k: row[k] for k in criteria}})
    chosen = choose(rows, c.criterion)
    summary = {"criterion": c.criterion, "chosen_step": chosen["step"], "chosen": chosen,
               "best_by": {k: choose(rows, k)["step"] for k in criteria}, "candidates": rows,
               "n_prompts": len(sc.prompts), "n_samples": c.n_samples, "wall_seconds": time.perf_counter() - t0}
    params = candidates.load(ctx.workdir, "sft", chosen["step"], ctx.base.params)
    checkpoint.save_final(ctx.workdir, "sft_select", params, summary)
    return summary

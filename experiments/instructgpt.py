"""InstructGPT (Ouyang et al. 2022) on the task world: three reward-model / PPO claims, each a sweep
of ordinary runs through the sweep runner, aggregated over seeds (mean, 95% t-interval).

    PYTHONPATH=. python experiments/instructgpt.py            # full: experiments/results/instructgpt.json,
                                                              #       experiments/figures/instructgpt.png
    PYTHONPATH=. python experiments/instructgpt.py --smoke    # micro config, 2 seeds, a few steps (the test)

A. RM held-out accuracy against K (responses ranked per prompt, `data.k` = 2, 4, 6, 9) at a fixed
   labelling budget of ranked responses (`data.n_rankings` = budget / K). The RM ranks samples of
   the SFT policy (`data.rm_from_policy`). Every RM is scored on ONE held-out set per seed:
   rankings of K = 4 SFT samples on the held-out prompts (the stage's own held-out set for the
   K = 4 point, rebuilt here from the run's SFT; accuracy over all 6 pairs of each ranking). The
   stage's own held-out accuracy (rankings of the same K) is reported beside it.
B. K-wise grouping against the same pairs shuffled as independent examples (`rm.pairs`), over
   `rm.epochs`, with train accuracy (every training pair, scored after training) and held-out
   accuracy. Same batch size (32 examples: prompts or pairs), so a shuffled epoch takes C(K,2)
   times as many steps, as in the paper's "simply shuffle the comparisons into one dataset"; a
   control arm gives the shuffled pairs 32 * C(K,2) pairs per step (as many steps and pairs per
   step as K-wise), to separate the grouping from the number of updates.
C. PPO against PPO-ptx as `ppo.ptx_coef` grows: win rate over SFT (gold judge) and the alignment
   tax (held-out NLL per token, final policy minus SFT) on the task world's pretraining text
   (`data.ptx=world:pretrain`: synthetic.pretrain_records, its own generator: solved examples of
   1-9 items as running text and runs of consecutive digits), which the SFT also trains on
   (`data.n_sft_pretrain`, as a base model pretrained on it) and PPO-ptx trains on; the tax is
   scored on that text's held-out split, so ptx never trains on the rows it is measured on. The
   tax on the held-out demonstrations (which ptx no longer trains on) is reported beside it. sft
   and rm are shared across the points of a seed (`--share sft,rm`). `--parts ptx` reruns this
   part alone and keeps the other parts of an existing results JSON.

Run directories go to runs/experiments/instructgpt (gitignored); run the same command again to
resume (finished runs are reused).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)

NAME = "instructgpt"
PAPER = {
    "source": "Ouyang et al. 2022, Training language models to follow instructions with human feedback (InstructGPT)",
    "rm_k": "Labelers rank K = 4..9 responses per prompt, giving C(K,2) comparisons per prompt; no accuracy-vs-K "
            "curve is published. Held-out RM accuracy about 70% (docs/rlhf_notes.md section 2; the N+ Pythia RMs 63-69%).",
    "rm_pairs": "Shuffling the C(K,2) comparisons into one dataset made the RM overfit within a single pass; "
                "training on all pairs of a prompt as one batch element no longer overfits and gives much better "
                "validation accuracy and log loss (section 3.5). No numbers are given.",
    "ptx": "PPO-ptx (pretraining gradients mixed in, gamma = 27.8) greatly reduces the performance regressions "
           "('alignment tax') of PPO on public NLP datasets without compromising labeler preference (win rate); "
           "a larger pretraining coefficient trades reward for less regression.",
}

FULL = {"config": "configs/instructgpt.py:tiny", "ks": [2, 4, 6, 9], "budget": 7200,
        "n_val": 512, "pairs_rankings": 1000, "epochs": [1, 2, 4, 8], "control": True,
        "ptx": [0, 1, 16], "ptx_batch": 64, "sets": {}, "ppo_sets": {},
        # C's cuts for a shared 2-core CPU (its rerun on the pretraining text had about 30 min): the RM
        # on 2,000 rankings of SFT samples (not 8,000), ptx_coef 0, 1, 16 (not 0, 1, 4, 16)
        "ptx_sets": {"data.ptx": "world:pretrain", "data.n_sft_pretrain": 4000, "data.n_rankings": 2000}}
SMOKE = {"config": "configs/instructgpt.py:micro", "ks": [2], "budget": 96,
         "n_val": 32, "pairs_rankings": 32, "epochs": [1], "control": False,
         "ptx": [1], "ptx_batch": 16, "sets": {"sft.steps": 4},
         "ppo_sets": {"ppo.iterations": 2, "rm.steps": 4, "heldout.n_prompts": 16, "data.n_sft_val": 32},
         "ptx_sets": {"data.ptx": "world:pretrain", "data.n_sft_pretrain": 64, "data.n_ptx": 64}}
BATCH = 32  # rm.batch_size of the tiny and micro configs' defaults (kept; stated in the JSON)


# --- post-hoc evaluation of trained RMs on fixed rankings -------------------------------------

class Evaluator:
    """One seed's fixed K-wise rankings of SFT samples, and RMs scored on them."""

    def __init__(self, config: str, run, workdir: Path):
        from rlhf_jax.context import build_context
        from rlhf_jax.stages.handoff import load_sft
        from rlhf_jax.stages.reward import reward_model
        from rlhf_jax.sweep import resolve_config
        from rlhf_jax.train import rm as rm_lib
        self.ctx = build_context(resolve_config(config, run.overrides), workdir, use_wandb=False)
        self.sft = load_sft(self.ctx)
        scalar = reward_model(self.ctx, seed=self.ctx.config.seed + 1)
        self.like, self.graphdef = scalar.params, scalar.graphdef
        self.evaluate = rm_lib.make_rm_eval(self.graphdef, self.ctx.config.rm.margin)

    def samples(self, n: int, split: str, k: int) -> list[list[str]]:
        """2K SFT samples per prompt, drawn as the rm stage draws them (same prompts and seed)."""
        from rlhf_jax.data import synthetic
        from rlhf_jax.stages.sampling import sample_texts
        prompts = synthetic.prompts(self.ctx.world, n, "rm_" + split)
        texts = sample_texts(self.ctx, self.sft, prompts, 2 * k, 1.0,
                                    seed=self.ctx.config.seed * 7919 + (split == "val"))
        return prompts, texts

    def rankings(self, n: int, split: str, k: int) -> dict:
        """The rm stage's `rm_{split}` rankings for data.k = k, n rankings (token arrays)."""
        from rlhf_jax.data import synthetic
        from rlhf_jax.data.tokenize import ranking_arrays
        prompts, texts = self.samples(n, split, k)
        records = synthetic.rank_samples(self.ctx.world, [p["prompt"] for p in prompts], texts, k, split)
        arrays, _ = ranking_arrays(records, self.ctx.tokenizer, self.ctx.data.tcfg)
        return arrays

    def fill_fraction(self, n: int, k: int) -> float:
        """Share of the K ranked slots that the stage fills with perturbed answers because the
        SFT policy's 2K samples hold fewer than K distinct responses (held-out prompts)."""
        _, texts = self.samples(n, "val", k)
        distinct = [min(len(set(s for s in drawn if s.strip())), k) for drawn in texts]
        return 1.0 - sum(distinct) / (k * len(distinct))

    def score(self, workdir: Path, arrays: dict) -> dict[str, float]:
        """Pair accuracy and prompt-weighted Bradley-Terry loss of the RM in `workdir`."""
        from rlhf_jax.stages.handoff import load_members
        from rlhf_jax.train import rm as rm_lib
        params = rm_lib.unstack(load_members(workdir, "rm", self.like, 1), 1)[0]  # one RM: a member axis of 1
        return rm_lib.held_out_accuracy(self.evaluate, params, arrays, 64)


def first_run(sweep, seed: int):
    from rlhf_jax.sweep import expand
    return next(r for r in expand(sweep) if r.seed == seed)


# --- the three parts ----------------------------------------------------------------------------

def run_k(rec: T.Recorder, s: dict) -> dict:
    """A's sweeps: one per K (n_rankings = budget / K), stages sft and rm."""
    sweeps = {}
    for k in s["ks"]:
        sets = {"stages": "sft,rm", "data.k": k, "data.n_rankings": s["budget"] // k,
                "data.n_rankings_val": s["n_val"], **s["sets"]}
        sweeps[k] = rec.sweep(f"k{k}", s["config"], s["seeds"], sets=sets,
                              metrics=["rm.val_accuracy", "rm.val_loss", "sft.val_loss"])
    return sweeps


def part_k(sweeps: dict, s: dict) -> dict:
    """A: held-out accuracy against K at a fixed budget of ranked responses."""
    fixed = {k: {} for k in s["ks"]}
    fills = {k: {} for k in s["ks"]}
    sft_loss_spread = 0.0
    for seed in s["seeds"]:
        ok = {k: dict(T.run_dirs(*sweeps[k], "base"))[seed] for k in s["ks"]}
        some = next((k for k in s["ks"] if ok[k] is not None), None)
        if some is None:
            continue
        ev = Evaluator(s["config"], first_run(sweeps[some][0], seed), ok[some])
        val4 = ev.rankings(s["n_val"], "val", 4)
        losses = []
        for k in s["ks"]:
            fills[k][seed] = ev.fill_fraction(s["n_val"], k)
            if ok[k] is not None:
                fixed[k][seed] = ev.score(ok[k], val4)
                losses.append(T.row_stat(sweeps[k][1], "base", "sft.val_loss")["values"][s["seeds"].index(seed)])
        losses = [v for v in losses if v is not None]
        sft_loss_spread = max(sft_loss_spread, max(losses) - min(losses) if losses else 0.0)
    points = []
    for k in s["ks"]:
        sweep, outcome = sweeps[k]
        own_acc = T.row_stat(outcome, "base", "rm.val_accuracy")
        steps = T.row_stat(outcome, "base", "rm.steps")
        points.append({
            "k": k, "n_rankings": s["budget"] // k, "pairs_per_prompt": k * (k - 1) // 2,
            "train_pairs": (s["budget"] // k) * k * (k - 1) // 2, "rm_steps": steps["mean"],
            "val_accuracy_fixed_k4": T.stat(fixed[k].get(seed, {}).get("val_accuracy") for seed in s["seeds"]),
            "val_loss_fixed_k4": T.stat(fixed[k].get(seed, {}).get("val_loss") for seed in s["seeds"]),
            "val_accuracy_own_k": own_acc,
            "val_loss_own_k": T.row_stat(outcome, "base", "rm.val_loss"),
            "fill_fraction": T.stat(fills[k].get(seed) for seed in s["seeds"])})
    check = {}
    if 4 in s["ks"]:  # the rebuilt K = 4 set must be the K = 4 point's own held-out set
        a = points[s["ks"].index(4)]
        diffs = [abs(x - y) for x, y in zip(a["val_accuracy_fixed_k4"]["values"], a["val_accuracy_own_k"]["values"])
                 if x is not None and y is not None]
        check["k4_rebuilt_minus_stage_max_abs"] = max(diffs) if diffs else None
    check["sft_val_loss_spread_across_k"] = sft_loss_spread
    return {"budget_responses": s["budget"], "n_val_rankings": s["n_val"], "rm_batch_size": BATCH,
            "rm_epochs": 3, "eval_set": "per seed, the K = 4 rankings of 2K = 8 SFT samples on n_val held-out prompts",
            "points": points, "checks": check}


def run_pairs(rec: T.Recorder, s: dict) -> list:
    """B's sweeps: K-wise and shuffled x epochs (batch 32 examples); the control arm."""
    k, pairs = 4, 6
    base = {"stages": "sft,rm", "data.k": k, "data.n_rankings": s["pairs_rankings"],
            "data.n_rankings_val": s["n_val"], **s["sets"]}
    metrics = ["rm.val_accuracy", "rm.val_loss"]
    arms = [("main", rec.sweep("pairs", s["config"], s["seeds"], share=("sft",), sets=base, metrics=metrics,
                               grid={"rm.pairs": ["kwise", "shuffled"], "rm.epochs": s["epochs"]}))]
    if s["control"]:
        arms.append(("control", rec.sweep("pairs_control", s["config"], s["seeds"], share=("sft",), metrics=metrics,
                                          sets={**base, "rm.pairs": "shuffled", "rm.batch_size": BATCH * pairs},
                                          grid={"rm.epochs": s["epochs"]})))
    return arms


def part_pairs(arms: list, s: dict) -> dict:
    """B: K-wise against shuffled pairs over epochs, train and held-out accuracy."""
    k, pairs = 4, 6
    train_scores: dict[tuple, dict] = {}
    for seed in s["seeds"]:
        sweep, outcome = arms[0][1]
        dirs = {p.name: dict(T.run_dirs(sweep, outcome, p.name))[seed] for p in _points(sweep)}
        anchor = next((d for d in dirs.values() if d is not None), None)
        if anchor is None:
            continue
        ev = Evaluator(s["config"], first_run(sweep, seed), anchor)
        train = ev.rankings(s["pairs_rankings"], "train", k)
        val = ev.rankings(s["n_val"], "val", k)
        for arm, (sw, oc) in arms:
            for p in _points(sw):
                d = dict(T.run_dirs(sw, oc, p.name))[seed]
                if d is not None:
                    train_scores[arm, p.name, seed] = {**{f"train_{m}": v for m, v in ev.score(d, train).items()},
                                                       **{f"heldout_{m}": v for m, v in ev.score(d, val).items()}}
    points = []
    for arm, (sw, oc) in arms:
        for p in _points(sw):
            mode = p.params.get("rm.pairs", "shuffled")
            per = [train_scores.get((arm, p.name, seed), {}) for seed in s["seeds"]]
            stage_val = T.row_stat(oc, p.name, "rm.val_accuracy")
            rebuilt = [q.get("heldout_val_accuracy") for q in per]
            diffs = [abs(a - b) for a, b in zip(rebuilt, stage_val["values"]) if a is not None and b is not None]
            points.append({
                "arm": "kwise" if mode == "kwise" else ("shuffled" if arm == "main" else "shuffled_equal_steps"),
                "pairs": mode, "epochs": int(p.params["rm.epochs"]),
                "batch_size": BATCH * pairs if arm == "control" else BATCH,
                "rm_steps": T.row_stat(oc, p.name, "rm.steps")["mean"],
                "train_accuracy": T.stat(q.get("train_val_accuracy") for q in per),
                "train_loss": T.stat(q.get("train_val_loss") for q in per),
                "heldout_accuracy": stage_val,
                "heldout_loss": T.row_stat(oc, p.name, "rm.val_loss"),
                "check_rebuilt_heldout_minus_stage_max_abs": max(diffs) if diffs else None})
    return {"k": k, "n_rankings": s["pairs_rankings"], "train_pairs": s["pairs_rankings"] * pairs,
            "n_val_rankings": s["n_val"], "points": points}


def _points(sweep):
    from rlhf_jax.sweep import points
    return points(sweep.grid)


def run_ptx(rec: T.Recorder, s: dict):
    """C's sweep: ppo.ptx_coef, sft and rm shared across the points of a seed."""
    metrics = ["ppo.win_rate_vs_sft", "ppo.alignment_tax_pretrain.value", "ppo.alignment_tax.value",
               "ppo.gold_reward_final", "ppo.kl_final"]
    # its own directory: the earlier ptx sweep (ptx on demonstrations) used other data
    return rec.sweep("ptx_pretrain", s["config"], s["seeds"], grid={"ppo.ptx_coef": s["ptx"]}, share=("sft", "rm"),
                     sets={"ppo.ptx_batch_size": s["ptx_batch"], **s["sets"], **s["ppo_sets"], **s["ptx_sets"]},
                     metrics=metrics)


def part_ptx(sweep_outcome, s: dict) -> dict:
    """C: PPO against PPO-ptx."""
    sweep, outcome = sweep_outcome
    points = []
    for p in _points(sweep):
        get = lambda m: T.row_stat(outcome, p.name, m)
        points.append({"ptx_coef": float(p.params["ppo.ptx_coef"]),
                       "win_rate_vs_sft": get("ppo.win_rate_vs_sft"),
                       "alignment_tax_pretrain": get("ppo.alignment_tax_pretrain.value"),
                       "pretrain_nll_sft": get("ppo.pretrain_nll_sft"), "pretrain_nll_final": get("ppo.pretrain_nll_final"),
                       "alignment_tax_demonstrations": get("ppo.alignment_tax.value"),
                       "heldout_nll_sft": get("ppo.heldout_nll_sft"), "heldout_nll_final": get("ppo.heldout_nll_final"),
                       "gold_reward_sft": get("ppo.gold_reward_sft"), "gold_reward_final": get("ppo.gold_reward_final"),
                       "rm_score_final": get("ppo.rm_score_final"), "kl_final": get("ppo.kl_final"),
                       "response_length_final": get("ppo.response_length_final"),
                       "rm_val_accuracy": get("rm.val_accuracy")})
    return {"ptx_batch_size": s["ptx_batch"], "sets": s["ptx_sets"],
            "ptx_data": "the task world's pretraining text (data.ptx=world:pretrain: synthetic.pretrain_records, "
                        "split 'train'; the SFT also trains on data.n_sft_pretrain rows of it)",
            "alignment_tax_definition": "alignment_tax_pretrain: NLL per token on the held-out split ('val') of the "
                                        "pretraining text, final policy minus SFT (mean over its data.n_sft_val "
                                        "documents; per seed), from the ppo summary; alignment_tax_demonstrations: "
                                        "the same on the held-out demonstrations",
            "points": points}


# --- figure --------------------------------------------------------------------------------------

def _errorbar(ax, xs, stats, **kw):
    import numpy as np
    m = np.array([st["mean"] if st["mean"] is not None else np.nan for st in stats], float)
    h = np.array([st["half_width"] if st["half_width"] is not None else 0.0 for st in stats], float)
    ax.errorbar(xs, m, yerr=h, capsize=3, marker="o", **kw)


def figure(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    seeds = len(result["seeds"])
    a = result["k_budget"]
    ks = [p["k"] for p in a["points"]]
    ax = axes[0, 0]
    _errorbar(ax, ks, [p["val_accuracy_fixed_k4"] for p in a["points"]], label="held-out, fixed K = 4 rankings")
    _errorbar(ax, ks, [p["val_accuracy_own_k"] for p in a["points"]], linestyle="--", alpha=0.7,
              label="held-out, rankings of the same K")
    ax.set_xticks(ks)
    ax.set_xlabel("K (responses ranked per prompt)")
    ax.set_ylabel("RM pair accuracy")
    ax.set_title(f"A. fixed budget of {a['budget_responses']} ranked responses (n_rankings = budget / K)", fontsize=9)
    ax.legend(fontsize=8)
    b = result["kwise_vs_shuffled"]
    ax = axes[0, 1]
    colors = {"kwise": "C0", "shuffled": "C3", "shuffled_equal_steps": "C2"}
    for arm in colors:
        pts = [p for p in b["points"] if p["arm"] == arm]
        if not pts:
            continue
        eps = [p["epochs"] for p in pts]
        _errorbar(ax, eps, [p["heldout_accuracy"] for p in pts], color=colors[arm], label=f"{arm}: held-out")
        _errorbar(ax, eps, [p["train_accuracy"] for p in pts], color=colors[arm], linestyle=":", mfc="white",
                  label=f"{arm}: train")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rm.epochs")
    ax.set_ylabel("RM pair accuracy")
    ax.set_title(f"B. K = {b['k']}, {b['n_rankings']} rankings ({b['train_pairs']} pairs): K-wise vs shuffled pairs",
                 fontsize=9)
    ax.legend(fontsize=7)
    c = result["ptx"]
    xs = [p["ptx_coef"] for p in c["points"]]
    ax = axes[1, 0]
    _errorbar(ax, xs, [p["win_rate_vs_sft"] for p in c["points"]], label="win rate vs SFT (gold judge)")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("ppo.ptx_coef")
    ax.set_ylabel("win rate over SFT")
    ax.set_title("C. PPO (ptx 0) vs PPO-ptx: preference", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    if "alignment_tax_pretrain" in c["points"][0]:
        _errorbar(ax, xs, [p["alignment_tax_pretrain"] for p in c["points"]], color="C1",
                  label="held-out pretraining text (ptx trains on other rows)")
        _errorbar(ax, xs, [p["alignment_tax_demonstrations"] for p in c["points"]], color="C4", linestyle="--",
                  alpha=0.7, label="held-out demonstrations")
    else:  # a results JSON from before the pretraining text: ptx trained on demonstrations
        _errorbar(ax, xs, [p["alignment_tax"] for p in c["points"]], color="C1",
                  label="alignment tax: held-out demo NLL/token, final - SFT")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("ppo.ptx_coef")
    ax.set_ylabel("NLL per token, final policy - SFT (nats)")
    ax.set_title("C. PPO vs PPO-ptx: alignment tax", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(f"InstructGPT claims on the task world ({result['config']}; mean and 95% t-interval over "
                 f"{seeds} seeds){' [SMOKE]' if result['smoke'] else ''}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = {"k": "k_budget", "pairs": "kwise_vs_shuffled", "ptx": "ptx"}  # --parts name: results JSON key
PART_SWEEPS = {"k": ("k",), "pairs": ("pairs",), "ptx": ("ptx",)}  # prefixes of each part's sweep names


def merge(old: dict, new: dict, parts: set[str]) -> dict:
    """An earlier results JSON with `parts` replaced by this invocation's: the other parts, their
    commands and timings stay; this invocation's record goes under `reruns`."""
    out = {k: v for k, v in old.items() if k != "reruns"}
    for part in parts:
        out[PARTS[part]] = new[PARTS[part]]
    mine = tuple(p for part in parts for p in PART_SWEEPS[part])
    out["timings"] = {k: v for k, v in old.get("timings", {}).items() if not k.startswith(mine)}
    # the earlier invocation's commands of the parts rerun (the ptx sweep is the one with a ptx_coef grid)
    out["commands"] = [c for c in old.get("commands", []) if not ("ptx" in parts and "ppo.ptx_coef" in c)]
    out["settings"] = {**old.get("settings", {}), **new["settings"]}
    out["reruns"] = old.get("reruns", []) + [{
        "parts": sorted(parts), **{k: new[k] for k in ("command", "commands", "timings", "failed_runs", "runs_dir",
                                                       "total_run_cpu_s", "run_seconds_total", "total_wall_s",
                                                       "posthoc_scoring_wall_s")}}]
    out["failed_runs"] = old.get("failed_runs", 0) + new["failed_runs"]
    return out


def main(argv=None) -> int:
    ap = T.parser(__doc__, NAME, seeds="0-2", smoke_seeds="0-1", smoke_help="micro config, 1-2 tiny points, "
                                                                            "2 seeds, few steps")
    ap.add_argument("--parts", default="k,pairs,ptx", help="subset of k,pairs,ptx (default all)")
    args = ap.parse_args(argv)
    run = T.setup(args, NAME, argv=argv)
    os.chdir(T.REPO)  # the post-hoc scoring resolves configs/... as the runner does
    s = {**(SMOKE if args.smoke else FULL), "seeds": run.seeds}
    json_path, png_path, rec = run.json_path, run.png_path, run.recorder
    t0 = time.perf_counter()
    parts = set(args.parts.split(","))
    result = {"name": NAME, "smoke": args.smoke, "config": s["config"], "seeds": s["seeds"],
              "settings": {k: v for k, v in s.items()}, "paper": PAPER,
              "interval": "95% t-interval over seeds (rlhf_jax.sweep.results.aggregate)"}
    # every sweep first, then the post-hoc scoring in this process (no fork after JAX has started)
    ran = {"k": run_k, "pairs": run_pairs, "ptx": run_ptx}
    sweeps = {part: ran[part](rec, s) for part in PARTS if part in parts}
    t_runs = time.perf_counter() - t0
    if "k" in sweeps:
        result["k_budget"] = part_k(sweeps["k"], s)
    if "pairs" in sweeps:
        result["kwise_vs_shuffled"] = part_pairs(sweeps["pairs"], s)
    if "ptx" in sweeps:
        result["ptx"] = part_ptx(sweeps["ptx"], s)
    result["posthoc_scoring_wall_s"] = round(time.perf_counter() - t0 - t_runs, 1)
    result.update(command=run.command, **rec.report(), total_wall_s=round(time.perf_counter() - t0, 1))
    if parts != set(PARTS) and json_path.exists():
        result = merge(T.read_json(json_path), result, parts)
    T.write_json(json_path, result)
    if all(key in result for key in PARTS.values()):
        figure(result, png_path)
    print(f"[{NAME}] wrote {json_path} and {png_path} in {result['total_wall_s']:.0f}s "
          f"({rec.failed} failed runs)", flush=True)
    return 1 if rec.failed else 0


if __name__ == "__main__":
    sys.exit(main())

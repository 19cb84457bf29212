"""Coste et al. 2023 ("Reward model ensembles help mitigate overoptimization") on the task world:
a single RM against mean, WCO (min) and UWO ensembles of 5, under best-of-n and under PPO, with and
without 25% label noise, in the hackable setting (RMs trained on perturbed answers,
`data.rm_from_policy=False`: the setting in which one RM is over-optimised).

    PYTHONPATH=. python experiments/coste_ensembles.py           # full: experiments/results/coste_ensembles.json,
                                                                 #       experiments/figures/coste_ensembles.png
    PYTHONPATH=. python experiments/coste_ensembles.py --smoke   # micro config, 2 seeds, a few steps (the test)

Preferences are pairs (`data.k=2`) labelled by the `flip` annotator: the exact gold order, swapped
with probability `data.world.flip_rate` (0 or 0.25); the script measures the flipped share of the
RM's own training pairs. Per noise level, two sweeps through the runner: the single RM
(`ensembles.py:single,hackable`) and the 5-member ensemble (`rm.members=5`) over
`rm.aggregate=mean,min,uwo` with `--share sft,rm` (the rm stage does not read the aggregation
fields, so the 5 members are trained once per seed and reused by the three aggregators). UWO's
lambda and variance divisor follow Coste et al. per use (`rm.uncertainty`: best-of-n 0.5 with k,
PPO 0.1 with k - 1). Each run: SFT, RM(s), PPO (150 iterations, KL 0.05) and best-of-n of the SFT
policy (256 samples per held-out prompt).

Curves: best-of-n gold at each n (bon/curve.json) against KL_bon, and the gold reward of each PPO
iteration's 64 episodes (ppo/metrics.jsonl), each as mean and 95% t-interval over seeds; the PPO
curve in the figure is a trailing 10-iteration moving average of each seed's curve (raw values in
the JSON too).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)

NAME = "coste_ensembles"
PAPER = {
    "source": "Coste, Anwar, Kirk, Krueger 2023, Reward Model Ensembles Help Mitigate Overoptimization (ICLR 2024)",
    "setup": "Pythia policies and proxy RMs, AlpacaFarm 7B gold RM, 25% label noise as an extension; ensembles of "
             "5 RMs differing in fine-tuning seed; UWO lambda 0.5 (BoN) / 0.1 (PPO).",
    "bon": "Both with and without label noise, conservative optimization (WCO, UWO) practically eliminates "
           "overoptimization and improves performance by up to 70% for best-of-n sampling (abstract).",
    "ppo": "For PPO, ensemble-based conservative optimization always reduces overoptimization and outperforms "
           "single reward model optimization; combined with a small KL penalty (0.01) it prevents "
           "overoptimization at no performance cost (abstract).",
    "mean": "The abstract's claims are about the conservative objectives (WCO, UWO); it states none for the plain "
            "mean of the ensemble, which we run as the non-conservative ensemble baseline.",
}

METHODS = ("single", "mean", "min", "uwo")
LABELS = {"single": "single RM", "mean": "mean of 5", "min": "WCO (min of 5)", "uwo": "UWO (mean - lambda Var)"}
FULL = {"variant": "hackable", "noise": [0.0, 0.25], "aggregates": ["mean", "min", "uwo"],
        "sets": {"bon.n_samples": 256, "bon.n_prompts": 128}, "smooth": 10}
SMOKE = {"variant": "hackable,micro", "noise": [0.25], "aggregates": ["min"],
         "sets": {"sft.steps": 4, "rm.steps": 4, "ppo.iterations": 3, "heldout.n_prompts": 16, "bon.n_prompts": 8},
         "smooth": 2}


def noise_sets(flip: float) -> dict:
    return {"data.k": 2, "data.world.annotator_model": "flip", "data.world.flip_rate": flip}


def measured_noise(config: str, sets: dict) -> dict:
    """The share of the RM's training pairs whose preferred response has the lower gold reward
    (among pairs whose gold rewards differ), and the share of tied pairs (labelled in list order)."""
    from rlhf_jax.data import synthetic
    from rlhf_jax.data.records import ranking_pairs
    from rlhf_jax.data.run_data import world_config
    from rlhf_jax.sweep import resolve_config
    c = resolve_config(config, {k: str(v) for k, v in sets.items()})
    world = world_config(c)
    flipped = tied = agree = 0
    for r in synthetic.ranking_records(world, c.data.n_rankings, c.data.k, "train"):
        for w, l in ranking_pairs(r["ranks"]):
            gw = synthetic.gold_reward(r["prompt"], r["responses"][w], world.length_coef)
            gl = synthetic.gold_reward(r["prompt"], r["responses"][l], world.length_coef)
            tied += gw == gl
            flipped += gw < gl
            agree += gw > gl
    n = flipped + tied + agree
    return {"pairs": n, "flipped_share_of_untied": flipped / max(flipped + agree, 1), "tied_share": tied / max(n, 1),
            "disagree_with_gold_incl_ties_half": (flipped + tied / 2) / max(n, 1)}


def run_all(rec: T.Recorder, s: dict) -> dict:
    """Per noise level: the single-RM sweep and the ensemble sweep (aggregators share sft and rm)."""
    metrics = ["ppo.gold_reward_final", "ppo.kl_final", "ppo.win_rate_vs_sft", "bon.gold_peak", "bon.gold_best_of_N"]
    out = {}
    for flip in s["noise"]:
        tag = f"noise{flip:g}"
        sets = {**noise_sets(flip), **s["sets"]}
        single = rec.sweep(f"{tag}_single", f"configs/ablations/ensembles.py:single,{s['variant']}", s["seeds"],
                           sets=sets, metrics=metrics)
        ensemble = rec.sweep(f"{tag}_ensemble", f"configs/ablations/ensembles.py:mean,{s['variant']}", s["seeds"],
                             sets=sets, grid={"rm.aggregate": s["aggregates"]}, share=("sft", "rm"), metrics=metrics)
        out[flip] = {"single": (single, "base"), **{a: (ensemble, f"aggregate={a}") for a in s["aggregates"]}}
    return out


def read_curves(workdir: Path | None) -> tuple[list[dict] | None, list[dict] | None]:
    if workdir is None:
        return None, None
    bon = json.loads((workdir / "bon" / "curve.json").read_text())
    ppo = [json.loads(line) for line in (workdir / "ppo" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return bon, ppo


SUMMARY_METRICS = ("rm.val_accuracy", "rm.val_accuracy_member_mean", "ppo.gold_reward_sft", "ppo.gold_reward_final",
                   "ppo.rm_score_sft", "ppo.rm_score_final", "ppo.kl_final", "ppo.win_rate_vs_sft",
                   "ppo.response_length_final", "bon.gold_best_of_1", "bon.gold_peak", "bon.gold_peak_n",
                   "bon.gold_best_of_N", "bon.proxy_best_of_N", "bon.kl_best_of_N")


def method_result(sweep, outcome, point: str, s: dict) -> dict:
    dirs = T.run_dirs(sweep, outcome, point)
    curves = [read_curves(d) for _, d in dirs]
    bons = [c[0] for c in curves]
    ref = next((b for b in bons if b is not None), [])
    ns = [r["n"] for r in ref]
    bon_curve = T.curve_stats(ns, [[r["gold"] for r in b] if b else None for b in bons])
    proxy_curve = T.curve_stats(ns, [[r["proxy"] for r in b] if b else None for b in bons])
    for row, r in zip(bon_curve, ref):
        row["kl_bon"] = r["kl"]
    ppos = [c[1] for c in curves]
    steps = [int(r["step"]) for r in next((p for p in ppos if p is not None), [])]
    gold = [[r.get("gold_reward") for r in p] if p else None for p in ppos]
    smooth = [T.trailing_moving_average(g, s["smooth"]) if g else None for g in gold]
    return {"point": point, "sweep": str(sweep.out), "seeds": [seed for seed, _ in dirs],
            "summary": {m: T.row_stat(outcome, point, m) for m in SUMMARY_METRICS},
            "bon_gold": bon_curve, "bon_proxy": proxy_curve,
            "ppo_gold": T.curve_stats(steps, gold),
            f"ppo_gold_ma{s['smooth']}": T.curve_stats(steps, smooth),
            "ppo_kl": T.curve_stats(steps, [[r.get("kl") for r in p] if p else None for p in ppos]),
            "ppo_rm_score": T.curve_stats(steps, [[r.get("score") for r in p] if p else None for p in ppos])}


def figure(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    levels = result["noise_levels"]
    fig, axes = plt.subplots(len(levels), 2, figsize=(12, 4.3 * len(levels)), squeeze=False)
    colors = {"single": "k", "mean": "C0", "min": "C3", "uwo": "C2"}
    key = f"ppo_gold_ma{result['settings']['smooth']}"

    def band(ax, rows, xkey, color, label):
        x = np.array([r[xkey] for r in rows], float)
        m = np.array([np.nan if r["mean"] is None else r["mean"] for r in rows], float)
        lo = np.array([np.nan if r["ci_low"] is None else r["ci_low"] for r in rows], float)
        hi = np.array([np.nan if r["ci_high"] is None else r["ci_high"] for r in rows], float)
        ax.plot(x, m, color=color, label=label, marker="o" if xkey == "kl_bon" else None, ms=3)
        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)

    for i, level in enumerate(levels):
        methods = result["results"][level["tag"]]
        ax = axes[i, 0]
        for m, res in methods.items():
            band(ax, res["bon_gold"], "kl_bon", colors[m], LABELS[m])
        top = ax.secondary_xaxis("top", functions=(lambda kl: kl, lambda kl: kl))
        top.set_ticks([r["kl_bon"] for r in methods["single"]["bon_gold"]][1::2],
                      labels=[str(r["x"]) for r in methods["single"]["bon_gold"]][1::2])
        top.set_xlabel("n", fontsize=8)
        ax.set_xlabel("KL_bon = log n - (n-1)/n (nats)")
        ax.set_ylabel("gold reward of best-of-n")
        ax.set_title(f"best-of-n of the SFT policy, {level['label']}", fontsize=9, pad=8)
        ax.legend(fontsize=8)
        ax = axes[i, 1]
        for m, res in methods.items():
            band(ax, res[key], "x", colors[m], LABELS[m])
        sft = methods["single"]["summary"]["ppo.gold_reward_sft"]["mean"]
        if sft is not None:
            ax.axhline(sft, color="grey", lw=0.8, ls="--", label="SFT policy (held-out prompts)")
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(f"rollout gold reward ({result['settings']['smooth']}-it. moving avg.)")
        ax.set_title(f"PPO (KL coef 0.05), {level['label']}", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"Coste et al. on the task world, {result['settings']['variant']} RMs, pairs (K = 2); mean and 95% "
                 f"t-interval over {len(result['seeds'])} seeds{' [SMOKE]' if result['smoke'] else ''}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = T.parser(__doc__, NAME, seeds="0-2", smoke_seeds="0-1", smoke_help="micro config, 2 tiny points, 2 seeds, "
                                                                            "few steps")
    args = ap.parse_args(argv)
    run = T.setup(args, NAME, argv=argv)
    os.chdir(T.REPO)  # the post-hoc scoring resolves configs/... as the runner does
    s = {**(SMOKE if args.smoke else FULL), "seeds": run.seeds}
    json_path, png_path, rec = run.json_path, run.png_path, run.recorder
    t0 = time.perf_counter()
    sweeps = run_all(rec, s)
    levels, results = [], {}
    for flip, methods in sweeps.items():
        tag = f"noise{flip:g}"
        config = f"configs/ablations/ensembles.py:single,{s['variant']}"
        levels.append({"tag": tag, "flip_rate": flip, "label": f"{flip:.0%} label noise (flip)",
                       "measured": measured_noise(config, {**noise_sets(flip), **s["sets"]})})
        results[tag] = {m: method_result(sw_oc[0], sw_oc[1], point, s) for m, (sw_oc, point) in methods.items()}
    result = {"name": NAME, "smoke": args.smoke, "seeds": s["seeds"], "settings": s, "paper": PAPER,
              "interval": "95% t-interval over seeds (rlhf_jax.sweep.results.aggregate)",
              "noise_levels": levels, "results": results, "command": run.command, **rec.report(),
              "total_wall_s": round(time.perf_counter() - t0, 1)}
    T.write_json(json_path, result)
    figure(result, png_path)
    print(f"[{NAME}] wrote {json_path} and {png_path} in {result['total_wall_s']:.0f}s ({rec.failed} failed runs)",
          flush=True)
    return 1 if rec.failed else 0


if __name__ == "__main__":
    sys.exit(main())

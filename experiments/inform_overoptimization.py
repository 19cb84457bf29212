"""Miao et al. 2024 (InfoRM) on the task world: gold reward and CSI over PPO, standard RM
against InfoRM over a sweep of the bottleneck weight beta, with seeds.

    python experiments/inform_overoptimization.py            # the full experiment (FULL below)
    python experiments/inform_overoptimization.py --smoke    # micro config, 2 points x 2 seeds (CI)

Hackable setting (configs/ablations/inform.py:hackable: the RMs are trained on perturbed
reference answers ranked by the simulated annotators, data.rm_from_policy = False). Two sweeps
through the runner: the standard scalar-head RM (`standard,hackable`) and InfoRM
(`inform,hackable`, paper KL form per_dim_sum) over `inform.beta`, the SFT stage shared
across the betas of a seed. Stages SFT -> RM -> PPO; PPO logs each iteration's rollout gold
reward, KL and proxy score, and with an InfoRM `latent/csi` and `latent/outlier_rate` every
`inform.track_every` iterations. Per point: curves over iterations (each seed smoothed over
9 iterations, then mean and 95% t-interval over seeds), CSI at the tracked
iterations, the final held-out gold, KL and win rate over SFT, the fall of the gold reward
from its peak, and the paired (same seed, same SFT) difference of final gold against the
standard RM. Writes experiments/results/inform_overoptimization.json and
experiments/figures/inform_overoptimization.png.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)
from toolkit import REPO as ROOT  # noqa: E402

NAME = "inform_overoptimization"
CONFIG = "configs/ablations/inform.py"
FULL = {"betas": ["0.001", "0.01", "0.1"], "seeds": [0, 1, 2], "variant": "hackable",
        # cuts for a 2-core CPU: one RM epoch over the 8000 rankings (the README's single runs used 3),
        # no best-of-n stage; PPO keeps the README's budget (150 iterations x 64 episodes, beta 0.05)
        "sets": {"stages": "sft,rm,ppo", "rm.epochs": "1"}, "window": 9, "late": 15}
SMOKE = {"betas": ["0.01"], "seeds": [0, 1], "variant": "hackable,micro",
         "sets": {"stages": "sft,rm,ppo", "rm.epochs": "1", "ppo.iterations": "4", "heldout.n_prompts": "8"},
         "window": 1, "late": 2}

PAPER = {
    "source": "Miao et al. 2024, InfoRM: Mitigating Reward Hacking in RLHF via Information-Theoretic Reward "
              "Modeling (NeurIPS 2024)",
    "claims": [
        "with a simulated gold RM, the gold score of the policy trained on the standard RM rises and then falls "
        "(reward hacking), while with InfoRM it keeps rising over the same PPO run",
        "reward-hacked responses appear as outliers in InfoRM's latent space; the cluster separation index (CSI) "
        "jumps when hacking starts and stays low when it does not",
        "beta trades off: too small behaves like the standard RM, too large under-fits the preferences",
    ],
    "numbers": "not comparable: their policies and RMs are 1.4B-7B LLMs on Anthropic HH / AlpacaFarm with a 7B gold "
               "RM; ours are 2-layer decoders on a programmatic gold",
    "readme_single_seed": {  # README.md, InfoRM section (seed 0, RM trained 3 epochs)
        "standard": {"gold_final": 0.149, "kl": 5.04, "win_rate": 0.461},
        "inform_beta0.01": {"gold_final": 0.330, "kl": 4.40, "win_rate": 0.561},
        "inform_beta0.1": {"gold_final": 0.215, "kl": 0.80, "win_rate": 0.545},
        "gold_sft": 0.194},
}


def curves(dirs: dict[int, Path], window: int, late: int) -> dict:
    """Per-iteration rollout metrics and the tracked latent diagnostics of one point."""
    seeds = sorted(dirs)
    logs = {s: T.read_jsonl(dirs[s] / "ppo" / "metrics.jsonl") for s in seeds}
    n_it = min(len(v) for v in logs.values())
    series = {k: np.array([[row.get(k, np.nan) for row in logs[s][:n_it]] for s in seeds], float)
              for k in ("gold_reward", "kl", "score")}
    smooth = {k: T.centred_moving_average(v, window) for k, v in series.items()}
    out = {"iteration": list(range(1, n_it + 1)), "smoothing_window": window}
    for k, v in smooth.items():
        out[k] = [T.stat(v[:, t]) for t in range(n_it)]
        for s in out[k]:
            s.pop("values")
    # the fall from the peak: the peak is the iteration where the seed-mean smoothed gold is highest;
    # per seed, (mean raw gold over the last `late` iterations) - (smoothed gold at that iteration)
    mean_gold = smooth["gold_reward"].mean(0)
    tp = int(np.nanargmax(mean_gold))
    last = series["gold_reward"][:, -late:].mean(1)
    first = series["gold_reward"][:, :late].mean(1)
    out["peak"] = {"iteration": tp + 1, "gold": T.stat(smooth["gold_reward"][:, tp])}
    out["gold_first"] = T.stat(first)
    out["gold_last"] = T.stat(last)
    out["gold_last_minus_peak"] = T.stat(last - smooth["gold_reward"][:, tp])
    out["gold_last_minus_first"] = T.stat(last - first)
    tracked = sorted({int(row["step"]) for s in seeds for row in logs[s] if "latent/csi" in row})
    if tracked:
        lat = {k: {s: {int(r["step"]): r.get(k) for r in logs[s] if "latent/csi" in r} for s in seeds}
               for k in ("latent/csi", "latent/outlier_rate")}
        out["tracked_iteration"] = tracked
        out["csi"] = [T.stat([lat["latent/csi"][s].get(t) for s in seeds]) for t in tracked]
        out["outlier_rate"] = [T.stat([lat["latent/outlier_rate"][s].get(t) for s in seeds]) for t in tracked]
        # does CSI rise as gold falls? per seed, Pearson r over the tracked iterations between CSI and
        # the smoothed gold at those iterations (negative: CSI up while gold down)
        rs = []
        for i, s in enumerate(seeds):
            c = np.array([lat["latent/csi"][s].get(t, np.nan) for t in tracked], float)
            g = smooth["gold_reward"][i, [t - 1 for t in tracked if t <= n_it]]
            ok = np.isfinite(c[:len(g)]) & np.isfinite(g)
            rs.append(float(np.corrcoef(c[:len(g)][ok], g[ok])[0, 1]) if ok.sum() >= 3 and np.std(c[:len(g)][ok]) > 0
                      else None)
        out["corr_csi_gold"] = T.stat(rs)
        out["csi_last_over_first"] = T.stat(
            [lat["latent/csi"][s].get(tracked[-1]) / lat["latent/csi"][s][tracked[0]]
             if lat["latent/csi"][s].get(tracked[0]) else None for s in seeds])
    return out


def finals(dirs: dict[int, Path]) -> dict:
    seeds = sorted(dirs)
    sums = {s: T.summary(dirs[s]) for s in seeds}
    get = lambda stage, key: T.stat([sums[s].get(stage, {}).get(key) for s in seeds])
    out = {k: get("ppo", k) for k in ("gold_reward_sft", "gold_reward_final", "kl_final", "win_rate_vs_sft",
                                       "rm_score_sft", "rm_score_final", "response_length_final",
                                       "latent_csi_sft", "latent_csi_final", "latent_outlier_rate_sft",
                                       "latent_outlier_rate_final")}
    out["rm_val_accuracy"] = get("rm", "val_accuracy")
    out["gold_gain_vs_sft"] = T.stat([sums[s]["ppo"]["gold_reward_final"] - sums[s]["ppo"]["gold_reward_sft"]
                                        for s in seeds])
    out["final_gold_by_seed"] = {s: sums[s]["ppo"]["gold_reward_final"] for s in seeds}
    return {k: v for k, v in out.items() if k == "final_gold_by_seed" or v["n"]}


def figure(points: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    colors = plt.cm.plasma(np.linspace(0.1, 0.8, len(points)))
    colors[0] = (0.1, 0.1, 0.1, 1.0)  # the standard RM in black
    band = lambda seq: (np.array([s["ci_low"] if s["ci_low"] is not None else np.nan for s in seq], float),
                        np.array([s["ci_high"] if s["ci_high"] is not None else np.nan for s in seq], float))
    for p, c in zip(points, colors):
        cur = p["curves"]
        it = np.array(cur["iteration"])
        for ax, key, lab in ((axes[0, 0], "gold_reward", "gold reward of the rollouts"),
                             (axes[0, 1], "kl", "KL to SFT (nats, rollouts)")):
            m = np.array([s["mean"] for s in cur[key]], float)
            lo, hi = band(cur[key])
            ax.plot(it, m, color=c, label=p["label"])
            ax.fill_between(it, lo, hi, color=c, alpha=0.15, lw=0)
            ax.set_ylabel(lab)
            ax.set_xlabel("PPO iteration")
        if "csi" in cur:
            t = np.array(cur["tracked_iteration"])
            m = np.array([s["mean"] for s in cur["csi"]], float)
            lo, hi = band(cur["csi"])
            axes[1, 0].plot(t, m, "-o", ms=3, color=c, label=p["label"])
            axes[1, 0].fill_between(t, lo, hi, color=c, alpha=0.15, lw=0)
    g0 = points[0]["final"]["gold_reward_sft"]["mean"]
    axes[0, 0].axhline(g0, color="grey", ls="--", lw=0.8, label="SFT policy (held-out)")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_xlabel("PPO iteration")
    axes[1, 0].set_ylabel("CSI of the rollouts (own InfoRM latent space; log)")
    axes[1, 0].set_title("CSI (standard RM: no latent space)", fontsize=9)
    if any("csi" in p["curves"] for p in points):
        axes[1, 0].legend(fontsize=8)
    ax = axes[1, 1]
    x = np.arange(len(points))
    for j, (key, lab, off) in enumerate((("gold_reward_final", "final gold (held-out)", -0.2),
                                         ("win_rate_vs_sft", "win rate vs SFT", 0.2))):
        m = np.array([p["final"][key]["mean"] for p in points], float)
        hw = np.array([p["final"][key]["half_width"] or 0.0 for p in points], float)
        ax.bar(x + off, m, 0.38, yerr=hw, capsize=3, label=lab, color=("tab:blue", "tab:orange")[j], alpha=0.8)
    ax.axhline(g0, color="grey", ls="--", lw=0.8)
    ax.axhline(0.5, color="tab:orange", ls=":", lw=0.8)
    ax.set_xticks(x, [p["label"] for p in points], fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("after PPO: mean, 95% t-interval over seeds", fontsize=9)
    fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = T.parser(__doc__, NAME, seeds="0-2", smoke_seeds="0-1",
                 smoke_help="micro config, standard + one beta, 2 seeds, 4 PPO iterations")
    p.add_argument("--readme_budget", action="store_true",
                   help="the README's single-seed setting instead (RM trained 3 epochs, standard RM and beta 0.01 "
                        "only), written as inform_overoptimization_rm3ep.json / .png")
    args = p.parse_args(argv)
    spec = SMOKE if args.smoke else FULL
    tag = NAME
    if args.readme_budget and not args.smoke:
        spec = {**FULL, "betas": ["0.01"], "sets": {**FULL["sets"], "rm.epochs": "3"}}
        tag = NAME + "_rm3ep"
    run = T.setup(args, NAME, argv=argv, tag=tag)
    seeds, fig_path, json_path = run.seeds, run.png_path, run.json_path
    t0 = time.perf_counter()
    headline = ["rm.val_accuracy", "ppo.gold_reward_final", "ppo.kl_final", "ppo.win_rate_vs_sft"]
    standard, _ = run.recorder.sweep("standard", f"{CONFIG}:standard,{spec['variant']}", seeds, sets=spec["sets"],
                                     metrics=headline, strict=True)
    inform, _ = run.recorder.sweep("inform", f"{CONFIG}:inform,{spec['variant']}", seeds, sets=spec["sets"],
                                   grid={"inform.beta": spec["betas"]}, share=("sft",), metrics=headline, strict=True)
    points = []
    for label, dirs in [("standard RM", T.workdirs(standard)["base"])] + [
            (f"InfoRM beta={pt.split('=')[1]}", d) for pt, d in T.workdirs(inform).items()]:
        points.append({"label": label, "seeds": sorted(dirs), "curves": curves(dirs, spec["window"], spec["late"]),
                       "final": finals(dirs)})
    # paired by seed (same SFT policy, same task world): InfoRM's final gold minus the standard RM's
    std_gold = points[0]["final"]["final_gold_by_seed"]
    for pt in points[1:]:
        mine = pt["final"]["final_gold_by_seed"]
        pt["final"]["gold_final_minus_standard_paired"] = T.stat(
            [mine[s] - std_gold[s] for s in seeds if s in mine and s in std_gold])
    wall = time.perf_counter() - t0
    figure(points, fig_path, f"InfoRM (Miao et al. 2024) on the task world, hackable RMs: PPO rollouts over iterations "
                             f"(each seed smoothed over {spec['window']} iterations), mean and 95% t-interval over "
                             f"{len(seeds)} seeds")
    std = points[0]["curves"]
    checks = {
        "standard_gold_falls_from_peak": (std["gold_last_minus_peak"]["ci_high"] is not None
                                          and std["gold_last_minus_peak"]["ci_high"] < 0),
        "standard_final_gold_below_sft": (points[0]["final"]["gold_gain_vs_sft"]["ci_high"] is not None
                                          and points[0]["final"]["gold_gain_vs_sft"]["ci_high"] < 0),
    }
    for pt in points[1:]:
        c, f = pt["curves"], pt["final"]
        checks[f"{pt['label']}: gold_last_minus_peak_interval_includes_or_above_0"] = (
            c["gold_last_minus_peak"]["ci_high"] is not None and c["gold_last_minus_peak"]["ci_high"] >= 0)
        d = f.get("gold_final_minus_standard_paired", {})
        checks[f"{pt['label']}: final_gold_above_standard_paired_interval"] = (
            d.get("ci_low") is not None and d["ci_low"] > 0)
        if "corr_csi_gold" in c:
            checks[f"{pt['label']}: csi_gold_corr_negative_interval"] = (
                c["corr_csi_gold"]["ci_high"] is not None and c["corr_csi_gold"]["ci_high"] < 0)
    out = {"experiment": NAME, "mode": "smoke" if args.smoke else "full", "seeds": seeds,
           "spec": {k: v for k, v in spec.items() if k != "seeds"},
           "command": run.command, **run.recorder.report(),
           "sweep_seconds": [run.recorder.timings[n]["wall_s"] for n in ("standard", "inform")],
           "wall_seconds": round(wall, 1),
           "timing_note": "wall_seconds: this invocation (small when the runs were finished before and only the "
                          "analysis ran); run_seconds_total: the runs' own wall times as the runner recorded them",
           "definitions": {
               "curves": "per-iteration rollout metrics (64 episodes on training prompts), each seed smoothed over "
                         "`window` iterations, then mean and 95% t-interval over seeds",
               "gold_last_minus_peak": "per seed: mean raw rollout gold over the last `late` iterations minus the "
                                       "seed's smoothed gold at the iteration where the seed-mean is highest",
               "final": "the PPO stage's held-out evaluation (heldout.n_prompts prompts, one sample each, gold judge)",
               "corr_csi_gold": "per seed Pearson r over the tracked iterations between latent/csi and the smoothed "
                                "rollout gold; negative = CSI rises as gold falls",
               "gold_final_minus_standard_paired": "per seed (same SFT policy): InfoRM final held-out gold minus "
                                                   "the standard RM's, t-interval over seeds"},
           "paper": PAPER, "checks": checks, "points": points,
           "figure": str(fig_path.relative_to(ROOT)) if fig_path.is_relative_to(ROOT) else str(fig_path),
           "runs": [run.recorder.records[n] for n in ("standard", "inform")]}
    T.write_json(json_path, out)
    print(f"[{NAME}] {len(points)} points x {len(seeds)} seeds in {wall:.0f}s\n  {json_path}\n  {fig_path}")
    for pt in points:
        f, c = pt["final"], pt["curves"]
        print(f"  {pt['label']}: gold final {T.fmt(f['gold_reward_final'])} (sft {T.fmt(f['gold_reward_sft'])}), "
              f"kl {T.fmt(f['kl_final'], 2)}, win {T.fmt(f['win_rate_vs_sft'])}, last-peak "
              f"{T.fmt(c['gold_last_minus_peak'])}, corr(csi,gold) {T.fmt(c.get('corr_csi_gold'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

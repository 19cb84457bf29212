"""The DPO paper's IMDb frontier (Rafailov et al. 2023, Fig. 2 left): mean gold reward against
mean sequence KL to the SFT policy, for DPO over a beta sweep and PPO over a KL sweep, with the
RM trained on the gold-ranked pairs and with the gold classifier itself as PPO's reward.

    RLHF_JAX_DATA_DIR=../shared/data python experiments/dpo_imdb.py            # the full run
    RLHF_JAX_DATA_DIR=../shared/data python experiments/dpo_imdb.py --smoke    # micro sizes, 2 seeds

Every point at every seed is an ordinary `rlhf_jax.main` run of `configs/imdb.py`, run by the
sweep runner (`rlhf_jax.sweep`) under OUT (--out, default runs/experiments/dpo_imdb, gitignored). The stages the
points share run once per seed in OUT/base (clf, sft, prefs, rm) and are copied into each point's
workdir before it starts (the runner's `share_stages`); inside each arm `--share` re-checks that its grid key is a field no
shared stage reads. The gold classifier is the same for every seed (its `clf.seed`). Run the same
command again to resume: finished runs are skipped.

| arm      | config              | grid                  | copied from base    |
|----------|---------------------|-----------------------|---------------------|
| base     | configs/imdb.py:ppo | (stages clf,sft,prefs,rm) | -               |
| dpo      | configs/imdb.py:dpo | dpo.beta              | clf, sft, prefs     |
| ppo_rm   | configs/imdb.py:ppo | ppo.kl_coef           | clf, sft, prefs, rm |
| ppo_gold | configs/imdb.py:ppo_gold | ppo.kl_coef      | clf, sft            |

Each point: (mean sequence KL to the SFT policy, mean gold reward) of the final policy's samples
on the held-out prefixes (`<stage>.kl_final`, `<stage>.gold_reward_final`), mean and 95%
t-interval over seeds; and the trajectory over training (DPO: held-out every dpo.eval_every steps;
PPO: its training rollouts, averaged over windows). Writes experiments/results/dpo_imdb.json and
experiments/figures/dpo_imdb_frontier.png (with --smoke: OUT/dpo_imdb_smoke.json and
OUT/dpo_imdb_frontier_smoke.png). The flags are every figure script's (experiments/toolkit.py)
and one per arm for its grid values.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)

NAME = "dpo_imdb"
PAPER_CLAIM = ("DPO's reward/KL frontier strictly dominates PPO's: at every KL, DPO reaches a higher gold "
               "reward than PPO with the learned RM, and even than PPO with the gold reward (Rafailov et al. "
               "2023, Fig. 2 left: GPT-2-large, IMDb prefixes of 2-8 tokens, gold = a sentiment classifier).")
ARMS = {  # name: (config variant, grid key, stage whose summary holds the point, stages copied from base)
    "dpo": ("dpo", "dpo.beta", "dpo", ("clf", "sft", "prefs")),
    "ppo_rm": ("ppo", "ppo.kl_coef", "ppo", ("clf", "sft", "prefs", "rm")),
    "ppo_gold": ("ppo_gold", "ppo.kl_coef", "ppo", ("clf", "sft")),
}
BASE_STAGES = "clf,sft,prefs,rm"
# the full run's grid is cut to what fits about an hour and a half of this 2-core CPU (a DPO or PPO
# point took 2-8 min there, on a shared machine); widen it with --dpo / --ppo_rm / --ppo_gold on a
# bigger machine
FULL = {"seeds": "0-2", "dpo": "0.05,1", "ppo_rm": "0.05", "ppo_gold": "0.05,0.5"}
SMOKE = {"seeds": "0-1", "dpo": "0.1,5", "ppo_rm": "0.05", "ppo_gold": "0.05"}
TRAJECTORY_WINDOW = 10  # PPO iterations averaged per trajectory point (its rollouts are noisy)


def parser():
    # --jobs 0 runs in this process: --smoke took 397 s in-process on a quiet machine, 231 s with
    # child runs (--jobs 1) on a loaded one; the cause was not measured
    p = T.parser(__doc__, NAME, seeds=FULL["seeds"], smoke_seeds=SMOKE["seeds"],
                 smoke_help="micro sizes, 2 seeds, one or two points per arm")
    for arm in ARMS:
        p.add_argument(f"--{arm}", default="", help=f"{ARMS[arm][1]} values (default {FULL[arm]}; "
                                                   f"--smoke {SMOKE[arm]})")
    return p


def copy_classifier(base_runs) -> None:
    """The first seed's gold classifier into the other seeds' base runs that have not started:
    it depends on clf.* only (its own seed), so every seed would train the same one."""
    source = base_runs[0]
    T.copy_stages(base_runs[1:], [dataclasses.replace(source, seed=run.seed) for run in base_runs[1:]], ("clf",))


def run_all(run, args, defaults: dict) -> tuple:
    """Run base and every arm; returns (base outcome, {arm: outcome}, {arm: Sweep}, wall seconds)."""
    from rlhf_jax.sweep import expand, parse_grid
    rec, seeds = run.recorder, run.seeds
    micro = ",micro" if args.smoke else ""
    t0 = time.perf_counter()
    base = rec.build("base", f"configs/imdb.py:ppo{micro}", seeds, sets={"stages": BASE_STAGES})
    base_runs = expand(base)
    if len(seeds) > 1 and not (base_runs[0].workdir / "clf" / "summary.json").exists():
        rec.run(dataclasses.replace(base, seeds=seeds[:1]), key="base_first_seed")  # one classifier
    copy_classifier(base_runs)
    _, base_outcome = rec.run(base)
    outcomes, sweeps = {}, {}
    for arm, (variant, key, _, shared) in ARMS.items():
        values = getattr(args, arm) or defaults[arm]
        sweep = rec.build(arm, f"configs/imdb.py:{variant}{micro}", seeds, grid=parse_grid([f"{key}={values}"]))
        sweeps[arm], outcomes[arm] = rec.run(sweep, share=shared, share_from=(base, shared))
    return base_outcome, outcomes, sweeps, time.perf_counter() - t0


def _stat(rows: list[dict], point: str, metric: str) -> dict | None:
    row = next((r for r in rows if r["point"] == point and r["metric"] == metric), None)
    if row is None:
        return None
    return {k: row[k] for k in ("n", "mean", "std", "ci_low", "ci_high", "half_width", "values")}


def trajectory(workdirs: list[Path], stage: str) -> list[dict]:
    """The mean over seeds of (KL, gold reward) along training: DPO's held-out evaluations
    (eval/kl, eval/gold_reward), or PPO's rollouts (kl, gold_reward) averaged per window."""
    keys = ("eval/kl", "eval/gold_reward") if stage == "dpo" else ("kl", "gold_reward")
    per_seed = []
    for wd in workdirs:
        path = wd / stage / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if all(k in r for k in keys)]
        if stage != "dpo":  # windows of TRAJECTORY_WINDOW iterations
            rows = [{"step": chunk[-1]["step"], **{k: sum(r[k] for r in chunk) / len(chunk) for k in keys}}
                    for chunk in (rows[i:i + TRAJECTORY_WINDOW] for i in range(0, len(rows), TRAJECTORY_WINDOW))]
        per_seed.append({r["step"]: (r[keys[0]], r[keys[1]]) for r in rows})
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    mean = lambda xs: sum(xs) / len(xs)
    return [{"step": s, "kl": mean([p[s][0] for p in per_seed]), "gold": mean([p[s][1] for p in per_seed]),
             "n": len(per_seed)} for s in steps]


def collect(base_outcome, outcomes: dict, sweeps: dict) -> dict:
    """The points, the shared stages' numbers and the SFT reference, from the sweeps' rows."""
    from rlhf_jax.sweep import expand, points as grid_points
    base_rows = base_outcome.rows
    shared = {m: _stat(base_rows, "base", m) for m in (
        "clf.test_accuracy", "clf.test_accuracy_at_16", "clf.test_accuracy_at_32", "clf.test_accuracy_at_64",
        "clf.intervals.test_accuracy.low", "clf.intervals.test_accuracy.high", "clf.n_test", "clf.train_accuracy",
        "sft.val_loss", "prefs.train.rankings", "prefs.train.pairs", "prefs.train.gold_mean",
        "prefs.train.gold_best_minus_worst", "prefs.train.frac_with_eos", "prefs.train.response_tokens",
        "rm.val_accuracy", "rm.train_accuracy")}
    points, sft_gold = [], None
    for arm, (_, key, stage, _) in ARMS.items():
        rows = outcomes[arm].rows
        runs = expand(sweeps[arm])
        for point in grid_points(sweeps[arm].grid):
            stat = lambda metric: _stat(rows, point.name, f"{stage}.{metric}")  # noqa: B023 (used at once)
            points.append({"arm": arm, "param": key, "value": float(point.params[key]), "point": point.name,
                           "kl": stat("kl_final"), "gold": stat("gold_reward_final"),
                           "win_rate_vs_sft": stat("win_rate_vs_sft"), "response_length": stat("response_length_final"),
                           "trajectory": trajectory([r.workdir for r in runs if r.point.name == point.name], stage)})
            sft_gold = sft_gold or stat("gold_reward_sft")
    return {"shared": shared, "sft_gold_reward": sft_gold, "points": points}


def _frontier(points: list[tuple[float, float]], x: float) -> float | None:
    """The piecewise-linear curve through (KL, gold) points sorted by KL, at x; None outside."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return None


def dominance(points: list[dict]) -> list[dict]:
    """For every PPO point: DPO's frontier (piecewise linear between DPO's mean points sorted by
    KL) at the PPO point's mean KL, minus the PPO point's mean gold reward (None outside DPO's KL
    range); and the same paired by seed (each seed's DPO frontier at that seed's KL minus that
    seed's PPO gold), with its 95% t-interval over seeds: what the seeds support."""
    dpo = [p for p in points if p["arm"] == "dpo" and p["kl"] and p["gold"] and p["kl"]["mean"] is not None]
    means = [(p["kl"]["mean"], p["gold"]["mean"]) for p in dpo]
    out = []
    for p in points:
        if p["arm"] == "dpo" or not p["kl"] or p["kl"]["mean"] is None:
            continue
        x, y = p["kl"]["mean"], p["gold"]["mean"]
        at = _frontier(means, x)
        best_below = max((gy for gx, gy in means if gx <= x), default=None)  # a DPO point with no more KL
        paired = []
        for i, (kl_i, gold_i) in enumerate(zip(p["kl"]["values"], p["gold"]["values"])):
            seed_dpo = [(d["kl"]["values"][i], d["gold"]["values"][i]) for d in dpo
                        if d["kl"]["values"][i] is not None and d["gold"]["values"][i] is not None]
            f = _frontier(seed_dpo, kl_i) if kl_i is not None and gold_i is not None else None
            paired.append(None if f is None else f - gold_i)
        margin = T.stat(paired)
        out.append({"arm": p["arm"], "value": p["value"], "kl": x, "gold": y, "gold_half_width": p["gold"]["half_width"],
                    "dpo_frontier_at_kl": at, "dpo_minus_ppo": None if at is None else at - y,
                    "dpo_minus_ppo_paired": margin,
                    "supported_by_seeds": margin["ci_low"] is not None and margin["ci_low"] > 0,
                    "dpo_point_with_less_kl_and_more_reward": best_below is not None and best_below >= y})
    return out


def plot(result: dict, path: Path) -> None:
    """Left: each point's final (KL, gold reward), mean over seeds with 95% t-intervals, and the SFT
    policy; right: each point's trajectory over training (mean over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    styles = {"dpo": ("DPO (beta sweep)", "tab:blue", "o"), "ppo_rm": ("PPO, learned RM (KL sweep)", "tab:orange", "s"),
              "ppo_gold": ("PPO, gold reward (KL sweep)", "tab:green", "^")}
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(13, 5))
    sft = result["sft_gold_reward"]
    for arm, (label, color, marker) in styles.items():
        pts = sorted((p for p in result["points"] if p["arm"] == arm and p["kl"] and p["gold"]),
                     key=lambda p: p["kl"]["mean"])
        xs, ys = [p["kl"]["mean"] for p in pts], [p["gold"]["mean"] for p in pts]
        ax.errorbar(xs, ys, xerr=[p["kl"]["half_width"] or 0.0 for p in pts],
                    yerr=[p["gold"]["half_width"] or 0.0 for p in pts], color=color, marker=marker, ls="-",
                    capsize=3, label=label)
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"{p['value']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, color=color)
            traj = p["trajectory"]
            if traj and sft:
                tx.plot([0.0] + [t["kl"] for t in traj], [sft["mean"]] + [t["gold"] for t in traj], color=color,
                        marker=marker, ms=3, lw=1, alpha=0.8)
                tx.annotate(f"{p['value']:g}", (traj[-1]["kl"], traj[-1]["gold"]), fontsize=7, color=color)
    if sft:
        ax.errorbar([0.0], [sft["mean"]], yerr=[sft["half_width"] or 0.0], color="gray", marker="D", capsize=3,
                    label=f"SFT policy ({sft['mean']:.3f})")
    seeds = len(result["seeds"])
    ax.set_title(f"final policies: mean over {seeds} seeds, 95% t-intervals (labels: beta / kl_coef)", fontsize=9)
    tx.set_title("during training, mean over seeds (DPO: held-out prefixes; PPO: its rollouts, "
                 f"{TRAJECTORY_WINDOW}-iteration windows)", fontsize=9)
    for a in (ax, tx):
        a.set_xlabel("mean sequence KL to the SFT policy (nats)")
        a.set_ylabel("mean gold reward p(positive)")
        a.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle("IMDb sentiment: reward / KL frontier (DPO paper, Fig. 2 left, at CPU size)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(dom: list[dict]) -> str:
    """What the seeds support about DPO's frontier against PPO's, in one sentence."""
    judged = [d for d in dom if d["dpo_minus_ppo"] is not None]
    if not judged:
        return "not judged: no PPO point lies within DPO's KL range"
    above = [d for d in judged if d["dpo_minus_ppo"] > 0]
    supported = [d for d in judged if d["supported_by_seeds"]]
    where = "; ".join(f"{d['arm']} {d['value']:g}: {d['dpo_minus_ppo_paired']['mean']:+.3f} ± "
                      f"{d['dpo_minus_ppo_paired']['half_width'] or float('nan'):.3f} (n={d['dpo_minus_ppo_paired']['n']})"
                      for d in judged)
    return (f"DPO's mean frontier is above {len(above)} of the {len(judged)} PPO points within its KL range "
            f"({len(dom) - len(judged)} outside it); paired by seed, the margin's 95% interval excludes 0 for "
            f"{len(supported)} of them ({where}); "
            + ("the seeds support dominance here" if len(supported) == len(judged) else
               "the seeds do not support dominance at every KL"))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    run = T.setup(args, NAME, figure_name="dpo_imdb_frontier", argv=argv)
    base_outcome, outcomes, sweeps, wall = run_all(run, args, defaults)
    report = run.recorder.report()
    result = {"experiment": "DPO paper, IMDb sentiment frontier (Rafailov et al. 2023, Fig. 2 left)",
              "paper_claim": PAPER_CLAIM, "smoke": args.smoke, "command": run.command,
              "sweep_commands": {arm: sweep_command(sweeps[arm], ARMS[arm][3]) for arm in ARMS},
              "seeds": run.seeds, "interval": "95% t-interval over seeds (mean +- t(0.975, n-1) s / sqrt(n))",
              "wall_seconds_this_invocation": round(wall, 1),
              "cpu_seconds_this_invocation": report["total_run_cpu_s"],
              "run_seconds": run_seconds(base_outcome, outcomes), **report,
              **collect(base_outcome, outcomes, sweeps)}
    result["dominance"] = dominance(result["points"])
    result["verdict"] = verdict(result["dominance"])
    T.write_json(run.json_path, result)
    plot(result, run.png_path)
    print(f"[dpo_imdb] {result['verdict']}\n  {run.json_path}\n  {run.png_path}\n  wall {wall:.0f}s, "
          f"{result['failed_runs']} failed runs")
    return min(result["failed_runs"], 100)


def run_seconds(base_outcome, outcomes: dict) -> dict:
    """Wall seconds of the runs (from the sweep records, so a resumed experiment counts the runs an
    earlier invocation finished), per arm and in all."""
    per = {name: round(sum(r["seconds"] or 0.0 for r in o.runs), 1)
           for name, o in {"base": base_outcome, **outcomes}.items()}
    return {**per, "total": round(sum(per.values()), 1)}


def sweep_command(sweep, share) -> str:
    """The experiments/sweep.py command that runs one arm by itself (without the copy from base)."""
    import shlex
    return shlex.join(sweep.cli(share))


if __name__ == "__main__":
    sys.exit(main())

"""Does choosing which comparisons to label beat labelling random ones? Random selection against
uncertainty sampling, ensemble disagreement (query by committee) and disagreement capped per prompt,
on the task world with its simulated annotators, in rounds of label, retrain, select (stage active).

    python experiments/active_learning.py            # 4 strategies x 3 seeds
    python experiments/active_learning.py --smoke    # micro sizes, 2 seeds

Every strategy at every seed is an ordinary `rlhf_jax.main` run of configs/ablations/active.py
through the sweep runner under OUT (--out, default runs/experiments/active_learning), one sweep
over `active.strategy` with SFT run once per seed and copied to the other strategies (`--share
sft`): at a seed, every strategy starts from the same SFT policy, the same pool of candidate
comparisons, the same first round of random labels and the same held-out sets, so the strategies'
differences are paired by seed. Budgets 64, 128, 256, 512 and 1024 labelled comparisons from a
pool of 1024 prompts x C(4, 2) = 6144; each round retrains an ensemble of 4 RMs from the SFT
backbone.

Measured per round: the ensemble mean's agreement with the gold order on held-out pairs
(accuracy_gold), with the annotators' labels of them (accuracy_annotator), and the gold reward
of best-of-16 of the SFT policy under the ensemble mean (bon_gold). Writes
experiments/results/active_learning.json and experiments/figures/active_learning.png (with
--smoke: OUT/active_learning_smoke.json and .png).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)

NAME = "active_learning"
STRATEGIES = ("random", "uncertainty", "disagreement", "diverse_disagreement")
METRICS = ("accuracy_gold", "accuracy_annotator", "bon_gold")
LABELS = {"accuracy_gold": "held-out pair accuracy (gold order)",
          "accuracy_annotator": "held-out pair accuracy (annotator labels)",
          "bon_gold": "gold reward of best-of-n of the SFT policy under the RM"}


def point(strategy: str) -> str:
    return f"strategy={strategy}"


def collect(sweep, outcome) -> dict:
    """Per strategy and budget: each metric's mean and interval over seeds, and its difference from
    random paired by seed; plus the mean over budgets (the area under the learning curve)."""
    rows = {}
    for s in STRATEGIES:
        per_seed = []
        for _, wd in T.run_dirs(sweep, outcome, point(s)):
            path = None if wd is None else wd / "active" / "rounds.jsonl"
            per_seed.append(T.read_jsonl(path) if path is not None and path.exists() else None)
        rows[s] = per_seed
    ref = next(r for rs in rows.values() for r in rs if r)
    budgets = [r["labelled"] for r in ref]
    out = {}
    for s, per_seed in rows.items():
        res = {"budgets": budgets}
        for m in METRICS:
            values = [[r[m] for r in rs] if rs else None for rs in per_seed]
            base = [[r[m] for r in rs] if rs else None for rs in rows["random"]]
            res[m] = T.curve_stats(budgets, values)
            res[f"{m}_minus_random"] = T.curve_stats(budgets, [
                None if a is None or b is None else [x - y for x, y in zip(a, b)] for a, b in zip(values, base)])
            res[f"{m}_mean_over_budgets_minus_random"] = T.stat([
                None if a is None or b is None else (sum(a) - sum(b)) / len(a) for a, b in zip(values, base)])
        res["selected_gold_gap"] = T.curve_stats(budgets[:-1], [
            [r["selected_gold_gap"] for r in rs[:-1]] if rs else None for rs in per_seed])
        res["round_seconds"] = T.stat([sum(r["round_seconds"] for r in rs) if rs else None for rs in per_seed])
        out[s] = res
    return out


def plot(result: dict, path: Path) -> None:
    """Top: held-out pair accuracy (gold order) and best-of-n gold against the labelled
    comparisons, mean and interval over seeds; bottom: each strategy minus random, paired by seed
    (the seeds' shared variation cancels there)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [(axes[0, 0], "accuracy_gold", LABELS["accuracy_gold"]), (axes[0, 1], "bon_gold", LABELS["bon_gold"]),
              (axes[1, 0], "accuracy_gold_minus_random", "pair accuracy (gold order) minus random, paired"),
              (axes[1, 1], "bon_gold_minus_random", "best-of-n gold minus random, paired")]
    for ax, key, label in panels:
        for i, (s, r) in enumerate(result["strategies"].items()):
            rows = r[key]
            x = [row["x"] for row in rows]
            ax.plot(x, [row["mean"] for row in rows], marker="o", ms=3, color=f"C{i}", label=s)
            lo = [row["ci_low"] if row["ci_low"] is not None else row["mean"] for row in rows]
            hi = [row["ci_high"] if row["ci_high"] is not None else row["mean"] for row in rows]
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.12, lw=0)
        if key.endswith("minus_random"):
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled comparisons")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    n = len(result["seeds"])
    fig.suptitle(f"Task world: active selection of comparisons vs random, an ensemble of 4 RMs retrained each "
                 f"round;\nmean and 95% t-interval over {n} seeds{' [SMOKE]' if result['smoke'] else ''}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    budgets = result["strategies"]["random"]["budgets"]
    lines = ["| strategy | " + " | ".join(f"acc. @ {b}" for b in budgets) + " | acc. minus random, mean over budgets "
             "(paired) | best-of-n gold @ " + str(budgets[-1]) + " | minus random (paired) |",
             "|---|" + "---|" * (len(budgets) + 3)]
    for s, r in result["strategies"].items():
        accs = " | ".join(T.fmt(row) for row in r["accuracy_gold"])
        lines.append(f"| {s} | {accs} | {T.fmt(r['accuracy_gold_mean_over_budgets_minus_random'])} | "
                     f"{T.fmt(r['bon_gold'][-1])} | {T.fmt(r['bon_gold_minus_random'][-1])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = T.parser(__doc__, NAME, seeds="0-2", smoke_seeds="0-1", smoke_help="micro sizes, 2 seeds").parse_args(argv)
    run = T.setup(args, NAME, argv=argv)
    t0 = time.perf_counter()
    config = "configs/ablations/active.py:random" + (",micro" if args.smoke else "")
    metrics = [f"active.{m}_final" for m in ("accuracy_gold", "bon_gold")]
    sweep, outcome = run.recorder.sweep("strategies", config, run.seeds, grid={"active.strategy": list(STRATEGIES)},
                                        share=("sft",), metrics=metrics)
    report = run.recorder.report()
    result = {"experiment": "active selection of comparisons vs random (task world, simulated annotators)",
              "smoke": args.smoke, "command": run.command, "seeds": run.seeds,
              "interval": "95% t-interval over seeds; differences paired by seed",
              "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1), **report,
              "strategies": collect(sweep, outcome)}
    return run.finish(result, table, plot)


if __name__ == "__main__":
    sys.exit(main())

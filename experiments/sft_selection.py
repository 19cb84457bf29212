"""Does choosing the SFT checkpoint by the reward model's score (InstructGPT) pick a better policy
than choosing it by validation loss? On the task world, SFT is trained long enough to overfit
(256 demonstrations, 32 epochs of 8 steps; the validation loss bottoms out about halfway) keeping
8 candidates, one every 4 epochs (`sft.candidates`); the RM is trained as usual (on rankings of the
final SFT policy's samples); stage sft_select then scores every candidate by validation loss, by
the RM's mean score on 4 samples for each of 256 held-out prompts, and by the gold reward of 4
other samples for the same prompts (the oracle).

    python experiments/sft_selection.py            # 5 seeds
    python experiments/sft_selection.py --smoke    # micro sizes, 2 seeds

Every seed is an ordinary `rlhf_jax.main` run (stages sft, rm, sft_select) of configs/instructgpt.py
through the sweep runner under OUT (--out, default runs/experiments/sft_selection). Measured per
seed: each candidate's val loss, RM score and gold; the gold of the candidate each criterion picks
(the val-loss minimum, the RM-score maximum, the last step, the gold maximum); and, paired by
seed, the gold of the RM-selected minus the gold of the val-loss-selected candidate (mean, 95%
t-interval, n). Writes experiments/results/sft_selection.json and experiments/figures/
sft_selection.png (with --smoke: OUT/sft_selection_smoke.json and .png).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)

NAME = "sft_selection"
CRITERIA = ("val_loss", "rm_score", "gold")
SETS = {"stages": "sft,rm,sft_select", "data.n_sft": 256, "sft.batch_size": 32, "sft.epochs": 32,
        "sft.candidates": 8, "sft_select.criterion": "rm_score", "sft_select.report": ",".join(CRITERIA),
        "sft_select.n_prompts": 256, "sft_select.n_samples": 4}
SMOKE_SETS = {"stages": "sft,rm,sft_select", "sft.epochs": 2, "sft.candidates": 3,
              "sft_select.report": ",".join(CRITERIA), "sft_select.n_prompts": 16}
# the picks compared: each criterion's choice and the last candidate (plain SFT, no selection)
PICKS = ("val_loss", "rm_score", "last", "gold")


def spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation of two lists (no ties in practice: continuous scores)."""
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def per_seed(summary: dict) -> dict:
    """One seed's candidates and the gold of each pick."""
    rows = summary["candidates"]
    by_step = {r["step"]: r for r in rows}
    picked = {k: summary["best_by"][k] for k in CRITERIA} | {"last": rows[-1]["step"]}
    return {"candidates": rows, "picked_step": picked, "gold_of": {k: by_step[s]["gold"] for k, s in picked.items()},
            "spearman_gold_vs_neg_val_loss": spearman([r["gold"] for r in rows], [-r["val_loss"] for r in rows]),
            "spearman_gold_vs_rm_score": spearman([r["gold"] for r in rows], [r["rm_score"] for r in rows])}


def collect(sweep, outcome) -> dict:
    seeds = {}
    for seed, wd in T.run_dirs(sweep, outcome, "base"):
        path = None if wd is None else wd / "sft_select" / "summary.json"
        seeds[seed] = per_seed(T.read_json(path)) if path is not None and path.exists() else None
    ok = [s for s in seeds.values() if s is not None]

    def each(fn):
        return [None if s is None else fn(s) for s in seeds.values()]

    out = {"per_seed": {str(k): v for k, v in seeds.items()},
           "gold_of": {k: T.stat(each(lambda s: s["gold_of"][k])) for k in PICKS},
           "rm_minus_val_loss": T.stat(each(lambda s: s["gold_of"]["rm_score"] - s["gold_of"]["val_loss"])),
           "rm_minus_last": T.stat(each(lambda s: s["gold_of"]["rm_score"] - s["gold_of"]["last"])),
           "val_loss_minus_last": T.stat(each(lambda s: s["gold_of"]["val_loss"] - s["gold_of"]["last"])),
           "oracle_minus_rm": T.stat(each(lambda s: s["gold_of"]["gold"] - s["gold_of"]["rm_score"])),
           "spearman_gold_vs_neg_val_loss": T.stat(each(lambda s: s["spearman_gold_vs_neg_val_loss"])),
           "spearman_gold_vs_rm_score": T.stat(each(lambda s: s["spearman_gold_vs_rm_score"]))}
    out["picked_steps"] = {k: [s["picked_step"][k] for s in ok] for k in PICKS}
    return out


def plot(result: dict, path: Path) -> None:
    """Gold reward of every candidate against its validation loss (left) and its RM score (right),
    one colour per seed, the candidates of a seed joined in step order; the val-loss pick circled,
    the RM pick squared."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for i, (seed, s) in enumerate(result["selection"]["per_seed"].items()):
        if s is None:
            continue
        rows = s["candidates"]
        for ax, key in zip(axes, ("val_loss", "rm_score")):
            x, y = [r[key] for r in rows], [r["gold"] for r in rows]
            ax.plot(x, y, "-o", color=f"C{i}", ms=4, lw=1, label=f"seed {seed}")
            for pick, marker in (("val_loss", "o"), ("rm_score", "s")):
                r = next(r for r in rows if r["step"] == s["picked_step"][pick])
                ax.plot([r[key]], [r["gold"]], marker, ms=13, mfc="none", mec=f"C{i}", mew=1.5)
            ax.annotate(f"{rows[0]['step']}", (x[0], y[0]), fontsize=7, color=f"C{i}")
    axes[0].set_xlabel("validation loss (nats per token)")
    axes[1].set_xlabel("mean RM score on held-out prompts")
    for ax in axes:
        ax.set_ylabel("gold reward (other samples of the same prompts)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    d = result["selection"]["rm_minus_val_loss"]
    fig.suptitle(f"Task world: {len(result['seeds'])} seeds x 8 SFT candidates (lines: training order, first step "
                 f"labelled); circle: val-loss pick, square: RM pick.\nGold of RM pick minus val-loss pick, paired: "
                 f"{T.fmt(d)}{' [SMOKE]' if result['smoke'] else ''}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    s = result["selection"]
    lines = ["| pick | gold reward of the picked candidate | steps picked (per seed) |", "|---|---|---|"]
    names = {"val_loss": "lowest validation loss", "rm_score": "highest RM score (InstructGPT)",
             "last": "last step (no selection)", "gold": "highest gold (oracle)"}
    for k in PICKS:
        lines.append(f"| {names[k]} | {T.fmt(s['gold_of'][k])} | {s['picked_steps'][k]} |")
    lines += ["", "| paired by seed | mean ± 95% t half-width (n) |", "|---|---|"]
    for k, label in (("rm_minus_val_loss", "gold: RM pick minus val-loss pick"),
                     ("rm_minus_last", "gold: RM pick minus last step"),
                     ("val_loss_minus_last", "gold: val-loss pick minus last step"),
                     ("oracle_minus_rm", "gold: oracle pick minus RM pick"),
                     ("spearman_gold_vs_neg_val_loss", "Spearman over candidates: gold vs -val loss"),
                     ("spearman_gold_vs_rm_score", "Spearman over candidates: gold vs RM score")):
        lines.append(f"| {label} | {T.fmt(s[k])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = T.parser(__doc__, NAME, seeds="0-4", smoke_seeds="0-1", smoke_help="micro sizes, 2 seeds").parse_args(argv)
    run = T.setup(args, NAME, argv=argv)
    t0 = time.perf_counter()
    config = "configs/instructgpt.py" + (":micro" if args.smoke else "")
    sweep, outcome = run.recorder.sweep("base", config, run.seeds, sets=SMOKE_SETS if args.smoke else SETS,
                                        metrics=["sft_select.chosen.gold", "sft_select.chosen_step"])
    report = run.recorder.report()
    result = {"experiment": "SFT checkpoint selected by the RM's score vs by validation loss (task world)",
              "smoke": args.smoke, "command": run.command, "seeds": run.seeds,
              "settings": SMOKE_SETS if args.smoke else SETS,
              "interval": "95% t-interval over seeds; differences paired by seed",
              "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1), **report,
              "selection": collect(sweep, outcome)}
    return run.finish(result, table, plot)


if __name__ == "__main__":
    sys.exit(main())

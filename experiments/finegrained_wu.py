"""Wu et al. 2023 ("Fine-grained human feedback"): fine-grained against holistic reward under
the same PPO budget, with the category models trained on the SFT policy's own samples
annotated by the task world's span oracle (as Wu et al. annotate their policy's outputs), plus
the QA-Feedback category models on the real span annotations.

    python experiments/finegrained_wu.py                  # full: 3 seeds, about 25 min on a 2-core CPU
    python experiments/finegrained_wu.py --smoke          # the test suite's size: micro, one seed, in-process

Three sweeps through the runner (each an ordinary run per seed, SFT and the holistic RM shared
between the two task-world arms of a seed): `holistic` (one preference RM), `fine_grained`
(per-word "wrong" and "extra" classifiers on policy samples + the RM at the EOS), both on the
hackable RM (trained on perturbed answers, the setting in which PPO over-optimises a single
RM), and `qa_feedback` (relevance per sub-sentence, factuality per sentence, stage fgrm only).
Writes experiments/results/finegrained_wu.json and experiments/figures/finegrained_wu.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_jax.sweep import Sweep, parse_seeds, run_sweep  # noqa: E402

PAPER = ("Wu et al. 2023: fine-grained rewards (per sub-sentence relevance, per sentence factuality, "
         "holistic completeness) beat a holistic preference RM on QA-Feedback in both automatic and human "
         "evaluation, at the same KL budget.")
ARMS = {"holistic": "holistic,hackable", "fine_grained": "fine_grained,hackable"}
METRICS = ("ppo.gold_reward_final", "ppo.gold_reward_sft", "ppo.kl_final", "ppo.win_rate_vs_sft",
           "fgrm.wrong_val_accuracy", "fgrm.wrong_val_majority_baseline", "fgrm.extra_val_accuracy",
           "fgrm.extra_val_majority_baseline")
QA_METRICS = ("fgrm.relevance_val_accuracy", "fgrm.relevance_val_majority_baseline",
              "fgrm.factuality_val_accuracy", "fgrm.factuality_val_majority_baseline")


def sweeps(out: Path, seeds: list[int], smoke: bool) -> dict[str, Sweep]:
    size = ",micro" if smoke else ""
    sets = {"fgrm.data": "policy"}
    if smoke:
        sets.update({"ppo.iterations": "4", "fgrm.n_train": "96", "fgrm.n_val": "32"})
    out_sets = {name: dict(sets) for name in ARMS}
    result = {name: Sweep(f"configs/ablations/fine_grained.py:{variant}{size}", {}, seeds, out_sets[name],
                          out / name) for name, variant in ARMS.items()}
    qa_sets = {"fgrm.n_train": "32", "fgrm.epochs": "1", "data.max_len": "128", "data.max_prompt_len": "96",
               "model.overrides.max_seq_len": "128"} if smoke else {}
    result["qa_feedback"] = Sweep("configs/ablations/fine_grained.py:qa_feedback", {}, seeds, qa_sets,
                                  out / "qa_feedback")
    return result


def rows(out: Path) -> dict[str, dict]:
    """{metric: the runner's row} of a finished sweep."""
    return {r["metric"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def curves(out: Path) -> dict:
    """Mean gold reward per PPO iteration over seeds (for the figure)."""
    per_seed = []
    for path in sorted(out.glob("*/seed_*/ppo/metrics.jsonl")) or sorted(out.glob("seed_*/ppo/metrics.jsonl")):
        rows_ = [json.loads(line) for line in path.read_text().splitlines()]
        per_seed.append({r["step"]: r["gold_reward"] for r in rows_ if "gold_reward" in r})
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    import numpy as np
    values = np.array([[s[t] for t in steps] for s in per_seed])
    return {"steps": steps, "mean": values.mean(0).tolist() if len(steps) else [],
            "std": values.std(0, ddof=1).tolist() if len(per_seed) > 1 and len(steps) else []}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in ARMS:
        c = result["curves"][name]
        if c["steps"]:
            axes[0].plot(c["steps"], c["mean"], label=name)
            if c["std"]:
                import numpy as np
                m, s = np.array(c["mean"]), np.array(c["std"])
                axes[0].fill_between(c["steps"], m - s, m + s, alpha=0.2)
    axes[0].set_xlabel("PPO iteration", fontsize=8)
    axes[0].set_title("gold reward of the rollouts (mean ± sd over seeds)", fontsize=9)
    axes[0].legend(fontsize=8)
    names = list(ARMS)
    finals = [result["points"][n]["ppo.gold_reward_final"] for n in names]
    axes[1].bar(names, [f["mean"] for f in finals],
                yerr=[f["half_width"] if f["half_width"] is not None else 0 for f in finals], capsize=5)
    sft = result["points"]["holistic"]["ppo.gold_reward_sft"]["mean"]
    axes[1].axhline(sft, ls="--", color="0.4", lw=0.8, label="SFT")
    axes[1].set_title("final gold reward (95% interval over seeds)", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--seeds", default="")
    p.add_argument("--out", default="", help="where the runs go (default runs/experiments/finegrained_wu[_smoke])")
    p.add_argument("--results", default="", help="results JSON (default experiments/results/finegrained_wu.json)")
    args = p.parse_args(argv)
    name = "finegrained_wu" + ("_smoke" if args.smoke else "")
    out = Path(args.out or ROOT / "runs" / "experiments" / name)
    seeds = parse_seeds(args.seeds or ("0" if args.smoke else "0-2"))
    commands, points = {}, {}
    for arm, sweep in sweeps(out, seeds, args.smoke).items():
        share = ("sft", "rm") if arm != "qa_feedback" else ()
        if arm == "fine_grained" and not (sweep.out / f"seed_{seeds[0]}").exists():
            for seed in seeds:  # share SFT and the RM with the holistic arm of the same seed
                src, dst = out / "holistic" / f"seed_{seed}", sweep.out / f"seed_{seed}"
                for stage in share:
                    if (src / stage / "summary.json").exists() and not (dst / stage).exists():
                        dst.mkdir(parents=True, exist_ok=True)
                        shutil.copytree(src / stage, dst / stage, ignore=shutil.ignore_patterns("checkpoints"))
        outcome = run_sweep(sweep, wandb=False, metrics=list(METRICS if arm != "qa_feedback" else QA_METRICS),
                            jobs=0 if args.smoke else 1)
        if outcome.failed:
            raise SystemExit(f"{outcome.failed} runs of {arm} failed; see {sweep.out}/sweep.json")
        commands[arm] = json.loads((sweep.out / "sweep.json").read_text())["command"]
        metrics = METRICS if arm != "qa_feedback" else QA_METRICS
        got = rows(sweep.out)
        points[arm] = {m: {k: got[m][k] for k in ("mean", "std", "n", "ci_low", "ci_high", "half_width", "values")}
                       for m in metrics if m in got}
    result = {"experiment": "Wu et al. 2023, fine-grained vs holistic reward", "paper": PAPER, "seeds": seeds,
              "smoke": args.smoke, "commands": commands, "points": points,
              "curves": {arm: curves(out / arm) for arm in ARMS},
              "setting": "task world, hackable holistic RM (perturbed answers), category models on SFT samples "
                         "annotated by the span oracle (fgrm.data=policy); QA-Feedback: random-init 2-layer decoder"}
    # the smoke mode writes beside its runs, never into the committed results and figures
    results = Path(args.results or (out / f"{name}.json" if args.smoke else ROOT / "experiments" / "results" /
                                    f"{name}.json"))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=1))
    figure = out / f"{name}.png" if args.smoke else ROOT / "experiments" / "figures" / f"{name}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    plot(result, figure)
    print(json.dumps({arm: {m: f"{v['mean']:.4g} ± {v['half_width']:.3g} (n={v['n']})"
                            if v["half_width"] is not None else v["mean"] for m, v in pts.items()}
                      for arm, pts in points.items()}, indent=1))
    return result


if __name__ == "__main__":
    main()

"""Wu et al. 2023 ("Fine-grained human feedback"): fine-grained against holistic reward under
the same PPO budget, with the category models trained on the SFT policy's own samples
annotated by the task world's span oracle (as Wu et al. annotate their policy's outputs), plus
the QA-Feedback category models on the real span annotations.

    python experiments/finegrained_wu.py            # full: 3 seeds (FULL: the tiny config, cut)
    python experiments/finegrained_wu.py --smoke    # micro, 2 seeds, in-process (the test)

Three sweeps through the runner (each an ordinary run per seed): `holistic` (SFT, one
preference RM, PPO on its score), `fine_grained` (the same SFT and RM, copied per seed from the
holistic sweep's run through the runner's `share_stages`, then per-word "wrong" and "extra"
classifiers on policy samples + the RM at the EOS), both on the hackable RM (trained on
perturbed answers, the setting in which PPO over-optimises a single RM), and `qa_feedback`
(relevance per sub-sentence, factuality per sentence, stage fgrm only; needs RLHF_JAX_DATA_DIR).
The two task-world arms of a seed therefore differ only in the reward PPO optimises: their
paired difference (same seed, same SFT and RM) is reported beside each arm's interval.
Writes experiments/results/finegrained_wu.json and experiments/figures/finegrained_wu.png.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)

NAME = "finegrained_wu"
PAPER = ("Wu et al. 2023: fine-grained rewards (per sub-sentence relevance, per sentence factuality, "
         "holistic completeness) beat a holistic preference RM on QA-Feedback in both automatic and human "
         "evaluation, at the same KL budget.")
ARMS = {"holistic": "holistic,hackable", "fine_grained": "fine_grained,hackable"}
SHARED = ("sft", "rm")  # run once per seed in the holistic arm, copied into the fine-grained arm
METRICS = ("ppo.gold_reward_final", "ppo.gold_reward_sft", "ppo.kl_final", "ppo.win_rate_vs_sft",
           "ppo.rm_score_final", "rm.val_accuracy",
           "fgrm.wrong_val_accuracy", "fgrm.wrong_val_majority_baseline", "fgrm.extra_val_accuracy",
           "fgrm.extra_val_majority_baseline")
QA_METRICS = ("fgrm.relevance_val_accuracy", "fgrm.relevance_val_majority_baseline",
              "fgrm.factuality_val_accuracy", "fgrm.factuality_val_majority_baseline")
# the task world's arms at the tiny config's sizes but one RM epoch instead of 3 (as the Gao and
# InfoRM figures), and the QA-Feedback models on 250 of the 1,000 training answers for 2 epochs
# instead of 4: cuts for a shared 2-core CPU (an RM epoch ran at 2 steps/s there), stated in the
# results JSON and experiments/README.md
FULL = {"variant": "", "sets": {"fgrm.data": "policy", "rm.epochs": "1"},
        "qa_sets": {"fgrm.n_train": "250", "fgrm.epochs": "2"}}
SMOKE = {"variant": ",micro", "sets": {"fgrm.data": "policy", "ppo.iterations": "4", "fgrm.n_train": "96",
                                       "fgrm.n_val": "32"},
         "qa_sets": {"fgrm.n_train": "32", "fgrm.epochs": "1", "data.max_len": "128", "data.max_prompt_len": "96",
                     "model.overrides.max_seq_len": "128"}}


def run_all(rec: T.Recorder, seeds: list[int], spec: dict, parts: set[str]) -> dict:
    """{arm: (sweep, outcome)}: holistic first, then fine_grained with its SFT and RM copied from
    the holistic run of the same seed, then QA-Feedback."""
    out = {}
    config = "configs/ablations/fine_grained.py:{}" + spec["variant"]
    if parts & set(ARMS):
        out["holistic"] = rec.sweep("holistic", config.format(ARMS["holistic"]), seeds, sets=spec["sets"],
                                    metrics=list(METRICS), strict=True)
    if "fine_grained" in parts:
        out["fine_grained"] = rec.sweep("fine_grained", config.format(ARMS["fine_grained"]), seeds,
                                        sets=spec["sets"], metrics=list(METRICS), share=SHARED,
                                        share_from=(out["holistic"][0], SHARED), strict=True)
    if "qa_feedback" in parts:
        out["qa_feedback"] = rec.sweep("qa_feedback", "configs/ablations/fine_grained.py:qa_feedback", seeds,
                                       sets=spec["qa_sets"], metrics=list(QA_METRICS), strict=True)
    return out


def arm_curves(sweep) -> dict:
    """Per-iteration rollout gold reward of each seed's PPO run, and its statistics over seeds."""
    per_seed = []
    for _, wd in sorted(T.workdirs(sweep)["base"].items()):
        log = [r for r in T.read_jsonl(wd / "ppo" / "metrics.jsonl") if "gold_reward" in r]
        per_seed.append({int(r["step"]): r["gold_reward"] for r in log})
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    return {"steps": steps, "gold": T.curve_stats(steps, [[s[t] for t in steps] for s in per_seed])}


def arm_points(outcome, metrics) -> dict:
    return {m: T.row_stat(outcome, "base", m) for m in metrics if T.row_stat(outcome, "base", m)["n"]}


def paired(points: dict, metric: str) -> dict:
    """fine_grained minus holistic, per seed (same SFT and RM), over seeds."""
    a, b = points["fine_grained"][metric]["values"], points["holistic"][metric]["values"]
    return T.stat([x - y if x is not None and y is not None else None for x, y in zip(a, b)])


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, arm in enumerate(ARMS):
        c = result["curves"][arm]
        if not c["steps"]:
            continue
        m = np.array([s["mean"] for s in c["gold"]], float)
        lo = np.array([np.nan if s["ci_low"] is None else s["ci_low"] for s in c["gold"]], float)
        hi = np.array([np.nan if s["ci_high"] is None else s["ci_high"] for s in c["gold"]], float)
        axes[0].plot(c["steps"], m, color=f"C{i}", label=arm)
        axes[0].fill_between(c["steps"], lo, hi, color=f"C{i}", alpha=0.2, lw=0)
    axes[0].set_xlabel("PPO iteration", fontsize=8)
    axes[0].set_title("gold reward of the rollouts (mean, 95% t-interval over seeds)", fontsize=9)
    axes[0].legend(fontsize=8)
    names = [n for n in ARMS if n in result["points"]]
    finals = [result["points"][n]["ppo.gold_reward_final"] for n in names]
    axes[1].bar(names, [f["mean"] for f in finals], color=[f"C{i}" for i in range(len(names))],
                yerr=[f["half_width"] if f["half_width"] is not None else 0 for f in finals], capsize=5)
    sft = result["points"]["holistic"]["ppo.gold_reward_sft"]["mean"]
    axes[1].axhline(sft, ls="--", color="0.4", lw=0.8, label="SFT policy")
    axes[1].set_title("final gold reward, held-out prompts (95% t-interval)", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Wu et al. on the task world, hackable RM: fine-grained vs holistic reward, "
                 f"{len(result['seeds'])} seeds{' [SMOKE]' if result['smoke'] else ''}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = T.parser(__doc__, NAME, seeds="0-2", smoke_seeds="0-1", smoke_help="micro config, 2 seeds, 4 PPO iterations")
    ap.add_argument("--parts", default="holistic,fine_grained,qa_feedback",
                    help="subset of holistic,fine_grained,qa_feedback (fine_grained needs holistic)")
    args = ap.parse_args(argv)
    run = T.setup(args, NAME, argv=argv)
    parts = set(args.parts.split(","))
    if "fine_grained" in parts:
        parts.add("holistic")
    spec = SMOKE if args.smoke else FULL
    t0 = time.perf_counter()
    sweeps = run_all(run.recorder, run.seeds, spec, parts)
    points = {arm: arm_points(oc, METRICS if arm in ARMS else QA_METRICS) for arm, (_, oc) in sweeps.items()}
    result = {"name": NAME, "experiment": "Wu et al. 2023, fine-grained vs holistic reward", "paper": PAPER,
              "smoke": args.smoke, "seeds": run.seeds, "command": run.command, "spec": spec, "points": points,
              "curves": {arm: arm_curves(sweeps[arm][0]) for arm in ARMS if arm in sweeps},
              "interval": "95% t-interval over seeds (rlhf_jax.sweep.results.aggregate)",
              "setting": "task world, hackable holistic RM (perturbed answers), category models on SFT samples "
                         "annotated by the span oracle (fgrm.data=policy); the fine-grained arm's SFT and RM are the "
                         "holistic arm's of the same seed (copied); QA-Feedback: random-init 2-layer decoder"}
    if {"holistic", "fine_grained"} <= set(sweeps):
        result["fine_grained_minus_holistic_paired"] = {
            m: paired(points, m) for m in ("ppo.gold_reward_final", "ppo.kl_final", "ppo.win_rate_vs_sft")}
    result.update(run.recorder.report(), total_wall_s=round(time.perf_counter() - t0, 1))
    T.write_json(run.json_path, result)
    if {"holistic", "fine_grained"} <= set(sweeps):
        plot(result, run.png_path)
    print(f"[{NAME}] wrote {run.json_path} and {run.png_path} in {result['total_wall_s']:.0f}s")
    for arm, pts in points.items():
        print(f"  {arm}: " + ", ".join(f"{m} {T.fmt(v)}" for m, v in pts.items()))
    for m, v in result.get("fine_grained_minus_holistic_paired", {}).items():
        print(f"  fine_grained - holistic (paired) {m}: {T.fmt(v)}")
    return 1 if run.recorder.failed else 0


if __name__ == "__main__":
    sys.exit(main())

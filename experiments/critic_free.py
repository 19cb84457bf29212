"""Does InstructGPT's PPO with a value model still beat the critic-free methods at equal compute?
PPO (GAE), GRPO, Dr. GRPO, RLOO, REINFORCE++, ReMax, DAPO and GSPO (the `ppo` stage with each
advantage estimator and policy loss of configs/critic_free.py), beside offline DPO, online DPO
and KTO, on the task world: gold reward against KL to the SFT policy and against wall time.

    python experiments/critic_free.py                      # 11 methods x 3 seeds
    python experiments/critic_free.py --methods ppo,grpo   # some of them (resumes the rest later)
    python experiments/critic_free.py --smoke              # micro sizes, 2 seeds

Every method at every seed is an ordinary `rlhf_jax.main` run through the sweep runner under OUT
(--out, default runs/experiments/critic_free). SFT and the RM run once per seed in OUT/base and
are copied into each method's workdir before it starts (the runner's `share_stages`), so every
method starts from the same SFT policy and optimises the same RM.

Equal compute: the eight policy-gradient methods sample ppo.batch_size = 64 responses per
iteration (64 / G prompts, G = 4 for GRPO, Dr. GRPO, RLOO, DAPO and GSPO) for 150 iterations and
take ppo.epochs x ppo.minibatches = 8 gradient steps on each batch; ReMax also decodes one greedy
response per prompt (64 more per iteration), DAPO samples 2x and keeps half. Online DPO
samples 2 responses to each of 32 prompts per iteration (64) for 150 iterations with the same
8 gradient steps. Offline DPO and KTO sample nothing: they train on the rankings the RM sees
(KTO on them unpaired), for their configs' steps.

Writes experiments/results/critic_free.json and experiments/figures/critic_free.png (with
--smoke: OUT/critic_free_smoke.json and .png).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)

NAME = "critic_free"
RL = ("ppo", "grpo", "dr_grpo", "rloo", "reinforce_pp", "remax", "dapo", "gspo")
# name: (config, the stage holding the result, stages copied from base, sets)
ARMS = {m: (f"configs/critic_free.py:{m}", "ppo", ("sft", "rm"), {}) for m in RL}
ARMS["dpo"] = ("configs/dpo.py:dpo", "dpo", ("sft",), {})
ARMS["online_dpo"] = ("configs/dpo.py:online", "online_dpo", ("sft", "rm"), {})
ARMS["kto"] = ("configs/dpo.py:kto", "kto", ("sft",), {})
# what each samples per iteration and whether it trains a value model (the table's columns)
COMPUTE = {"ppo": ("64 (64 prompts)", True), "grpo": ("64 (16 x 4)", False), "dr_grpo": ("64 (16 x 4)", False),
           "rloo": ("64 (16 x 4)", False), "reinforce_pp": ("64 (64 prompts)", False),
           "remax": ("64 + 64 greedy", False), "dapo": ("128 (32 x 4), 64 kept", False),
           "gspo": ("64 (16 x 4)", False), "dpo": ("0 (offline rankings)", False),
           "online_dpo": ("64 (32 x 2)", False), "kto": ("0 (offline, unpaired)", False)}
METRICS = ("gold_reward_final", "gold_reward_sft", "kl_final", "win_rate_vs_sft", "response_length_final",
           "wall_seconds")
WINDOW = 10  # iterations per point of the training curves


def parser():
    p = T.parser(__doc__, NAME, seeds="0-2", smoke_seeds="0-1", smoke_help="micro sizes, 2 seeds")
    p.add_argument("--methods", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    return p


def run_all(run, methods: list[str], smoke: bool):
    rec, seeds = run.recorder, run.seeds
    micro = ",micro" if smoke else ""
    base = rec.build("base", f"configs/critic_free.py:ppo{micro}", seeds, sets={"stages": "sft,rm"})
    _, base_outcome = rec.run(base)
    outcomes, sweeps = {}, {}
    for m in methods:
        config, _, shared, sets = ARMS[m]
        sweep = rec.build(m, config + micro, seeds, sets=sets)
        sweeps[m], outcomes[m] = rec.run(sweep, share=shared, share_from=(base, shared))
    return base_outcome, outcomes, sweeps


def curve(workdirs: list[Path], wall: list[float | None]) -> dict | None:
    """The RL methods' training rollouts: gold reward and KL per WINDOW iterations, mean over
    seeds; the time axis spreads each run's stage wall seconds evenly over its iterations."""
    per_seed, times = [], []
    for wd, seconds in zip(workdirs, wall):
        path = wd / "ppo" / "metrics.jsonl"
        if not path.exists() or seconds is None:
            continue
        rows = [r for r in T.read_jsonl(path) if "gold_reward" in r and "kl" in r]
        chunks = [rows[i:i + WINDOW] for i in range(0, len(rows), WINDOW)]
        per_seed.append([(c[-1]["step"], sum(r["gold_reward"] for r in c) / len(c), sum(r["kl"] for r in c) / len(c))
                         for c in chunks])
        times.append(seconds / max(rows[-1]["step"], 1))
    if not per_seed:
        return None
    n = min(len(s) for s in per_seed)
    per_s = sum(times) / len(times)
    return {"step": [per_seed[0][i][0] for i in range(n)], "seconds": [per_seed[0][i][0] * per_s for i in range(n)],
            "gold": [T.stat([s[i][1] for s in per_seed]) for i in range(n)],
            "kl": [T.stat([s[i][2] for s in per_seed]) for i in range(n)]}


def collect(outcomes: dict, sweeps: dict) -> dict:
    rows = {}
    for m, outcome in outcomes.items():
        stage = ARMS[m][1]
        stats = {k: T.row_stat(outcome, "base", f"{stage}.{k}") for k in METRICS}
        dirs = T.run_dirs(sweeps[m], outcome, "base")
        c = curve([d for _, d in dirs if d is not None], stats["wall_seconds"]["values"]) if stage == "ppo" else None
        rows[m] = {"stage": stage, "samples_per_iteration": COMPUTE[m][0], "value_model": COMPUTE[m][1],
                   **stats, "curve": c}
    if "ppo" in rows:  # each method minus PPO, paired by seed
        ppo = rows["ppo"]["gold_reward_final"]["values"]
        for m, r in rows.items():
            mine = r["gold_reward_final"]["values"]
            r["gold_minus_ppo"] = T.stat([None if a is None or b is None else a - b for a, b in zip(mine, ppo)])
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(14, 5.5))
    cmap = plt.get_cmap("tab20")
    sft = None
    for i, (m, r) in enumerate(result["methods"].items()):
        g, k = r["gold_reward_final"], r["kl_final"]
        if g["mean"] is None:
            continue
        color, marker = cmap(i), "o" if r["stage"] == "ppo" else "s"
        ax.errorbar([k["mean"] or 0.0], [g["mean"]], xerr=[k["half_width"] or 0.0], yerr=[g["half_width"] or 0.0],
                    color=color, marker=marker, capsize=3, label=m)
        sft = sft or r["gold_reward_sft"]
        if r["curve"]:
            c = r["curve"]
            tx.plot(c["seconds"], [s["mean"] for s in c["gold"]], color=color, label=m)
        w = r["wall_seconds"]
        if w["mean"] is not None:
            tx.errorbar([w["mean"]], [g["mean"]], xerr=[w["half_width"] or 0.0], yerr=[g["half_width"] or 0.0],
                        color=color, marker=marker, capsize=3, ls="none")
    if sft and sft["mean"] is not None:
        for a in (ax, tx):
            a.axhline(sft["mean"], color="gray", ls=":", label="SFT policy")
    n = len(result["seeds"])
    ax.set_title(f"final policies on held-out prompts: mean over {n} seeds, 95% t-intervals", fontsize=9)
    ax.set_xlabel("mean sequence KL to the SFT policy (nats)")
    tx.set_title(f"lines: training rollouts ({WINDOW}-iteration windows, seed mean);\nmarkers: final policy "
                 "at the stage's wall time (otherwise idle CPU)", fontsize=9)
    tx.set_xlabel("wall seconds of the stage (2-core CPU)")
    for a in (ax, tx):
        a.set_ylabel("gold reward")
        a.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Task world: PPO with a value model vs critic-free methods, DPO, online DPO and KTO", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    lines = ["| method | responses sampled / iteration | value model | gold reward (SFT -> final) | KL to SFT | "
             "gold minus PPO (paired) | stage wall s |", "|---|---|---|---|---|---|---|"]
    for m, r in result["methods"].items():
        lines.append(f"| {m} | {r['samples_per_iteration']} | {'yes' if r['value_model'] else 'no'} | "
                     f"{T.fmt(r['gold_reward_sft'])} -> {T.fmt(r['gold_reward_final'])} | {T.fmt(r['kl_final'], 2)} | "
                     f"{T.fmt(r.get('gold_minus_ppo'))} | {T.fmt(r['wall_seconds'], 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ARMS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; valid: {', '.join(ARMS)}")
    run = T.setup(args, NAME, argv=argv)
    t0 = time.perf_counter()
    base_outcome, outcomes, sweeps = run_all(run, methods, args.smoke)
    report = run.recorder.report()
    result = {"experiment": "PPO with a value model vs critic-free policy optimisation, DPO, online DPO, KTO "
                            "(task world, equal sampled responses and gradient steps)",
              "smoke": args.smoke, "command": run.command, "seeds": run.seeds,
              "interval": "95% t-interval over seeds", "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
              **report, "methods": collect(outcomes, sweeps)}
    return run.finish(result, table, plot)


if __name__ == "__main__":
    sys.exit(main())

"""The offline default (`configs/instructgpt.py`) over seeds, and one seed under a second CPU ISA.

    python experiments/default_seeds.py --out runs/default_seeds --seeds 0-4 --isa AVX2,SSE4_2

Runs the default config at each seed through the sweep runner (one run at a time, one host
device each, as `python -m rlhf_jax.main --config configs/instructgpt.py --workdir DIR
--config.seed=S`), then the first seed again with XLA_FLAGS=--xla_cpu_max_isa=ISA for each
ISA, and writes experiments/results/default_seeds.json: the headline metrics per seed, their
mean, 95% t-interval over seeds and n, and the first seed's numbers under each instruction
set. Run again, it reuses finished runs (the sweep runner resumes).

Why: a single PPO run of the default differs in the last bit between CPUs (XLA emits
different float code for AVX2 and AVX-512) and the difference grows over 150 iterations,
so one run's numbers are one draw; the seeds' interval is the default's result. The
interval a run's own summary.json carries (`ppo.intervals`) covers only the resampling of
its evaluation prompts, not training randomness.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # rlhf_jax from this checkout

from rlhf_jax import hostenv  # noqa: E402
from rlhf_jax.sweep import Sweep, aggregate, expand, numeric_metrics, parse_seeds, run_sweep  # noqa: E402

CONFIG = "configs/instructgpt.py"
METRICS = {  # summary.json field -> what it is
    "ppo.gold_reward_final": "final policy's mean gold reward on the held-out prompts",
    "ppo.gold_reward_sft": "SFT policy's mean gold reward on the same prompts",
    "ppo.kl_final": "final policy's mean sequence KL to the SFT policy (nats)",
    "ppo.win_rate_vs_sft": "final policy's win rate over SFT, gold judge (tie = 1/2)",
    "rm.val_accuracy": "reward model's held-out pair accuracy",
    "sft.val_loss": "SFT held-out demonstration loss (nats/token)",
}


def _metrics(workdir: Path) -> dict[str, float]:
    flat = numeric_metrics(json.loads((workdir / "summary.json").read_text()))
    return {m: flat.get(m) for m in METRICS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/default_seeds", help="the runs' directory")
    p.add_argument("--seeds", default="0-4", help="config.seed values (default 0-4)")
    p.add_argument("--isa", default="AVX2,SSE4_2", help="XLA's --xla_cpu_max_isa values for reruns of the first "
                                                         "seed, comma-separated ('' for none)")
    p.add_argument("--json", default=str(ROOT / "experiments/results/default_seeds.json"))
    args = p.parse_args(argv)
    out, seeds = Path(args.out), parse_seeds(args.seeds)

    t0 = time.perf_counter()
    sweep = Sweep(CONFIG, {}, seeds, {}, out / "default_isa")
    point = expand(sweep)[0].point.name  # no grid: one point
    outcome = run_sweep(sweep, jobs=1, wandb=False)
    if outcome.failed or outcome.interrupted:
        return 1
    per_seed = {s: _metrics(out / "default_isa" / point / f"seed_{s}") for s in seeds}
    result = {
        "command": " ".join(["python experiments/default_seeds.py", *(argv if argv is not None else sys.argv[1:])]),
        "config": CONFIG, "metrics": METRICS, "cpu": hostenv.label(hostenv.cpu_info()), "jaxlib": _jaxlib(),
        "interval": "95% t-interval of the mean over seeds (scipy t quantile, n-1 degrees of freedom)",
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "over_seeds": {m: aggregate([per_seed[s][m] for s in seeds], "t") for m in METRICS},
    }
    first = json.loads((out / "default_isa" / point / f"seed_{seeds[0]}" / "summary.json").read_text())["ppo"]
    result["first_seed_prompt_interval"] = {
        "ppo.gold_reward_final": first["intervals"]["gold_reward_final"],
        "note": "the first seed's own summary interval: a bootstrap over its evaluation prompts, not over training; "
                "compare per_seed"}
    isas = [isa for isa in args.isa.split(",") if isa]
    if isas:
        result["first_seed_by_isa"] = {"seed": seeds[0], "default": per_seed[seeds[0]],
                                       "note": "the same command with XLA_FLAGS=--xla_cpu_max_isa=ISA: same code "
                                               "and seed, different float code where XLA emits it for that ISA"}
    base_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_max_isa")]
    for isa in isas:
        os.environ["XLA_FLAGS"] = " ".join([*base_flags, f"--xla_cpu_max_isa={isa}"])  # the children inherit it
        isa_out = out / f"isa_{isa}"
        outcome = run_sweep(Sweep(CONFIG, {}, seeds[:1], {}, isa_out), jobs=1, wandb=False)
        if outcome.failed or outcome.interrupted:
            return 1
        result["first_seed_by_isa"][isa] = _metrics(isa_out / point / f"seed_{seeds[0]}")
    os.environ["XLA_FLAGS"] = " ".join(base_flags)
    result["wall_seconds_this_invocation"] = round(time.perf_counter() - t0)  # finished runs are reused
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for m in METRICS:
        a = result["over_seeds"][m]
        line = f"{m:24s} mean {a['mean']:.4f}  95% t [{a['ci_low']:.4f}, {a['ci_high']:.4f}]  n={a['n']}"
        if isas:
            r = result["first_seed_by_isa"]
            line += f"   seed {seeds[0]}: default {r['default'][m]:.4f}" + "".join(
                f", {isa} {r[isa][m]:.4f}" for isa in isas)
        print(line)
    print(f"wrote {args.json}")
    return 0


def _jaxlib() -> str:
    import jaxlib
    return jaxlib.__version__


if __name__ == "__main__":
    sys.exit(main())

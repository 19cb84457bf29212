"""Markdown tables of the over-optimisation results JSONs (as in experiments/README.md).

    python experiments/expb_tables.py [experiments/results]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expb_common import fmt  # noqa: E402


def num(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def seedwise(fit: dict) -> str:
    """Each seed's d* (— where its fit has no interior peak, beta <= 0)."""
    return ", ".join("—" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0e}") for v in fit["per_seed"]["d_star"]["values"])


def gao(res: dict) -> str:
    lines = ["| RM d_model (≈params) | rankings | RM held-out acc. | gold, SFT | best-of-n gold peak: n (d) | gold at peak | "
             "gold, n = 256 | bon fit α, β (R²) | bon d* pooled [per seed] | "
             "PPO fit α, β (R²) | PPO d* pooled [per seed] | PPO gold final (held-out) | PPO KL final |",
             "|" + "---|" * 13]
    for p in sorted(res["points"], key=lambda p: (p["n_rankings"], p["rm_d_model"])):
        f, bf, rf = p["final"], p["bon_fit"], p["rl_fit"]
        pk = p["bon"]["empirical_peak"]
        lines.append(
            f"| {p['rm_d_model']} ({p['rm_params'] / 1e3:.0f}k) | {p['n_rankings']} | {fmt(f['rm_val_accuracy'])} | "
            f"{fmt(f['gold_sft'])} | {pk['n']} ({pk['d']:.2f}) | {fmt(pk['gold'])} | {fmt(f['bon_gold_at_N'])} | "
            f"{num(bf['pooled']['alpha'])}, {num(bf['pooled']['beta'])} ({num(bf['pooled']['r2'], 2)}) | "
            f"{num(bf['pooled']['d_star'], 2)} [{seedwise(bf)}] | "
            f"{num(rf['pooled']['alpha'])}, {num(rf['pooled']['beta'])} ({num(rf['pooled']['r2'], 2)}) | "
            f"{num(rf['pooled']['d_star'], 2)} [{seedwise(rf)}] | "
            f"{fmt(f['ppo_gold_final'])} | {fmt(f['ppo_kl_final'], 1)} |")
    return "\n".join(lines)


def inform(res: dict) -> str:
    lines = ["| RM | RM held-out acc. | gold SFT → final (held-out) | final − SFT | final − standard (paired) | KL final | "
             "win rate vs SFT | rollout gold: last 15 it. − peak (peak it.) | CSI first → last tracked | "
             "corr(CSI, gold) over it. |", "|" + "---|" * 10]
    for p in res["points"]:
        f, c = p["final"], p["curves"]
        csi = (f"{fmt(c['csi'][0], 1)} → {fmt(c['csi'][-1], 1)}" if "csi" in c else "—")
        lines.append(
            f"| {p['label']} | {fmt(f['rm_val_accuracy'])} | {fmt(f['gold_reward_sft'])} → {fmt(f['gold_reward_final'])} | "
            f"{fmt(f['gold_gain_vs_sft'])} | {fmt(f.get('gold_final_minus_standard_paired'))} | {fmt(f['kl_final'], 2)} | "
            f"{fmt(f['win_rate_vs_sft'])} | {fmt(c['gold_last_minus_peak'])} ({c['peak']['iteration']}) | {csi} | "
            f"{fmt(c.get('corr_csi_gold'), 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results")
    for name, fn in (("gao_overoptimization", gao), ("inform_overoptimization", inform)):
        path = d / f"{name}.json"
        if path.exists():
            res = json.loads(path.read_text())
            print(f"### {name} ({res['mode']}, seeds {res['seeds']}, {res['wall_seconds']:.0f} s)\n")
            print(fn(res))
            print("\nchecks:", json.dumps(res["checks"], indent=1), "\n")

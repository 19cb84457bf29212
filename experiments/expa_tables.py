"""Markdown tables of experiments/results/{instructgpt,coste_ensembles}.json (mean ± 95% t half-width (n seeds)),
as in experiments/README.md.

    python experiments/expa_tables.py [--results DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expa_common import REPO, fmt  # noqa: E402


def instructgpt(r: dict) -> str:
    out = []
    a = r.get("k_budget")
    if a:
        out += [f"A. Fixed budget of {a['budget_responses']} ranked responses (n_rankings = budget / K), RM on ranked "
                f"SFT samples, {a['rm_epochs']} epochs, batch {a['rm_batch_size']} prompts:", "",
                "| K | rankings | train pairs | RM steps | held-out acc., fixed K = 4 set | held-out loss, fixed K = 4 set "
                "| held-out acc., own-K set | slots filled with perturbations |", "|---|---|---|---|---|---|---|---|"]
        for p in a["points"]:
            out.append(f"| {p['k']} | {p['n_rankings']} | {p['train_pairs']} | {p['rm_steps']:.0f} | "
                       f"{fmt(p['val_accuracy_fixed_k4'])} | {fmt(p['val_loss_fixed_k4'])} | "
                       f"{fmt(p['val_accuracy_own_k'])} | {fmt(p['fill_fraction'], 2)} |")
        out.append("")
    b = r.get("kwise_vs_shuffled")
    if b:
        out += [f"B. K = {b['k']}, {b['n_rankings']} rankings ({b['train_pairs']} pairs), held-out set "
                f"{b['n_val_rankings']} rankings of K = {b['k']}:", "",
                "| arm | batch | epochs | RM steps | train acc. | held-out acc. | train loss | held-out loss |",
                "|---|---|---|---|---|---|---|---|"]
        for p in b["points"]:
            out.append(f"| {p['arm']} | {p['batch_size']} | {p['epochs']} | {p['rm_steps']:.0f} | "
                       f"{fmt(p['train_accuracy'])} | {fmt(p['heldout_accuracy'])} | {fmt(p['train_loss'])} | "
                       f"{fmt(p['heldout_loss'])} |")
        out.append("")
    c = r.get("ptx")
    if c:
        out += [f"C. PPO-ptx (ptx batch {c['ptx_batch_size']} demonstrations per iteration), sft and rm shared per "
                f"seed:", "",
                "| ptx_coef | win rate vs SFT (gold) | alignment tax (nats/token) | held-out NLL SFT -> final | "
                "gold SFT -> final | KL | RM score final |", "|---|---|---|---|---|---|---|"]
        for p in c["points"]:
            out.append(f"| {p['ptx_coef']:g} | {fmt(p['win_rate_vs_sft'])} | {fmt(p['alignment_tax'])} | "
                       f"{fmt(p['heldout_nll_sft'])} -> {fmt(p['heldout_nll_final'])} | "
                       f"{fmt(p['gold_reward_sft'])} -> {fmt(p['gold_reward_final'])} | {fmt(p['kl_final'], 2)} | "
                       f"{fmt(p['rm_score_final'])} |")
        out.append("")
    return "\n".join(out)


def coste(r: dict) -> str:
    labels = {"single": "single RM", "mean": "mean of 5", "min": "WCO (min)", "uwo": "UWO"}
    out = []
    for level in r["noise_levels"]:
        m = level["measured"]
        out += [f"{level['label']}: measured {m['flipped_share_of_untied']:.1%} of the {m['pairs']} training pairs "
                f"with different gold rewards flipped; {m['tied_share']:.1%} tied (labelled in list order).", "",
                "| RM | RM held-out acc. | BoN gold n=1 | BoN gold peak (n) | BoN gold n=N | PPO gold SFT -> final | "
                "PPO KL | PPO win rate vs SFT |", "|---|---|---|---|---|---|---|---|"]
        for name, res in r["results"][level["tag"]].items():
            s = res["summary"]
            n_max = res["bon_gold"][-1]["x"] if res["bon_gold"] else "N"
            out.append(f"| {labels[name]} | {fmt(s['rm.val_accuracy'])} | {fmt(s['bon.gold_best_of_1'])} | "
                       f"{fmt(s['bon.gold_peak'])} ({fmt(s['bon.gold_peak_n'], 0)}) | "
                       f"{fmt(res['bon_gold'][-1]) if res['bon_gold'] else '—'} (n={n_max}) | "
                       f"{fmt(s['ppo.gold_reward_sft'])} -> {fmt(s['ppo.gold_reward_final'])} | "
                       f"{fmt(s['ppo.kl_final'], 2)} | {fmt(s['ppo.win_rate_vs_sft'])} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(REPO / "experiments" / "results"))
    args = ap.parse_args()
    d = Path(args.results)
    for name, render in (("instructgpt", instructgpt), ("coste_ensembles", coste)):
        for path in (d / f"{name}.json", d / f"{name}_smoke.json"):
            if path.exists():
                print(f"## {path.name}\n")
                print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

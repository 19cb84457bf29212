"""Markdown tables of the figure scripts' results JSONs (experiments/results/*.json), as in
experiments/README.md: cells are mean ± 95% t half-width (n seeds).

    python experiments/tables.py [--results DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fmt(s: dict | None, digits: int = 3) -> str:
    """'mean ± half-width (n=N)' (experiments/toolkit.py's `fmt`, without importing JAX here)."""
    if not s or s.get("mean") is None:
        return "—"
    if s.get("half_width") is None:
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    return f"{s['mean']:.{digits}f} ± {s['half_width']:.{digits}f} (n={s['n']})"


def num(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


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
    if c and "alignment_tax_pretrain" in c["points"][0]:
        out += [f"C. PPO-ptx on the task world's pretraining text (ptx batch {c['ptx_batch_size']} documents per "
                f"iteration), sft and rm shared per seed; alignment tax = held-out NLL per token, final - SFT:", "",
                "| ptx_coef | win rate vs SFT (gold) | tax, held-out pretraining text | pretraining NLL SFT -> final | "
                "tax, held-out demonstrations | gold SFT -> final | KL |", "|---|---|---|---|---|---|---|"]
        for p in c["points"]:
            out.append(f"| {p['ptx_coef']:g} | {fmt(p['win_rate_vs_sft'])} | {fmt(p['alignment_tax_pretrain'])} | "
                       f"{fmt(p['pretrain_nll_sft'])} -> {fmt(p['pretrain_nll_final'])} | "
                       f"{fmt(p['alignment_tax_demonstrations'])} | "
                       f"{fmt(p['gold_reward_sft'])} -> {fmt(p['gold_reward_final'])} | {fmt(p['kl_final'], 2)} |")
        out.append("")
    elif c:  # the earlier ptx part: ptx trained on demonstrations, the tax measured on demonstrations
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


def finegrained_wu(r: dict) -> str:
    out = ["| arm | RM held-out acc. | gold SFT → final (held-out) | KL final | win rate vs SFT | "
           "'wrong' model acc. (majority) | 'extra' model acc. (majority) |", "|" + "---|" * 7]
    for arm in ("holistic", "fine_grained"):
        p = r["points"].get(arm)
        if not p:
            continue
        cat = lambda c: (f"{fmt(p.get(f'fgrm.{c}_val_accuracy'))} ({fmt(p.get(f'fgrm.{c}_val_majority_baseline'))})"
                         if p.get(f"fgrm.{c}_val_accuracy") else "—")
        out.append(f"| {arm} | {fmt(p.get('rm.val_accuracy'))} | {fmt(p.get('ppo.gold_reward_sft'))} → "
                   f"{fmt(p.get('ppo.gold_reward_final'))} | {fmt(p.get('ppo.kl_final'), 2)} | "
                   f"{fmt(p.get('ppo.win_rate_vs_sft'))} | {cat('wrong')} | {cat('extra')} |")
    d = r.get("fine_grained_minus_holistic_paired")
    if d:
        out += ["", "fine_grained − holistic, paired by seed (same SFT and RM): "
                + "; ".join(f"{m} {fmt(v)}" for m, v in d.items())]
    qa = r["points"].get("qa_feedback")
    if qa:
        out += ["", "QA-Feedback category models (held-out segment accuracy, majority baseline): "
                + "; ".join(f"{c} {fmt(qa.get(f'fgrm.{c}_val_accuracy'))} "
                            f"({fmt(qa.get(f'fgrm.{c}_val_majority_baseline'))})" for c in ("relevance", "factuality"))]
    return "\n".join(out) + "\n"


RENDER = {"instructgpt": instructgpt, "coste_ensembles": coste, "gao_overoptimization": gao,
          "inform_overoptimization": inform, "inform_overoptimization_rm3ep": inform,
          "finegrained_wu": finegrained_wu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(REPO / "experiments" / "results"))
    args = ap.parse_args()
    d = Path(args.results)
    for name, render in RENDER.items():
        for path in (d / f"{name}.json", d / f"{name}_smoke.json"):
            if path.exists():
                r = json.loads(path.read_text())
                print(f"## {path.name} (seeds {r.get('seeds')})\n")
                print(render(r))
                if "checks" in r and name.startswith(("gao", "inform")):
                    print("\nchecks:", json.dumps(r["checks"], indent=1), "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run artefacts: summary.json, report.md (samples before/after PPO) and PNG curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CURVES = {
    "sft": [("loss", "SFT train loss")],
    "rm": [("loss", "RM loss"), ("accuracy", "RM train pair accuracy")],
    "ppo": [("score", "RM score"), ("reward", "reward (score - beta KL)"), ("kl", "KL to reference (sequence sum)"),
            ("gold_reward", "gold reward"), ("entropy", "policy entropy"), ("value_loss", "value loss")],
    "dpo": [("loss", "DPO loss"), ("reward_accuracy", "implicit reward accuracy"), ("reward_margin", "reward margin")],
    "online_dpo": [("loss", "online DPO loss"), ("score", "annotator score of the samples"),
                   ("kl", "KL to SFT (sequence sum)"), ("gold_reward", "gold reward"), ("frac_tied", "tied pairs")],
}


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(workdir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for stage, curves in CURVES.items():
        rows = [r for r in read_metrics(workdir / stage / "metrics.jsonl") if not any(k.startswith("eval/") for k in r)]
        curves = [(k, t) for k, t in curves if any(k in r for r in rows)]
        if not curves:
            continue
        fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
        for ax, (key, title) in zip(axes[0], curves):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("PPO iteration" if stage == "ppo" else "step", fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = workdir / f"{stage}_curves.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    bon = workdir / "bon" / "curve.json"
    if bon.exists():  # best-of-n: proxy and gold score against KL_bon (Gao et al. Fig. 1 in shape)
        rows = json.loads(bon.read_text())
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for key in ("proxy", "gold"):
            if key in rows[0]:
                ax.plot([r["kl"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=key)
        ax.set_xlabel("KL_bon = log n - (n-1)/n (nats)", fontsize=8)
        ax.set_title("best-of-n of the SFT policy", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = workdir / "bon_curves.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _cell(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:120]


def _interval_rows(stage: str, intervals: dict, covers: str | None) -> list[str]:
    """One row per interval: `metric 95% CI (over prompts)` | value [low, high] (n)."""
    what = " (evaluation prompts)" if covers else ""
    rows = []
    for name, est in intervals.items():
        if isinstance(est, dict) and {"value", "low", "high"} <= set(est):
            rows.append(f"| {stage} | {name} 95% interval{what} | {est['value']:.4g} [{est['low']:.4g}, "
                        f"{est['high']:.4g}] (n={est.get('n', '?')}) |")
    return rows


def write_report(workdir: Path, summary: dict[str, Any], command: str) -> Path:
    lines = [f"# Run report: {workdir.name}", "", f"Command: `{command}`", "", "## Summary", "",
             "| stage | metric | value |", "|---|---|---|"]
    for stage, values in summary.items():
        for k, v in values.items():
            if k == "intervals" and isinstance(v, dict):
                lines += _interval_rows(stage, v, values.get("interval_covers"))
            elif k != "interval_covers":
                lines.append(f"| {stage} | {k} | {v:.4g} |" if isinstance(v, float) else f"| {stage} | {k} | {v} |")
    covers = {values["interval_covers"] for values in summary.values()
              if isinstance(values, dict) and isinstance(values.get("interval_covers"), str)}
    lines += [f"\nIntervals over evaluation prompts cover {c}." for c in sorted(covers)]
    for label, name in (("ppo", "PPO"), ("dpo", "DPO"), ("online_dpo", "online DPO"), ("rs", "rejection sampling")):
        samples_path = workdir / label / "samples.json"
        if not samples_path.exists():
            continue
        samples = json.loads(samples_path.read_text())
        lines += ["", f"## Sample responses before and after {name} (held-out prompts)", "",
                  f"| prompt | SFT policy | gold / RM | {name} policy | gold / RM |", "|---|---|---|---|---|"]
        num = lambda x: "-" if x is None or x != x else f"{x:.2f}"
        for s in samples:
            lines.append(f"| {_cell(s['prompt'])} | {_cell(s['sft'])} | {num(s['sft_gold'])} / {num(s['sft_rm'])} | "
                         f"{_cell(s[label])} | {num(s[label + '_gold'])} / {num(s[label + '_rm'])} |")
    plots = sorted(p.name for p in workdir.glob("*_curves.png"))
    if plots:
        lines += ["", "## Curves", ""] + [f"![{p}]({p})" for p in plots]
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

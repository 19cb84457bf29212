"""The evaluation stage's artefacts: report.md (tables with intervals, per-example samples), a
win-rate plot with 95% intervals, and the flat numbers that go to metrics.jsonl and W&B."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def is_estimate(value: Any) -> bool:
    return isinstance(value, dict) and {"value", "low", "high", "n"} <= set(value)


def flatten_numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """{"generation/ppo/eos_rate": 0.97, "generation/ppo/eos_rate/low": ...}: every number of a
    results tree (an estimate gives its value, low and high)."""
    out: dict[str, float] = {}
    if is_estimate(tree):
        out[prefix] = float(tree["value"])
        for k in ("low", "high"):
            if tree[k] is not None:
                out[f"{prefix}/{k}"] = float(tree[k])
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_numbers(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


def fmt(value: Any) -> str:
    """An estimate as `0.62 [0.55, 0.69] (n=256)`, a number to 4 digits, anything else as text."""
    if is_estimate(value):
        if value["low"] is None:
            return f"{value['value']:.4g} (n={value['n']})"
        return f"{value['value']:.4g} [{value['low']:.4g}, {value['high']:.4g}] (n={value['n']})"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:160]


def _leaf(value: Any) -> bool:
    return not isinstance(value, dict) or is_estimate(value)


def _table(rows: dict[str, dict], title: str) -> list[str]:
    """A markdown table: one row per key of `rows`, one column per number or estimate they hold."""
    cols = list(dict.fromkeys(k for r in rows.values() for k, v in r.items() if _leaf(v)))
    if not cols:
        return []
    lines = [f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(fmt(r.get(c, "-"))) for c in cols) + " |" for name, r in rows.items()]
    return lines + [""]


def _sections(res: dict, title: str) -> list[str]:
    """Tables for a results tree: its leaves in one line, its dict entries as a table whose
    rows are those entries, recursively for deeper levels."""
    lines = []
    scalars = {k: v for k, v in res.items() if _leaf(v)}
    groups = {k: v for k, v in res.items() if not _leaf(v)}
    if scalars:
        lines += [", ".join(f"{k} = {fmt(v)}" for k, v in scalars.items()), ""]
    if groups:
        lines += _table(groups, title)
        for key, sub in groups.items():
            deeper = {k: v for k, v in sub.items() if not _leaf(v)}
            if deeper:
                lines += _sections(deeper, f"{title} / {key}")
    return lines


def write_eval_report(path: Path, summary: dict, rows: dict[str, list[dict]]) -> Path:
    lines = ["# Evaluation report", "", f"Policies: {summary['policies']}; baseline: {summary['baseline']}; "
             f"judges: {', '.join(summary['judges']) or 'none'}.", "",
             "Every estimate is the value, its 95% bootstrap interval and n.", ""]
    for suite, res in summary.items():
        if not isinstance(res, dict) or suite == "policies":
            continue
        lines += [f"## {suite}", ""] + _sections(res, suite)
        if rows.get(suite):
            cols = list(dict.fromkeys(k for r in rows[suite] for k in r))
            lines += [f"### {suite}: examples", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
            lines += ["| " + " | ".join(_cell(fmt(r.get(c, ""))) for c in cols) + " |" for r in rows[suite]]
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_win_rates(path: Path, results: dict) -> Path | None:
    """Win rate over the baseline per judge and policy, with 95% intervals."""
    gen = results.get("generation", {})
    key = next((k for k in gen if k.startswith("win_rate_vs_")), None)
    if key is None:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bars = [(f"{policy} ({judge})", est) for judge, per in gen[key].items() for policy, est in per.items()]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(bars), 3.2))
    values = [e["value"] for _, e in bars]
    err = [[e["value"] - (e["low"] if e["low"] is not None else e["value"]) for _, e in bars],
           [(e["high"] if e["high"] is not None else e["value"]) - e["value"] for _, e in bars]]
    ax.bar(range(len(bars)), values, yerr=err, capsize=4, color="tab:blue", alpha=0.8)
    ax.axhline(0.5, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(range(len(bars)), [b for b, _ in bars], fontsize=8, rotation=20)
    ax.set_ylabel(key.replace("_", " "), fontsize=8)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

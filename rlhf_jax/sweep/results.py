"""A sweep's numbers: each run's summary.json flattened, aggregated over seeds per grid point.

    rows = table(points, seeds, summaries)     # one row per (grid point, metric)
    write_jsonl(out / "results.jsonl", rows); write_csv(out / "results.csv", rows, grid_keys, seeds)
    text = summary_markdown(points, rows, ["ppo.gold_reward_final"], runs, header)

A row holds the point, its grid values, the metric (`stage.metric`), n, mean, standard
deviation (ddof 1), the 95% interval of the mean and the per-seed values (aligned with the
sweep's seeds; null where a seed failed or its value is missing or not finite).

The interval is a t-interval by default: mean +- t(0.975, n-1) * std / sqrt(n). Seeds are few
(2-5), and a bootstrap over so few values undercovers badly: for normal seed noise the 95%
BCa interval of `rlhf_jax.eval.stats.mean` held the true mean in 52% / 70% / 86% / 89% of
400 simulated sweeps at n = 2 / 3 / 5 / 10, the t-interval in 95% / 96% / 94% / 93%. The
t-interval is exact when seed-to-seed variation is normal and widens honestly as n shrinks.
`method="bootstrap"` (BCa) is there for sweeps with many seeds or skewed metrics. With n < 2
there is no interval.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

from rlhf_jax.eval.stats import Estimate
from rlhf_jax.eval.stats import mean as bootstrap_mean

CONFIDENCE = 0.95
METHODS = ("t", "bootstrap")
WALL_CLOCK = "_seconds"  # metric names ending so measure time, not results (wall_seconds, train_seconds, ...)
DEFAULT_METRICS = ("ppo.gold_reward_final", "ppo.kl_final")
STAT_FIELDS = ("n", "mean", "std", "ci_low", "ci_high", "half_width", "ci_method")


def numeric_metrics(summary: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"ppo.kl_final": 0.01, ...}: every int or float of a (nested) summary; bools, strings,
    lists and None are left out."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(numeric_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def is_wall_clock(metric: str) -> bool:
    """True for timing metrics (they differ between identical runs)."""
    return metric.rsplit(".", 1)[-1].endswith(WALL_CLOCK)


def interval(values: list[float], method: str = "t", confidence: float = CONFIDENCE) -> Estimate | None:
    """The interval of the mean of `values` (finite floats); None when n < 2."""
    if method not in METHODS:
        raise ValueError(f"interval method {method!r} is not one of {METHODS}")
    n = len(values)
    if n < 2:
        return None
    if method == "bootstrap":
        return bootstrap_mean(values, confidence_level=confidence)
    from scipy import stats as sps
    center = statistics.fmean(values)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(center, center - half, center + half, n, confidence, "t")


def aggregate(values: Iterable[float | None], method: str = "t") -> dict[str, Any]:
    """n, mean, std (ddof 1), ci_low, ci_high, half_width, ci_method over the finite values
    (None and non-finite values are left out of n); absent (None) where n is too small."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    est = interval(finite, method)
    return {"n": len(finite), "mean": statistics.fmean(finite) if finite else None,
            "std": statistics.stdev(finite) if len(finite) > 1 else None,
            "ci_low": est.low if est else None, "ci_high": est.high if est else None,
            "half_width": (est.high - est.low) / 2 if est else None, "ci_method": est.method if est else None}


def table(points, seeds: list[int], summaries: dict[tuple[str, int], dict], method: str = "t") -> list[dict]:
    """One row per (grid point, metric) over the runs in `summaries` ({(point name, seed):
    summary}); metrics in the order they first appear."""
    rows = []
    for point in points:
        per_seed = {s: numeric_metrics(summaries[point.name, s]) for s in seeds if (point.name, s) in summaries}
        metrics = list(dict.fromkeys(m for values in per_seed.values() for m in values))
        for metric in metrics:
            values = [per_seed.get(s, {}).get(metric) for s in seeds]
            values = [v if v is not None and math.isfinite(v) else None for v in values]
            rows.append({"point": point.name, "params": dict(point.params), "metric": metric,
                         **aggregate(values, method), "seeds": list(seeds), "values": values})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per row."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_csv(path: Path, rows: list[dict], grid_keys: list[str], seeds: list[int]) -> None:
    """Columns: point, each grid key, metric, the statistics, then seed_<s> for every seed."""
    header = ["point", *grid_keys, "metric", *STAT_FIELDS, *(f"seed_{s}" for s in seeds)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = [row["point"], *(row["params"].get(k, "") for k in grid_keys), row["metric"],
                     *(row[k] for k in STAT_FIELDS), *row["values"]]
            writer.writerow(["" if c is None else repr(c) if isinstance(c, float) else c for c in cells])


def cell(row: dict | None) -> str:
    """`mean ± half-width (n)`; `mean (1)` for one seed; `—` with no value."""
    if row is None or not row["n"]:
        return "—"
    if row["half_width"] is None:
        return f"{row['mean']:.4g} ({row['n']})"
    return f"{row['mean']:.4g} ± {row['half_width']:.2g} ({row['n']})"


def headline(rows: list[dict], requested: list[str] | None) -> list[str]:
    """The metrics for summary.md: those requested; else the defaults present; else every
    metric that is not a wall-clock time."""
    if requested:
        return list(requested)
    present = list(dict.fromkeys(row["metric"] for row in rows))
    return [m for m in DEFAULT_METRICS if m in present] or [m for m in present if not is_wall_clock(m)]


def summary_markdown(points, rows: list[dict], metrics: list[str], runs: list[dict], header: str = "") -> str:
    """A markdown table, one row per grid point: its values, its finished runs, each metric's
    `mean ± half-width (n)`; then the failed runs with exit code and log."""
    by_key = {(row["point"], row["metric"]): row for row in rows}
    keys = list(points[0].params) if points else []
    lines = [header] if header else []
    lines += ["| " + " | ".join(["point", *keys, "runs ok", *metrics]) + " |",
              "|" + "---|" * (2 + len(keys) + len(metrics))]
    for point in points:
        mine = [r for r in runs if r["point"] == point.name]
        ok = sum(r["status"] == "ok" for r in mine)
        cells = [point.name, *point.params.values(), f"{ok}/{len(mine)}",
                 *(cell(by_key.get((point.name, m))) for m in metrics)]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    missing = [m for m in metrics if not any(row["metric"] == m for row in rows)]
    if missing:
        lines += ["", f"No run reported {', '.join(missing)}."]
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        lines += ["", "Runs that did not finish:", ""]
        lines += [f"- `{r['point']}/seed_{r['seed']}`: {r['status']}"
                  + (f" (exit {r['exit_code']})" if r.get("exit_code") is not None else "")
                  + f", log `{r['log']}`" + (f": {r['error']}" if r.get("error") else "") for r in bad]
    return "\n".join(lines) + "\n"

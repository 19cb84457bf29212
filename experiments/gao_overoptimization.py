"""Gao et al. 2022, "Scaling laws for reward model overoptimization", on the task world.

    python experiments/gao_overoptimization.py            # the full experiment (see FULL below)
    python experiments/gao_overoptimization.py --smoke    # micro config, one point, 2 seeds (CI)

Proxy RMs are trained from scratch (`rm.init=random`, experiments/configs/overopt.py) at three
widths (rm.overrides.d_model; heads, head_dim and d_ff follow) on two amounts of annotator
rankings (data.n_rankings) of perturbed reference answers (`hackable`: data.rm_from_policy =
False), labelled by the simulated annotators from the task world's programmatic gold reward.
Each (size, data) point runs SFT -> RM -> best-of-n (stage bon) -> PPO at several seeds, through
the sweep runner (one sweep per data amount, the SFT stage shared across the sizes of a seed).

Then, against d = sqrt(KL):
- best-of-n: gold and proxy of the unbiased best-of-n estimate for n = 1..N, KL_bon = log n - (n-1)/n;
- PPO: each iteration's rollouts (ppo/metrics.jsonl: kl, score, gold_reward), averaged over
  seeds by iteration (each seed's series smoothed over 9 iterations first: rl.kl/gold/proxy) and
  binned by d (12 equal-width bins, per seed then over seeds: rl.binned, the plotted curves).
The gold gain over the SFT policy (gold - gold of best-of-1, the SFT policy's own mean) is
fitted with R_bon(d) = d (alpha - beta d) and R_RL(d) = d (alpha - beta log d) (scipy
curve_fit), pooled over seeds and per seed; peaks d* = alpha / (2 beta) (bon) and
exp(alpha / beta - 1) (RL). Writes experiments/results/gao_overoptimization.json and
experiments/figures/gao_overoptimization.png.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolkit as T  # noqa: E402  (also puts this checkout first on sys.path)
from toolkit import REPO as ROOT  # noqa: E402

NAME = "gao_overoptimization"
CONFIG = "experiments/configs/overopt.py:hackable"
FULL = {"sizes": ["32", "64", "128"], "rankings": ["2000", "8000"], "seeds": [0, 1, 2],
        # cuts for a 2-core CPU (see the docstring of main): one RM epoch (Gao et al. also train one),
        # 100 PPO iterations, best-of-256 on 64 held-out prompts, PPO's final evaluation on 128 prompts
        "sets": {"rm.epochs": "1", "ppo.iterations": "100", "bon.n_samples": "256", "bon.n_prompts": "64",
                 "heldout.n_prompts": "128"}, "window": 9, "bins": 12}
SMOKE = {"sizes": ["16"], "rankings": ["192"], "seeds": [0, 1], "config_variant": ",micro",
         "sets": {"rm.epochs": "1", "ppo.iterations": "4", "bon.n_samples": "8", "bon.n_prompts": "8",
                  "heldout.n_prompts": "8"}, "window": 1, "bins": 3}

PAPER = {
    "source": "Gao, Schulman, Hilton 2022, Scaling laws for reward model overoptimization (arXiv:2210.10760)",
    "functional_forms": "R_bon(d) = d (alpha_bon - beta_bon d); R_RL(d) = d (alpha_RL - beta_RL log d), d = sqrt(KL)",
    "claims": [
        "the proxy reward rises monotonically with d, while the gold reward rises, peaks and then falls (Fig. 1)",
        "larger proxy RMs over-optimise later: their gold peak sits at larger d and is higher; alpha grows and "
        "beta shrinks smoothly (about linearly in log RM parameters) (Figs. 1, 3)",
        "more RM training data behaves like a larger RM: a higher, later gold peak (Sec. 3.4, Fig. 5)",
        "RL spends far more KL than best-of-n for the same gold reward (Sec. 3.2)",
    ],
    "numbers": "no single number is comparable: their RMs are 3M-3B-parameter GPT models trained on up to 90k "
               "comparisons labelled by a 6B gold RM; ours are 2-layer decoders on a programmatic gold",
}


def rm_params(d: int, layers: int = 2, vocab: int = 22) -> int:
    """Approximate parameter count of the proxy RM (embeddings, 4 query / 2 KV heads of d/4,
    SwiGLU d_ff = 2d, norms, the scalar head)."""
    hd = d // 4
    per_layer = d * hd * (4 + 2 * 2) + 4 * hd * d + 3 * d * 2 * d + 2 * d
    return vocab * d + layers * per_layer + d + d + 1


# ---------------------------------------------------------------- fits
def _fit(form: str, d: np.ndarray, y: np.ndarray) -> dict:
    """alpha, beta (with standard errors), d*, R^2 of one functional form on (d, y)."""
    from scipy.optimize import curve_fit
    d, y = np.asarray(d, float), np.asarray(y, float)
    ok = np.isfinite(d) & np.isfinite(y)
    d, y = d[ok], y[ok]
    if len(d) < 3 or np.ptp(d) == 0:
        return {"alpha": None, "beta": None, "d_star": None, "r2": None, "n_points": int(len(d))}
    if form == "bon":
        f = lambda x, a, b: x * (a - b * x)
    else:
        f = lambda x, a, b: x * (a - b * np.log(np.where(x > 0, x, 1.0)))
    try:
        (a, b), cov = curve_fit(f, d, y, p0=(0.1, 0.05), maxfev=20000)
        se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else [np.nan, np.nan]
    except (RuntimeError, ValueError):
        return {"alpha": None, "beta": None, "d_star": None, "r2": None, "n_points": int(len(d))}
    resid = y - f(d, a, b)
    r2 = 1 - (resid ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    if b > 0:
        # bon with alpha <= 0: gold falls from d = 0, the maximum over d >= 0 is at 0
        d_star = max(a / (2 * b), 0.0) if form == "bon" else float(np.exp(a / b - 1))
        peak = float(f(np.array([d_star]), a, b)[0])
    else:
        d_star, peak = None, None  # no interior maximum: gold never turns down under this fit
    return {"alpha": float(a), "beta": float(b), "alpha_se": float(se[0]), "beta_se": float(se[1]),
            "d_star": d_star, "gold_gain_at_d_star": peak, "r2": float(r2), "n_points": int(len(d))}


def fits(form: str, per_seed: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict:
    """The fit pooled over seeds, and per seed (alpha, beta, d* with intervals over seeds)."""
    pooled = _fit(form, np.concatenate([d for d, _ in per_seed.values()]),
                  np.concatenate([y for _, y in per_seed.values()]))
    each = {s: _fit(form, d, y) for s, (d, y) in per_seed.items()}
    return {"pooled": pooled, "per_seed": {k: T.stat([each[s][k] for s in sorted(each)])
                                           for k in ("alpha", "beta", "d_star", "r2")},
            "seeds_with_peak": int(sum(each[s]["d_star"] is not None for s in each))}


# ---------------------------------------------------------------- one grid point
def bin_by_d(d: np.ndarray, values: dict[str, np.ndarray], bins: int) -> dict:
    """PPO iterations pooled by d = sqrt(KL) into `bins` equal-width bins from 0 to the largest d
    reached: per seed the mean of its iterations in the bin, then statistics over the seeds that
    reached the bin (n may be below the number of seeds at the far end)."""
    edges = np.linspace(0.0, float(np.nanmax(d)) + 1e-9, bins + 1)
    which = np.clip(np.digitize(d, edges) - 1, 0, bins - 1)
    out = {"edges": edges, "d": [], **{k: [] for k in values}}
    for b in range(bins):
        inside = which == b
        seeds = [i for i in range(d.shape[0]) if inside[i].any()]
        if len(seeds) < 2:
            continue
        out["d"].append(T.stat([d[i][inside[i]].mean() for i in seeds]))
        for k, v in values.items():
            out[k].append(T.stat([v[i][inside[i]].mean() for i in seeds]))
    return out


def analyse_point(dirs: dict[int, Path], window: int, bins: int) -> dict:
    seeds = sorted(dirs)
    curves = {s: T.read_json(dirs[s] / "bon" / "curve.json") for s in seeds}
    ns = [r["n"] for r in curves[seeds[0]]]
    kl = np.array([r["kl"] for r in curves[seeds[0]]])
    gold = np.array([[r["gold"] for r in curves[s]] for s in seeds])    # [S, n]
    proxy = np.array([[r["proxy"] for r in curves[s]] for s in seeds])
    gold0, proxy0 = gold[:, :1], proxy[:, :1]                           # the SFT policy (best-of-1)
    bon = {"n": ns, "kl": kl, "d": np.sqrt(kl),
           "gold": [T.stat(gold[:, j]) for j in range(len(ns))],
           "proxy": [T.stat(proxy[:, j]) for j in range(len(ns))],
           "gold_gain": [T.stat(gold[:, j] - gold0[:, 0]) for j in range(len(ns))],
           "proxy_gain": [T.stat(proxy[:, j] - proxy0[:, 0]) for j in range(len(ns))]}
    bon_fit = fits("bon", {s: (np.sqrt(kl), gold[i] - gold0[i]) for i, s in enumerate(seeds)})
    peak = int(np.argmax(gold.mean(0)))
    bon["empirical_peak"] = {"n": ns[peak], "d": float(np.sqrt(kl[peak])), "gold": T.stat(gold[:, peak])}
    bon["proxy_monotone"] = bool(np.all(np.diff(proxy.mean(0)) >= -1e-9))

    logs = {s: T.read_jsonl(dirs[s] / "ppo" / "metrics.jsonl") for s in seeds}
    n_it = min(len(v) for v in logs.values())
    series = {key: np.array([[row.get(key, np.nan) for row in logs[s][:n_it]] for s in seeds], float)
              for key in ("kl", "score", "gold_reward")}
    d_raw = np.sqrt(np.maximum(series["kl"], 0.0))
    smooth = {k: T.centred_moving_average(v, window) for k, v in series.items()}
    d_smooth = np.sqrt(np.maximum(smooth["kl"], 0.0))
    rl = {"iteration": list(range(1, n_it + 1)), "smoothing_window": window,
          "kl": [T.stat(smooth["kl"][:, t]) for t in range(n_it)],
          "gold": [T.stat(smooth["gold_reward"][:, t]) for t in range(n_it)],
          "proxy": [T.stat(smooth["score"][:, t]) for t in range(n_it)]}
    for entry in ("kl", "gold", "proxy"):  # keep the JSON small: per-seed values only in `binned`
        for s in rl[entry]:
            s.pop("values")
    rl["binned"] = bin_by_d(d_raw, {"gold_gain": series["gold_reward"] - gold0,
                                    "proxy_gain": series["score"] - proxy0}, bins)
    # fitted on every logged iteration (raw, not smoothed) of each seed
    rl_fit = fits("rl", {s: (d_raw[i], series["gold_reward"][i] - gold0[i, 0]) for i, s in enumerate(seeds)})
    mean_gold = smooth["gold_reward"].mean(0)
    tp = int(np.nanargmax(mean_gold))
    rl["empirical_peak"] = {"iteration": tp + 1, "d": float(d_smooth[:, tp].mean()),
                            "gold": T.stat(smooth["gold_reward"][:, tp])}
    summaries = {s: T.summary(dirs[s]) for s in seeds}
    get = lambda stage, key: T.stat([summaries[s].get(stage, {}).get(key) for s in seeds])
    final = {"rm_val_accuracy": get("rm", "val_accuracy"), "gold_sft": T.stat(gold0[:, 0]),
             "bon_gold_at_N": T.stat(gold[:, -1]), "ppo_gold_final": get("ppo", "gold_reward_final"),
             "ppo_gold_sft_eval": get("ppo", "gold_reward_sft"), "ppo_kl_final": get("ppo", "kl_final"),
             "ppo_win_rate_vs_sft": get("ppo", "win_rate_vs_sft"),
             "ppo_rm_score_final": get("ppo", "rm_score_final")}
    return {"seeds": seeds, "bon": bon, "bon_fit": bon_fit, "rl": rl, "rl_fit": rl_fit, "final": final}


# ---------------------------------------------------------------- figure
def figure(points: list[dict], rankings: list[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted({p["rm_d_model"] for p in points})
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0.05, 0.85, len(sizes)))))
    fig, axes = plt.subplots(4, len(rankings), figsize=(5.2 * len(rankings), 14), squeeze=False, sharex="row")
    rows = [("bon", "gold_gain", "best-of-n: gold - gold(SFT)"), ("bon", "proxy_gain", "best-of-n: proxy - proxy(SFT)"),
            ("rl", "gold_gain", "PPO (binned by d): gold - gold(SFT)"),
            ("rl", "proxy_gain", "PPO (binned by d): proxy - proxy(SFT)")]
    for j, n_rank in enumerate(rankings):
        for p in (p for p in points if p["n_rankings"] == int(n_rank)):
            c = colors[p["rm_d_model"]]
            label = f"RM d={p['rm_d_model']} (~{p['rm_params'] / 1e3:.0f}k params)"
            for i, (kind, key, ylabel) in enumerate(rows):
                ax = axes[i, j]
                data = p[kind] if kind == "bon" else p[kind]["binned"]
                x = np.array(data["d"] if kind == "bon" else [s["mean"] for s in data["d"]], float)
                m = np.array([s["mean"] for s in data[key]], float)
                lo = np.array([s["ci_low"] if s["ci_low"] is not None else np.nan for s in data[key]], float)
                hi = np.array([s["ci_high"] if s["ci_high"] is not None else np.nan for s in data[key]], float)
                ax.plot(x, m, "-o", color=c, ms=3, label=label)
                ax.fill_between(x, lo, hi, color=c, alpha=0.15, lw=0)
                if key == "gold_gain":
                    fit = p[f"{kind}_fit"]["pooled"]
                    if fit["alpha"] is not None:
                        xs = np.linspace(1e-3, max(x.max(), 1e-2), 200)
                        ys = xs * (fit["alpha"] - fit["beta"] * (xs if kind == "bon" else np.log(xs)))
                        ax.plot(xs, ys, ":", color=c, lw=1.5)
                        if fit["d_star"] is not None and fit["d_star"] <= xs.max() * 1.05:
                            ax.axvline(fit["d_star"], color=c, ls="--", lw=0.8)
                ax.axhline(0, color="grey", lw=0.5)
                ax.set_ylabel(ylabel)
                if i == 0:
                    ax.set_title(f"{n_rank} RM rankings")
                if i == len(rows) - 1 or i == 1:
                    ax.set_xlabel("d = sqrt(KL) (nats^0.5)")
    axes[0, 0].legend(fontsize=8)
    import textwrap
    fig.suptitle(textwrap.fill(title, 60 * len(rankings)), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- checks of the paper's claims
def checks(points: list[dict], sizes: list[str], rankings: list[str]) -> dict:
    out = {}
    by = {(p["rm_d_model"], p["n_rankings"]): p for p in points}
    out["bon_proxy_monotone_all_points"] = all(p["bon"]["proxy_monotone"] for p in points)
    out["bon_gold_interior_peak_points"] = [f"d={p['rm_d_model']},n={p['n_rankings']}" for p in points
                                            if 1 < p["bon"]["empirical_peak"]["n"] < p["bon"]["n"][-1]]
    for kind in ("bon", "rl"):
        for n in rankings:
            ds = [by[int(s), int(n)][f"{kind}_fit"]["pooled"]["d_star"] for s in sizes if (int(s), int(n)) in by]
            out[f"{kind}_d_star_by_size_n{n}"] = ds
            out[f"{kind}_d_star_increases_with_size_n{n}"] = (None if any(d is None for d in ds) or len(ds) < 2
                                                             else bool(np.all(np.diff(ds) > 0)))
        for s in sizes:
            ds = [by[int(s), int(n)][f"{kind}_fit"]["pooled"]["d_star"] for n in rankings if (int(s), int(n)) in by]
            out[f"{kind}_d_star_by_data_d{s}"] = ds
            out[f"{kind}_d_star_increases_with_data_d{s}"] = (None if any(d is None for d in ds) or len(ds) < 2
                                                             else bool(np.all(np.diff(ds) > 0)))
    return out


def main(argv=None) -> int:
    p = T.parser(__doc__, NAME, seeds="0-2", smoke_seeds="0-1",
                 smoke_help="micro config, one point, 2 seeds, 4 PPO iterations")
    args = p.parse_args(argv)
    run = T.setup(args, NAME, argv=argv)
    spec = SMOKE if args.smoke else FULL
    seeds, fig_path, json_path = run.seeds, run.png_path, run.json_path
    config = CONFIG + spec.get("config_variant", "")
    t0 = time.perf_counter()
    points, names = [], []
    for n_rank in spec["rankings"]:
        sweep, _ = run.recorder.sweep(f"rankings_{n_rank}", config, seeds, grid={"rm.overrides.d_model": spec["sizes"]},
                                      sets={"data.n_rankings": n_rank, **spec["sets"]}, share=("sft",), strict=True,
                                      metrics=["rm.val_accuracy", "bon.gold_peak", "ppo.gold_reward_final",
                                               "ppo.kl_final"])
        names.append(sweep.label)
        for point, dirs in T.workdirs(sweep).items():
            size = int(point.split("=")[1])
            res = analyse_point(dirs, spec["window"], spec["bins"])
            points.append({"point": f"{n_rank}/{point}", "rm_d_model": size, "rm_params": rm_params(size),
                           "n_rankings": int(n_rank), **res})
    wall = time.perf_counter() - t0
    figure(points, spec["rankings"], fig_path,
           f"Gao et al. 2022 on the task world: hackable proxy RMs trained from scratch; mean over "
           f"{len(seeds)} seeds, 95% t-interval bands; dotted: fitted forms; dashed: fitted d*")
    config_text = {k: v for k, v in spec.items() if k not in ("seeds",)}
    out = {"experiment": NAME, "mode": "smoke" if args.smoke else "full", "seeds": seeds,
           "config": config, "spec": config_text,
           "command": run.command, **run.recorder.report(),
           "sweep_seconds": [run.recorder.timings[n]["wall_s"] for n in names], "wall_seconds": round(wall, 1),
           "timing_note": "wall_seconds: this invocation (small when the runs were finished before and only the "
                          "analysis ran); run_seconds_total: the runs' own wall times as the runner recorded them",
           "gold_baseline": "gold gains are relative to each seed's SFT policy (the best-of-1 gold of its bon stage)",
           "rl_curves": f"PPO: rl.gold etc. are by iteration (each seed's per-iteration rollout metrics, 64 "
                        f"episodes, smoothed over {spec['window']} iterations, then averaged over seeds); rl.binned "
                        f"(plotted) pools the raw iterations into {spec['bins']} equal-width bins of d, per seed, "
                        f"then over seeds; the fits use every raw iteration of every seed",
           "paper": PAPER, "checks": checks(points, spec["sizes"], spec["rankings"]),
           "points": points, "figure": str(fig_path.relative_to(ROOT)) if fig_path.is_relative_to(ROOT) else
           str(fig_path), "runs": [run.recorder.records[n] for n in names]}
    T.write_json(json_path, out)
    print(f"[{NAME}] {len(points)} points x {len(seeds)} seeds in {wall:.0f}s\n  {json_path}\n  {fig_path}")
    for pt in points:
        bf, rf = pt["bon_fit"]["pooled"], pt["rl_fit"]["pooled"]
        print(f"  {pt['point']}: rm acc {T.fmt(pt['final']['rm_val_accuracy'])}, bon peak n={pt['bon']['empirical_peak']['n']} "
              f"gold {T.fmt(pt['bon']['empirical_peak']['gold'])}; bon fit a={bf['alpha']} b={bf['beta']} d*={bf['d_star']}; "
              f"rl fit a={rf['alpha']} b={rf['beta']} d*={rf['d_star']}; ppo gold final {T.fmt(pt['final']['ppo_gold_final'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Honest statistics: every figure with its n and a 95% bootstrap confidence interval.

    est = win_rate(outcomes_N)            # Estimate(value, low, high, n), JSON-ready
    est = paired_difference(a_N, b_N)     # same prompts for both policies: resample prompts
    est = cohen_kappa(judge_labels, human_labels)

Outcomes are per-prompt numbers in [0, 1]: 1 a win, 0 a loss, 1/2 a tie (or a judge's
probability). Intervals come from `scipy.stats.bootstrap` (BCa by default, with a seed) over
the N items; paired statistics resample items jointly, so prompt difficulty cancels. When
the data cannot vary under resampling (all values equal, or n < 2) the interval collapses
onto the value instead of failing, and `method` says so.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic with its confidence interval: value in [low, high] at `confidence_level`."""

    value: float
    low: float
    high: float
    n: int
    confidence_level: float = 0.95
    method: str = "BCa"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimate":
        return cls(**d)

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n})"


def _as_1d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def bootstrap(statistic: Callable, samples: Sequence[Sequence], *, paired: bool = True, vectorized: bool = False,
              n_resamples: int = DEFAULT_RESAMPLES, confidence_level: float = 0.95, method: str = "BCa",
              seed: int = 0) -> Estimate:
    """Estimate of statistic(*samples) with a bootstrap interval over the items.

    samples: one or more arrays of length N (for paired=True, item i of each array belongs to
    the same prompt and they are resampled together). With vectorized=True, statistic takes
    an `axis` keyword like np.mean. A BCa interval that comes out NaN (a degenerate jackknife)
    falls back to the percentile interval.
    """
    samples = [np.asarray(s) for s in samples]
    n = len(samples[0])
    if n == 0:
        raise ValueError("no items to estimate from")
    if paired and any(len(s) != n for s in samples):
        raise ValueError(f"paired samples differ in length: {[len(s) for s in samples]}")
    value = float(statistic(*samples, axis=-1) if vectorized else statistic(*samples))
    if n < 2 or all(np.all(s == s.flat[0]) for s in samples):
        return Estimate(value, value, value, n, confidence_level, "degenerate")
    kw = dict(paired=paired and len(samples) > 1, vectorized=vectorized, n_resamples=n_resamples,
              confidence_level=confidence_level, rng=np.random.default_rng(seed))
    for m in dict.fromkeys([method, "percentile"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from scipy import stats as sps  # here, not at import: scipy.stats takes ~1 s to import
            ci = sps.bootstrap(tuple(samples), statistic, method=m, **kw).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return Estimate(value, float(ci.low), float(ci.high), n, confidence_level, m)
    return Estimate(value, float("nan"), float("nan"), n, confidence_level, "failed")


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def mean(values_N, **kw) -> Estimate:
    """Mean of per-item values with a bootstrap interval."""
    return bootstrap(_mean, [_as_1d(values_N, "values_N")], vectorized=True, **kw)


def accuracy(correct_N, **kw) -> Estimate:
    """Fraction of items correct (bool or 0/1; 1/2 counts as half)."""
    return mean(np.asarray(correct_N, dtype=np.float64), **kw)


def outcomes_from_scores(scores_a_N, scores_b_N) -> np.ndarray:
    """outcomes_N of a against b on the same prompts: 1 if a > b, 1/2 on a tie, 0 if a < b."""
    a, b = _as_1d(scores_a_N, "scores_a_N"), _as_1d(scores_b_N, "scores_b_N")
    if a.shape != b.shape:
        raise ValueError(f"scores differ in shape: {a.shape} vs {b.shape}")
    return (a > b) + 0.5 * (a == b)


def win_rate(outcomes_N, **kw) -> Estimate:
    """Win rate from per-prompt outcomes in [0, 1] (win 1, tie 1/2, loss 0, or a probability)."""
    out = _as_1d(outcomes_N, "outcomes_N")
    if np.any((out < 0) | (out > 1)):
        raise ValueError("outcomes must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    return mean(out, **kw)


def paired_win_rate(scores_a_N, scores_b_N, **kw) -> Estimate:
    """Win rate of a over b from per-prompt scores of both on the same prompts (ties 1/2)."""
    return win_rate(outcomes_from_scores(scores_a_N, scores_b_N), **kw)


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_difference(values_a_N, values_b_N, **kw) -> Estimate:
    """mean(a) - mean(b) for two policies measured on the same N prompts (prompts resampled jointly)."""
    a, b = _as_1d(values_a_N, "values_a_N"), _as_1d(values_b_N, "values_b_N")
    return bootstrap(_mean_difference, [a, b], paired=True, vectorized=True, **kw)


def unpaired_difference(values_a_N, values_b_M, **kw) -> Estimate:
    """mean(a) - mean(b) for independent samples (each resampled on its own); n is N + M."""
    a, b = _as_1d(values_a_N, "values_a_N"), _as_1d(values_b_M, "values_b_M")
    est = bootstrap(_mean_difference, [a, b], paired=False, vectorized=True, **kw)
    return dataclasses.replace(est, n=len(a) + len(b))


def cohen_kappa(labels_a_N, labels_b_N, labels: Sequence | None = None, *, undefined: float = float("nan"),
                **kw) -> Estimate:
    """Cohen's kappa between two raters on N items (scikit-learn), with a paired bootstrap interval.

    `labels` fixes the label set (e.g. ["a", "tie", "b"]). Kappa is undefined when both raters
    use a single and the same label (expected agreement 1); such a value (for the whole data
    or a resample) is reported as `undefined`. Resamples with an undefined kappa make the
    interval NaN unless `undefined` is a number.
    """
    from sklearn.metrics import cohen_kappa_score
    a, b = np.asarray(labels_a_N), np.asarray(labels_b_N)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"labels must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    labels = sorted(set(a.tolist()) | set(b.tolist()), key=str) if labels is None else list(labels)
    code = {lab: i for i, lab in enumerate(labels)}
    missing = (set(a.tolist()) | set(b.tolist())) - set(code)
    if missing:
        raise ValueError(f"labels {sorted(missing, key=str)} are not in labels={labels}")
    a = np.array([code[x] for x in a.tolist()], np.int64)  # integer codes resample cheaply
    b = np.array([code[x] for x in b.tolist()], np.int64)
    codes = list(range(len(labels)))

    def kappa(x, y, axis=-1):
        """Cohen's kappa of integer-coded raters along the last axis (resamples on the others):
        the same formula as scikit-learn's, vectorised so a bootstrap costs one pass."""
        L = len(codes)
        conf = np.einsum("...nl,...nm->...lm", np.eye(L)[x], np.eye(L)[y])
        total = conf.sum((-2, -1))
        observed = np.trace(conf, axis1=-2, axis2=-1) / total
        expected = (conf.sum(-1) * conf.sum(-2)).sum(-1) / total ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(expected < 1, (observed - expected) / (1 - expected), undefined)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = cohen_kappa_score(a, b, labels=codes, replace_undefined_by=undefined)
    if not np.isclose(float(kappa(a, b)), reference, equal_nan=True):
        raise AssertionError(f"vectorised kappa {float(kappa(a, b))} != scikit-learn's {reference}")

    kw.setdefault("method", "percentile")
    if len(a) >= 2 and len(set(a.tolist()) | set(b.tolist())) == 1:
        value = float(kappa(a, b))
        return Estimate(value, value, value, len(a), kw.get("confidence_level", 0.95), "degenerate")
    return bootstrap(kappa, [a, b], paired=True, vectorized=True, **kw)


def summarize(values_N, **kw) -> dict[str, Any]:
    """{"mean": Estimate dict, "std", "min", "max", "n"} of per-item values, JSON-ready."""
    x = _as_1d(values_N, "values_N")
    return {"mean": mean(x, **kw).to_dict(), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            "min": float(x.min()), "max": float(x.max()), "n": int(len(x))}

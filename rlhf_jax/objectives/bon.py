"""Best-of-n (docs/rlhf_notes.md section 8): the unbiased estimator and the analytic KL.

From N >= n samples of one prompt sorted by proxy score ascending, the expected gold score
of the best of n (ranked by the proxy) is sum_{i=n..N} C(i-1, n-1) / C(N, n) * gold_(i): the
i-th smallest proxy score is the maximum of a random n-subset with that probability. Ties in
the proxy are broken by sample order (a stable sort), as a fixed tie rule must be.
KL(best-of-n || base) = log n - (n - 1) / n (Stiennon et al.; Gao et al.).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln


def kl_bon(n: int) -> float:
    return math.log(n) - (n - 1) / n


def bon_weights(N: int, n: int) -> np.ndarray:
    """w[i-1] = C(i-1, n-1) / C(N, n) for i = 1..N (zero below n); the weights sum to 1."""
    if not 1 <= n <= N:
        raise ValueError(f"best-of-n needs 1 <= n <= N, got n={n}, N={N}")
    i = np.arange(1, N + 1)
    log_c = lambda a, b: gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)
    w = np.zeros(N)
    ok = i >= n
    w[ok] = np.exp(log_c(i[ok] - 1, n - 1) - log_c(N, n))
    return w


def bon_estimate(proxy_PxN: np.ndarray, values_PxN: np.ndarray, n: int) -> float:
    """Mean over prompts of the expected `values` of the sample the proxy ranks best among n."""
    proxy, values = np.atleast_2d(proxy_PxN), np.atleast_2d(values_PxN)
    order = np.argsort(proxy, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    return float((sorted_values @ bon_weights(proxy.shape[1], n)).mean())


def bon_curve(proxy_PxN: np.ndarray, gold_PxN: np.ndarray | None, ns) -> list[dict]:
    """For each n: KL_bon, the best-of-n proxy score and (when given) the gold score.

    A sample without a gold score (NaN) leaves its prompt out of the gold estimate (the best
    of n could be that sample); `gold_prompts` says how many prompts the gold estimate covers.
    """
    rows = []
    complete = None if gold_PxN is None else ~np.isnan(np.atleast_2d(gold_PxN)).any(1)
    for n in ns:
        row = {"n": int(n), "kl": kl_bon(n), "proxy": bon_estimate(proxy_PxN, proxy_PxN, n)}
        if gold_PxN is not None:
            row["gold"] = (bon_estimate(np.atleast_2d(proxy_PxN)[complete], np.atleast_2d(gold_PxN)[complete], n)
                           if complete.any() else float("nan"))
            row["gold_prompts"] = int(complete.sum())
        rows.append(row)
    return rows


def best_index(proxy_PxN: np.ndarray) -> np.ndarray:
    """The sample each prompt keeps in rejection sampling (the proxy's best; first on ties)."""
    return np.argmax(proxy_PxN, axis=1)

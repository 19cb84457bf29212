"""Over-optimisation diagnostics in the InfoRM latent space (Miao et al. 2024), on the host.

The reference is the latents of SFT responses. For the latents of a batch of RL responses:
- CSI, the cluster separation index: DBSCAN clusters of the RL latents; for each cluster the
  distance from its centroid to the nearest reference latent; CSI = sum of cluster size x
  distance. DBSCAN's noise points count as clusters of one (an isolated outlier is the
  clearest sign of drift, and dropping it would hide it). A jump marks reward hacking.
- The Mahalanobis outlier rate: the fraction of RL latents farther from the reference
  distribution (mean, covariance with a small ridge) than the `quantile` of the reference's
  own distances; about 1 - quantile for samples of the reference distribution itself.
DBSCAN's radius `eps` defaults to the median distance from a reference latent to its
`min_samples`-th nearest reference neighbour (the usual k-distance heuristic).
"""
from __future__ import annotations

import numpy as np

from rlhf_jax import distributed


def pairwise_distances(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def dbscan(x, eps: float, min_samples: int) -> np.ndarray:
    """Cluster labels 0.. for each row of x; -1 for noise: scikit-learn's DBSCAN (Ester et al. 1996).

    A core point has at least `min_samples` points (itself included) within `eps` (inclusive);
    clusters are the connected components of core points, plus the border points they reach.
    """
    from sklearn.cluster import DBSCAN  # imported here: scikit-learn takes a second to import

    # eps = 0 (a collapsed reference) still means "identical points", which sklearn's eps > 0 check refuses
    eps = max(float(eps), float(np.finfo(np.float64).tiny))
    return DBSCAN(eps=eps, min_samples=min_samples).fit_predict(np.asarray(x, np.float64))


def default_eps(reference, min_samples: int) -> float:
    d = pairwise_distances(reference, reference)
    k = min(min_samples, len(reference) - 1)
    return float(np.median(np.sort(d, axis=1)[:, k]))


def cluster_separation_index(latents, reference, eps: float, min_samples: int) -> dict:
    labels = dbscan(latents, eps, min_samples)
    latents = np.asarray(latents, np.float64)
    groups = [latents[labels == c] for c in range(labels.max() + 1)]
    groups += [latents[i:i + 1] for i in np.flatnonzero(labels == -1)]
    centroids = np.stack([g.mean(0) for g in groups])
    distance = pairwise_distances(centroids, reference).min(1)
    sizes = np.array([len(g) for g in groups])
    return {"csi": float((sizes * distance).sum()), "clusters": int(labels.max() + 1),
            "noise_points": int((labels == -1).sum())}


class LatentMonitor:
    """The reference statistics, fitted once on the SFT latents; `__call__` gives the metrics."""

    def __init__(self, reference, eps: float = 0.0, min_samples: int = 4, quantile: float = 0.99,
                 ridge: float = 1e-3):
        self.reference = np.asarray(reference, np.float64)
        self.min_samples = min_samples
        self.eps = eps or default_eps(self.reference, min_samples)
        self.mean = self.reference.mean(0)
        cov = np.cov(self.reference, rowvar=False)
        cov += ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
        self.precision = np.linalg.inv(cov)
        self.threshold = float(np.quantile(self.mahalanobis(self.reference), quantile))

    def mahalanobis(self, x) -> np.ndarray:
        diff = np.asarray(x, np.float64) - self.mean
        return np.sqrt(np.einsum("nd,de,ne->n", diff, self.precision, diff))

    def __call__(self, latents) -> dict:
        out = cluster_separation_index(latents, self.reference, self.eps, self.min_samples)
        out["outlier_rate"] = float((self.mahalanobis(latents) > self.threshold).mean())
        return out


def projection_2d(reference):
    """(mean, 2 x L basis): the reference's first two principal directions."""
    reference = np.asarray(reference, np.float64)
    mean = reference.mean(0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    return mean, vt[:2]


def plot_latents(path, reference, groups: dict, title: str = "") -> None:
    """Scatter the reference (grey) and each named group of latents in the reference's PCA plane."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, basis = projection_2d(reference)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ref2 = (np.asarray(reference) - mean) @ basis.T
    ax.scatter(ref2[:, 0], ref2[:, 1], s=8, c="0.7", label="SFT samples (the reference)", alpha=0.7)
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, max(len(groups), 1)))
    for color, (name, lat) in zip(colors, groups.items()):
        p = (np.asarray(lat) - mean) @ basis.T
        ax.scatter(p[:, 0], p[:, 1], s=8, color=color, label=name, alpha=0.8)
    ax.set_xlabel("PC 1 of the SFT latents")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "InfoRM latents of responses", fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class LatentTrack:
    """PPO with an InfoRM: the diagnostics of the rollout latents every `every` iterations
    (each step's latents kept in `directory` as step_N.npy, so a resumed run keeps them), and
    at the end the exported latents (latents.npz) and their 2-D projection (latents.png)."""

    def __init__(self, monitor: LatentMonitor, latent_fn, directory, every: int):
        self.monitor, self.latent_fn, self.every = monitor, latent_fn, every
        self.directory = directory
        self.primary = distributed.primary()  # on several processes process 0 writes
        if self.primary:
            self.directory.mkdir(parents=True, exist_ok=True)

    def on_rollout(self, step: int, samples: dict) -> dict:
        if not self.every or step % self.every:
            return {}
        lat = self.latent_fn(samples)
        if self.primary:
            np.save(self.directory / f"step_{step}.npy", lat)
        return {f"latent/{k}": v for k, v in self.monitor(lat).items()}

    def tracked(self) -> dict[int, np.ndarray]:
        files = sorted(self.directory.glob("step_*.npy"), key=lambda p: int(p.stem[5:]))
        return {int(p.stem[5:]): np.load(p) for p in files}

    def finish(self, evaluated: dict[str, np.ndarray], png_path, title: str = "") -> dict:
        """Diagnostics of each evaluated policy's latents; writes latents.npz and the PNG."""
        out = {}
        for name, lat in evaluated.items():
            for k, v in self.monitor(lat).items():
                out[f"latent_{k}_{name}"] = v
        tracked = self.tracked()
        if not self.primary:
            return out
        np.savez(self.directory.parent / "latents.npz", reference=self.monitor.reference,
                 steps=np.array(sorted(tracked), dtype=np.int64),
                 **{f"rollout_step_{s}": v for s, v in tracked.items()}, **evaluated)
        groups = {f"{name} policy, held-out prompts": lat for name, lat in evaluated.items()}
        if tracked:
            last = max(tracked)
            groups = {f"rollouts, iteration {last}": tracked[last], **groups}
        plot_latents(png_path, self.monitor.reference, groups, title)
        out["latent_eps"] = self.monitor.eps
        return out

"""Best-of-n: the unbiased estimator against brute force, KL_bon by hand, the bon and rs stages."""
import itertools
import json
import math
import shutil

import numpy as np
import pytest

from configs.ablations.best_of_n import get_config
from rlhf_jax.objectives.bon import bon_curve, bon_estimate, bon_weights, kl_bon
from rlhf_jax.stages import run as run_pipeline


def test_estimator_equals_the_mean_over_all_subsets():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for n in range(1, 8):
        brute = np.mean([np.mean([g[list(c)][np.argmax(p[list(c)])] for c in itertools.combinations(range(7), n)])
                         for p, g in zip(proxy, gold)])
        assert bon_estimate(proxy, gold, n) == pytest.approx(brute, rel=1e-10, abs=1e-12)


def test_weights_and_kl_by_hand():
    np.testing.assert_allclose(bon_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6])  # C(i-1, 1) / C(4, 2)
    np.testing.assert_allclose(bon_weights(1000, 37).sum(), 1.0, rtol=1e-9)
    assert kl_bon(1) == 0.0
    assert kl_bon(4) == pytest.approx(math.log(4) - 0.75)
    rows = bon_curve(np.arange(6.0)[None], None, [1, 6])
    assert rows[0]["proxy"] == pytest.approx(2.5) and rows[1]["proxy"] == 5.0
    with pytest.raises(ValueError, match="1 <= n <= N"):
        bon_weights(4, 5)


def test_bon_and_rejection_sampling_stages(tmp_path, monkeypatch):
    c = get_config("micro")
    summary = run_pipeline(c, tmp_path, use_wandb=False)
    bon, rs = summary["bon"], summary["rs"]
    assert bon["n_samples"] == 16 and bon["kl_best_of_N"] == pytest.approx(kl_bon(16))
    assert bon["proxy_best_of_N"] > bon["proxy_best_of_1"]  # the proxy's best always scores higher
    curve = __import__("json").loads((tmp_path / "bon" / "curve.json").read_text())
    assert [r["n"] for r in curve] == [1, 2, 4, 8, 16]
    assert all(b["proxy"] >= a["proxy"] - 1e-9 for a, b in zip(curve, curve[1:]))
    assert rs["proxy_of_kept_samples"] > rs["proxy_mean"]
    for key in ("gold_reward_sft", "gold_reward_final", "kl_final", "win_rate_vs_sft", "val_loss"):
        assert np.isfinite(rs[key]), key
    assert (tmp_path / "rs" / "final").exists()
    assert not (tmp_path / "bon" / "samples").exists() and not (tmp_path / "rs" / "samples").exists()
    # the oracle ranker (gold itself): its best-of-n gold rises with n and bounds the RM's
    shutil.rmtree(tmp_path / "bon")
    oracle = get_config("micro,oracle")
    oracle.stages = "bon"
    ob = run_pipeline(oracle, tmp_path, use_wandb=False)["bon"]
    curve = __import__("json").loads((tmp_path / "bon" / "curve.json").read_text())
    assert all(r["proxy"] == pytest.approx(r["gold"]) for r in curve)
    assert all(b["gold"] >= a["gold"] - 1e-9 for a, b in zip(curve, curve[1:]))
    assert ob["gold_best_of_N"] >= bon["gold_best_of_N"] - 1e-9
    _stopped_between_sampling_chunks_resumes_to_the_same_curve(oracle, tmp_path, monkeypatch)


def _stopped_between_sampling_chunks_resumes_to_the_same_curve(c, workdir, monkeypatch):
    """The stage keeps each finished chunk (WORKDIR/bon/samples): a SIGTERM while the second chunk
    is sampled stops the run, and the next samples only the chunks not kept."""
    from rlhf_jax import signals
    from rlhf_jax.stages import sampling
    monkeypatch.setattr(sampling, "CHUNK", 64)  # the micro config's 16 prompts x 16 samples: 4 chunks
    shutil.rmtree(workdir / "bon")
    run_pipeline(c, workdir, use_wandb=False)
    whole = json.loads((workdir / "bon" / "curve.json").read_text())
    shutil.rmtree(workdir / "bon")
    saved, save, stop_at = [], sampling.ChunkStore.save, [2]

    def save_then_stop(self, start, *arrays):
        save(self, start, *arrays)
        saved.append(start)
        if len(saved) in stop_at:
            signals._STATE["signal"] = "SIGTERM"
    monkeypatch.setattr(sampling.ChunkStore, "save", save_then_stop)
    signals.reset()
    try:
        with pytest.raises(signals.StopRequested):
            run_pipeline(c, workdir, use_wandb=False)
    finally:
        signals.reset()
    assert saved == [0, 64] and len(list((workdir / "bon" / "samples").glob("*.npz"))) == 2
    saved.clear()
    stop_at.clear()
    run_pipeline(c, workdir, use_wandb=False)
    assert saved == [128, 192]  # chunks 0 and 64 read back
    assert json.loads((workdir / "bon" / "curve.json").read_text()) == whole
    assert not (workdir / "bon" / "samples").exists()


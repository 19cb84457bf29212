"""InfoRM: the KL forms and the loss by hand, the head's evaluation path, the training step
against a recomputation with the same noise, and the latent-space diagnostics on known data."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import TokenizeConfig, ranking_arrays
from rlhf_jax.eval.latents import LatentMonitor, cluster_separation_index, dbscan, default_eps, pairwise_distances
from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.objectives.inform import inform_loss, latent_kl
from rlhf_jax.models import forward
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.state import TrainState
from tests import tolerance as tol

MU = jnp.array([[[1.0, 0.0]]])
LOGVAR = jnp.array([[[0.0, math.log(2.0)]]])


def test_kl_forms_by_hand():
    # per dimension 0.5 (mu^2 + sigma^2 - 1 - log sigma^2): 0.5 and 0.5 (1 - log 2)
    assert float(latent_kl(MU, LOGVAR, "per_dim_sum")[0, 0]) == pytest.approx(0.5 + 0.5 * (1 - math.log(2)), rel=1e-6)
    # released code: mean mu 0.5, mean log var log(2)/2, then one 1-D KL
    m, lv = 0.5, math.log(2) / 2
    assert float(latent_kl(MU, LOGVAR, "mean_then_kl")[0, 0]) == pytest.approx(
        0.5 * (m * m + math.exp(lv) - 1 - lv), rel=1e-6)
    with pytest.raises(ValueError, match="kl_form"):
        latent_kl(MU, LOGVAR, "sum")


def _kl(mu, lv):
    return 0.5 * np.sum(mu ** 2 + np.exp(lv) - 1 - lv)


def test_pairwise_loss_adds_beta_times_both_kls():
    rng = np.random.default_rng(0)
    scores = np.array([[1.5, 0.3], [-0.2, 0.4]], np.float32)  # B=2 pairs, response 0 preferred
    mu, lv = rng.normal(size=(2, 2, 3)).astype(np.float32), rng.normal(size=(2, 2, 3)).astype(np.float32) * 0.3
    ranks, valid = np.array([[0, 1], [0, 1]]), np.ones((2, 2))
    bt = np.mean([-np.log(1 / (1 + np.exp(-(s[0] - s[1])))) for s in scores])
    kl_pairs = np.mean([_kl(mu[b, 0], lv[b, 0]) + _kl(mu[b, 1], lv[b, 1]) for b in range(2)])
    loss, m = inform_loss(scores, mu, lv, ranks, valid, beta=0.1, form="per_dim_sum")
    assert float(loss) == pytest.approx(bt + 0.1 * kl_pairs, rel=1e-5)
    assert float(m["bt_loss"]) == pytest.approx(bt, rel=1e-5)
    # released-code form: one 1-D KL of the dimension-averaged statistics, mean over the 2B responses
    kl_mean = np.mean([0.5 * (mu[b, i].mean() ** 2 + np.exp(lv[b, i].mean()) - 1 - lv[b, i].mean())
                       for b in range(2) for i in range(2)])
    loss, _ = inform_loss(scores, mu, lv, ranks, valid, beta=0.5, form="mean_then_kl")
    assert float(loss) == pytest.approx(bt + 0.5 * kl_mean, rel=1e-5)


def test_kwise_ranking_kl_weights_each_pair_like_its_loss():
    rng = np.random.default_rng(1)
    mu, lv = rng.normal(size=(1, 3, 4)).astype(np.float32), rng.normal(size=(1, 3, 4)).astype(np.float32) * 0.2
    scores = np.zeros((1, 3), np.float32)  # BT loss log 2 for each pair
    loss, m = inform_loss(scores, mu, lv, np.array([[0, 1, 2]]), np.ones((1, 3)), beta=1.0)
    kls = [_kl(mu[0, i], lv[0, i]) for i in range(3)]
    # 3 pairs (0,1), (0,2), (1,2): each response in 2 of them -> mean over pairs = 2 * sum / 3
    assert float(m["latent_kl"]) == pytest.approx(2 * sum(kls) / 3, rel=1e-5)
    assert float(loss) == pytest.approx(math.log(2) + 2 * sum(kls) / 3, rel=1e-5)


@pytest.fixture(scope="module")
def setup():
    tok = synthetic.tokenizer()
    cfg = PRESETS["test"].replace(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  latent_dim=6)
    arrays, _ = ranking_arrays(synthetic.ranking_records(synthetic.WorldConfig(seed=0), 8, k=3), tok,
                               TokenizeConfig(max_len=16, max_prompt_len=8))
    return cfg, init_model(cfg, head="inform", seed=0), arrays


def test_head_scores_with_the_mean_latent(setup):
    cfg, model, arrays = setup
    tokens, mask = arrays["tokens"][:, 0], arrays["mask"][:, 0]
    mu, logvar = forward.latent_posterior(model.graphdef, model.params, tokens, mask)
    assert mu.shape == logvar.shape == (8, 6)
    head = model.params["head"]
    expected = np.asarray(mu) @ np.asarray(head["decoder"]) + float(head["bias"])
    # score_at_last computes mu again in its own program (the forward chain's bound at |mu|, through
    # the decoder's weights), then the 6-term product and the bias in its own order
    dec = np.asarray(head["decoder"])
    atol = (tol.forward(cfg, 16, mu) * float(np.abs(dec).sum())
            + tol.f32(7, float((np.abs(np.asarray(mu)) @ np.abs(dec)).max()) + abs(float(head["bias"]))))
    np.testing.assert_allclose(forward.score_at_last(model.graphdef, model.params, tokens, mask), expected,
                               rtol=0, atol=atol)
    # the encoder and decoder are bias-free: a zero hidden state gives mu = 0, log var = 0, score = bias
    assert set(head) == {"encoder", "decoder", "bias"} and head["encoder"].shape == (cfg.d_model, 12)


def test_train_step_is_bt_on_sampled_latents_plus_kl(setup):
    cfg, model, arrays = setup
    tx, sched = make_optimizer(1e-3, 10, warmup_steps=0)
    step = jax.jit(rm_lib.make_rm_step(model.graphdef, tx, sched, ib_beta=0.3, kl_form="per_dim_sum"))
    state = TrainState(model.params, tx.init(model.params), jnp.zeros((), jnp.int32))
    rng = jax.random.key(7)
    _, metrics = step(state, arrays, rng)
    # recompute: z = mu + sigma * eps with the step's own noise, decoded, BT + 0.3 * KL
    B, K, T = arrays["tokens"].shape
    mu, lv = forward.latent_posterior(model.graphdef, model.params, arrays["tokens"].reshape(B * K, T),
                                     arrays["mask"].reshape(B * K, T))
    z = mu + jnp.exp(0.5 * lv) * jax.random.normal(rng, mu.shape)
    head = model.params["head"]
    scores = (np.asarray(z) @ np.asarray(head["decoder"]) + float(head["bias"])).reshape(B, K)
    loss, _ = inform_loss(scores, mu.reshape(B, K, -1), lv.reshape(B, K, -1), arrays["ranks"], arrays["valid"], 0.3)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    # a different key samples different latents, so the loss moves (the noise is really there)
    _, other = step(state, arrays, jax.random.key(8))
    assert float(other["loss"]) != pytest.approx(float(metrics["loss"]), rel=1e-6)


def reference_dbscan(x, eps, min_samples):
    """The hand-written DBSCAN that rlhf_jax.eval.latents used before scikit-learn, kept as the reference."""
    d = pairwise_distances(x, x)
    near = d <= eps
    core = near.sum(1) >= min_samples
    labels = np.full(len(x), -1)
    cluster = 0
    for start in np.flatnonzero(core):
        if labels[start] != -1:
            continue
        labels[start] = cluster
        frontier = [start]
        while frontier:
            i = frontier.pop()
            for j in np.flatnonzero(near[i]):
                if labels[j] == -1:
                    labels[j] = cluster
                    if core[j]:
                        frontier.append(j)
        cluster += 1
    return labels


def same_up_to_relabelling(a, b) -> bool:
    """Equal noise (-1) exactly, and the same partition of the other points under some bijection of labels."""
    a, b = np.asarray(a), np.asarray(b)
    if not np.array_equal(a == -1, b == -1):
        return False
    pairs = set(zip(a[a != -1].tolist(), b[b != -1].tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


HAND_PLACED = np.concatenate([np.array([[10.0, 0.0], [10.1, 0.0], [10.0, 0.1], [9.9, 0.0]]),
                              np.array([[0.0, 5.0], [0.1, 5.0], [0.0, 5.1]]), np.array([[-7.0, -7.0]])])


def test_sklearn_dbscan_matches_the_hand_written_one():
    for eps, min_samples in [(0.25, 3), (0.15, 2), (0.11, 3), (0.05, 2), (20.0, 3), (0.25, 5)]:
        ours, ref = dbscan(HAND_PLACED, eps, min_samples), reference_dbscan(HAND_PLACED, eps, min_samples)
        assert same_up_to_relabelling(ours, ref), (eps, min_samples, ours, ref)
    assert list(dbscan(HAND_PLACED, 0.15, 2)) == [0, 0, 0, 0, 1, 1, 1, -1]
    assert list(dbscan(HAND_PLACED, 0.05, 2)) == [-1] * 8
    rng = np.random.default_rng(0)  # three blobs, scattered noise, and latents of the monitor's shape
    for seed in range(5):
        x = np.concatenate([rng.normal(c, 0.3, size=(60, 4)) for c in (0.0, 3.0, -3.0)] + [rng.uniform(-8, 8, (30, 4))])
        ours, ref = dbscan(x, 0.6, 4), reference_dbscan(x, 0.6, 4)
        assert same_up_to_relabelling(ours, ref) and (ours == -1).sum() > 0 and ours.max() >= 2, seed
    assert not same_up_to_relabelling([0, 0, 1], [0, 1, 1]) and not same_up_to_relabelling([0, -1], [0, 0])
    assert list(dbscan(np.zeros((3, 2)), 0.0, 2)) == [0, 0, 0]  # eps 0: identical points still cluster


def test_dbscan_and_csi_on_known_points():
    blob_a = np.array([[10.0, 0.0], [10.1, 0.0], [10.0, 0.1], [9.9, 0.0]])
    blob_b = np.array([[0.0, 5.0], [0.1, 5.0], [0.0, 5.1]])
    outlier = np.array([[-7.0, -7.0]])
    labels = dbscan(np.concatenate([blob_a, blob_b, outlier]), eps=0.25, min_samples=3)
    assert list(labels) == [0, 0, 0, 0, 1, 1, 1, -1]
    reference = np.array([[0.0, 0.0], [10.0, 3.0]])
    out = cluster_separation_index(np.concatenate([blob_a, blob_b, outlier]), reference, 0.25, 3)
    ca, cb = blob_a.mean(0), blob_b.mean(0)
    expected = (4 * min(np.linalg.norm(ca - r) for r in reference) + 3 * min(np.linalg.norm(cb - r) for r in reference)
                + 1 * np.linalg.norm(outlier[0]))  # the noise point counts as a cluster of one
    assert out == {"csi": pytest.approx(expected, rel=1e-9), "clusters": 2, "noise_points": 1}


def test_monitor_outlier_rate_and_csi_react_to_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2000, 4))
    monitor = LatentMonitor(reference, min_samples=4, quantile=0.99)
    assert monitor.eps == pytest.approx(default_eps(reference, 4))
    same = monitor(rng.normal(size=(2000, 4)))
    shifted = monitor(rng.normal(size=(2000, 4)) + 6.0)
    assert same["outlier_rate"] == pytest.approx(0.01, abs=0.008)  # sampling: 3.6 standard errors (0.0022) at n = 2,000
    assert shifted["outlier_rate"] > 0.99
    assert shifted["csi"] > 20 * same["csi"]


def test_inform_pipeline_tracks_latents(tmp_path):
    from configs.ablations.inform import get_config
    from rlhf_jax.stages import run as run_pipeline
    c = get_config("inform,micro")
    c.stages = "sft,rm,ppo"
    summary = run_pipeline(c, tmp_path, use_wandb=False)
    ppo = summary["ppo"]
    for name in ("sft", "final"):
        assert 0.0 <= ppo[f"latent_outlier_rate_{name}"] <= 1.0 and ppo[f"latent_csi_{name}"] > 0
    logged = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    tracked = [m["step"] for m in logged if "latent/csi" in m]
    assert tracked == [2, 4]  # every inform.track_every = 2 iterations
    saved = np.load(tmp_path / "ppo" / "latents.npz")
    assert saved["reference"].shape == (32, 8) and list(saved["steps"]) == [2, 4]
    assert saved["rollout_step_4"].shape == (16, 8) and saved["final"].shape == (32, 8)
    assert (tmp_path / "ppo" / "latents.png").stat().st_size > 10_000

"""KV-cache sampling: cache consistency, greedy parity with transformers, EOS, filtering, log-probs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlhf_jax.generate import SamplingConfig, generate, left_pad, process_logits
from rlhf_jax.models import KVCache, PRESETS, init_model, load_pretrained
from tests.models.test_hf_parity import V, make_hf
from tests import tolerance as tol


@pytest.fixture(scope="module")
def model():
    return init_model(PRESETS["test"].replace(vocab_size=64), seed=1)


def test_cached_logits_equal_full_forward(model):
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 64, 5)), list(rng.integers(1, 64, 3))]
    cont = rng.integers(1, 64, size=(2, 4)).astype(np.int32)
    tokens, mask = left_pad(prompts)
    cache = KVCache.init(model.cfg, 2, tokens.shape[1] + cont.shape[1])
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    step_logits = []
    logits, cache = model(tokens, positions_BxT=pos, segment_ids_BxT=mask, cache=cache)
    step_logits.append(logits[:, -1])
    for i in range(cont.shape[1]):
        p = mask.sum(1)[:, None] + i
        logits, cache = model(cont[:, i:i + 1], positions_BxT=p, segment_ids_BxT=np.ones((2, 1), np.int32),
                              cache=cache)
        step_logits.append(logits[:, -1])
    full_tokens = np.concatenate([tokens, cont], 1)
    full_mask = np.concatenate([mask, np.ones_like(cont)], 1)
    full_pos = np.clip(np.cumsum(full_mask, 1) - 1, 0, None)
    full, _ = model(full_tokens, positions_BxT=full_pos, segment_ids_BxT=full_mask)
    expected = np.asarray(full[:, tokens.shape[1] - 1:])
    # the cached steps and the full pass attend in another order: the forward chain's bound
    np.testing.assert_allclose(np.stack([np.asarray(x) for x in step_logits], 1), expected, rtol=0,
                               atol=tol.forward(model.cfg, full_tokens.shape[1], expected))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_greedy_equals_transformers(kind, tmp_path):
    ref = make_hf(kind, tmp_path / "hf")
    ours, _ = load_pretrained(tmp_path / "hf", load_tokenizer=False)
    rng = np.random.default_rng(4)
    prompts = [list(rng.integers(1, V, 6)), list(rng.integers(1, V, 3)), list(rng.integers(1, V, 5))]
    tokens, mask = left_pad(prompts)
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0, pad_token_id=0)
    out = generate(ours.graphdef, ours.params, tokens, mask, jax.random.key(0), cfg)
    with torch.no_grad():
        theirs = ref.generate(torch.tensor(tokens).long(), attention_mask=torch.tensor(mask).long(),
                              do_sample=False, max_new_tokens=10, min_new_tokens=10, pad_token_id=0,
                              eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN), theirs[:, tokens.shape[1]:].numpy())
    assert np.asarray(out.mask_BxN).all()


def test_stops_at_eos_per_row(model):
    tokens, mask = left_pad([[3, 4, 5], [6, 7]])
    free = generate(model.graphdef, model.params, tokens, mask, jax.random.key(0),
                    SamplingConfig(max_new_tokens=6, temperature=0.0))
    eos = int(free.tokens_BxN[0, 2])  # row 0 emits this at step 2
    out = generate(model.graphdef, model.params, tokens, mask, jax.random.key(0),
                   SamplingConfig(max_new_tokens=6, temperature=0.0, eos_token_ids=(eos,), pad_token_id=63))
    row0 = np.asarray(out.tokens_BxN[0])
    first = int(np.argmax(row0 == eos))
    assert first <= 2
    np.testing.assert_array_equal(np.asarray(out.mask_BxN[0]), (np.arange(6) <= first).astype(np.int32))
    assert (row0[first + 1:] == 63).all() and (np.asarray(out.logprobs_BxN[0, first + 1:]) == 0).all()
    np.testing.assert_array_equal(row0[:first + 1], np.asarray(free.tokens_BxN[0, :first + 1]))


def test_top_k_and_top_p_filtering():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    topk = process_logits(logits, SamplingConfig(top_k=2))
    assert np.isfinite(np.asarray(topk)).tolist() == [[True, True, False, False, False]]
    # mass before each token: 0, .5, .7, .85, .95 -> top_p=0.7 keeps the first two, 0.71 the first three
    for top_p, kept in [(0.7, 2), (0.71, 3), (0.3, 1), (1.0, 5)]:
        out = process_logits(logits, SamplingConfig(top_p=top_p))
        assert int(np.isfinite(np.asarray(out)).sum()) == kept, top_p
    probs = jax.nn.softmax(process_logits(logits, SamplingConfig(top_p=0.7)))
    np.testing.assert_allclose(np.asarray(probs[0, :2]), [0.5 / 0.7, 0.2 / 0.7], rtol=1e-6)


def test_logprobs_are_under_the_sampling_distribution(model):
    tokens, mask = left_pad([[3, 4, 5, 9], [6, 7]])
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.7)
    out = generate(model.graphdef, model.params, tokens, mask, jax.random.key(3), cfg)
    full_tokens = np.concatenate([tokens, np.asarray(out.tokens_BxN)], 1)
    full_mask = np.concatenate([mask, np.asarray(out.mask_BxN)], 1)
    pos = np.clip(np.cumsum(full_mask, 1) - 1, 0, None)
    logits, _ = model(full_tokens, positions_BxT=pos, segment_ids_BxT=full_mask)
    logp = jax.nn.log_softmax(logits[:, tokens.shape[1] - 1:-1] / 0.7, axis=-1)
    expected = np.take_along_axis(np.asarray(logp), np.asarray(out.tokens_BxN)[..., None], -1)[..., 0]
    # cached sampling steps against one full pass, then log-softmax over the vocabulary (at |log p|)
    atol = tol.forward(model.cfg, full_tokens.shape[1], expected, extra=model.cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(out.logprobs_BxN), expected * np.asarray(out.mask_BxN), rtol=0, atol=atol)


def test_sampling_is_reproducible_and_seed_dependent(model):
    tokens, mask = left_pad([[3, 4, 5]] * 4)
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    a = generate(model.graphdef, model.params, tokens, mask, jax.random.key(1), cfg)
    b = generate(model.graphdef, model.params, tokens, mask, jax.random.key(1), cfg)
    c = generate(model.graphdef, model.params, tokens, mask, jax.random.key(2), cfg)
    np.testing.assert_array_equal(np.asarray(a.tokens_BxN), np.asarray(b.tokens_BxN))
    assert not np.array_equal(np.asarray(a.tokens_BxN), np.asarray(c.tokens_BxN))


def test_inverse_cdf_sampler_draws_the_distribution_and_never_a_filtered_token():
    from scipy.stats import chisquare

    from rlhf_jax.generate import inverse_cdf_sample
    # 600 tokens (3 blocks of 256, the last partial), mass spread over all blocks, every 7th token filtered
    rng = np.random.default_rng(0)
    logits = rng.normal(size=600).astype(np.float32) * 2
    logits[::7] = -np.inf
    logp = jax.nn.log_softmax(jnp.asarray(logits))
    n = 200_000
    tokens = np.asarray(jax.jit(inverse_cdf_sample)(jax.random.key(1), jnp.broadcast_to(logp, (n, 600))))
    assert tokens.min() >= 0 and tokens.max() < 600
    assert not np.any(tokens % 7 == 0), "a token of probability 0 was drawn"
    counts = np.bincount(tokens, minlength=600)
    p = np.exp(np.asarray(logp, np.float64))
    keep = p > 0
    expected = p[keep] / p[keep].sum() * n
    # pooled into the deciles of probability so every cell expects plenty of draws
    order = np.argsort(expected)
    cells = np.array_split(order, 10)
    _, pvalue = chisquare([counts[keep][c].sum() for c in cells], [expected[c].sum() for c in cells])
    assert pvalue > 1e-3, pvalue
    # the most likely token's frequency within 4 standard errors of its probability
    top = int(np.argmax(p))
    se = np.sqrt(p[top] * (1 - p[top]) / n)
    assert abs(counts[top] / n - p[top]) < 4 * se


def test_inverse_cdf_sampler_with_top_k_one_is_greedy():
    from rlhf_jax.generate import sample_token
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(8, 300)).astype(np.float32))
    token, _ = sample_token(logits, jax.random.key(0), SamplingConfig(top_k=1, sampler="inverse_cdf"))
    np.testing.assert_array_equal(np.asarray(token), np.asarray(jnp.argmax(logits, -1)))


class _Kept:
    """A ChunkStore in memory: what sample_rows keeps and reads back."""

    def __init__(self):
        self.chunks, self.saved, self.loaded = {}, [], []

    def load(self, start):
        if start in self.chunks:
            self.loaded.append(start)
            return self.chunks[start]
        return None

    def save(self, start, response, mask):
        self.saved.append(start)
        self.chunks[start] = (response, mask)


def test_sample_rows_stopped_between_chunks_resumes_to_the_uninterrupted_rows(model, monkeypatch):
    from rlhf_jax import generate as gen_mod, signals
    from rlhf_jax.generate import sample_rows
    tokens, mask = left_pad([[3, 4, 5], [7, 8], [9]])
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0)
    whole = sample_rows(model.graphdef, model.params, tokens, mask, 4, cfg, seed=3, chunk=5)  # 12 rows: chunks 0, 5, 10
    kept, calls = _Kept(), []
    real = gen_mod.generate
    monkeypatch.setattr(gen_mod, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    signals.reset()
    save = kept.save

    def stop_after_first(start, *arrays):  # a SIGTERM arrives while the first chunk is sampled
        save(start, *arrays)
        signals._STATE["signal"] = "SIGTERM"
    kept.save = stop_after_first
    try:
        with pytest.raises(signals.StopRequested):
            sample_rows(model.graphdef, model.params, tokens, mask, 4, cfg, seed=3, chunk=5, store=kept)
    finally:
        signals.reset()
    assert kept.saved == [0] and len(calls) == 1
    kept.save = save
    again = sample_rows(model.graphdef, model.params, tokens, mask, 4, cfg, seed=3, chunk=5, store=kept)
    assert kept.loaded == [0] and kept.saved == [0, 5, 10] and len(calls) == 3  # only chunks 5 and 10 sampled
    for key in whole:
        np.testing.assert_array_equal(again[key], whole[key])


@pytest.mark.parametrize("weights", ["plain", "lora_int8"])
def test_per_layer_decoding_samples_what_the_scan_samples(model, weights):
    """`decode_layers="per_layer"` (the weights sliced per layer once, layers unrolled on per-layer
    caches) against "scan", on plain weights and on LoRA adapters over an int8 base (`LowRank`
    leaves): the same greedy tokens, and log-probs at temperature 1 within the bound of two
    programs' forward passes (the same operations; XLA may fuse them differently)."""
    from rlhf_jax.train import lora as lora_lib
    params = model.params
    if weights == "lora_int8":
        cfg_lora = lora_lib.LoRAConfig(rank=4, alpha=8.0)
        trainable = lora_lib.split(params, cfg_lora, jax.random.key(5))
        trainable["adapters"] = jax.tree.map(lambda a: a + 0.05, trainable["adapters"])  # B != 0
        params = lora_lib.view(lora_lib.quantize(params), trainable, cfg_lora)
    tokens, mask = left_pad([[3, 4, 5, 9, 11], [6, 7], [8, 2, 40]])
    out = {}
    for mode in ("scan", "per_layer"):
        graphdef = init_model(model.cfg.replace(decode_layers=mode), seed=1).graphdef
        for temperature in (0.0, 1.0):
            cfg = SamplingConfig(max_new_tokens=6, temperature=temperature)
            out[mode, temperature] = generate(graphdef, params, tokens, mask, jax.random.key(2), cfg)
    np.testing.assert_array_equal(np.asarray(out["scan", 0.0].tokens_BxN), np.asarray(out["per_layer", 0.0].tokens_BxN))
    a, b = out["scan", 1.0], out["per_layer", 1.0]
    np.testing.assert_array_equal(np.asarray(a.tokens_BxN), np.asarray(b.tokens_BxN))
    expected = np.asarray(a.logprobs_BxN)
    atol = tol.forward(model.cfg, tokens.shape[1] + 6, expected, extra=model.cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(b.logprobs_BxN), expected, rtol=0, atol=atol)


def test_decode_layers_auto_is_per_layer_on_cpu_only(model):
    from rlhf_jax.generate import decode_per_layer
    assert decode_per_layer(model.cfg) == (jax.default_backend() == "cpu")
    assert decode_per_layer(model.cfg.replace(decode_layers="scan")) is False
    assert decode_per_layer(model.cfg.replace(decode_layers="per_layer")) is True
    with pytest.raises(ValueError, match="decode_layers='unrolled' is not one of"):
        model.cfg.replace(decode_layers="unrolled")

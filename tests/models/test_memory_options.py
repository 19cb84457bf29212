"""Memory options equal today's computation: chunked log-probs / entropy / LM loss (values and
gradients), remat policies, jax.nn.dot_product_attention, and gradient accumulation (the update
of microbatches equals the whole batch's)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import base
from rlhf_jax import sharding as shd
from rlhf_jax.data import synthetic
from rlhf_jax.data.shared_prompt import continuation_batches
from rlhf_jax.data.tokenize import TokenizeConfig, ranking_arrays, sft_arrays
from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.models import PRESETS, ModelConfig, abstract_model, init_model
from rlhf_jax.models import forward as F
from rlhf_jax.models import layers as L
from rlhf_jax.objectives.lm import _logits, chunked_token_logprobs, token_entropy, token_logprobs
from rlhf_jax.rewards import ModelReward
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train import sft as sft_lib
from rlhf_jax.train.state import TrainState, compile_step
from tests import tolerance as tol

TOK = synthetic.tokenizer()
WORLD = synthetic.WorldConfig(seed=0, max_items=4)
TCFG = TokenizeConfig(max_len=16, max_prompt_len=8)
CFG = PRESETS["test"].replace(vocab_size=len(TOK), eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)
# Every comparison here is two operation orders of one float32 computation (tests/tolerance.py). The
# longest chain is a gradient of the test model over 16 x 16 positions; the values compared and
# their intermediates are O(1) (log-probs over 22 tokens, gradients at initialisation) or scale
# with the value itself (rtol). Steps compare at the size of their largest update (`step_tol`).
CHAIN = tol.gradient_chain(CFG, 16, 16 * 16)
ATOL = RTOL = tol.f32(CHAIN)


def step_tol(after, before) -> float:
    """Parameters after one SGD step at lr 1 (the update is the gradient): the gradient's error
    at the size of the largest update."""
    return tol.f32(CHAIN, max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                              for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))))


def close(a, b, atol=ATOL, rtol=RTOL, msg=""):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol,
                                                         err_msg=msg), a, b)


def graphdef(cfg: ModelConfig, head: str = "lm"):
    return abstract_model(cfg, head)[0]


# --- chunked log-probs ------------------------------------------------------------------------

@pytest.mark.parametrize("spec,chunk,vocab_chunk,temperature", [
    ("vd", 4, 0, 1.0), ("dv", 5, 0, 0.7), ("vd", 3, 8, 1.0), ("dv", 11, 16, 1.3), ("vd", 20, 37, 1.0)])
def test_chunked_token_logprobs_equal_full_logits(spec, chunk, vocab_chunk, temperature):
    """Log-probs, entropy and their gradients (w.r.t. hidden states and unembedding) equal the
    full-logits computation; T = 11 and V = 37 are not multiples of the chunks (padding)."""
    kh, kw, kt, ka, kb = jax.random.split(jax.random.key(0), 5)
    B, T, D, V = 3, 11, 16, 37
    hidden = jax.random.normal(kh, (B, T, D))
    unembed = jax.random.normal(kw, (V, D) if spec == "vd" else (D, V))
    targets = jax.random.randint(kt, (B, T), 0, V)
    a, b = jax.random.normal(ka, (B, T)), jax.random.normal(kb, (B, T))

    def full(h, w):
        logits = _logits(h, w, spec) / temperature
        return token_logprobs(logits, targets), token_entropy(logits)

    def chunked(h, w):
        return chunked_token_logprobs(h, w, targets, chunk, spec=spec, vocab_chunk=vocab_chunk,
                                      temperature=temperature, with_entropy=True)

    close(jax.jit(chunked)(hidden, unembed), jax.jit(full)(hidden, unembed))
    objective = lambda fn: jax.jit(jax.grad(lambda h, w: ((fn(h, w)[0] * a).sum() + (fn(h, w)[1] * b).sum()),
                                            argnums=(0, 1)))
    close(objective(chunked)(hidden, unembed), objective(full)(hidden, unembed))


def _sequences(seed: int = 0, B: int = 4, P: int = 6, N: int = 5):
    """A left-padded prompt + right-padded response batch of random tokens."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    prompt = jax.random.randint(k1, (B, P), 3, CFG.vocab_size)
    resp = jax.random.randint(k2, (B, N), 3, CFG.vocab_size)
    prompt_mask = (jnp.arange(P)[None] >= jnp.array([0, 2, 1, 3])[:B, None]).astype(jnp.int32)
    resp_mask = (jnp.arange(N)[None] < jnp.array([5, 3, 1, 4])[:B, None]).astype(jnp.int32)
    return prompt, prompt_mask, resp, resp_mask


@pytest.mark.parametrize("changes", [dict(logits_chunk=3), dict(logits_chunk=4, vocab_chunk=16, tie_embeddings=False)])
def test_forward_helpers_chunked_equal_full(changes):
    """response / shifted / sequence / packed log-probs with logits_chunk equal the full logits'."""
    cfg = CFG.replace(tie_embeddings=changes.get("tie_embeddings", True))
    params = init_model(cfg, seed=0).params
    full, chunked = graphdef(cfg), graphdef(cfg.replace(**changes))
    prompt, pmask, resp, rmask = _sequences()
    seq = F.sequence_inputs(prompt, pmask, resp, rmask)
    P, N = prompt.shape[1], resp.shape[1]
    for temperature in (1.0, 0.8):
        fn = jax.jit(lambda g, p: F.response_logprobs(g, p, seq, P, N, temperature, with_entropy=True),
                     static_argnums=0)
        close(fn(chunked, params), fn(full, params), msg="response_logprobs")
    tokens, mask, _ = seq
    fn = jax.jit(lambda g, p: F.sequence_logprobs(g, p, tokens, mask, mask), static_argnums=0)
    close(fn(chunked, params), fn(full, params), msg="sequence_logprobs")
    packed = next(continuation_batches([t[:6].tolist() for t in np.asarray(tokens)],
                                       [t[6:10].tolist() for t in np.asarray(tokens)], rows=4))
    fn = jax.jit(lambda g, p: F.packed_logprobs(g, p, packed.rows, packed.col, packed.target), static_argnums=0)
    close(fn(chunked, params), fn(full, params), msg="packed_logprobs")


@pytest.mark.parametrize("tied", [True, False])
def test_response_logprobs_run_the_lm_head_at_the_response_columns_only(tied):
    """`response_logprobs` (PPO's scoring and update) equal the log-probs and entropy read from the
    full B x T x V logits at the N columns that predict the response, values and gradients; the
    compiled program has logits of B x N x V only, none of B x T x V."""
    cfg = CFG.replace(tie_embeddings=tied)
    model = init_model(cfg, seed=0)
    prompt, pmask, resp, rmask = _sequences()
    seq = F.sequence_inputs(prompt, pmask, resp, rmask)
    P, N = prompt.shape[1], resp.shape[1]
    B, T, V = prompt.shape[0], P + N, cfg.vocab_size

    def by_columns(params, temperature):
        logits = F.forward(model.graphdef, params, seq[0], seq[1], positions_BxT=seq[2])[:, P - 1:P + N - 1]
        return token_logprobs(logits, resp, temperature), token_entropy(logits / temperature)

    new = lambda p, t: F.response_logprobs(model.graphdef, p, seq, P, N, t, with_entropy=True)
    for temperature in (1.0, 0.7):
        close(jax.jit(new, static_argnums=1)(model.params, temperature),
              jax.jit(by_columns, static_argnums=1)(model.params, temperature), msg="values")
        grad = lambda f: jax.jit(jax.grad(lambda p: sum(x.sum() for x in f(p, temperature))))(model.params)
        close(grad(new), grad(by_columns), msg="gradients")
    text = jax.jit(new, static_argnums=1).lower(model.params, 1.0).compile().as_text()
    assert f"f32[{B},{N},{V}]" in text and f"f32[{B},{T},{V}]" not in text


def _sft_batch(n: int = 8):
    arrays, _ = sft_arrays(synthetic.sft_records(WORLD, n), TOK, TCFG)
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def test_sft_loss_and_eval_chunked_equal_full():
    params = init_model(CFG, seed=0).params
    batch = _sft_batch()
    grad = lambda g: jax.jit(jax.value_and_grad(sft_lib.sft_loss(g), has_aux=True))(params, batch, None, None)
    (loss, m), grads = grad(graphdef(CFG))
    (loss_c, m_c), grads_c = grad(graphdef(CFG.replace(logits_chunk=5)))
    close(loss_c, loss), close(m_c, m), close(grads_c, grads)
    close(sft_lib.make_sft_eval(graphdef(CFG.replace(logits_chunk=5, vocab_chunk=32)))(params, batch),
          sft_lib.make_sft_eval(graphdef(CFG))(params, batch))


def ppo_lib_hp(**changes):
    """The config's ppo block with `changes`."""
    hp = base().ppo
    hp.update(changes)
    return hp


def _rollout(B: int = 4):
    """A synthetic PPO batch (random old log-probs, values, advantages, returns)."""
    prompt, pmask, resp, rmask = _sequences(1, B)
    tokens, mask, positions = F.sequence_inputs(prompt, pmask, resp, rmask)
    r = jax.random.normal(jax.random.key(5), (4, B, resp.shape[1]))
    maskf = rmask.astype(jnp.float32)
    return ppo_lib.Rollout(tokens, mask, positions, resp, maskf, r[0] * 0.1 - 2.0, r[1], r[2], r[3])


def _ppo_setup(cfg=CFG):
    lm, scalar = init_model(CFG, seed=0), init_model(CFG, head="scalar", seed=1)
    models = ppo_lib.PPOModels(graphdef(cfg), scalar.graphdef, ModelReward(scalar.graphdef))
    ptx = _sft_batch(4)
    return models, {"policy": lm.params, "value": scalar.params}, ptx


def test_ppo_loss_chunked_equals_full():
    """Policy log-probs, ratio, entropy and the ptx term through the chunked path: same loss,
    metrics and gradients."""
    hp = ppo_lib_hp(temperature=0.8, ent_coef=0.01, ptx_coef=0.5)
    models, params, ptx = _ppo_setup()
    chunked = models._replace(policy=graphdef(CFG.replace(logits_chunk=4)))
    fn = lambda m: jax.jit(jax.value_and_grad(lambda p: ppo_lib.ppo_loss(hp, m, p, _rollout(), ptx), has_aux=True))
    (loss, metrics), grads = fn(models)(params)
    (loss_c, metrics_c), grads_c = fn(chunked)(params)
    assert float(metrics["entropy"]) > 1.0 and float(metrics["ptx_loss"]) > 1.0
    close(loss_c, loss), close(metrics_c, metrics), close(grads_c, grads)


# --- remat --------------------------------------------------------------------------------

def test_remat_policies_give_the_same_loss_and_gradients():
    params = init_model(CFG, seed=0).params
    batch = _sft_batch()
    grad = lambda cfg: jax.jit(jax.value_and_grad(sft_lib.sft_loss(graphdef(cfg)), has_aux=True))(
        params, batch, None, None)
    reference = grad(CFG)
    for policy in ("full", "save_matmuls", "save_dots"):
        close(grad(CFG.replace(remat=policy)), reference, msg=policy)
    assert CFG.replace(remat=True).remat == "full" and CFG.replace(remat=False).remat == "none"
    with pytest.raises(ValueError, match="remat"):
        CFG.replace(remat="some")


# --- attention -------------------------------------------------------------------------------

def _qkv(B=3, T=9, S=9, H=4, G=2, K=8):
    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    return (jax.random.normal(kq, (B, T, H, K)), jax.random.normal(kk, (B, S, G, K)),
            jax.random.normal(kv, (B, S, G, K)))


@pytest.mark.parametrize("window", [None, 3])
def test_dot_product_attention_equals_manual(window):
    """Causal + left padding, packed segments with padding, and the sliding window; every row
    (fully masked padding rows included)."""
    q, k, v = _qkv()
    idx = jnp.arange(9)
    segments = jnp.array([[0, 0, 1, 1, 1, 1, 1, 1, 1],   # left padding
                          [1, 1, 1, 2, 2, 2, 2, 0, 0],   # two packed segments, right padding
                          [1, 1, 1, 1, 1, 1, 1, 1, 1]])
    mask = L.attention_mask(idx, idx, segments, segments, window)
    close(L.fused_attention(q, k, v, mask, aligned=True, window=window), L.attention(q, k, v, mask))


def test_dot_product_attention_equals_manual_with_a_cache():
    """Decoding: query slots start + 0..T-1 against the whole cache (not aligned)."""
    q, k, v = _qkv(T=2, S=12)
    segments_k = jnp.array([[0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1] * 7 + [0] * 5, [0] * 6 + [1] + [0] * 5])
    q_seg = jnp.ones((3, 2), jnp.int32)
    segments_k = segments_k.at[:, 7:9].set(1)
    for window in (None, 4):
        mask = L.attention_mask(7 + jnp.arange(2), jnp.arange(12), q_seg, segments_k, window)
        close(L.fused_attention(q, k, v, mask, aligned=False, window=window), L.attention(q, k, v, mask))


def test_model_with_dot_product_attention_equals_manual():
    """A Mistral-shaped model (GQA, sliding window): logits on left-padded batches, gradients,
    and greedy generation with the KV cache."""
    cfg = CFG.replace(family="mistral", sliding_window=4)
    params = init_model(cfg, seed=0).params
    manual, fused = graphdef(cfg), graphdef(cfg.replace(attention_impl="dot_product"))
    prompt, pmask, resp, rmask = _sequences()
    seq = F.sequence_inputs(prompt, pmask, resp, rmask)
    logits = jax.jit(lambda g, p: F.forward(g, p, seq[0], seq[1]), static_argnums=0)
    close(logits(fused, params), logits(manual, params))
    grads = jax.jit(jax.grad(lambda p, g: F.sequence_logprobs(g, p, seq[0], seq[1], seq[1])[0].sum()),
                    static_argnums=1)
    close(grads(params, fused), grads(params, manual))
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.0, eos_token_ids=(TOK.eos_token_id,))
    gen = lambda g: generate(g, params, prompt, pmask, jax.random.key(0), sampling).tokens_BxN
    np.testing.assert_array_equal(np.asarray(gen(fused)), np.asarray(gen(manual)))
    with pytest.raises(ValueError, match="attn_dropout_rate"):
        cfg.replace(attention_impl="dot_product", attn_dropout_rate=0.1)


# --- gradient accumulation -------------------------------------------------------------------

def _one_step(make_step, params, batch, mesh=None):
    """One step with SGD at lr 1, so the parameters move by the gradient itself: Adam's first
    step is about lr * g / |g|, which turns last-bit rounding of a near-zero gradient coordinate
    into a visible difference (optimizers are tested elsewhere; this tests the gradient)."""
    tx, sched = optax.sgd(1.0), (lambda step: 1.0)
    state = TrainState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32))
    step = make_step(tx, sched)
    if mesh is None:
        return jax.jit(step)(state, batch, jax.random.key(0))
    step, state = compile_step(step, state, shd.shard_batch(batch, mesh), mesh, donate=False)
    return step(state, shd.shard_batch(batch, mesh), jax.random.key(0))


@pytest.mark.devices(8)
def test_sft_microbatches_equal_the_whole_batch():
    """grad_accum 2 and 4 (slices with different token counts), and 2 on an 8-device mesh: the
    same parameters after one step as the whole batch, the same loss and token count."""
    lm = init_model(CFG, seed=0)
    batch = _sft_batch(16)
    batch["loss_mask"] = batch["loss_mask"].at[::3, 5:].set(0)  # uneven token counts per slice
    whole, wm = _one_step(lambda tx, s: sft_lib.make_sft_step(lm.graphdef, tx, s), lm.params, batch)
    for m in (2, 4):
        state, metrics = _one_step(lambda tx, s: sft_lib.make_sft_step(lm.graphdef, tx, s, microbatches=m),
                                   lm.params, batch)
        close(state.params, whole.params, atol=step_tol(whole.params, lm.params), rtol=0, msg=f"microbatches={m}")
        keys = ("loss", "tokens", "grad_norm")
        close({k: metrics[k] for k in keys}, {k: wm[k] for k in keys})
    mesh = shd.make_mesh((8, 1, 1))
    state, _ = _one_step(lambda tx, s: sft_lib.make_sft_step(lm.graphdef, tx, s, microbatches=2),
                         init_model(CFG, seed=0, mesh=mesh).params, batch, mesh)
    close(jax.device_get(state.params), whole.params, atol=step_tol(whole.params, lm.params), rtol=0,
          msg="sharded")
    with pytest.raises(ValueError, match="divisible"):
        _one_step(lambda tx, s: sft_lib.make_sft_step(lm.graphdef, tx, s, microbatches=3), lm.params, batch)


def test_rm_microbatches_equal_the_whole_batch():
    """K = 3 rankings where slices differ in ranked prompts (one prompt has no pair at all)."""
    scalar = init_model(CFG, head="scalar", seed=1)
    arrays, _ = ranking_arrays(synthetic.ranking_records(WORLD, 8, k=3), TOK, TCFG)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    batch["valid"] = batch["valid"].at[0, 1:].set(0).at[3, 2].set(0).at[5, 0].set(0)
    make = lambda m: lambda tx, s: rm_lib.make_rm_step(scalar.graphdef, tx, s, margin=0.1, center_coef=0.01,
                                                       microbatches=m)
    whole, wm = _one_step(make(1), scalar.params, batch)
    assert float(rm_lib.ranked_prompts(batch)) == 7
    for m in (2, 4):
        state, metrics = _one_step(make(m), scalar.params, batch)
        close(state.params, whole.params, atol=step_tol(whole.params, scalar.params), rtol=0,
              msg=f"microbatches={m}")
        keys = ("loss", "pairs", "grad_norm")
        close({k: metrics[k] for k in keys}, {k: wm[k] for k in keys})


def test_ppo_grad_accum_equals_the_whole_minibatch():
    """PPO's update with each minibatch in 2 slices (ptx included) equals grad_accum 1."""
    models, params, ptx = _ppo_setup()
    tx = optax.sgd(1.0)  # see `_one_step`

    def run(**changes):
        hp = ppo_lib_hp(minibatches=1, epochs=1, ptx_coef=0.5, ent_coef=0.01, **changes)
        fn = jax.jit(lambda p, o: ppo_lib.update(hp, models, tx, p, o, _rollout(), ptx, jax.random.key(1)))
        return fn(params, tx.init(params))

    p1, _, m1 = run()
    p2, _, m2 = run(grad_accum=2)
    close(p2, p1, atol=step_tol(p1, params), rtol=0)
    close({k: m2[k] for k in ("loss", "policy_loss", "ptx_loss", "entropy", "ratio_max")},
          {k: m1[k] for k in ("loss", "policy_loss", "ptx_loss", "entropy", "ratio_max")})


def test_config_defaults_are_todays_computation():
    c, cfg = base(), ModelConfig()
    assert (c.model.remat, c.model.attention_impl, c.model.logits_chunk, c.model.vocab_chunk) == (
        cfg.remat, cfg.attention_impl, cfg.logits_chunk, cfg.vocab_chunk) == ("none", "xla_manual", 0, 0)
    assert all(c[block].grad_accum == 1 for block in ("sft", "rs", "rm", "fgrm", "dpo", "ppo"))


def test_unrolled_layer_scan_gives_the_same_logits_and_gradients():
    cfg = CFG.replace(n_layers=3)
    scanned, unrolled = init_model(cfg, seed=0), init_model(cfg.replace(scan_unroll=3), seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 9)), jnp.int32)
    loss = lambda m: lambda p: jnp.mean(jax.nn.log_softmax(F.forward(m.graphdef, p, tokens))[..., 5])
    close(F.forward(scanned.graphdef, scanned.params, tokens), F.forward(unrolled.graphdef, unrolled.params, tokens))
    close(jax.grad(loss(scanned))(scanned.params), jax.grad(loss(unrolled))(unrolled.params))
    with pytest.raises(ValueError, match="scan_unroll=4"):
        cfg.replace(scan_unroll=4)

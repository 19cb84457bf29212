"""LoRA: the merged model starts as the base, gradients follow the chain rule, only adapters train."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.models.lowrank import densify
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train.lora import LoRAConfig
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.sft import lm_forward, make_sft_step
from rlhf_jax.train.state import TrainState
from rlhf_jax.objectives.lm import next_token_loss
from tests import tolerance as tol


@pytest.fixture(scope="module")
def setup():
    model = init_model(PRESETS["test"], seed=0)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, 128, (4, 12)), jnp.int32)
    batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens), "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.broadcast_to(jnp.arange(12), (4, 12))}
    return model, batch


def loss_of(model, params, batch):
    return next_token_loss(lm_forward(model.graphdef, params, batch), batch["tokens"], batch["loss_mask"])[0]


def test_starts_as_base_and_counts(setup):
    model, _ = setup
    cfg = LoRAConfig(rank=4, alpha=8.0)
    adapters = lora_lib.init(model.params, cfg, jax.random.key(1))
    merged = lora_lib.merge(model.params, adapters, cfg)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # test preset: L=2, d=32, heads 4x8, kv 2x8, ff 64: per layer r*(in+out) summed over targets
    d, q, kv, ff, r = 32, 32, 16, 64, 4
    per_layer = r * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + ff) + (ff + d))
    assert lora_lib.count(adapters) == 2 * per_layer
    with pytest.raises(ValueError, match="targets"):
        LoRAConfig(targets=("embed",))


def test_gradients_follow_chain_rule(setup):
    """dL/dB = s A^T G and dL/dA = s G B^T, with G = dL/dW at the merged weights."""
    model, batch = setup
    cfg = LoRAConfig(rank=2, alpha=6.0, targets=("wq", "wo"))
    adapters = lora_lib.init(model.params, cfg, jax.random.key(1))
    adapters["wo"]["b"] = 0.01 * jax.random.normal(jax.random.key(2), adapters["wo"]["b"].shape)
    g_ad = jax.grad(lambda ad: loss_of(model, lora_lib.merge(model.params, ad, cfg), batch))(adapters)
    merged = lora_lib.merge(model.params, adapters, cfg)
    g_w = jax.grad(lambda p: loss_of(model, p, batch))(merged)["blocks"]
    # g_ad's G (inside autodiff) and g_w come from two programs (the gradient chain's bound over the
    # 4 x 12 positions), then each product sums fan_in (or fan_out) terms in its own order: elementwise
    # bounds from |A|, |B| and |G| (tests/tolerance.py)
    dG = tol.f32(tol.gradient_chain(model.cfg, 12, 4 * 12))
    for name in cfg.targets:
        L, fan_in, fan_out = lora_lib._split(name, g_w[name].shape)
        G = np.asarray(g_w[name]).reshape(L, fan_in, fan_out)
        A, B = np.asarray(adapters[name]["a"]), np.asarray(adapters[name]["b"])
        absG = np.abs(G) + dG * np.abs(G).max()
        bound_b = cfg.scale * np.einsum("lir,lio->lro", np.abs(A), absG) * (tol.f32(fan_in) + dG)
        bound_a = cfg.scale * np.einsum("lio,lro->lir", absG, np.abs(B)) * (tol.f32(fan_out) + dG)
        assert np.all(np.abs(g_ad[name]["b"] - cfg.scale * np.einsum("lir,lio->lro", A, G)) <= bound_b), name
        assert np.all(np.abs(g_ad[name]["a"] - cfg.scale * np.einsum("lio,lro->lir", G, B)) <= bound_a), name
    assert float(jnp.abs(g_ad["wq"]["a"]).max()) == 0.0  # B = 0 at init: A gets no gradient yet


def test_the_low_rank_products_backward_is_autodiffs():
    """`low_rank_product`'s written-out backward against JAX's autodiff of (x A) B: the same sums
    in another order, within each product's float32 bound (elementwise, from the magnitudes)."""
    from rlhf_jax.models.lowrank import low_rank_product
    N, I, R, O = 40, 24, 4, 36
    kx, ka, kb, kd = jax.random.split(jax.random.key(5), 4)
    x, a = jax.random.normal(kx, (N, I)), jax.random.normal(ka, (I, R))
    b, d = jax.random.normal(kb, (R, O)), jax.random.normal(kd, (N, O))
    ours = jax.vjp(low_rank_product, x, a, b)
    plain = jax.vjp(lambda x, a, b: (x @ a) @ b, x, a, b)
    np.testing.assert_array_equal(ours[0], plain[0])  # the forward pass is the same program
    got, want = ours[1](d), plain[1](d)
    ax, aa, ab, ad = (np.abs(np.asarray(t)) for t in (x, a, b, d))
    g_bound = ad @ ab.T  # |dY B^T|'s magnitude, reached through R terms
    bounds = {"x": tol.f32(O + R) * g_bound @ aa.T, "a": tol.f32(O + N) * ax.T @ g_bound,
              "b": tol.f32(I + N) * (ax @ aa).T @ ad}
    for name, g, w in zip("xab", got, want):
        assert np.all(np.abs(np.asarray(g) - np.asarray(w)) <= bounds[name]), name
    # mixed precision: each gradient comes back in its argument's dtype, as autodiff gives it
    mixed = (x.astype(jnp.bfloat16), a, b)
    assert [g.dtype for g in jax.vjp(low_rank_product, *mixed)[1](d)] == \
        [g.dtype for g in jax.vjp(lambda x, a, b: (x @ a) @ b, *mixed)[1](d)]
    # a transposed factor (A's gradient from dY B rather than dY B^T's layout) is far outside them
    assert not np.all(np.abs(np.asarray(got[1]) - np.asarray(want[1])[::-1]) <= bounds["a"])


def test_sft_step_trains_only_adapters(setup):
    model, batch = setup
    cfg = LoRAConfig(rank=4, alpha=8.0)
    base = jax.tree.map(jnp.copy, model.params)
    adapters = lora_lib.split(base, cfg, jax.random.key(1))
    tx, sched = make_optimizer(1e-2, 20, max_grad_norm=1.0, schedule_kind="constant")
    step = jax.jit(make_sft_step(model.graphdef, tx, sched, lora=cfg))
    state = TrainState(adapters, tx.init(adapters), jnp.zeros((), jnp.int32))
    losses = []
    for _ in range(20):
        state, m = step(state, batch, jax.random.key(0), (base, None))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.3  # measured: 4.84 -> 4.40
    # the first step's loss is at the merged weights = the base (B = 0), in another program: the
    # forward chain, the log-softmax over 128 tokens and the mean over 4 x 12 positions
    chain = tol.decoder_chain(32, 64, 2, 8, 12) + 128 + 4 * 12
    assert np.isclose(losses[0], float(loss_of(model, model.params, batch)), rtol=tol.f32(chain), atol=0)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    merged = lora_lib.merge(base, state.params["adapters"], cfg)
    assert np.asarray(merged["embed"] == base["embed"]).all()
    assert not np.allclose(merged["blocks"]["wq"], base["blocks"]["wq"])
    # the view the step runs holds the same matrices, never formed in the step itself
    np.testing.assert_allclose(densify(lora_lib.view(base, state.params, cfg))["blocks"]["wq"],
                               merged["blocks"]["wq"], rtol=0, atol=1e-6)


def test_adapters_applied_inside_the_layer_equal_the_merged_weights(setup):
    """x W0 + s (x A) B in each layer against x (W0 + s A B) with the merged matrices, adapters
    trained away from B = 0, on a float32 base and on an int8 one."""
    model, batch = setup
    cfg = LoRAConfig(rank=4, alpha=8.0)
    trainable = lora_lib.split(model.params, cfg, jax.random.key(0))
    trainable["adapters"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(7), x.shape),
                                         trainable["adapters"])
    for base in (model.params, lora_lib.quantize(model.params)):
        merged = lora_lib.merge(lora_lib.dequantize(base), trainable["adapters"], cfg)
        want = lm_forward(model.graphdef, merged, batch)
        got = lm_forward(model.graphdef, lora_lib.view(base, trainable, cfg), batch)
        assert not np.allclose(want, lm_forward(model.graphdef, lora_lib.dequantize(base), batch), atol=1e-3)
        # the same sums in another order: x A (fan-in terms, as x W), then the rank-4 product and
        # the addition (r + 1 more roundings) in each of the 3 projections a layer chains
        extra = model.cfg.n_layers * 3 * (cfg.rank + 1)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol.forward(model.cfg, 12, want, extra=extra))


def test_split_and_view_start_as_the_full_model_with_trainable_extras(setup):
    model, batch = setup
    scalar = init_model(PRESETS["test"], head="scalar", seed=3)
    cfg = LoRAConfig(rank=4, alpha=8.0, targets=("wq", "w_up"))
    trainable = lora_lib.split(scalar.params, cfg, jax.random.key(0), extras=("head",))
    assert set(trainable) == {"adapters", "head"}
    full = densify(lora_lib.view(scalar.params, trainable, cfg))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), full, scalar.params)
    # the loss of the trainable part: gradients reach the adapters' B and the head, never the base
    loss = lora_lib.wrap_loss(lambda p, b, r, c: (jnp.sum(lm_forward(scalar.graphdef, p, b)), {}), cfg)
    grads = jax.grad(lambda t: loss(t, batch, None, (scalar.params, None))[0])(trainable)
    assert float(jnp.abs(grads["head"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["adapters"]["wq"]["b"]).sum()) > 0


def test_int8_base_is_a_quarter_of_float32_and_close_in_logits(setup):
    model, batch = setup
    q = lora_lib.quantize(model.params)
    stored = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree["blocks"]))
    targets = {k: model.params["blocks"][k] for k in lora_lib.IN_DIMS}
    q_targets = {k: q["blocks"][k]["int8"] for k in lora_lib.IN_DIMS}
    assert stored({"blocks": q_targets}) * 4 == stored({"blocks": targets})
    full = lm_forward(model.graphdef, model.params, batch)
    approx = lm_forward(model.graphdef, lora_lib.dequantize(q), batch)
    err = float(jnp.abs(full - approx).max())
    # int8 absmax per output column: the error is a small fraction of the logits' spread
    assert 0 < err < 0.01 * float(jnp.std(full)) + 1e-3, err
    cfg = LoRAConfig(rank=4, alpha=8.0)
    trainable = lora_lib.split(model.params, cfg, jax.random.key(0))
    # B = 0: the view is the dequantized base, computed in another program (the forward chain's bound)
    np.testing.assert_allclose(lm_forward(model.graphdef, lora_lib.view(q, trainable, cfg), batch), approx,
                               rtol=0, atol=tol.forward(model.cfg, 12, approx))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One micro workdir: SFT, a 2-member RM ensemble with LoRA over an int8 backbone, PPO with LoRA
    policy and value over int8 bases, then DPO with LoRA over an int8 base and a live reference
    (the base with adapters off), and online DPO likewise, its pairs labelled by the RM. Returns
    (context, summary, the frozen constants each of PPO, DPO and online DPO handed to its training
    loop)."""
    from configs.instructgpt import get_config
    from rlhf_jax.context import build_context
    from rlhf_jax.stages import dpo as dpo_stage
    from rlhf_jax.stages import online_dpo as online_dpo_stage
    from rlhf_jax.stages import ppo as ppo_stage
    from rlhf_jax.stages import run_stages
    c = get_config("micro")
    c.rm.update(lora_rank=4, lr=1e-2, members=2, lora_int8=True)
    c.ppo.update(lora_rank=4, iterations=2, lora_int8=True)
    c.dpo.update(lora_rank=4, lr=1e-2, cache_reference=False, steps=4, lora_int8=True)
    c.online_dpo.update(lora_rank=4, lr=1e-2, lora_int8=True, iterations=3, batch_size=8, epochs=1, save_every=0)
    constants = {}

    def recording(module):
        def train(ctx, stage, t, salt):
            constants[stage] = t.constants
            return real[module](ctx, stage, t, salt)
        return train

    real = {m: m.train for m in (ppo_stage, dpo_stage, online_dpo_stage)}
    work = tmp_path_factory.mktemp("lora")
    with pytest.MonkeyPatch.context() as mp:
        for m in real:
            mp.setattr(m, "train", recording(m))
        summary = run_stages(build_context(c, work, use_wandb=False))
        c.stages = "dpo,online_dpo"
        ctx = build_context(c, work, use_wandb=False)
        summary.update(run_stages(ctx))
    return ctx, summary, constants


@pytest.mark.parametrize("stage", ["rm", "ppo", "dpo", "online_dpo"])
def test_lora_in_every_stage_trains_adapters_and_exports_full_weights(lora_run, stage):
    """Each stage trains adapters (the state holds only them and the heads) and hands on full
    weights: only LoRA targets (and heads) differ from its starting point."""
    from rlhf_jax import checkpoint
    from rlhf_jax.stages.handoff import load_sft
    from rlhf_jax.stages.reward import trained_reward
    ctx, summary, _ = lora_run
    sft = load_sft(ctx)
    if stage == "rm":
        _, params, _, _ = trained_reward(ctx)
        final = jax.tree.map(lambda x: x[1], params)  # the second member
        assert summary["rm"]["val_accuracy"] > 0.5
    else:
        final = checkpoint.load_final(ctx.workdir, stage, ctx.base.params)
        assert np.isfinite(summary[stage]["kl_final"])
    changed = {k for k in sft["blocks"] if not np.allclose(final["blocks"][k], sft["blocks"][k], atol=1e-7)}
    assert changed and changed <= set(lora_lib.IN_DIMS)
    np.testing.assert_array_equal(final["embed"], sft["embed"])


def _assert_int8_base_of(tree, sft):
    """`tree` is the int8 base of `sft` (its dequantised weights exactly those of quantize(sft)),
    whose block matrices differ from the full-precision SFT's (int8 rounding)."""
    want = lora_lib.dequantize(lora_lib.quantize(sft))
    assert isinstance(tree["blocks"]["wq"], dict) and tree["blocks"]["wq"]["int8"].dtype == jnp.int8
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 lora_lib.dequantize(tree), want)
    for name in lora_lib.IN_DIMS:
        assert float(jnp.abs(want["blocks"][name] - sft["blocks"][name]).max()) > 0, name


def test_ppo_stage_with_int8_base_uses_it_as_the_reference(lora_run):
    """PPO with lora_int8 ran (its first rollout used to crash on the int8 reference); the reference
    it was given is the policy's int8 base, which PPOModels.reference reads dequantised."""
    import json
    from rlhf_jax.stages.handoff import load_sft
    from rlhf_jax.train import ppo as ppo_lib
    ctx, summary, constants = lora_run
    sft = load_sft(ctx)
    _assert_int8_base_of(constants["ppo"]["reference"], sft)
    ref = ppo_lib.PPOModels(None, None, None, lora_lib.from_block(ctx.config.ppo)).reference(constants["ppo"])
    assert not isinstance(ref["blocks"]["wq"], dict)
    lines = (ctx.workdir / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(np.isfinite(json.loads(line)["kl"]) for line in lines)


def test_dpo_stage_with_int8_base_starts_at_its_reference(lora_run):
    """The DPO stage's reference with lora_int8 is the int8 base with adapters off, not the
    full-precision SFT: the live reference it hands to the step is that base, and its first step
    (at the step-0 policy, the dequantised base) logs implicit rewards and margin 0 and loss log 2
    up to float32 rounding."""
    import json
    import math
    from rlhf_jax.stages import dpo as dpo_stage
    from rlhf_jax.stages.handoff import load_sft
    from rlhf_jax.stages.preferences import preference_arrays
    from rlhf_jax.train import dpo as dpo_lib
    ctx, _, constants = lora_run
    hp = ctx.config.dpo
    sft = load_sft(ctx)
    base, reference = constants["dpo"]
    _assert_int8_base_of(base, sft)
    _assert_int8_base_of(reference, sft)
    first = json.loads((ctx.workdir / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    # the scale of the bound: the step-0 policy's log-probs on the stage's first batch
    train_arrays, _ = preference_arrays(ctx)
    batch = {k: jnp.asarray(v) for k, v in next(ctx.iterator(train_arrays, hp.batch_size, dpo_stage.SALT)).items()}
    graphdef = ctx.base.graphdef
    int8 = jax.jit(lambda p: dpo_lib.response_logprobs(graphdef, p, batch))(lora_lib.dequantize(base))
    # an implicit reward: beta times the difference of two sums of up to T token log-probs, each
    # from a forward pass on equal weights (tests/tolerance.py)
    T = batch["tokens"].shape[-1]
    reward_tol = hp.beta * tol.forward(ctx.base.cfg, T, int8.sum_BxK, extra=ctx.base.cfg.vocab_size + T)
    for key in ("reward_chosen", "reward_rejected"):
        assert abs(first[key]) <= reward_tol, (key, first[key], reward_tol)
    assert abs(first["reward_margin"]) <= 2 * reward_tol, (first["reward_margin"], reward_tol)
    # -log sigmoid has slope -1/2 at 0; the means over pairs and prompts add a few roundings
    assert abs(first["loss"] - math.log(2)) <= reward_tol + tol.f32(16, math.log(2)), first["loss"]


def test_online_dpo_stage_with_int8_base_labels_pairs_with_the_rm_ensemble(lora_run):
    """Online DPO with lora_int8 ran on the RM's labels: its reference is the policy's int8 base,
    its annotator the 2-member RM ensemble (stacked), and each iteration logged its pairs: the RM's
    score of the chosen response above the rejected one's, since the RM chose it."""
    import json
    from rlhf_jax.stages.handoff import load_sft
    ctx, summary, constants = lora_run
    _assert_int8_base_of(constants["online_dpo"]["reference"], load_sft(ctx))
    assert {x.shape[0] for x in jax.tree.leaves(constants["online_dpo"]["reward"])} == {2}
    rows = [json.loads(line) for line in (ctx.workdir / "online_dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["frac_tied"] < 1 and r["score_chosen"] > r["score_rejected"], r
        assert all(np.isfinite(r[k]) for k in ("loss", "reward_accuracy", "kl", "gold_reward"))
    d = summary["online_dpo"]
    assert d["sampled_responses"] == 2 * 8 * 3 and d["updates"] == 3 * 2
    for key in ("rm_score_sft", "rm_score_final", "gold_reward_sft", "gold_reward_final", "kl_final"):
        assert np.isfinite(d[key]), key

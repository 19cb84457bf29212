"""The per-operation profiler (tools/profile_ops.py): the compiled module's text is parsed into
what each executed operation is, and the profiler's events are joined with it."""
import jax
import jax.numpy as jnp
import pytest

from rlhf_jax.models import PRESETS
from tools import profile_ops


@pytest.fixture(scope="module")
def tool():
    return profile_ops


def test_parse_names_phase_kind_and_source(tool):
    """grad of sum(tanh(a @ b)) w.r.t. a: one forward matmul, one backward matmul (JAX's transpose
    of the forward), the tanh derivative elementwise; each traced to this file's line."""
    f = jax.jit(jax.grad(lambda a, b: jnp.tanh(a @ b).sum()))
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    ins = tool.parse_module(f.lower(a, b).compile().as_text())
    executed = {n: i for n, i in ins.items() if i["fused"]}
    kinds = sorted((tool.phase(i["op_name"]), tool.kind({**i, "name": n})) for n, i in executed.items())
    assert kinds == [("backward", "elementwise"), ("backward", "matmul"), ("forward", "matmul")]
    assert all("test_profile_ops.py" in i["source"] for i in executed.values())
    assert {i["shape"] for i in executed.values()} == {"f32[64,16]", "f32[64,32]"}


def test_profile_of_a_scanned_step_counts_every_layer(tool):
    """The SFT step of a 3-layer model: the layers' matmuls run once per layer (scan), both phases
    appear, and the shares of the grouped tables add up to the summed operation time."""
    cfg = PRESETS["test"].replace(n_layers=3)
    jitted, args = tool.build_step("sft", cfg, 2, 16, devices=jax.devices()[:1])  # events of one device
    out = tool.profile(jitted, args, repeats=2, top=200, state=True)
    assert out["ops_s"] > 0 and out["wall_s"] > 0
    for table in ("by_phase", "by_kind", "by_phase_kind"):
        assert sum(r["share"] for r in out[table]) == pytest.approx(1.0, abs=1e-9)
    phases = {r["group"] for r in out["by_phase"]}
    assert {"forward", "backward"} <= phases
    layer_matmuls = [r for r in out["top"] if r["kind"] == "matmul" and "while/body" in r["op_name"]]
    assert layer_matmuls and all(r["calls"] == 3 for r in layer_matmuls)
    # time with k operations at once, weighted by k, is the summed operation time (microsecond
    # timestamps summed in float64: exact to far below a microsecond)
    levels = out["concurrency_s"]
    assert levels and sum(int(k) * s for k, s in levels.items()) == pytest.approx(out["ops_s"], rel=1e-9)


def test_concurrency_of_hand_placed_events(tool):
    """Three operations traced over 2 calls, in microseconds: A 0-10, B 5-15, C 20-30. One runs
    alone during 0-5, 10-15 and 20-30 (20 us, 10 per call), two at once during 5-10 (2.5 per call)."""
    events = [{"ts": 0, "dur": 10}, {"ts": 5, "dur": 10}, {"ts": 20, "dur": 10}]
    got = tool.concurrency(events, repeats=2)
    assert got == pytest.approx({"1": (5 + 5 + 10) / 2 / 1e6, "2": 5 / 2 / 1e6})


@pytest.mark.parametrize("decode_layers", ["scan", "per_layer"])
def test_profile_of_sampling_counts_each_layer_of_each_new_token(tool, decode_layers):
    """Sampling 4 tokens after 8-token prompts with a 3-layer model: the prefill's layer matmuls
    run once per layer (scanned), the decode's LM head once per token, and the decode's layers
    once per layer and token. Scanned, that is one operation called 3 x 4 times, and each token's
    layer reads its weights out of the stacked parameters (the dynamic slices docs/benchmarks.md
    counts); per layer, one operation per layer called once per token, and the weights are
    sliced once, before the token loop."""
    cfg = PRESETS["test"].replace(n_layers=3, decode_layers=decode_layers)
    jitted, args = tool.build_generate(cfg, 2, 8, 4)
    out = tool.profile(jitted, args, repeats=2, top=400, state=False)
    layer_matmuls = [r for r in out["top"] if r["kind"] == "matmul" and "while/body" in r["op_name"]]
    # a dynamic slice alone: a fusion of one, or bare where XLA's older fusion emitter compiles it (the suite's
    # TEST_COMPILE_FLAGS)
    alone = lambda r: r["fused"] == ["dynamic-slice"] or (not r["fused"] and r["op"].startswith("dynamic_slice"))
    weight_slices = [r for r in out["top"] if alone(r) and r["calls"] == 3 * 4]
    if decode_layers == "scan":
        # the prefill's layers (3), the decode's LM head once per token (4), its layers (3 x 4)
        assert {r["calls"] for r in layer_matmuls} == {3, 4, 3 * 4}, layer_matmuls
        assert weight_slices, [(r["op"], r["fused"], r["calls"]) for r in out["top"]]
    else:
        assert {r["calls"] for r in layer_matmuls} == {3, 4}, layer_matmuls
        per_token = [r for r in layer_matmuls if r["calls"] == 4 and "project" in r["source"]]
        assert len(per_token) >= 3 * 4, [(r["op"], r["source"]) for r in per_token]  # q, k, v, o... per layer
        assert not weight_slices
        once = [r for r in out["top"] if "per_layer" in r["source"] and r["calls"] == 1]
        assert once, [(r["op"], r["source"], r["calls"]) for r in out["top"]]


def test_profile_of_a_ppo_iteration_passes_the_state_on(tool):
    """One PPO iteration of a 2-layer model (2 prompts of 4 tokens, 3 sampled): the donated state
    is passed from call to call (its step counter advances), and the profile holds the rollout's
    sampling, the trained models' forward and backward passes, and the policy's LM head at the 3
    response columns only (`forward.response_logprobs`), never at all 7."""
    cfg = PRESETS["test"].replace(n_layers=2)
    jitted, args = tool.build_ppo(cfg, 2, 4, 3)
    once = tool.advance(jitted, args)
    assert int(once[0].step) == 1
    twice = tool.advance(jitted, once)  # `once`'s state is donated here
    assert int(twice[0].step) == 2
    out = tool.profile(jitted, twice, repeats=1, top=400, state=True)
    assert {"forward", "backward"} <= {r["group"] for r in out["by_phase"]}
    assert any("generate" in r["op_name"] for r in out["top"])
    head = {r["shape"] for r in out["top"] if r["kind"] == "matmul" and "LMHead" in r["source"]
            and r["phase"] == "forward"}
    assert head == {f"f32[2,3,{cfg.vocab_size}]"}, head


def test_the_lora_step_trains_only_adapters_over_a_constant_base(tool):
    """`--lora 4`: the state holds the adapters alone (rank 4 on each block matrix) and advances;
    the base is passed as a constant, unchanged; the profile has both phases."""
    cfg = PRESETS["test"].replace(n_layers=2)
    jitted, args = tool.build_step("sft", cfg, 2, 16, devices=jax.devices()[:1], lora_rank=4)
    state, _, _, (base, _) = args
    assert set(state.params) == {"adapters"}
    assert {a.shape[-1] for a in jax.tree.leaves(state.params["adapters"]) if a.ndim == 3} >= {4}
    before = jax.tree.map(lambda x: x.copy(), base)
    once = tool.advance(jitted, args)
    assert int(once[0].step) == 1
    assert all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(once[3][0]), jax.tree.leaves(before)))
    out = tool.profile(jitted, once, repeats=1, top=50, state=True)
    assert {"forward", "backward"} <= {r["group"] for r in out["by_phase"]}
    with pytest.raises(SystemExit, match="--lora is for --step sft, not rm"):
        tool.build_step("rm", cfg, 2, 16, lora_rank=4)


def test_an_unknown_model_field_exits_with_the_valid_ones(tool, monkeypatch):
    monkeypatch.setattr("sys.argv", ["profile_ops.py", "--step", "ppo", "--set", "d_model=64", "--set", "widht=3"])
    with pytest.raises(SystemExit, match="--set widht: not a model field; valid: activation, "):
        tool.main()


def test_set_values_take_the_fields_types(tool):
    cfg = PRESETS["test"]
    assert tool.field_value(cfg.tie_embeddings, "tie_embeddings", "False") is False
    assert tool.field_value(False, "remat_flag", "true") is True
    assert tool.field_value(cfg.d_model, "d_model", "64") == 64
    assert tool.field_value(None, "sliding_window", "32") == 32
    with pytest.raises(SystemExit, match="--set tie_embeddings=maybe: tie_embeddings is true or false"):
        tool.field_value(True, "tie_embeddings", "maybe")
    with pytest.raises(SystemExit, match="--set d_model=wide: d_model must be int"):
        tool.field_value(64, "d_model", "wide")

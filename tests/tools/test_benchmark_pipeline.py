"""tools/benchmark_pipeline.py's matmul probes: the FLOP accounting of the mix, and XLA's and
torch's probes at the same shapes."""
import types

import pytest

from tools import benchmark_pipeline as bp

CFG = types.SimpleNamespace(d_model=8, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16, n_layers=3, vocab_size=32)


def test_the_mix_is_one_forward_pass_of_weight_matmuls():
    # per layer: q (8x8), k and v (8x4 each), o (8x8: q's shape, counted with it), gate and up (8x16
    # each), down (16x8); the head (8x32)
    assert bp.matmul_mix(CFG) == {(8, 8): 6, (8, 4): 6, (8, 16): 6, (16, 8): 3, (8, 32): 1}
    wide = types.SimpleNamespace(**{**vars(CFG), "n_heads": 3})  # q 8x12, o 12x8: separate shapes
    assert bp.matmul_mix(wide) == {(8, 12): 3, (8, 4): 6, (12, 8): 3, (8, 16): 6, (16, 8): 3, (8, 32): 1}


def test_the_rate_is_the_mix_flops_over_its_summed_time():
    seconds = {(8, 8): 1.0, (8, 4): 0.5, (8, 16): 2.0, (16, 8): 2.0, (8, 32): 4.0}
    out = bp.probe_rate(lambda rows, k, n: (k, n), lambda kn, steps: seconds[kn], CFG, rows=10, steps=1)
    flops = 2 * 10 * (6 * 64 + 6 * 32 + 6 * 128 + 3 * 128 + 256)
    time = 6 * 1.0 + 6 * 0.5 + 6 * 2.0 + 3 * 2.0 + 4.0
    assert out["gflop_per_s"] == pytest.approx(flops / time / 1e9, rel=1e-12)
    assert [p["shape"] for p in out["probes"]] == [[10, k, n] for k, n in bp.matmul_mix(CFG)]
    assert out["probes"][-1]["gflop_per_s"] == pytest.approx(2 * 10 * 8 * 32 / 4.0 / 1e9, rel=1e-12)


def test_xla_and_torch_probe_the_same_shapes():
    pytest.importorskip("torch")
    xla, torch = bp.matmul_rate(CFG, 16, 2), bp.torch_matmul_rate(CFG, 16, 2)
    assert [p["shape"] for p in xla["probes"]] == [p["shape"] for p in torch["probes"]]
    assert xla["gflop_per_s"] > 0 and torch["gflop_per_s"] > 0


def test_the_cpu_shape_is_what_the_real_model_runs_execute():
    from tools.trl_reward_baseline import load_config
    c = load_config("experiments/configs/real_model.py:proxy,cpu")
    s = bp.SHAPES["smollm2_cpu"]
    assert (s["seq"], s["rm_batch"], s["prompt"], s["new"]) == (
        c.data.max_len, c.rm.batch_size, c.data.max_prompt_len, c.sampling.max_new_tokens)
    assert (s["ppo_batch"], s["minibatches"], s["epochs"]) == (c.ppo.batch_size, c.ppo.minibatches, c.ppo.epochs)


def test_an_unknown_shape_is_refused_with_the_valid_ones(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["benchmark_pipeline.py", "--shapes", "tiny,huge", "--no-trl"])
    with pytest.raises(SystemExit) as e:
        bp.main()
    assert e.value.code == 2
    assert "unknown shape huge; valid: tiny, smollm2, smollm2_cpu" in capsys.readouterr().err

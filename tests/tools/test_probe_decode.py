"""tools/probe_decode.py: one decode step's weight products, each layer's own weights, against the
machine's read rate."""
import pytest

pytest.importorskip("torch")  # torch is a test and tool dependency, not the library's

from rlhf_jax.models import PRESETS  # noqa: E402
from tools import probe_decode  # noqa: E402
from tools.benchmark_pipeline import matmul_mix  # noqa: E402


def test_a_pass_reads_every_weight_of_the_model_once():
    cfg = PRESETS["test"]
    kns = probe_decode.shapes(cfg)
    assert len(kns) == 7 * cfg.n_layers + 1 and kns[-1] == (cfg.d_model, cfg.vocab_size)
    assert {kn: kns.count(kn) for kn in matmul_mix(cfg)} == matmul_mix(cfg)
    # every weight of the model but the norms' (two per layer, the final one), counted independently
    weights = cfg.num_params() - (2 * cfg.n_layers + 1) * cfg.d_model
    assert sum(k * n for k, n in kns) == weights
    one, args = probe_decode.xla_program(kns, 2)  # XLA keeps every product: none dropped or merged
    assert one.lower(*args).compile().as_text().count(" dot(") == len(kns)
    out = probe_decode.main(["--model", "test", "--rows", "2", "--steps", "1"])
    assert out["products"] == len(kns) and out["weight_bytes"] == 4 * weights and out["torch_threads"] >= 1
    assert out["read_bytes_per_s"] > 0
    for lib in ("xla", "torch"):
        p = out["passes"][lib]
        assert p["pass_s"] > 0 and p["weight_bytes_per_s"] == out["weight_bytes"] / p["pass_s"]
        assert p["share_of_read_rate"] == p["weight_bytes_per_s"] / out["read_bytes_per_s"]


@pytest.mark.parametrize("argv,message", [(["--model", "7b"], "unknown model '7b'; valid: "),
                                          (["--rows", "0"], "--rows and --steps must be at least 1"),
                                          (["--steps", "0"], "--rows and --steps must be at least 1")])
def test_bad_flags_exit_with_a_message(argv, message):
    with pytest.raises(SystemExit, match=message):
        probe_decode.main(argv)

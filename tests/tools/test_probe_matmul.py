"""tools/probe_matmul.py: both libraries' matmul rates per dtype at a model's weight products."""
import pytest

pytest.importorskip("torch")  # torch is a test and tool dependency, not the library's

from rlhf_jax.models import PRESETS  # noqa: E402
from tools import probe_matmul  # noqa: E402
from tools.benchmark_pipeline import matmul_mix  # noqa: E402


def test_rates_per_dtype_and_library_at_the_forward_pass_shapes(capsys):
    out = probe_matmul.main(["--model", "test", "--rows", "8", "--steps", "1"])
    mix = matmul_mix(PRESETS["test"])
    assert list(out["rates"]) == ["float32", "bfloat16"]
    for rates in out["rates"].values():
        for lib in ("xla", "torch"):
            probes = rates[lib]["probes"]
            assert [tuple(p["shape"]) for p in probes] == [(8, k, n) for k, n in mix]
            assert [p["count"] for p in probes] == list(mix.values())
            assert rates[lib]["gflop_per_s"] > 0
        assert rates["torch_over_xla"] == rates["torch"]["gflop_per_s"] / rates["xla"]["gflop_per_s"]


@pytest.mark.parametrize("argv,message", [(["--dtypes", "float16"], "unknown dtype float16; valid: float32, bfloat16"),
                                          (["--model", "7b"], "unknown model '7b'; valid: ")])
def test_unknown_names_exit_with_the_valid_ones(argv, message):
    with pytest.raises(SystemExit, match=message):
        probe_matmul.main(argv)

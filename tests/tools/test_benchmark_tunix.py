"""tools/benchmark_tunix.py without Tunix: the shapes it hands the Tunix side, how it reads that
side's answer, and the error it records when the Tunix venv is missing."""
import json
import stat

import pytest

from tools import benchmark_tunix as bt


def fake_python(tmp_path, body: str) -> str:
    """An executable standing in for the Tunix venv's Python: a shell script ignoring its args."""
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def test_the_6m_llama_shape_has_the_issue_s_parameter_count():
    cfg = bt.model_config(bt.SHAPES["llama6m"])
    # tied 8192 x 256 embedding + 4 x (q 256x256 + k,v 256x128 + o 256x256 + SwiGLU 3 x 256x1024
    # + 2 norms of 256) + the final norm
    per_layer = 256 * 256 * 2 + 256 * 128 * 2 + 3 * 256 * 1024 + 2 * 256
    assert cfg.num_params() == 8192 * 256 + 4 * per_layer + 256 == 6_031_616
    assert cfg.tie_embeddings and cfg.dtype == cfg.param_dtype == "float32"


def test_the_tunix_side_gets_the_same_shape():
    spec = bt.tunix_spec(bt.SHAPES["smollm2"], warmup=2, steps=3)
    assert spec == dict(vocab=49152, d_model=576, layers=30, heads=9, kv_heads=3, head_dim=64, d_ff=1536,
                        rope_theta=100000.0, norm_eps=1e-5, batch=4, prompt=64, new=32, warmup=2, steps=3)


def test_missing_tunix_venv_is_recorded_with_how_to_install(tmp_path, capsys):
    out = tmp_path / "r.json"
    result = bt.main(["--no-ours", "--tunix-python", str(tmp_path / "absent" / "python"), "--out", str(out)])
    err = result["tunix"]["error"]
    assert str(tmp_path / "absent" / "python") in err and "pip install google-tunix==0.1.7" in err
    assert "tunix_over_ours" not in result and "ours" not in result
    assert json.loads(out.read_text()) == result == json.loads(capsys.readouterr().out)


def test_the_tunix_side_s_result_line_is_read_and_its_failure_reported(tmp_path):
    shape = bt.SHAPES["llama6m"]
    ok = fake_python(tmp_path, 'echo "log line"; echo \'TUNIX_RESULT {"iteration_s": 2.5}\'')
    assert bt.tunix_side(shape, 1, 1, ok, timeout=30) == {"iteration_s": 2.5}
    bad = fake_python(tmp_path, 'echo "ImportError: no module named tunix" >&2; exit 3')
    err = bt.tunix_side(shape, 1, 1, bad, timeout=30)["error"]
    assert "exited with 3" in err and "no module named tunix" in err


def test_an_unknown_shape_fails_listing_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        bt.main(["--shape", "huge"])
    assert "llama6m" in capsys.readouterr().err


def test_decode_layers_reaches_our_model_and_a_bad_value_fails_before_anything_runs(capsys):
    assert bt.model_config(bt.SHAPES["llama6m"], decode_layers="scan").decode_layers == "scan"
    assert bt.model_config(bt.SHAPES["llama6m"]).decode_layers == "auto"
    with pytest.raises(SystemExit):
        bt.main(["--no-ours", "--no-tunix", "--decode-layers", "unrolled"])
    assert "per_layer" in capsys.readouterr().err
    result = bt.main(["--no-ours", "--no-tunix", "--decode-layers", "per_layer"])
    assert "tunix" not in result and "ours" not in result and "tunix_over_ours" not in result

"""Self-Instruct and Evol-Instruct with the real SmolLM2-135M-Instruct GGUF (slow: `pytest -m slow`)."""
import pytest

from rlhf_jax.generate_data import main
from rlhf_jax.paths import smollm2_path
from tests.conftest import skip_without_data
from tests.synth.test_cli import _check_accounting

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf():
    path = smollm2_path()
    if not path.exists():
        pytest.skip(f"{path} not found: run `python tools/fetch_smollm2.py` (or set RLHF_JAX_SMOLLM2)")
    return path


def test_smollm2_self_instruct_and_evol(gguf, tmp_path):
    data = skip_without_data()
    out = tmp_path / "si"
    assert main(["self_instruct", "--model", str(gguf), "--seed-tasks", str(data / "self_instruct_seed_tasks.jsonl"),
                 "--smoke", "--n", "4", "--set", "self_instruct.instruction_tokens=48",
                 "--set", "self_instruct.instance_tokens=48", "--set", "self_instruct.max_rounds=1",
                 "--set", "sampling.max_prompt_len=512", "--set", "sampling.prompt_bucket=64",
                 "--out", str(out)]) == 0
    records, rejected, run = _check_accounting(out)
    # the instruct model continues "Task N:" with text: some candidates get past parsing
    assert run["counts"]["candidates"] > sum(r["reason"] == "malformed" for r in rejected)
    evol = tmp_path / "evol"
    assert main(["evol_instruct", "--model", str(gguf), "--instructions", str(data / "self_instruct_seed_tasks.jsonl"),
                 "--smoke", "--limit", "4", "--set", "evol_instruct.rewrite_tokens=48",
                 "--set", "evol_instruct.response_tokens=32", "--out", str(evol)]) == 0
    _, rejected, run = _check_accounting(evol)
    assert run["counts"]["candidates"] == 4 and run["inputs"] == 4

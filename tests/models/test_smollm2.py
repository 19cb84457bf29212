"""The real pretrained model: SmolLM2-135M-Instruct from its GGUF (fetch with tools/fetch_smollm2.py)."""
import jax
import numpy as np
import pytest

from rlhf_jax.generate import SamplingConfig, generate, left_pad
from rlhf_jax.models import load_pretrained
from rlhf_jax.paths import smollm2_path
from tests.children import child_env
from tests import tolerance as tol

pytestmark = pytest.mark.slow
GGUF = smollm2_path()
needs_model = pytest.mark.skipif(not GGUF.exists(),
                                 reason=f"{GGUF} absent: run `python tools/fetch_smollm2.py` first")
PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy."]


@pytest.fixture(scope="module")
def both():
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM
    ours, tokenizer = load_pretrained(GGUF)
    theirs = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, local_files_only=True,
                                                  torch_dtype="float32", attn_implementation="eager").eval()
    return ours, theirs, tokenizer


def _chat_ids(tokenizer, text):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@needs_model
def test_config_and_tokenizer_come_from_the_file(both):
    ours, _, tokenizer = both
    cfg = ours.cfg
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
        "llama", 30, 576, 9, 3, 49152)
    assert cfg.rope_theta == 100000.0 and cfg.tie_embeddings
    assert 134_000_000 < ours.num_params() < 135_000_000
    assert "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token_id == cfg.eos_token_id == 2


@needs_model
def test_logits_match_transformers(both):
    import torch
    ours, theirs, tokenizer = both
    ids = np.array([_chat_ids(tokenizer, PROMPTS[0])])
    with torch.no_grad():
        ref = theirs(torch.tensor(ids)).logits.numpy()
    # two libraries' kernels for a 30-layer forward pass: the chain's bound at the logits' size
    np.testing.assert_allclose(np.asarray(ours(ids)[0]), ref, atol=tol.forward(ours.cfg, ids.shape[1], ref), rtol=0)


@needs_model
def test_greedy_32_tokens_equal_transformers(both):
    import torch
    ours, theirs, tokenizer = both
    prompts = [_chat_ids(tokenizer, p) for p in PROMPTS]
    tokens, mask = left_pad(prompts, pad_id=tokenizer.pad_token_id)
    cfg = SamplingConfig(max_new_tokens=32, temperature=0.0, eos_token_ids=(tokenizer.eos_token_id,),
                         pad_token_id=tokenizer.pad_token_id)
    out = generate(ours.graphdef, ours.params, tokens, mask, jax.random.key(0), cfg)
    for row, ids in enumerate(prompts):
        with torch.no_grad():
            ref = theirs.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=32,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        ref_new = ref[0, len(ids):].tolist()
        got = np.asarray(out.tokens_BxN[row])[: int(out.mask_BxN[row].sum())].tolist()
        assert got == ref_new, (tokenizer.decode(got), tokenizer.decode(ref_new))
    text = tokenizer.decode(np.asarray(out.tokens_BxN[0])[: int(out.mask_BxN[0].sum())])
    assert "Paris" in text


@needs_model
def test_smollm2_hh_pipeline_runs_at_reduced_size(tmp_path, shared_data):
    """SFT on Alpaca, RM on HH-RLHF, PPO on HH prompts with the real model, shrunk for a CPU.

    Runs the CLI on one CPU device whatever the caller's fake-device count: 8 fake devices would
    each hold a copy of the four 135M models and their optimizer state.
    """
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = child_env(1, RLHF_JAX_DATA_DIR=str(shared_data))
    cmd = [sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:smollm2_hh,small",
           "--workdir", str(tmp_path), f"--config.model.path={GGUF}"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sft"]["steps"] == 4 and summary["sft"]["val_loss"] < 3.0  # pretrained: fits Alpaca well
    assert summary["rm"]["steps"] == 4 and 0.0 <= summary["rm"]["val_accuracy"] <= 1.0
    assert summary["ppo"]["steps"] == 2 and summary["ppo"]["judge"] == "rm"
    assert (tmp_path / "ppo" / "final").exists() and (tmp_path / "report.md").exists()

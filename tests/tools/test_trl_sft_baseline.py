"""tools/trl_sft_baseline.py hands TRL our rows and scores TRL's model with our metric: the rows
lose only their padding, packed rows are refused, LoRA targets map to transformers' modules, and
its torch held-out NLL equals the sft stage's `validation_loss` on the same weights."""
import numpy as np
import pytest
import torch
import transformers as T

from rlhf_jax.models import load_pretrained
from rlhf_jax.train import sft as sft_lib
from tests import tolerance as tol
from tools.trl_sft_baseline import peft_targets, rows, torch_val_loss

V, D, FF, LAYERS, HEAD_DIM, WIDTH = 101, 32, 64, 2, 8, 24


def sft_like(lengths, prompt_lengths, seed=0):
    """SFT arrays as sft_arrays lays them out: right padding (segment 0), the loss on the completion."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    tokens = np.zeros((n, WIDTH), np.int32)
    seg, mask = np.zeros_like(tokens), np.zeros_like(tokens)
    for i, (length, prompt) in enumerate(zip(lengths, prompt_lengths)):
        tokens[i, :length] = rng.integers(1, V, length)
        seg[i, :length] = 1
        mask[i, prompt:length] = 1
    positions = np.broadcast_to(np.arange(WIDTH), tokens.shape).astype(np.int32) * (seg != 0)
    return {"tokens": tokens, "loss_mask": mask, "segment_ids": seg, "positions": positions}


def test_rows_drop_only_the_padding():
    arrays = sft_like([5, 24, 11], [2, 10, 3])
    ids, masks = rows(arrays)
    assert [len(r) for r in ids] == [5, 24, 11]
    for r, m, t, lm in zip(ids, masks, arrays["tokens"], arrays["loss_mask"]):
        assert r == t[:len(r)].tolist() and m == lm[:len(r)].tolist()
    assert [sum(m) for m in masks] == [3, 14, 8]


def test_packed_rows_are_refused():
    arrays = sft_like([5, 24], [2, 10])
    arrays["segment_ids"][0, 3:5] = 2  # two demonstrations in one row
    with pytest.raises(SystemExit, match="packed SFT rows"):
        rows(arrays)


def test_lora_targets_map_to_transformers_modules():
    assert peft_targets("wq,wk,wv,wo,w_gate,w_up,w_down") == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]
    with pytest.raises(SystemExit, match="sft.lora_targets w_in have no transformers module here; valid: wq, wk"):
        peft_targets("wq, w_in")


def test_torch_heldout_nll_equals_the_stage_metric(tmp_path):
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=FF,
                                          num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=64, tie_word_embeddings=False))
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3 if p.ndim == 1 else 0.1)
    hf.config._attn_implementation = "eager"
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = load_pretrained(tmp_path / "hf", load_tokenizer=False)
    arrays = sft_like([5, 24, 11, 17, 9], [2, 10, 3, 16, 1], seed=1)
    ids, masks = rows(arrays)
    expected = sft_lib.validation_loss(sft_lib.make_sft_eval(ours.graphdef), ours.params, arrays, 2)["val_loss"]
    got = torch_val_loss(hf, ids, masks, pad=0, batch_size=2)
    # a forward pass's float32 chain, then the log-softmax over V and the sum over the tokens
    chain = tol.decoder_chain(D, FF, LAYERS, HEAD_DIM, WIDTH) + V + int(arrays["loss_mask"][:, 1:].sum())
    assert got == pytest.approx(expected, rel=tol.f32(chain))
    # the bound catches an off-by-one: the mask shifted a column (the previous token's loss) fails it
    shifted = [m[1:] + [0] for m in masks]
    assert torch_val_loss(hf, ids, shifted, pad=0, batch_size=2) != pytest.approx(expected, rel=tol.f32(chain))

"""Our decoder against transformers on the same random weights, for every supported family."""
import numpy as np
import pytest
import torch
import transformers as T

from rlhf_jax.models import hf as hf_io
from rlhf_jax.models import load_pretrained, save_pretrained
from tests import tolerance as tol

V = 101


def _small(kind):
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    if kind == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                              resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    if kind == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**common, num_key_value_heads=2, rope_theta=500.0,
                                                tie_word_embeddings=False))
    if kind == "llama3_scaled":
        cfg = T.LlamaConfig(**common, num_key_value_heads=1, tie_word_embeddings=True,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                            rope_theta=10000.0)
        return T.LlamaForCausalLM(cfg)
    if kind == "mistral":
        return T.MistralForCausalLM(T.MistralConfig(**common, num_key_value_heads=2, sliding_window=5,
                                                    tie_word_embeddings=False))
    if kind == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True))
    if kind in ("neox", "neox_sequential"):
        cfg = T.GPTNeoXConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5,
                              use_parallel_residual=kind == "neox", hidden_dropout=0.0, attention_dropout=0.0)
        return T.GPTNeoXForCausalLM(cfg)
    raise ValueError(kind)


def make_hf(kind, directory):
    torch.manual_seed(0)
    model = _small(kind)
    with torch.no_grad():  # random norms and biases too, so every tensor's mapping is exercised
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.ndim == 1 else 0.1)
    model.eval()
    model.config._attn_implementation = "eager"
    model.save_pretrained(directory)
    return model


def hf_logits(model, tokens, mask=None, positions=None):
    with torch.no_grad():
        kw = {}
        if mask is not None:
            kw["attention_mask"] = torch.tensor(mask)
        if positions is not None:
            kw["position_ids"] = torch.tensor(positions)
        return model(torch.tensor(tokens), **kw).logits.numpy()


FAMILIES = ["gpt2", "llama", "llama3_scaled", "mistral", "qwen2", "neox", "neox_sequential"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_logits_match_transformers(kind, tmp_path):
    ref = make_hf(kind, tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf", load_tokenizer=False)
    tokens = np.random.default_rng(0).integers(0, V, size=(2, 12))
    ours, theirs = np.asarray(model(tokens)[0]), hf_logits(ref, tokens)
    np.testing.assert_allclose(ours, theirs, atol=tol.forward(model.cfg, 12, theirs), rtol=0)


@pytest.mark.parametrize("kind", FAMILIES)
def test_export_reloads_in_transformers(kind, tmp_path):
    make_hf(kind, tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf", load_tokenizer=False)
    save_pretrained(model, tmp_path / "ours", max_shard_bytes=20_000)  # several shards + index
    assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    tokens = np.random.default_rng(1).integers(0, V, size=(2, 10))
    ours = np.asarray(model(tokens)[0])
    np.testing.assert_allclose(hf_logits(reloaded, tokens), ours, atol=tol.forward(model.cfg, 10, ours), rtol=0)
    # and our own reader takes the sharded directory back unchanged
    again, _ = load_pretrained(tmp_path / "ours", load_tokenizer=False)
    np.testing.assert_array_equal(np.asarray(again(tokens)[0]), np.asarray(model(tokens)[0]))


@pytest.mark.parametrize("kind", ["llama", "gpt2", "neox"])
def test_left_padding_matches_transformers(kind, tmp_path):
    ref = make_hf(kind, tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf", load_tokenizer=False)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, V, size=(2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[0, :4] = 0  # row 0 is left-padded by 4
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ours = np.asarray(model(tokens, positions_BxT=positions, segment_ids_BxT=mask)[0])
    theirs = hf_logits(ref, tokens, mask, positions)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=tol.forward(model.cfg, 9, theirs[real]), rtol=0)


def test_missing_tensor_is_named(tmp_path):
    from rlhf_jax.models import safetensors_io
    make_hf("llama", tmp_path / "hf")
    tensors = dict(safetensors_io.iter_items(tmp_path / "hf"))
    tensors = {k: np.array(v) for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k}
    (tmp_path / "hf" / "model.safetensors").unlink()
    safetensors_io.write(tensors, tmp_path / "hf")
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(tmp_path / "hf", load_tokenizer=False)


def test_unknown_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(ValueError, match="model_type='t5' is not supported"):
        load_pretrained(tmp_path, load_tokenizer=False)


def test_scalar_head_loads_sequence_classifier(tmp_path):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    ref = T.LlamaForSequenceClassification(cfg).eval()
    ref.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path, head="scalar", load_tokenizer=False)
    tokens = np.random.default_rng(3).integers(1, V, size=(2, 7))
    with torch.no_grad():
        theirs = ref(torch.tensor(tokens)).logits[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(model(tokens)[0])[:, -1], theirs, atol=tol.forward(model.cfg, 7, theirs),
                               rtol=0)
    assert hf_io  # module importable on its own

"""GGUF out: a language model and its tokenizer as one file llama.cpp, Ollama and transformers read.

    report = write_gguf(model, tokenizer, "model.gguf", qtype="q8_0")

Weights go through `convert.params_to_hf` (the HF layout) and then the llama.cpp tensor names
and layouts that `hf._open_gguf` reads back: the Llama family (Llama, SmolLM2, Qwen2; GQA, rope
theta, tied embeddings, RMSNorm eps) with llama.cpp's q/k row permutation, and GPT-2 with its
Conv1D weights transposed to (out, in). Written through the `gguf` package's GGUFWriter:

  f32   every tensor as float32 (exact)
  f16   2-D tensors as float16: |w - f16(w)| <= 2^-11 |w| (normal range), 2^-25 (subnormal)
  q8_0  2-D tensors whose rows are a multiple of 32 in blocks of 32 with one float16 scale
        d = max|w| / 127 each: |w - q * f16(d)| <= d / 2 + 127 |d - f16(d)|; other 2-D tensors f16

1-D tensors (norms, biases) stay float32, as llama.cpp's converter keeps them. `weight_error_bound`
gives this bound per weight for a stored tensor type. The tokenizer must be a byte-level BPE
(`tokenizer.ggml.model = gpt2`): vocabulary, merges, token types, bos/eos/pad/unk ids, whether BOS
is prepended, llama.cpp's pre-tokenizer name and the chat template are written into the file.
Anything the format cannot carry fails with UnsupportedModelError naming the field.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlhf_jax.models import convert
from rlhf_jax.models.config import ModelConfig, UnsupportedModelError
from rlhf_jax.models.hf import GGUF_GPT2_LAYER, GGUF_GPT2_TOP, GGUF_LAYER, GGUF_TOP

QTYPES = ("f32", "f16", "q8_0")
F16_MAX = 65504.0


def _ggml(qtype: str):
    import gguf
    if qtype not in QTYPES:
        raise UnsupportedModelError(f"--type {qtype!r}: GGUF export writes {QTYPES}")
    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0}[qtype]


def gguf_arch(cfg: ModelConfig, head: str = "lm") -> str:
    """The llama.cpp architecture name of a config; UnsupportedModelError naming the first field it cannot carry."""
    def no(field, value, why):
        raise UnsupportedModelError(f"GGUF export: {field}={value!r} {why}")
    if head != "lm":
        no("head", head, "(GGUF export writes language models; a reward model's scalar head has no llama.cpp form)")
    if cfg.family not in ("llama", "mistral", "qwen2", "gpt2"):
        no("family", cfg.family, "is not supported (llama, mistral without sliding window, qwen2, gpt2 are)")
    if cfg.family == "gpt2":
        if cfg.activation != "gelu_tanh":
            no("activation", cfg.activation, "is not GPT-2's gelu_tanh, which llama.cpp's gpt2 applies")
        return "gpt2"
    if cfg.rope_scaling:
        no("rope_scaling", cfg.rope_scaling_dict, "is not supported (our GGUF reader refuses scaled rope)")
    if cfg.sliding_window:
        no("sliding_window", cfg.sliding_window, "has no llama.cpp llama form")
    if cfg.rotary_pct != 1.0 or cfg.parallel_residual:
        no("rotary_pct/parallel_residual", (cfg.rotary_pct, cfg.parallel_residual), "is not a Llama-family layout")
    if cfg.out_bias or cfg.mlp_bias:
        no("out_bias/mlp_bias", (cfg.out_bias, cfg.mlp_bias), "is not supported")
    if cfg.family == "qwen2":
        return "qwen2"
    if cfg.qkv_bias:
        no("qkv_bias", True, "on a llama is not supported (qwen2 is)")
    return "llama"


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotate-half -> interleaved pairs); `hf._unpermute` undoes it."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(cfg: ModelConfig, host_params: dict) -> dict[str, np.ndarray]:
    """{GGUF tensor name: float32 array in GGUF's (numpy, row-major) layout} of an LM's parameters."""
    arch = gguf_arch(cfg)
    hf = convert.params_to_hf(cfg, host_params, head="lm")
    top, layer = (GGUF_GPT2_TOP, GGUF_GPT2_LAYER) if arch == "gpt2" else (GGUF_TOP, GGUF_LAYER)
    hf_top = {v: k for k, v in top.items()}
    hf_layer = {v: k for k, v in layer.items()}
    prefix = "transformer.h." if arch == "gpt2" else "model.layers."
    out = {}
    for name, w in hf.items():
        w = np.asarray(w, np.float32)
        if name in hf_top:
            gname = hf_top[name]
        else:
            i, rest = name[len(prefix):].split(".", 1)
            gname = f"blk.{i}.{hf_layer[rest]}"
        if arch == "gpt2" and w.ndim == 2 and gname.startswith("blk."):
            w = w.T  # Conv1D (in, out) -> (out, in), as llama.cpp's converter writes it
        elif arch == "llama" and gname.endswith("attn_q.weight"):
            w = _permute(w, cfg.n_heads)
        elif arch == "llama" and gname.endswith("attn_k.weight"):
            w = _permute(w, cfg.n_kv_heads)
        out[gname] = np.ascontiguousarray(w)
    return out


def stored_type(name: str, w: np.ndarray, qtype: str):
    """The ggml type `name` is stored as under `qtype`: 1-D tensors F32; Q8_0 only for rows of 32k."""
    import gguf
    if w.ndim == 1 or qtype == "f32":
        return gguf.GGMLQuantizationType.F32
    if qtype == "q8_0" and w.shape[-1] % 32 == 0:
        return gguf.GGMLQuantizationType.Q8_0
    big = float(np.abs(w).max(initial=0.0))
    if big > F16_MAX:
        raise UnsupportedModelError(f"GGUF export: tensor {name} holds |w| = {big:.4g} > {F16_MAX}, past float16; "
                                    "use --type f32")
    return gguf.GGMLQuantizationType.F16


def weight_error_bound(w: np.ndarray, ggml_type) -> np.ndarray:
    """Per-weight bound on |w - dequantize(quantize(w))| for a stored ggml type (see the module docstring)."""
    import gguf
    w = np.asarray(w, np.float32)
    T = gguf.GGMLQuantizationType
    if ggml_type == T.F32:
        return np.zeros_like(w)
    if ggml_type == T.F16:
        return np.maximum(np.abs(w) * 2.0 ** -11, 2.0 ** -25)
    if ggml_type == T.Q8_0:
        d = np.abs(w.reshape(*w.shape[:-1], -1, 32)).max(-1, keepdims=True) / 127
        d16 = np.maximum(d * 2.0 ** -11, 2.0 ** -25)  # |d - f16(d)|, subnormal scales included
        # the last term: one float32 rounding of w / d and of q * d (ulp-level)
        b = d / 2 + 127 * d16 + 2 * np.finfo(np.float32).eps * d * 128
        return np.broadcast_to(b, w.reshape(*w.shape[:-1], -1, 32).shape).reshape(w.shape)
    raise ValueError(f"no error bound for {ggml_type}")


# --- tokenizer --------------------------------------------------------------------------

# llama.cpp token types (llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def _pre_name(backend: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizers.json pre_tokenizer, when it is one we can tell."""
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's split (SmolLM2, StarCoder)
    return None


def tokenizer_metadata(tokenizer, vocab_size: int, pre: str | None = None) -> dict[str, Any]:
    """The tokenizer.* fields of a GGUF for a transformers fast tokenizer (byte-level BPE only).

    Ids past the tokenizer's length up to the model's `vocab_size` (padding rows) become unused
    tokens `[PAD{id}]`. `pre` names llama.cpp's pre-tokenizer when it cannot be told from the tokenizer.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise UnsupportedModelError(f"GGUF export: tokenizer model type {model.get('type')!r} is not supported "
                                    "(byte-level BPE, tokenizer.ggml.model=gpt2, is)")
    decoder = backend.get("decoder") or {}
    if "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")) or decoder.get("type") != "ByteLevel":
        raise UnsupportedModelError("GGUF export: tokenizer pre_tokenizer/decoder is not byte-level BPE")
    pre = pre or _pre_name(backend)
    if pre is None:
        raise UnsupportedModelError(f"GGUF export: tokenizer pre_tokenizer {json.dumps(backend.get('pre_tokenizer'))}"
                                    " has no known llama.cpp name; pass --tokenizer-pre NAME")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedModelError(f"GGUF export: tokenizer has id {max(vocab.values())} >= the model's "
                                    f"vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, NORMAL
    for added in backend.get("added_tokens", []):
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tokenizer.encode("a")
    fields: dict[str, Any] = {
        "model": "gpt2", "pre": pre, "tokens": tokens, "token_type": types, "merges": merges,
        "add_bos_token": bool(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]),
        "add_eos_token": bool(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]),
    }
    for key in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{key}_token_id")
        if token_id is not None:
            fields[f"{key}_token_id"] = int(token_id)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        fields["chat_template"] = template
    return fields


def _write_tokenizer(writer, fields: dict) -> None:
    writer.add_tokenizer_model(fields["model"])
    writer.add_tokenizer_pre(fields["pre"])
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["token_type"])
    writer.add_token_merges(fields["merges"])
    for key in ("bos", "eos", "pad", "unk"):
        if f"{key}_token_id" in fields:
            getattr(writer, f"add_{key}_token_id")(fields[f"{key}_token_id"])
    writer.add_add_bos_token(fields["add_bos_token"])
    writer.add_add_eos_token(fields["add_eos_token"])
    if "chat_template" in fields:
        writer.add_chat_template(fields["chat_template"])


# --- the file ---------------------------------------------------------------------------

def write_gguf(model, tokenizer, out: str | Path, qtype: str = "f16", *, pre: str | None = None,
               name: str = "rlhf_jax") -> dict:
    """Write `model` (a Model with the LM head) and `tokenizer` to `out`; returns a report
    {path, bytes, seconds, type, arch, tensor_types: {name: ggml type}}."""
    import gguf
    t0 = time.perf_counter()
    ggml = _ggml(qtype)
    cfg = model.cfg
    arch = gguf_arch(cfg, model.head)
    fields = tokenizer_metadata(tokenizer, cfg.vocab_size, pre) if tokenizer is not None else None
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), model.params)
    tensors = gguf_tensors(cfg, host)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_heads)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
    else:
        writer.add_head_count_kv(cfg.n_kv_heads)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        if cfg.head_dim != cfg.d_model // cfg.n_heads:
            writer.add_key_length(cfg.head_dim)
            writer.add_value_length(cfg.head_dim)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if fields is not None:
        _write_tokenizer(writer, fields)
    types = {}
    for tname, w in tensors.items():
        kind = stored_type(tname, w, qtype) if ggml != gguf.GGMLQuantizationType.F32 else ggml
        types[tname] = kind.name
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tname, w)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tname, w.astype(np.float16))
        else:
            writer.add_tensor(tname, gguf.quantize(w, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": str(out), "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t0, 2),
            "type": qtype, "arch": arch, "tensor_types": types}

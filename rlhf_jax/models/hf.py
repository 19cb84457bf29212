"""Checkpoints in and out: HF safetensors directories and GGUF files (Llama family, Qwen2, GPT-2) in, HF
directories out (GGUF out: rlhf_jax/models/gguf_export.py).

    model, tokenizer = load_pretrained("path/to/hf_dir_or_file.gguf", mesh=mesh)
    save_pretrained(model, "out_dir", tokenizer)   # loads in transformers

Weights are converted on the host one tensor at a time and placed straight onto their
target sharding; nothing is fetched from the network.
"""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import sharding as shd
from rlhf_jax.errors import CorruptFileError, UserError
from rlhf_jax.models import convert, safetensors_io
from rlhf_jax.models.config import ModelConfig, UnsupportedModelError, from_hf_config, to_hf_config
from rlhf_jax.models.model import Model, abstract_model

log = logging.getLogger(__name__)


def load_pretrained(path: str | Path, *, head: str = "lm", mesh: Mesh | None = None,
                    rules=shd.DEFAULT_RULES, param_dtype: str | None = None, dtype: str | None = None,
                    load_tokenizer: bool = True, **config_overrides) -> tuple[Model, Any]:
    """Load a local HF directory (config.json + safetensors) or a GGUF file.

    Returns (Model, tokenizer or None). `param_dtype`/`dtype` override the stored precision;
    other keyword arguments override ModelConfig fields (e.g. dropout_rate). A file that
    cannot be read (truncated, not a checkpoint) raises CorruptFileError naming it.
    """
    try:
        return _load(Path(path), head, mesh, rules, param_dtype, dtype, load_tokenizer, config_overrides)
    except (UserError, FileNotFoundError):
        raise
    except (ValueError, KeyError, IndexError, OSError, struct.error, UnicodeDecodeError, TypeError) as e:
        raise CorruptFileError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:300]})") from e


def _load(path: Path, head, mesh, rules, param_dtype, dtype, load_tokenizer, config_overrides):
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
        else:
            raise FileNotFoundError(f"{path}: no config.json and {len(ggufs)} .gguf files; point at one")
    if path.suffix == ".gguf":
        cfg, get, keys, tokenizer_fn = _open_gguf(path)
        stored = "float32"  # GGUF tensors are dequantized to float32
    elif path.is_dir():
        hf_cfg = json.loads((path / "config.json").read_text())
        cfg = from_hf_config(hf_cfg)
        reader = safetensors_io.SafetensorsDir(path)
        get, keys = reader.__getitem__, reader.keys()
        tokenizer_fn = lambda: _hf_tokenizer(path)
        stored = _stored_dtype(reader)
    else:
        raise FileNotFoundError(f"{path}: not a HF directory or a .gguf file")
    overrides = dict(config_overrides)
    overrides["param_dtype"] = param_dtype or stored
    overrides["dtype"] = dtype or overrides["param_dtype"]
    cfg = cfg.replace(**overrides)

    host = convert.hf_to_params(cfg, get, head=head, source=str(path))
    unused = set(keys) - convert.expected_hf_keys(cfg, head)
    unused = sorted(k for k in unused if not k.endswith(convert.IGNORED_SUFFIXES))
    if unused:
        log.warning("%s: %d tensors not used: %s", path, len(unused), ", ".join(unused[:5]))
    model = from_host_params(cfg, host, head=head, mesh=mesh, rules=rules, source=str(path))
    tokenizer = tokenizer_fn() if load_tokenizer else None
    return model, tokenizer


def from_host_params(cfg: ModelConfig, host_params: dict, *, head: str = "lm", mesh: Mesh | None = None,
                     rules=shd.DEFAULT_RULES, source: str = "params") -> Model:
    """Check shapes against the model's abstract parameters, cast, and place on the mesh."""
    graphdef, abstract = abstract_model(cfg, head)
    flat_abstract = dict(shd._flatten(abstract))
    flat_host = dict(shd._flatten(host_params))
    missing = sorted(set(flat_abstract) - set(flat_host))
    if missing:
        raise convert.MissingTensorError(f"{source}: no value for parameters {missing}")
    for name, spec in flat_abstract.items():
        if tuple(flat_host[name].shape) != tuple(spec.shape):
            raise ValueError(f"{source}: parameter {name} has shape {tuple(flat_host[name].shape)}, "
                             f"the config needs {tuple(spec.shape)}")
    host_params = shd._map_with_path(
        lambda p, spec: np.asarray(flat_host["/".join(p)]).astype(spec.dtype), abstract)
    shardings = None
    if mesh is not None:
        axes = shd.logical_axes(nnx_state_of(graphdef, abstract))
        shardings = shd.param_shardings(abstract, axes, mesh, rules)
    params = shd.place(host_params, shardings)
    return Model(cfg=cfg, head=head, graphdef=graphdef, params=params, shardings=shardings)


def nnx_state_of(graphdef, abstract_params):
    import flax.nnx as nnx
    return nnx.state(nnx.merge(graphdef, abstract_params), nnx.Param)


def save_pretrained(model: Model, directory: str | Path, tokenizer=None,
                    max_shard_bytes: int = 2 ** 31) -> Path:
    """Write config.json + safetensors (+ tokenizer files) that transformers loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), model.params)
    tensors = convert.params_to_hf(model.cfg, host, head=model.head)
    if model.head == "scalar":
        bias = float(host["head"]["bias"])
        if bias != 0.0:
            # transformers' sequence-classification score layer has no bias: fold it in by a note
            log.warning("scalar head bias %.4g is stored in config.json as rlhf_jax_score_bias", bias)
    safetensors_io.write(tensors, directory, max_shard_bytes=max_shard_bytes)
    hf_cfg = to_hf_config(model.cfg)
    if model.head == "scalar":
        hf_cfg["architectures"] = [hf_cfg["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")
                                   .replace("LMHeadModel", "ForSequenceClassification")]
        hf_cfg.update(num_labels=1, rlhf_jax_score_bias=float(host["head"]["bias"]))
    (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def _stored_dtype(reader: safetensors_io.SafetensorsDir) -> str:
    for key in reader.keys():
        dt = reader.dtype(key)
        if dt.kind == "f" or dt.name == "bfloat16":
            return {"float16": "float16", "bfloat16": "bfloat16"}.get(dt.name, "float32")
    return "float32"


def _hf_tokenizer(directory: Path):
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((directory / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


# --- GGUF ------------------------------------------------------------------------------

GGUF_LAYER = {  # llama.cpp name (after blk.{i}.) -> transformers name (after model.layers.{i}.)
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GGUF_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
# GPT-2 (after transformer.h.{i}.); llama.cpp stores the Conv1D weights transposed, (out, in)
GGUF_GPT2_LAYER = {
    "attn_norm.weight": "ln_1.weight", "attn_norm.bias": "ln_1.bias",
    "ffn_norm.weight": "ln_2.weight", "ffn_norm.bias": "ln_2.bias",
    "attn_qkv.weight": "attn.c_attn.weight", "attn_qkv.bias": "attn.c_attn.bias",
    "attn_output.weight": "attn.c_proj.weight", "attn_output.bias": "attn.c_proj.bias",
    "ffn_up.weight": "mlp.c_fc.weight", "ffn_up.bias": "mlp.c_fc.bias",
    "ffn_down.weight": "mlp.c_proj.weight", "ffn_down.bias": "mlp.c_proj.bias",
}
GGUF_GPT2_TOP = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
                 "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias",
                 "output.weight": "lm_head.weight"}


def _gguf_name_to_hf(name: str, arch: str = "llama") -> str | None:
    top, layer, prefix = ((GGUF_GPT2_TOP, GGUF_GPT2_LAYER, "transformer.h.") if arch == "gpt2"
                          else (GGUF_TOP, GGUF_LAYER, "model.layers."))
    if name in top:
        return top[name]
    parts = name.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in layer:
        return f"{prefix}{parts[1]}.{layer[parts[2]]}"
    return None


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rotary halves -> rotate-half layout)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_getter(arch: str, loaders: dict, n_heads: int, n_kv: int, source: str = "GGUF"):
    """(get(hf_name) -> float32 array in the transformers layout, the HF names present) over GGUF-named
    tensors, `loaders` mapping each llama.cpp name to a function returning its (dequantized) array."""
    by_hf = {}
    for name in loaders:
        hf_name = _gguf_name_to_hf(name, arch)
        if hf_name is None:
            raise UnsupportedModelError(f"{source}: GGUF tensor {name!r} has no counterpart in the {arch} decoder")
        by_hf[hf_name] = name

    def get(hf_name: str) -> np.ndarray:
        if hf_name not in by_hf:
            raise KeyError(hf_name)
        w = np.asarray(loaders[by_hf[hf_name]](), dtype=np.float32)
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            w = _unpermute(w, n_heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            w = _unpermute(w, n_kv)
        elif arch == "gpt2" and w.ndim == 2 and hf_name.startswith("transformer.h."):
            w = np.ascontiguousarray(w.T)  # back to Conv1D's (in, out)
        return w

    return get, list(by_hf)


def _open_gguf(path: Path):
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise ImportError("reading GGUF needs the `gguf` package (pip install gguf)") from e
    reader = gguf.GGUFReader(str(path))

    def field(key, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    if arch not in ("llama", "qwen2", "gpt2"):
        raise UnsupportedModelError(f"{path}: GGUF architecture {arch!r} is not supported (llama, qwen2, gpt2 are)")
    tensors = {t.name: t for t in reader.tensors}
    n_heads = int(field(f"{arch}.attention.head_count"))
    n_kv = int(field(f"{arch}.attention.head_count_kv", n_heads))
    d_model = int(field(f"{arch}.embedding_length"))
    tokens = dict(bos_token_id=field("tokenizer.ggml.bos_token_id"), eos_token_id=field("tokenizer.ggml.eos_token_id"),
                  pad_token_id=field("tokenizer.ggml.padding_token_id"))
    if arch == "gpt2":
        hf_cfg = {"model_type": "gpt2", "n_embd": d_model, "n_layer": int(field("gpt2.block_count")),
                  "n_head": n_heads, "n_inner": int(field("gpt2.feed_forward_length", 4 * d_model)),
                  "n_positions": int(field("gpt2.context_length", 1024)),
                  "layer_norm_epsilon": float(field("gpt2.attention.layer_norm_epsilon", 1e-5)),
                  "vocab_size": int(tensors["token_embd.weight"].data.shape[0]), "activation_function": "gelu_new",
                  "tie_word_embeddings": "output.weight" not in tensors, **tokens}
    else:
        hf_cfg = {
            "model_type": arch, "hidden_size": d_model, "num_hidden_layers": int(field(f"{arch}.block_count")),
            "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
            "head_dim": int(field(f"{arch}.rope.dimension_count", d_model // n_heads)),
            "intermediate_size": int(field(f"{arch}.feed_forward_length")),
            "max_position_embeddings": int(field(f"{arch}.context_length", 2048)),
            "rms_norm_eps": float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(field(f"{arch}.rope.freq_base", 10000.0)),
            "vocab_size": int(tensors["token_embd.weight"].data.shape[0]),
            "tie_word_embeddings": "output.weight" not in tensors, **tokens,
        }
        if field(f"{arch}.rope.scaling.type") not in (None, "none"):
            raise UnsupportedModelError(f"{path}: GGUF rope scaling {field(f'{arch}.rope.scaling.type')!r}")
    cfg = from_hf_config(hf_cfg)
    loaders = {name: (lambda t=t: gguf.dequantize(t.data, t.tensor_type)) for name, t in tensors.items()}
    get, keys = gguf_getter(arch, loaders, n_heads, n_kv, source=str(path))

    def tokenizer():
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)

    return cfg, get, keys, tokenizer

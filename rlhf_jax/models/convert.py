"""Weight-name and layout maps between transformers checkpoints and our parameter tree.

A `Spec` relates some HF tensors to some of ours with a function each way, so fused HF
tensors (GPT-2's c_attn, NeoX's query_key_value) are one spec with three outputs. Layer
specs are written for layer `{i}` and stacked onto the leading `layers` axis.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.models.config import ModelConfig


class Spec(NamedTuple):
    hf: Sequence[str]
    ours: Sequence[str]
    to_ours: Callable[..., tuple]
    to_hf: Callable[..., tuple]


class MissingTensorError(UserError, KeyError):
    """A checkpoint lacks a tensor the model needs; the message names the file and the tensor."""

    def __str__(self) -> str:
        return str(self.args[0])


def _same(hf: str, ours: str) -> Spec:
    return Spec([hf], [ours], lambda a: (a,), lambda a: (a,))


def _transposed(hf: str, ours: str) -> Spec:
    return Spec([hf], [ours], lambda a: (a.T,), lambda a: (a.T,))


def _in_heads(hf: str, ours: str, D: int, n: int, K: int) -> Spec:
    """HF Linear (n*K, D) <-> ours (D, n, K)."""
    return Spec([hf], [ours], lambda a: (a.T.reshape(D, n, K),), lambda a: (a.reshape(D, n * K).T,))


def _out_heads(hf: str, ours: str, D: int, H: int, K: int) -> Spec:
    """HF Linear (D, H*K) <-> ours (H, K, D)."""
    return Spec([hf], [ours], lambda a: (a.T.reshape(H, K, D),), lambda a: (a.reshape(H * K, D).T,))


def _bias_heads(hf: str, ours: str, n: int, K: int) -> Spec:
    return Spec([hf], [ours], lambda a: (a.reshape(n, K),), lambda a: (a.reshape(n * K),))


def _llama_layer(cfg: ModelConfig) -> list[Spec]:
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pre = "model.layers.{i}."
    specs = [
        _same(pre + "input_layernorm.weight", "attn_norm_scale"),
        _same(pre + "post_attention_layernorm.weight", "mlp_norm_scale"),
        _in_heads(pre + "self_attn.q_proj.weight", "wq", D, H, K),
        _in_heads(pre + "self_attn.k_proj.weight", "wk", D, G, K),
        _in_heads(pre + "self_attn.v_proj.weight", "wv", D, G, K),
        _out_heads(pre + "self_attn.o_proj.weight", "wo", D, H, K),
        _transposed(pre + "mlp.gate_proj.weight", "w_gate"),
        _transposed(pre + "mlp.up_proj.weight", "w_up"),
        _transposed(pre + "mlp.down_proj.weight", "w_down"),
    ]
    if cfg.qkv_bias:
        specs += [_bias_heads(pre + "self_attn.q_proj.bias", "bq", H, K),
                  _bias_heads(pre + "self_attn.k_proj.bias", "bk", G, K),
                  _bias_heads(pre + "self_attn.v_proj.bias", "bv", G, K)]
    if cfg.out_bias:
        specs += [_same(pre + "self_attn.o_proj.bias", "bo"), _same(pre + "mlp.down_proj.bias", "b_down")]
    if cfg.mlp_bias:
        specs += [_same(pre + "mlp.gate_proj.bias", "b_gate"), _same(pre + "mlp.up_proj.bias", "b_up")]
    return specs


def _gpt2_layer(cfg: ModelConfig) -> list[Spec]:
    D, H, K = cfg.d_model, cfg.n_heads, cfg.head_dim
    pre = "transformer.h.{i}."

    def split_w(w):  # Conv1D (D, 3D) -> three (D, H, K)
        return tuple(part.reshape(D, H, K) for part in np.split(w, 3, axis=1))

    def split_b(b):
        return tuple(part.reshape(H, K) for part in np.split(b, 3))

    return [
        _same(pre + "ln_1.weight", "attn_norm_scale"), _same(pre + "ln_1.bias", "attn_norm_bias"),
        _same(pre + "ln_2.weight", "mlp_norm_scale"), _same(pre + "ln_2.bias", "mlp_norm_bias"),
        Spec([pre + "attn.c_attn.weight"], ["wq", "wk", "wv"], split_w,
             lambda q, k, v: (np.concatenate([x.reshape(D, H * K) for x in (q, k, v)], axis=1),)),
        Spec([pre + "attn.c_attn.bias"], ["bq", "bk", "bv"], split_b,
             lambda q, k, v: (np.concatenate([x.reshape(H * K) for x in (q, k, v)]),)),
        Spec([pre + "attn.c_proj.weight"], ["wo"], lambda a: (a.reshape(H, K, D),),
             lambda a: (a.reshape(H * K, D),)),
        _same(pre + "attn.c_proj.bias", "bo"),
        _same(pre + "mlp.c_fc.weight", "w_up"), _same(pre + "mlp.c_fc.bias", "b_up"),
        _same(pre + "mlp.c_proj.weight", "w_down"), _same(pre + "mlp.c_proj.bias", "b_down"),
    ]


def _neox_layer(cfg: ModelConfig) -> list[Spec]:
    D, H, K = cfg.d_model, cfg.n_heads, cfg.head_dim
    pre = "gpt_neox.layers.{i}."

    def split_w(w):  # (H*3*K, D), rows ordered (head, q/k/v, dim)
        w = w.reshape(H, 3, K, D)
        return tuple(w[:, j].transpose(2, 0, 1) for j in range(3))

    def merge_w(q, k, v):
        return (np.stack([x.transpose(1, 2, 0) for x in (q, k, v)], axis=1).reshape(H * 3 * K, D),)

    return [
        _same(pre + "input_layernorm.weight", "attn_norm_scale"),
        _same(pre + "input_layernorm.bias", "attn_norm_bias"),
        _same(pre + "post_attention_layernorm.weight", "mlp_norm_scale"),
        _same(pre + "post_attention_layernorm.bias", "mlp_norm_bias"),
        Spec([pre + "attention.query_key_value.weight"], ["wq", "wk", "wv"], split_w, merge_w),
        Spec([pre + "attention.query_key_value.bias"], ["bq", "bk", "bv"],
             lambda b: tuple(b.reshape(H, 3, K)[:, j] for j in range(3)),
             lambda q, k, v: (np.stack([q, k, v], axis=1).reshape(H * 3 * K),)),
        _out_heads(pre + "attention.dense.weight", "wo", D, H, K),
        _same(pre + "attention.dense.bias", "bo"),
        _transposed(pre + "mlp.dense_h_to_4h.weight", "w_up"), _same(pre + "mlp.dense_h_to_4h.bias", "b_up"),
        _transposed(pre + "mlp.dense_4h_to_h.weight", "w_down"), _same(pre + "mlp.dense_4h_to_h.bias", "b_down"),
    ]


def _top(cfg: ModelConfig, head: str) -> list[Spec]:
    """Embedding, final norm and head specs; ours are paths in the parameter tree."""
    if cfg.family == "gpt2":
        specs = [_same("transformer.wte.weight", "embed"), _same("transformer.wpe.weight", "pos_embed"),
                 _same("transformer.ln_f.weight", "final_norm_scale"),
                 _same("transformer.ln_f.bias", "final_norm_bias")]
        lm = "lm_head.weight"
    elif cfg.family == "gpt_neox":
        specs = [_same("gpt_neox.embed_in.weight", "embed"),
                 _same("gpt_neox.final_layer_norm.weight", "final_norm_scale"),
                 _same("gpt_neox.final_layer_norm.bias", "final_norm_bias")]
        lm = "embed_out.weight"
    else:
        specs = [_same("model.embed_tokens.weight", "embed"), _same("model.norm.weight", "final_norm_scale")]
        lm = "lm_head.weight"
    if head == "lm" and not cfg.tie_embeddings:
        specs.append(_transposed(lm, "head/kernel"))
    if head == "scalar":
        specs += [Spec(["score.weight"], ["head/kernel"], lambda a: (a.reshape(-1),), lambda a: (a[None, :],))]
    return specs


def _layer_specs(cfg: ModelConfig) -> list[Spec]:
    if cfg.family == "gpt2":
        return _gpt2_layer(cfg)
    if cfg.family == "gpt_neox":
        return _neox_layer(cfg)
    return _llama_layer(cfg)


# tensors HF checkpoints carry that hold no weights (causal-mask buffers, rotary caches)
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                    "rotary_emb.inv_freq")


def hf_to_params(cfg: ModelConfig, get: Callable[[str], np.ndarray], head: str = "lm",
                 source: str = "checkpoint") -> dict:
    """Our parameter tree (NumPy, float32 or the file's dtype) from HF tensors fetched by `get`.

    Raises MissingTensorError naming every tensor that is absent.
    """
    missing: list[str] = []

    def fetch(name):
        try:
            return get(name)
        except KeyError:
            missing.append(name)
            return None

    params: dict = {"blocks": {}}
    for spec in _top(cfg, head):
        arrays = [fetch(k) for k in spec.hf]
        if all(a is not None for a in arrays):
            for path, value in zip(spec.ours, spec.to_ours(*arrays)):
                _set(params, path, value)
    per_layer: dict[str, list] = {}
    for i in range(cfg.n_layers):
        for spec in _layer_specs(cfg):
            arrays = [fetch(k.format(i=i)) for k in spec.hf]
            if all(a is not None for a in arrays):
                for name, value in zip(spec.ours, spec.to_ours(*arrays)):
                    per_layer.setdefault(name, []).append(value)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise MissingTensorError(f"{source}: missing tensors for {cfg.family}: {shown}")
    params["blocks"] = {name: np.stack(values) for name, values in per_layer.items()}
    if head == "scalar":
        params["head"]["bias"] = np.zeros((), np.float32)
    return params


def params_to_hf(cfg: ModelConfig, params: Mapping, head: str = "lm") -> dict[str, np.ndarray]:
    """HF tensors (NumPy) from our parameter tree; inverse of `hf_to_params`."""
    out: dict[str, np.ndarray] = {}
    for spec in _top(cfg, head):
        for key, value in zip(spec.hf, spec.to_hf(*[np.asarray(_get(params, p)) for p in spec.ours])):
            out[key] = value
    blocks = {k: np.asarray(v) for k, v in params["blocks"].items()}
    for i in range(cfg.n_layers):
        for spec in _layer_specs(cfg):
            for key, value in zip(spec.hf, spec.to_hf(*[blocks[p][i] for p in spec.ours])):
                out[key.format(i=i)] = value
    return out


def expected_hf_keys(cfg: ModelConfig, head: str = "lm") -> set[str]:
    keys = {k for spec in _top(cfg, head) for k in spec.hf}
    for i in range(cfg.n_layers):
        keys |= {k.format(i=i) for spec in _layer_specs(cfg) for k in spec.hf}
    return keys


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: Mapping, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree

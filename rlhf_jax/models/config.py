"""Model configuration: one dataclass describes every supported decoder family.

GPT-2, Llama / Mistral / Qwen2 / SmolLM2 and GPT-NeoX / Pythia differ only in the
options below; `from_hf_config` maps a transformers `config.json` onto them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rlhf_jax.errors import UserError

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox")
# what each block keeps for the backward pass (`transformer.REMAT_POLICIES` maps them to JAX's):
# none = everything (no remat), full = only the block's input, save_matmuls = the weight matmuls'
# outputs (not the attention scores), save_dots = every matmul output, attention's included
REMAT_POLICIES = ("none", "full", "save_matmuls", "save_dots")
# xla_manual: `layers.attention` (einsum, mask, softmax: today's numbers); dot_product:
# jax.nn.dot_product_attention with JAX's choice of kernel (XLA); cudnn: the same with cuDNN's
# fused kernel (GPU, float16 / bfloat16 only)
ATTENTION_IMPLS = ("xla_manual", "dot_product", "cudnn")
DECODE_LAYERS = ("auto", "scan", "per_layer")


class UnsupportedModelError(UserError, ValueError):
    """Raised when a checkpoint's architecture or option cannot be represented."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and family options of the decoder. Shapes use D=d_model, H=n_heads, K=head_dim."""

    family: str = "llama"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 16
    d_ff: int = 128
    max_seq_len: int = 512
    # normalisation: "rmsnorm" (Llama family) or "layernorm" (GPT-2, NeoX)
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    # feed-forward: "swiglu" (gate * up) or "mlp" (one hidden layer)
    mlp: str = "swiglu"
    activation: str = "silu"  # silu | gelu | gelu_tanh | relu
    # positions: "rope" or "learned"
    position: str = "rope"
    rope_theta: float = 10000.0
    rotary_pct: float = 1.0  # fraction of head_dim that is rotated (NeoX: 0.25)
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # HF rope_scaling dict as sorted items
    sliding_window: int | None = None
    parallel_residual: bool = False
    qkv_bias: bool = False
    out_bias: bool = False  # bias on attention output and MLP down projection
    mlp_bias: bool = False  # bias on MLP up (and gate) projections
    tie_embeddings: bool = True
    dropout_rate: float = 0.0  # residual and embedding dropout; off by default
    attn_dropout_rate: float = 0.0
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; log-softmax and losses always run in float32
    # rematerialisation of each block in the backward pass: a name of REMAT_POLICIES
    # (True / False are read as "full" / "none", the field's former bool form)
    remat: str = "none"
    attention_impl: str = "xla_manual"  # one of ATTENTION_IMPLS
    # blocks per iteration of the `lax.scan` over layers: 1 (one compiled block, the fastest
    # compile) up to n_layers (fully unrolled: slower to compile, XLA sees every layer at once)
    scan_unroll: int = 1
    # how sampling's decode steps run the layers: "scan" reads each layer's slice of the stacked
    # weights (and KV cache) inside the token loop; "per_layer" slices the weights into one array
    # per layer once, before the loop (a transient copy of the block weights), and runs the layers
    # unrolled on per-layer caches. XLA:CPU copies a layer's slice out of the stack at every token,
    # which "per_layer" avoids (docs/benchmarks.md, "The PPO iteration against Google Tunix");
    # "auto" is "per_layer" on the CPU backend and "scan" elsewhere
    decode_layers: str = "auto"
    # log-probs, entropy and the LM loss from the final hidden states in chunks of `logits_chunk`
    # sequence positions (the LM head recomputed per chunk in the backward pass), so the
    # B x T x V logits never exist; 0 = the full logits. `vocab_chunk` > 0 also splits the
    # vocabulary (an online log-sum-exp), so at most B x logits_chunk x vocab_chunk exist at once.
    logits_chunk: int = 0
    vocab_chunk: int = 0
    latent_dim: int = 128  # width of the InfoRM head's information bottleneck (head "inform")
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if isinstance(self.remat, bool):  # the former bool field
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        problems = []
        if not 1 <= self.scan_unroll <= max(self.n_layers, 1):
            problems.append(f"scan_unroll={self.scan_unroll} must be between 1 and n_layers={self.n_layers}")
        if self.decode_layers not in DECODE_LAYERS:
            problems.append(f"decode_layers={self.decode_layers!r} is not one of {DECODE_LAYERS}")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            problems.append(f"attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if self.attention_impl != "xla_manual" and self.attn_dropout_rate > 0:
            problems.append(f"attn_dropout_rate={self.attn_dropout_rate} needs attention_impl='xla_manual' "
                            "(jax.nn.dot_product_attention has no dropout)")
        if self.logits_chunk < 0 or self.vocab_chunk < 0:
            problems.append(f"logits_chunk={self.logits_chunk} and vocab_chunk={self.vocab_chunk} must be >= 0")
        if self.vocab_chunk and not self.logits_chunk:
            problems.append("vocab_chunk > 0 needs logits_chunk > 0")
        if self.family not in FAMILIES:
            problems.append(f"family={self.family!r} is not one of {FAMILIES}")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.norm not in ("rmsnorm", "layernorm"):
            problems.append(f"norm={self.norm!r} must be 'rmsnorm' or 'layernorm'")
        if self.mlp not in ("swiglu", "mlp"):
            problems.append(f"mlp={self.mlp!r} must be 'swiglu' or 'mlp'")
        if self.activation not in ("silu", "gelu", "gelu_tanh", "relu"):
            problems.append(f"activation={self.activation!r} is not supported")
        if self.position not in ("rope", "learned"):
            problems.append(f"position={self.position!r} must be 'rope' or 'learned'")
        if self.position == "rope" and self.rotary_dim % 2:
            problems.append(f"rotary dim {self.rotary_dim} (head_dim * rotary_pct) must be even")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                problems.append(f"{name}={getattr(self, name)!r} must be float32, bfloat16 or float16")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count of the backbone plus LM head (analytic, no arrays built)."""
        D, H, G, K, F, L = (self.d_model, self.n_heads, self.n_kv_heads, self.head_dim,
                            self.d_ff, self.n_layers)
        norm = D * (2 if self.norm == "layernorm" else 1)
        attn = D * H * K + 2 * D * G * K + H * K * D
        if self.qkv_bias:
            attn += H * K + 2 * G * K
        if self.out_bias:
            attn += D
        mlp = (3 if self.mlp == "swiglu" else 2) * D * F
        if self.mlp_bias:
            mlp += F * (2 if self.mlp == "swiglu" else 1)
        if self.out_bias:
            mlp += D
        total = L * (attn + mlp + 2 * norm) + norm
        if include_embeddings:
            total += self.vocab_size * D * (1 if self.tie_embeddings else 2)
            if self.position == "learned":
                total += self.max_seq_len * D
        return total


def _rope_items(hf: Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    scaling = hf.get("rope_scaling") or _rope_params(hf)
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ("linear", "llama3"):
        raise UnsupportedModelError(f"rope_scaling type {kind!r} is not supported (linear, llama3 are)")
    skip = ("rope_theta", "partial_rotary_factor")
    return tuple(sorted((k, v) for k, v in scaling.items() if k not in skip and not isinstance(v, (list, dict))))


def from_hf_config(hf: Mapping[str, Any]) -> ModelConfig:
    """Map a transformers config.json dict onto a ModelConfig; unknown architectures fail loudly."""
    model_type = hf.get("model_type")
    common = dict(bos_token_id=_first(hf.get("bos_token_id")), eos_token_id=_first(hf.get("eos_token_id")),
                  pad_token_id=_first(hf.get("pad_token_id")))
    if model_type == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise UnsupportedModelError("gpt2 options scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn")
        d = hf["n_embd"]
        n_heads = hf["n_head"]
        act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
        return ModelConfig(
            family="gpt2", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=n_heads,
            n_kv_heads=n_heads, head_dim=d // n_heads, d_ff=hf.get("n_inner") or 4 * d,
            max_seq_len=hf["n_positions"], norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp="mlp", activation=_lookup(act, hf.get("activation_function", "gelu_new"), "activation_function"),
            position="learned", qkv_bias=True, out_bias=True, mlp_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True), **common)
    if model_type in ("llama", "mistral", "qwen2"):
        d = hf["hidden_size"]
        n_heads = hf["num_attention_heads"]
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"{model_type} hidden_act={hf.get('hidden_act')!r}")
        window = None
        if model_type == "mistral":
            window = hf.get("sliding_window")
        elif model_type == "qwen2" and hf.get("use_sliding_window"):
            raise UnsupportedModelError("qwen2 use_sliding_window=true")
        return ModelConfig(
            family=model_type, vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
            n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or d // n_heads, d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048), norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", activation="silu", position="rope",
            rope_theta=_rope_theta(hf), rope_scaling=_rope_items(hf),
            sliding_window=window, qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias")),
            out_bias=bool(hf.get("attention_bias")) and model_type == "llama",
            mlp_bias=bool(hf.get("mlp_bias")), tie_embeddings=hf.get("tie_word_embeddings", False), **common)
    if model_type == "gpt_neox":
        d = hf["hidden_size"]
        n_heads = hf["num_attention_heads"]
        act = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
        if not hf.get("attention_bias", True):
            raise UnsupportedModelError("gpt_neox attention_bias=false")
        return ModelConfig(
            family="gpt_neox", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
            n_heads=n_heads, n_kv_heads=n_heads, head_dim=d // n_heads, d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048), norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-5), mlp="mlp",
            activation=_lookup(act, hf.get("hidden_act", "gelu"), "hidden_act"), position="rope",
            rope_theta=_rope_theta(hf, "rotary_emb_base"),
            rotary_pct=float(_rope_params(hf).get("partial_rotary_factor") or hf.get("partial_rotary_factor")
                             or hf.get("rotary_pct") or 1.0),
            rope_scaling=_rope_items(hf),
            parallel_residual=hf.get("use_parallel_residual", True), qkv_bias=True, out_bias=True,
            mlp_bias=True, tie_embeddings=hf.get("tie_word_embeddings", False), **common)
    raise UnsupportedModelError(
        f"model_type={model_type!r} is not supported; supported: gpt2, llama, mistral, qwen2, gpt_neox")


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The transformers config.json dict for a ModelConfig (inverse of `from_hf_config`)."""
    tokens = {k: v for k, v in dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                     pad_token_id=cfg.pad_token_id).items() if v is not None}
    dtype = cfg.param_dtype
    if cfg.family == "gpt2":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.activation]
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size,
                    n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                    n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps, activation_function=act,
                    tie_word_embeddings=cfg.tie_embeddings, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    torch_dtype=dtype, **tokens)
    if cfg.family in ("llama", "mistral", "qwen2"):
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        out = dict(model_type=cfg.family, architectures=[arch[cfg.family]], vocab_size=cfg.vocab_size,
                   hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                   num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
                   max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
                   rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling_dict,
                   rope_parameters=_rope_parameters(cfg),
                   tie_word_embeddings=cfg.tie_embeddings, torch_dtype=dtype, **tokens)
        if cfg.family == "llama":
            out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
        if cfg.family == "mistral":
            out.update(sliding_window=cfg.sliding_window)
        return out
    act = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[cfg.activation]
    return dict(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"], vocab_size=cfg.vocab_size,
                hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len, layer_norm_eps=cfg.norm_eps,
                hidden_act=act, rotary_emb_base=cfg.rope_theta, rope_theta=cfg.rope_theta,
                rotary_pct=cfg.rotary_pct, partial_rotary_factor=cfg.rotary_pct,
                rope_parameters=dict(_rope_parameters(cfg), partial_rotary_factor=cfg.rotary_pct),
                use_parallel_residual=cfg.parallel_residual, tie_word_embeddings=cfg.tie_embeddings,
                attention_bias=True, torch_dtype=dtype, **tokens)


def _rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    # transformers >= 5 format; older versions read the legacy keys written beside it
    params = {"rope_type": "default", **(cfg.rope_scaling_dict or {})}
    params.pop("type", None)
    return {**params, "rope_theta": cfg.rope_theta}


def _rope_params(hf: Mapping[str, Any]) -> Mapping[str, Any]:
    # transformers >= 5 nests rope settings under "rope_parameters"
    return hf.get("rope_parameters") or {}


def _rope_theta(hf: Mapping[str, Any], legacy_key: str = "rope_theta") -> float:
    params = _rope_params(hf)
    if "rope_theta" in params:
        return float(params["rope_theta"])
    value = hf.get("rope_theta") or hf.get(legacy_key)
    return float(value) if value else 10000.0


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _lookup(table: Mapping[str, str], key: str, field: str) -> str:
    if key not in table:
        raise UnsupportedModelError(f"{field}={key!r} is not supported ({sorted(table)})")
    return table[key]


# Named shapes for tests, benchmarks and the built-in task world.
PRESETS: dict[str, ModelConfig] = {
    "test": ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                        max_seq_len=64),
    "10m": ModelConfig(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=32, d_ff=768,
                       max_seq_len=1024),
    # the SmolLM2-135M shape (Llama architecture, GQA 9/3, tied embeddings, theta 1e5)
    "135m": ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                        d_ff=1536, max_seq_len=2048, rope_theta=100000.0, norm_eps=1e-5),
    "1b": ModelConfig(vocab_size=49152, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                      d_ff=8192, max_seq_len=2048, rope_theta=500000.0),
}

"""Config validation, before anything is built: the run-wide fields here, each stage's own
section in its module's `check`. Names are checked against the registries they select from."""
from __future__ import annotations

import math

import jax

from rlhf_jax.context import ConfigError
from rlhf_jax.logging import MODES
from rlhf_jax.models import PRESETS
from rlhf_jax.models.config import ATTENTION_IMPLS, REMAT_POLICIES
from rlhf_jax.stages.registry import STAGES, listed

BATCH_FIELDS = (("sft", "batch_size"), ("rm", "batch_size"), ("ppo", "batch_size"), ("dpo", "batch_size"),
                ("rs", "batch_size"), ("fg", "batch_size"))
DATA_FILES = (("sft", "sft_train"), ("rm", "rm_train"), ("ppo", "prompts"), ("dpo", "rm_train"))


def need(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def _max_seq(c) -> int:
    if c.model.preset:
        return int(c.model.overrides.get("max_seq_len", PRESETS[c.model.preset].max_seq_len))
    return 1 << 30


def validate_config(c) -> None:
    """Raise ConfigError naming the first field that cannot work."""
    stages = listed(c)
    for s in stages:
        need(s in STAGES, "stages", f"{s!r} is not one of {STAGES.names()}")
    need(c.data.source in ("synthetic", "files"), "data.source", "must be 'synthetic' or 'files'")
    need(c.data.policy in ("error", "skip"), "data.policy", "must be 'error' or 'skip'")
    need(c.data.max_len > 0, "data.max_len", "must be > 0")
    need(c.data.max_prompt_len > 0, "data.max_prompt_len", "must be > 0")
    need(c.data.max_prompt_len < c.data.max_len, "data.max_prompt_len", "must be below data.max_len")
    need(bool(c.model.preset) != bool(c.model.path), "model.preset", "set exactly one of model.preset / model.path")
    need(not c.model.preset or c.model.preset in PRESETS, "model.preset", f"must be one of {sorted(PRESETS)}")
    for field in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len", "vocab_size"):
        value = c.model.overrides.get(field, 1)
        need(isinstance(value, int) and value > 0, f"model.overrides.{field}", f"{value!r} must be a positive integer")
    heads, kv = c.model.overrides.get("n_heads"), c.model.overrides.get("n_kv_heads")
    need(not (heads and kv) or heads % kv == 0, "model.overrides.n_kv_heads", f"{kv} must divide n_heads={heads}")
    need(c.log.wandb in ("auto",) + MODES, "log.wandb", f"must be 'auto' or one of {MODES}")
    batch_devices = jax.device_count() // max(c.mesh.tensor, 1)
    for stage, field in BATCH_FIELDS:
        bs = c[stage][field]
        need(bs > 0 and bs % max(1, batch_devices) == 0, f"{stage}.{field}",
             f"{bs} must be a positive multiple of the {batch_devices} data-parallel devices")
    for block in ("sft", "rm", "fg", "ppo", "dpo", "rs"):
        o = c[block]
        need(math.isfinite(o.lr) and o.lr > 0, f"{block}.lr", f"{o.lr} must be a positive number")
        need(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"{block}.b2", "b1 and b2 must be in [0, 1)")
        need(o.eps > 0 and 0 < o.rmsprop_decay < 1, f"{block}.eps", "eps must be > 0 and rmsprop_decay in (0, 1)")
        need(o.optimizer in ("adamw", "rmsprop"), f"{block}.optimizer", "must be 'adamw' or 'rmsprop'")
        need(o.schedule in ("cosine", "constant"), f"{block}.schedule", "must be 'cosine' or 'constant'")
        need(o.warmup_steps >= 0 and o.max_grad_norm >= 0, f"{block}.warmup_steps",
             "warmup_steps and max_grad_norm must be >= 0")
    for block, batch in (("sft", "batch_size"), ("rs", "batch_size"), ("rm", "batch_size"), ("fg", "batch_size"),
                         ("dpo", "batch_size")):
        g = c[block].grad_accum
        need(g >= 1 and c[block][batch] % g == 0, f"{block}.grad_accum", f"{g} must divide {block}.{batch}")
    g = c.ppo.grad_accum
    need(g >= 1 and (c.ppo.batch_size // c.ppo.minibatches) % g == 0, "ppo.grad_accum",
         "must divide the PPO minibatch (batch_size / minibatches)")
    need(c.model.remat in REMAT_POLICIES, "model.remat", f"must be one of {REMAT_POLICIES}")
    need(c.model.attention_impl in ATTENTION_IMPLS, "model.attention_impl", f"must be one of {ATTENTION_IMPLS}")
    for stage in STAGES.names():
        if STAGES[stage].check is not None:
            STAGES[stage].check(c, need)
    need(c.data.max_prompt_len + c.ppo.max_new_tokens <= _max_seq(c), "ppo.max_new_tokens",
         "prompt + response exceeds the model's max_seq_len")
    if c.data.source == "files":
        for stage, field in DATA_FILES:
            need(stage not in stages or bool(c.data[field]), f"data.{field}", f"needed by stage {stage}")

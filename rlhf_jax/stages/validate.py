"""Config validation, before anything is built: the run-wide fields and the shared training
fields of every trained stage here (looping over the registered stages' declarations), each
stage's own section in its module's `check`. Names are checked against the registries they
select from; a field under an old name fails naming the new one."""
from __future__ import annotations

import math

import jax

from rlhf_jax.errors import ConfigError
from rlhf_jax.generate import SAMPLERS
from rlhf_jax.logging import MODES
from rlhf_jax.models import PRESETS
from rlhf_jax.models.config import ATTENTION_IMPLS, REMAT_POLICIES
from rlhf_jax.stages.registry import STAGES, listed, trained
from rlhf_jax.train.lora import IN_DIMS as LORA_TARGETS
from rlhf_jax.train.optim import OPTIMIZER_FIELDS
from rlhf_jax.workdir import flatten

# config fields renamed, old -> new (a section or a field); the old names fail with the new one
RENAMED = {"fg": "fgrm", "eval": "heldout", "ppo.max_new_tokens": "sampling.max_new_tokens",
           "ppo.top_k": "sampling.top_k", "ppo.top_p": "sampling.top_p", "ppo.sampler": "sampling.sampler"}


def need(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def renamed(field: str) -> str | None:
    """The current name of `field` (dotted) if it is under an old name, else None."""
    for old, new in RENAMED.items():
        if field == old or field.startswith(old + "."):
            return new + field[len(old):]
    return None


def check_renamed(fields) -> None:
    """Fail on the first field (dotted: "fg.lr") that is under an old name, naming the new one."""
    for field in fields:
        new = renamed(field)
        need(new is None, field, f"was renamed: use config.{new}")


def _max_seq(c) -> int:
    if c.model.preset:
        return int(c.model.overrides.get("max_seq_len", PRESETS[c.model.preset].max_seq_len))
    return 1 << 30


def check_lora(c, need, block: str) -> None:
    """LoRA fields of a trained stage's block."""
    s = c[block]
    need(s.lora_rank >= 0, f"{block}.lora_rank", "must be >= 0 (0 = full fine-tuning)")
    bad = [t for t in s.lora_targets.split(",") if t not in LORA_TARGETS]
    need(not bad, f"{block}.lora_targets", f"{bad} are not among {sorted(LORA_TARGETS)}")
    need(s.lora_rank or not s.lora_int8, f"{block}.lora_int8", "an int8 base needs LoRA (lora_rank > 0)")


def check_training(c, block: str, batch_devices: int) -> None:
    """The fields every trained stage's block shares: batch, optimizer, accumulation, LoRA."""
    o = c[block]
    missing = [f for f in ("batch_size", "save_every", *OPTIMIZER_FIELDS) if f not in o]
    need(not missing, block, f"a trained stage's block needs {missing} (configs/common.py: optimizer())")
    bs = o.batch_size
    need(bs > 0 and bs % max(1, batch_devices) == 0, f"{block}.batch_size",
         f"{bs} must be a positive multiple of the {batch_devices} data-parallel devices")
    need(math.isfinite(o.lr) and o.lr > 0, f"{block}.lr", f"{o.lr} must be a positive number")
    need(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"{block}.b2", "b1 and b2 must be in [0, 1)")
    need(o.eps > 0 and 0 < o.rmsprop_decay < 1, f"{block}.eps", "eps must be > 0 and rmsprop_decay in (0, 1)")
    need(o.optimizer in ("adamw", "rmsprop"), f"{block}.optimizer", "must be 'adamw' or 'rmsprop'")
    need(o.schedule in ("cosine", "constant"), f"{block}.schedule", "must be 'cosine' or 'constant'")
    need(o.warmup_steps >= 0 and o.max_grad_norm >= 0, f"{block}.warmup_steps",
         "warmup_steps and max_grad_norm must be >= 0")
    if "grad_accum" in o:
        g = o.grad_accum
        need(g >= 1 and bs % g == 0, f"{block}.grad_accum", f"{g} must divide {block}.batch_size")
    if "lora_rank" in o:
        check_lora(c, need, block)


def validate_config(c) -> None:
    """Raise ConfigError naming the first field that cannot work."""
    check_renamed(flatten(c))
    stages = listed(c)
    for s in stages:
        need(s in STAGES, "stages", f"{s!r} is not one of {STAGES.names()}")
    need(c.data.source in ("synthetic", "files"), "data.source", "must be 'synthetic' or 'files'")
    need(c.data.policy in ("error", "skip"), "data.policy", "must be 'error' or 'skip'")
    need(not c.data.rm_val or c.data.source == "files", "data.rm_val", "a source of held-out pairs needs "
         "data.source = 'files' (the task world makes its own held-out rankings)")
    if c.data.source == "synthetic":  # a file named here would be silently replaced by the world's records
        for field in ("sft_train", "rm_train", "prompts"):
            value = c.data[field]
            need(not value or (field == "rm_train" and value == "stage:prefs"), f"data.{field}",
                 f"= {value!r} is read only with data.source = 'files' (the task world makes its own records); "
                 "set --config.data.source=files")
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
    for stage in trained():
        check_training(c, stage.block, batch_devices)
    need(c.model.remat in REMAT_POLICIES, "model.remat", f"must be one of {REMAT_POLICIES}")
    need(c.model.attention_impl in ATTENTION_IMPLS, "model.attention_impl", f"must be one of {ATTENTION_IMPLS}")
    s = c.sampling
    need(s.sampler in SAMPLERS, "sampling.sampler", f"must be one of {SAMPLERS.names()}")
    need(s.max_new_tokens >= 1 and s.top_k >= 0, "sampling.max_new_tokens", "max_new_tokens must be >= 1, top_k >= 0")
    need(0 < s.top_p <= 1, "sampling.top_p", "must be in (0, 1]")
    for stage in STAGES.names():
        if STAGES[stage].check is not None:
            STAGES[stage].check(c, need)
    need(c.data.max_prompt_len + s.max_new_tokens <= _max_seq(c), "sampling.max_new_tokens",
         "prompt + response exceeds the model's max_seq_len")
    if c.data.source == "files":
        for stage in stages:
            for field in STAGES[stage].data:
                need(bool(c.data[field]), f"data.{field}", f"needed by stage {stage}")

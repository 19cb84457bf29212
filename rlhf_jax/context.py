"""The run context: what every stage of one run shares, built once from the config.

    ctx = build_context(config, workdir)
    ctx.config, ctx.workdir, ctx.mesh, ctx.tokenizer, ctx.base, ctx.rng, ctx.world, ctx.data

The context is frozen; stages hand their results to each other through files in the
workdir (`checkpoint.save_final` / `load_final`), never through the context.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from rlhf_jax import distributed, paths, sharding as shd
from rlhf_jax.data import corpora, synthetic
from rlhf_jax.data.batches import BatchIterator
from rlhf_jax.data.run_data import RunData, world_config
from rlhf_jax.errors import ConfigError  # also re-exported: raised by the config validation
from rlhf_jax.logging import NullWriter, Writer
from rlhf_jax.models import PRESETS, Model, init_model, load_pretrained


@dataclasses.dataclass(frozen=True)
class RunContext:
    config: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    tokenizer: Any
    base: Model
    rng: jax.Array
    world: synthetic.WorldConfig | None
    data: RunData
    use_wandb: bool = True

    def model_cfg(self, **changes):
        """The base model's architecture with `changes` (dropout, latent width...)."""
        return self.base.cfg.replace(**changes)

    def shard(self, batch):
        """A global batch as arrays split over the batch mesh axes. Every process builds the same
        global batch (the iterators are deterministic); on several processes each hands on only
        its own contiguous share of the rows, as `sharding.shard_batch` expects."""
        n, i = jax.process_count(), jax.process_index()
        if n > 1:
            batch = jax.tree.map(lambda x: x[i * (len(x) // n):(i + 1) * (len(x) // n)], batch)
        return shd.shard_batch(batch, self.mesh)

    def iterator(self, arrays, batch_size: int, salt: int) -> BatchIterator:
        """A resumable iterator whose order depends on the run's seed and the stage's salt."""
        return BatchIterator(arrays, batch_size, seed=self.config.seed * 1000 + salt)

    def writer(self, stage: str, keys: tuple[str, ...], resume_step: int | None = None) -> NullWriter:
        """The stage's metrics writer; `resume_step` truncates its metrics.jsonl to that step.
        On several processes only process 0 writes (the metrics are the same on every one)."""
        c = self.config
        if not distributed.primary():
            return NullWriter()
        if not self.use_wandb:
            return Writer(self.workdir / stage, stage, wandb="disabled", keys=keys, resume_step=resume_step)
        return Writer(self.workdir / stage, stage, wandb=c.log.wandb, project=c.log.project,
                      run_name=f"{c.name}-{self.workdir.name}", group=c.log.group or None, config=c.to_dict(),
                      keys=keys, resume_step=resume_step)


def _preset_tokenizer(c):
    spec = c.model.tokenizer
    if not spec:
        return synthetic.tokenizer()
    if spec == "corpus:gpt2":
        return corpora.gpt2_tokenizer()
    from transformers import AutoTokenizer
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"config.model.tokenizer: {path} is not a local tokenizer directory")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def base_model(c, mesh) -> tuple[Model, Any]:
    """(the model every stage starts from, its tokenizer): a checkpoint, or a preset at init."""
    dtypes = dict(param_dtype=c.model.param_dtype, dtype=c.model.dtype, remat=c.model.remat,
                  attention_impl=c.model.attention_impl, logits_chunk=c.model.logits_chunk,
                  vocab_chunk=c.model.vocab_chunk)  # and the memory settings (configs/common.py)
    if c.model.path:
        path = Path(c.model.path).expanduser()
        if not path.exists():
            hint = ("; fetch it with `python tools/fetch_smollm2.py` (or point RLHF_JAX_SMOLLM2 at a copy)"
                    if path == paths.smollm2_path() else "")
            raise ConfigError(f"config.model.path: {path} does not exist{hint}")
        model, tok = load_pretrained(path, mesh=mesh, **dtypes, **dict(c.model.overrides))
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return model, tok
    tok = _preset_tokenizer(c)
    cfg = PRESETS[c.model.preset].replace(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                          **dict(c.model.overrides), **dtypes)
    return init_model(cfg, seed=c.seed, mesh=mesh), tok


def build_context(config, workdir: str | Path, *, use_wandb: bool = True) -> RunContext:
    """The mesh, tokenizer, base model, task world and data of a valid config (the runner,
    `rlhf_jax.stages.run`, validates it first: `rlhf_jax.stages.validate.validate_config`)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = shd.make_mesh(shd.MeshConfig(config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
    base, tokenizer = base_model(config, mesh)
    world = world_config(config) if config.data.source == "synthetic" else None
    return RunContext(config, workdir, mesh, tokenizer, base, jax.random.key(config.seed), world,
                      RunData(config, tokenizer, world), use_wandb)

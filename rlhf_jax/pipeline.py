"""The InstructGPT pipeline: data, models and the three stages, driven by one config.

Each stage writes `WORKDIR/<stage>/`: orbax checkpoints of its train state (resumed from
automatically), `final/` (the parameters the next stage starts from), `metrics.jsonl` and
`summary.json`. A finished stage is not run again.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax import sharding as shd
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.data import corpora, synthetic
from rlhf_jax.data.batches import BatchIterator
from rlhf_jax.data.sources import read_records
from rlhf_jax.data.tokenize import TokenizeConfig, prompt_arrays, ranking_arrays, sft_arrays
from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.logging import Writer
from rlhf_jax.models import PRESETS, abstract_model, init_model, load_pretrained
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train import rm as rm_lib
from rlhf_jax.train import sft as sft_lib
from rlhf_jax.objectives import bon as bon_lib
from rlhf_jax.objectives import ensemble as ensemble_lib
from rlhf_jax.objectives.dpo import LOSSES as DPO_LOSSES
from rlhf_jax.objectives.finegrained import parse_components, token_classes
from rlhf_jax.objectives.inform import KL_FORMS
from rlhf_jax.train import finegrained as fg_lib
from rlhf_jax.train import dpo as dpo_lib
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train.lora import IN_DIMS as LORA_TARGETS, LoRAConfig
from rlhf_jax.train.loop import run_loop
from rlhf_jax.train.optim import freeze_mask, make_optimizer
from rlhf_jax.train.state import PPOState, TrainState, commit, compile_step

STAGES = ("sft", "rm", "fgrm", "ppo", "dpo", "bon", "rs")


class ConfigError(ValueError):
    pass


def validate_config(c) -> None:
    """Fail before any compilation, naming the field."""
    def need(ok, field, msg):
        if not ok:
            raise ConfigError(f"config.{field}: {msg}")

    stages = [s for s in c.stages.split(",") if s]
    for s in stages:
        need(s in STAGES, "stages", f"{s!r} is not one of {STAGES}")
    need(c.data.source in ("synthetic", "files"), "data.source", "must be 'synthetic' or 'files'")
    need(c.data.policy in ("error", "skip"), "data.policy", "must be 'error' or 'skip'")
    need(c.data.max_prompt_len < c.data.max_len, "data.max_prompt_len", "must be below data.max_len")
    need(bool(c.model.preset) != bool(c.model.path), "model.preset", "set exactly one of model.preset / model.path")
    need(not c.model.preset or c.model.preset in PRESETS, "model.preset", f"must be one of {sorted(PRESETS)}")
    n_dev = jax.device_count()
    batch_devices = n_dev // (max(c.mesh.tensor, 1))
    for stage, field in (("sft", "batch_size"), ("rm", "batch_size"), ("ppo", "batch_size"), ("dpo", "batch_size"),
                         ("rs", "batch_size"), ("fg", "batch_size")):
        bs = c[stage][field]
        need(bs > 0 and bs % max(1, batch_devices) == 0, f"{stage}.{field}",
             f"{bs} must be a positive multiple of the {batch_devices} data-parallel devices")
    s = c.sft
    need(s.lora_rank >= 0, "sft.lora_rank", "must be >= 0 (0 = full fine-tuning)")
    need(not (s.lora_rank and s.freeze_layers), "sft.lora_rank", "LoRA and sft.freeze_layers exclude each other")
    bad = [t for t in s.lora_targets.split(",") if t not in LORA_TARGETS]
    need(not bad, "sft.lora_targets", f"{bad} are not among {sorted(LORA_TARGETS)}")
    r = c.rm
    need(r.members >= 1, "rm.members", "must be >= 1")
    need(r.head in ("scalar", "inform"), "rm.head", "must be 'scalar' or 'inform' (InfoRM)")
    need(r.head == "scalar" or r.members == 1, "rm.head", "an InfoRM ensemble is not supported (rm.members = 1)")
    i = c.inform
    need(i.kl_form in KL_FORMS, "inform.kl_form", f"must be one of {KL_FORMS}")
    need(i.latent_dim > 0, "inform.latent_dim", "must be > 0")
    need(i.beta >= 0, "inform.beta", "must be >= 0")
    need(0 < i.outlier_quantile < 1, "inform.outlier_quantile", "must be in (0, 1)")
    need(i.min_samples >= 1, "inform.min_samples", "must be >= 1")
    need(r.aggregate in ensemble_lib.AGGREGATORS, "rm.aggregate", f"must be one of {ensemble_lib.AGGREGATORS}")
    need(r.variance_ddof in (0, 1), "rm.variance_ddof", "must be 0 (divide by k) or 1 (by k - 1)")
    need(not r.znorm or r.normalize, "rm.znorm", "needs rm.normalize (the statistics come from centring)")
    need(r.members > 1 or r.aggregate == "mean", "rm.aggregate", "aggregators need rm.members > 1")
    f = c.fg
    try:
        components = parse_components(f.components)
    except ValueError as e:
        raise ConfigError(f"config.fg.components: {e}") from None
    need(not ("fgrm" in stages and not components), "fg.components", "stage fgrm needs at least one component")
    need(f.reward in ("hard", "soft"), "fg.reward", "must be 'hard' or 'soft'")
    need(not (components and f.holistic_weight and (r.members > 1 or r.head != "scalar")), "fg.holistic_weight",
         "the holistic part of a fine-grained reward must be one scalar RM (rm.members = 1, rm.head = scalar)")
    need(c.bon.n_samples >= 1, "bon.n_samples", "must be >= 1")
    need(c.bon.rank_by in ("rm", "gold"), "bon.rank_by", "must be 'rm' or 'gold'")
    need(c.bon.rank_by == "rm" or c.data.source == "synthetic", "bon.rank_by",
         "'gold' needs the task world's gold reward (data.source = synthetic)")
    need(c.rs.n_samples >= 1, "rs.n_samples", "must be >= 1")
    d = c.dpo
    need(d.loss in DPO_LOSSES, "dpo.loss", f"must be one of {DPO_LOSSES}")
    need(d.logprob_reduction in ("sum", "mean"), "dpo.logprob_reduction", "must be 'sum' or 'mean'")
    need(d.beta > 0, "dpo.beta", "must be > 0")
    need(0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
    need(d.loss in ("cdpo", "robust") or d.label_smoothing == 0, "dpo.label_smoothing",
         f"only cdpo and robust use it (dpo.loss={d.loss!r})")
    p = c.ppo
    need(p.batch_size % p.minibatches == 0, "ppo.minibatches", f"must divide ppo.batch_size={p.batch_size}")
    need(p.kl_estimator in ("k1", "k2", "k3"), "ppo.kl_estimator", "must be k1, k2 or k3")
    need(p.temperature > 0, "ppo.temperature", "must be > 0 for PPO rollouts")
    need(0 <= p.ema_decay < 1, "ppo.ema_decay", "must be in [0, 1)")
    need(not p.adaptive_kl or p.kl_target > 0, "ppo.kl_target", "must be > 0 with adaptive_kl")
    need(p.ptx_coef == 0 or p.ptx_batch_size > 0, "ppo.ptx_batch_size", "must be > 0 when ppo.ptx_coef > 0")
    need(p.ptx_batch_size % p.minibatches == 0, "ppo.ptx_batch_size", "must be a multiple of ppo.minibatches")
    need(c.data.max_prompt_len + p.max_new_tokens <= _max_seq(c), "ppo.max_new_tokens",
         "prompt + response exceeds the model's max_seq_len")
    if c.data.source == "files":
        for stage, field in (("sft", "sft_train"), ("rm", "rm_train"), ("ppo", "prompts"), ("dpo", "rm_train")):
            need(stage not in stages or bool(c.data[field]), f"data.{field}", f"needed by stage {stage}")


def _max_seq(c) -> int:
    if c.model.preset:
        return int(c.model.overrides.get("max_seq_len", PRESETS[c.model.preset].max_seq_len))
    return 1 << 30


def _world(c) -> synthetic.WorldConfig:
    w = dict(c.data.world)
    w["tasks"] = tuple(t for t in w["tasks"].split(",") if t)
    w["perturbations"] = tuple(t for t in w["perturbations"].split(",") if t)
    return synthetic.WorldConfig(**w)


def _read_source(spec: str, kind: str, policy: str):
    if spec.startswith("corpus:"):
        records, report = corpora.READERS[spec[7:]](policy=policy)
    else:
        records, report = read_records(Path(spec).expanduser(), kind, policy=policy)
    print(report.summary(), flush=True)
    return records


def per_sequence(fn, params, samples: dict, chunk: int = 512) -> np.ndarray:
    """fn(params, tokens, mask) over prompt + response of `sample_tokens` output, in chunks."""
    seq = ppo_lib.sequence_inputs(samples["prompt"], samples["prompt_mask"], samples["response"],
                                  samples["response_mask"])
    return np.concatenate([np.asarray(fn(params, seq[0][i:i + chunk], seq[1][i:i + chunk]))
                           for i in range(0, len(seq[0]), chunk)])


class Pipeline:
    def __init__(self, config, workdir: str | Path, *, use_wandb: bool = True):
        validate_config(config)
        self.c = config
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.use_wandb = use_wandb
        self.mesh = shd.make_mesh(shd.MeshConfig(config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
        self.tcfg = TokenizeConfig(max_len=config.data.max_len, max_prompt_len=config.data.max_prompt_len,
                                   template=config.data.template or None)
        self.world = _world(config) if config.data.source == "synthetic" else None
        self.base, self.tokenizer = self._base_model()
        self.rng = jax.random.key(config.seed)

    # --- models and data -------------------------------------------------------------------

    def _base_model(self):
        c = self.c
        dtypes = dict(param_dtype=c.model.param_dtype, dtype=c.model.dtype)
        if c.model.path:
            model, tok = load_pretrained(Path(c.model.path).expanduser(), mesh=self.mesh, **dtypes,
                                         **dict(c.model.overrides))
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            return model, tok
        tok = self._preset_tokenizer()
        cfg = PRESETS[c.model.preset].replace(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                              **dict(c.model.overrides), **dtypes)
        return init_model(cfg, seed=c.seed, mesh=self.mesh), tok

    def _preset_tokenizer(self):
        spec = self.c.model.tokenizer
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

    def model_cfg(self, **changes):
        return self.base.cfg.replace(**changes)

    @functools.cached_property
    def records(self) -> dict[str, list]:
        c, w = self.c.data, self.world
        if w is not None:
            return {"sft_train": synthetic.sft_records(w, c.n_sft, "train"),
                    "sft_val": synthetic.sft_records(w, c.n_sft_val, "val"),
                    "rm_train": synthetic.ranking_records(w, c.n_rankings, c.k, "train"),
                    "rm_val": synthetic.ranking_records(w, c.n_rankings_val, c.k, "val"),
                    "prompts": synthetic.prompts(w, c.n_prompts, "train"),
                    "eval_prompts": synthetic.prompts(w, self.c.eval.n_prompts, "eval"),
                    "ptx": synthetic.sft_records(w, c.n_ptx, "ptx")}
        out = {}
        stages = self.c.stages.split(",")
        for name, spec, kind in (("sft", c.sft_train, "sft"), ("rm", c.rm_train, "pair")):
            if spec and (name in stages or name == "sft" or (name == "rm" and "dpo" in stages)):
                records = _read_source(spec, kind, c.policy)
                if name == "rm" and records and "responses" not in records[0] and "chosen" not in records[0]:
                    raise ConfigError(f"config.data.rm_train: {spec} holds no pairs or rankings")
                n_val = max(1, int(len(records) * c.val_fraction))
                limit = c.n_sft if name == "sft" else c.n_rankings
                out[f"{name}_train"], out[f"{name}_val"] = records[n_val:n_val + limit], records[:n_val]
        if c.prompts:
            prompts = [{"prompt": r["prompt"]} for r in _read_source(c.prompts, "prompt", c.policy)]
            n_eval = self.c.eval.n_prompts
            out["eval_prompts"], out["prompts"] = prompts[:n_eval], prompts[n_eval:n_eval + c.n_prompts]
        if c.ptx:
            out["ptx"] = _read_source(c.ptx, "sft", c.policy)[:c.n_ptx]
        return out

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        r = self.records[name]
        if name.startswith("sft") or name == "ptx":
            arrays, stats = sft_arrays(r, self.tokenizer, self.tcfg, pack_rows=self.c.sft.pack and name != "ptx")
        elif name.startswith("rm"):
            arrays, stats = ranking_arrays(r, self.tokenizer, self.tcfg)
        else:
            arrays, stats = prompt_arrays(r, self.tokenizer, self.tcfg)
            arrays = {"prompt": arrays["tokens"], "prompt_mask": arrays["mask"]}
        if stats.get("prompt_truncated") or stats.get("response_truncated"):
            print(f"[data] {name}: {stats}", flush=True)
        return arrays

    def sample_tokens(self, params, prompt_records: list[dict], copies: int, temperature: float, max_new: int,
                      seed: int, chunk: int = 512) -> dict[str, np.ndarray]:
        """`copies` samples per prompt (rows prompt-major): prompt, prompt_mask, response, response_mask."""
        arrays, _ = prompt_arrays(prompt_records, self.tokenizer, self.tcfg)
        tokens, mask = np.repeat(arrays["tokens"], copies, 0), np.repeat(arrays["mask"], copies, 0)
        cfg = SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                             eos_token_ids=(self.tokenizer.eos_token_id,), pad_token_id=self.tokenizer.pad_token_id or 0)
        out = {"prompt": tokens, "prompt_mask": mask, "response": [], "response_mask": []}
        for i in range(0, len(tokens), chunk):
            gen = generate(self.base.graphdef, params, tokens[i:i + chunk], mask[i:i + chunk],
                           jax.random.key(seed + i), cfg)
            out["response"].append(np.asarray(gen.tokens_BxN))
            out["response_mask"].append(np.asarray(gen.mask_BxN))
        out["response"], out["response_mask"] = (np.concatenate(out[k]) for k in ("response", "response_mask"))
        return out

    def sample(self, params, prompt_records: list[dict], copies: int, temperature: float, max_new: int,
               seed: int) -> list[list[str]]:
        """`copies` sampled responses per prompt from an LM-head policy (decoded text)."""
        s = self.sample_tokens(params, prompt_records, copies, temperature, max_new, seed)
        texts = self.decode(s["response"], s["response_mask"])
        return [texts[j * copies:(j + 1) * copies] for j in range(len(prompt_records))]

    def score_samples(self, samples: dict, reward, rm_params, prompt_records, chunk: int = 512):
        """(proxy [P, N], gold [P, N] or None) for `sample_tokens` output with N copies per prompt."""
        P = len(prompt_records)
        proxy = per_sequence(jax.jit(ppo_lib.reward_function(reward)), rm_params, samples, chunk).reshape(P, -1)
        if self.world is None:
            return proxy, None
        texts = self.decode(samples["response"], samples["response_mask"])
        n = proxy.shape[1]
        gold = np.array([self.gold(r["prompt"], texts[j * n + i]) for j, r in enumerate(prompt_records)
                         for i in range(n)], dtype=float).reshape(P, n)
        return proxy, gold

    def policy_rankings(self, params, n: int, split: str) -> list[dict]:
        """Synthetic world, InstructGPT-style: the annotators rank K samples of the SFT policy."""
        prompts = synthetic.prompts(self.world, n, "rm_" + split)
        samples = self.sample(params, prompts, 2 * self.c.data.k, 1.0, self.c.ppo.max_new_tokens,
                              seed=self.c.seed * 7919 + (split == "val"))
        return synthetic.rank_samples(self.world, [p["prompt"] for p in prompts], samples, self.c.data.k, split)

    def gold(self, prompt: str, response: str) -> float | None:
        if self.world is None:
            return None
        try:
            return synthetic.gold_reward(prompt, response, self.world.length_coef)
        except ValueError:
            return None

    def decode(self, tokens, mask) -> list[str]:
        return [self.tokenizer.decode([int(t) for t, m in zip(row, mrow) if m], skip_special_tokens=True)
                for row, mrow in zip(np.asarray(tokens), np.asarray(mask))]

    # --- shared stage plumbing -------------------------------------------------------------

    def writer(self, stage: str, keys: tuple[str, ...]):
        if not self.use_wandb:
            return Writer(self.workdir / stage, stage, wandb="disabled", keys=keys, every=self.c.log.every)
        return Writer(self.workdir / stage, stage, wandb=self.c.log.wandb, project=self.c.log.project,
                      run_name=f"{self.c.name}-{self.workdir.name}", config=self.c.to_dict(), keys=keys,
                      every=self.c.log.every)

    def save_final(self, stage: str, params, summary: dict) -> None:
        path = (self.workdir / stage / "final").absolute()
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, params, force=True)
        (self.workdir / stage / "summary.json").write_text(json.dumps(summary, indent=2))

    def load_final(self, stage: str, like):
        path = (self.workdir / stage / "final").absolute()
        if not path.exists():
            raise FileNotFoundError(f"{path}: stage {stage!r} has not finished; run it first "
                                    f"(--config.stages={stage},...)")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path, abstract)

    def stage_done(self, stage: str) -> dict | None:
        path = self.workdir / stage / "summary.json"
        return json.loads(path.read_text()) if path.exists() and (self.workdir / stage / "final").exists() else None

    def _resume(self, stage: str, ckpt: Checkpointer, state, iterators: dict[str, BatchIterator]):
        if ckpt.latest_step() is None:
            return state, 0
        state, meta = ckpt.restore(state)
        for name, it in iterators.items():
            it.set_position(meta["data"][name])
        print(f"[{stage}] resumed from step {ckpt.latest_step()}", flush=True)
        return state, int(meta["step"])

    def _iter(self, arrays, batch_size, salt: int) -> BatchIterator:
        return BatchIterator(arrays, batch_size, seed=self.c.seed * 1000 + salt)

    def _shard(self, batch):
        return shd.shard_batch(batch, self.mesh)

    # --- stages ----------------------------------------------------------------------------

    def run(self, stages=None) -> dict[str, Any]:
        stages = stages or [s for s in self.c.stages.split(",") if s]
        summary = {}
        for stage in STAGES:
            if stage in stages:
                done = self.stage_done(stage)
                summary[stage] = done if done is not None else getattr(self, f"run_{stage}")()
            elif self.stage_done(stage) is not None:
                summary[stage] = self.stage_done(stage)
        return summary

    def run_sft(self) -> dict[str, Any]:
        summary, params = self.fine_tune("sft")
        self.save_final("sft", params, summary)
        return summary

    def fine_tune(self, stage: str, train=None, init=None) -> tuple[dict[str, Any], Any]:
        """Supervised fine-tuning of `init` (the base model) on `train` (the demonstrations) with
        the fields of config[stage]; rejection sampling reuses it with the best-of-n samples and
        the SFT policy. Returns (summary, final parameters)."""
        c = self.c[stage]
        t0 = time.perf_counter()
        train = self.arrays("sft_train") if train is None else train
        val = self.arrays("sft_val")
        init = self.base.params if init is None else init
        it = self._iter(train, c.batch_size, 1)
        total = c.steps or c.epochs * it.steps_per_epoch
        graphdef, _ = abstract_model(self.model_cfg(dropout_rate=c.dropout), "lm")
        mask = freeze_mask(init, c.freeze_layers, c.freeze_layers > 0) if c.freeze_layers else None
        tx, sched = make_optimizer(c.lr, total, warmup_steps=c.warmup_steps, schedule_kind=c.schedule,
                                   min_lr_ratio=c.min_lr_ratio, weight_decay=c.weight_decay,
                                   max_grad_norm=c.max_grad_norm, mask=mask)
        lora = (LoRAConfig(c.lora_rank, c.lora_alpha, tuple(t for t in c.lora_targets.split(",") if t))
                if c.lora_rank else None)
        if lora is None:  # full fine-tuning: the state holds every weight, nothing is frozen by constant
            params, base = jax.tree.map(jnp.copy, init), None
            view = lambda p: p
        else:  # LoRA: the state holds the adapters, the base weights are a frozen constant
            params, base = lora_lib.init(init, lora, jax.random.fold_in(self.rng, 11)), commit(init, self.mesh)
            view = lambda p: lora_lib.merge(base, p, lora)
        state = TrainState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32))
        step, state = compile_step(sft_lib.make_sft_step(graphdef, tx, sched, c.dropout > 0, lora), state,
                                   self._shard(next(self._iter(train, c.batch_size, 1))), self.mesh, constants=base)
        ckpt = Checkpointer(self.workdir / stage / "checkpoints")
        state, start = self._resume(stage, ckpt, state, {"train": it})
        evaluate = sft_lib.make_sft_eval(abstract_model(self.model_cfg(), "lm")[0])
        merged = jax.jit(view)
        val_bs = min(c.batch_size, len(val["tokens"]))
        writer = self.writer(stage, ("loss", "lr"))
        result = run_loop(stage, (lambda s, b, r: step(s, b, r, base)) if lora else step, state,
                          lambda: self._shard(next(it)), total_steps=total, start_step=start,
                          rng=jax.random.fold_in(self.rng, 1), checkpointer=ckpt, save_every=c.save_every,
                          meta_fn=lambda: {"data": {"train": it.position()}}, writer=writer,
                          eval_fn=lambda s, _: sft_lib.validation_loss(evaluate, merged(s.params), val, val_bs),
                          eval_every=c.eval_every, stop_after=self.c.debug_stop_after.get(stage, 0) or None)
        writer.close()
        if result.steps < total:
            raise SystemExit(f"[{stage}] stopped after step {result.steps} of {total} (debug_stop_after)")
        final_params = merged(result.state.params)
        final = sft_lib.validation_loss(evaluate, final_params, val, val_bs)
        summary = {"steps": total, "wall_seconds": time.perf_counter() - t0, "train_loss": result.last_metrics["loss"],
                   "trainable_params": lora_lib.count(params) if mask is None else
                   int(sum(float((m * jnp.ones(x.shape)).sum()) for m, x in
                           zip(jax.tree.leaves(mask), jax.tree.leaves(params)))),
                   **final}
        ckpt.close()
        return summary, final_params

    def sft_params(self):
        return self.load_final("sft", self.base.params)

    def preference_arrays(self) -> tuple[dict, dict]:
        """The rankings the RM (or DPO) trains on: from files, or K ranked SFT samples per prompt."""
        if self.world is not None and self.c.data.rm_from_policy and not getattr(self, "_ranked_sft", False):
            sft = self.sft_params()
            self.records["rm_train"] = self.policy_rankings(sft, self.c.data.n_rankings, "train")
            self.records["rm_val"] = self.policy_rankings(sft, self.c.data.n_rankings_val, "val")
            self._ranked_sft = True
        return self.arrays("rm_train"), self.arrays("rm_val")

    def ppo_config(self) -> ppo_lib.PPOConfig:
        c = self.c.ppo
        return ppo_lib.PPOConfig(**{f.name: c[f.name] for f in dataclasses.fields(ppo_lib.PPOConfig) if f.name in c},
                                 eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id or 0)

    def run_rm(self) -> dict[str, Any]:
        """One reward model, or an ensemble of `rm.members` that differ only in seed (head init and
        data order), trained together: one step vmapped over the member axis."""
        c = self.c.rm
        k = c.members
        t0 = time.perf_counter()
        train, val = self.preference_arrays()
        its = {"train" if k == 1 else f"train_{i}": self._iter(train, c.batch_size, 2 + 1000 * i) for i in range(k)}
        total = c.steps or c.epochs * its[next(iter(its))].steps_per_epoch
        sft = self.sft_params()
        heads = [self.rm_model(seed=self.c.seed + 1 + i) for i in range(k)]
        graphdef = heads[0].graphdef
        members = [rm_lib.init_from_sft(sft, h.params) for h in heads]
        params = members[0] if k == 1 else rm_lib.stack(members)
        tx, sched = make_optimizer(c.lr, total, warmup_steps=c.warmup_steps, schedule_kind=c.schedule,
                                   min_lr_ratio=c.min_lr_ratio, weight_decay=c.weight_decay,
                                   max_grad_norm=c.max_grad_norm)
        ib = self.c.inform
        single = rm_lib.make_rm_step(graphdef, tx, sched, c.margin, c.center_coef,
                                     ib_beta=ib.beta if c.head == "inform" else None, kl_form=ib.kl_form)
        if k == 1:
            state, step_fn = TrainState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32)), single
            next_batch = lambda its: next(its["train"])
        else:  # members on axis 0 of the state and axis 1 of the batch (axis 0 stays the data axis)
            state = TrainState(params, jax.jit(jax.vmap(tx.init))(params), jnp.zeros((k,), jnp.int32))
            step_fn = rm_lib.ensemble_step(single)
            next_batch = lambda its: {key: np.stack([b[key] for b in bs], 1)
                                      for bs in [[next(it) for it in its.values()]] for key in bs[0]}
        fresh = {name: self._iter(train, c.batch_size, 2 + 1000 * i) for i, name in enumerate(its)}
        step, state = compile_step(step_fn, state, self._shard(next_batch(fresh)), self.mesh)
        ckpt = Checkpointer(self.workdir / "rm" / "checkpoints")
        state, start = self._resume("rm", ckpt, state, its)
        val_bs = min(c.batch_size, len(val["tokens"]))
        writer = self.writer("rm", ("loss", "accuracy"))
        result = run_loop("rm", step, state, lambda: self._shard(next_batch(its)), total_steps=total,
                          start_step=start, rng=jax.random.fold_in(self.rng, 2), checkpointer=ckpt,
                          save_every=c.save_every, meta_fn=lambda: {"data": {n: it.position() for n, it in its.items()}},
                          writer=writer, stop_after=self.c.debug_stop_after.rm or None)
        writer.close()
        if result.steps < total:
            raise SystemExit(f"[rm] stopped after step {result.steps} of {total} (debug_stop_after)")
        params = result.state.params
        summary = {"steps": total, "members": k, "train_accuracy": result.last_metrics["accuracy"]}
        if k == 1:
            summary.update(rm_lib.held_out_accuracy(rm_lib.make_rm_eval(graphdef, c.margin), params, val, val_bs))
        if c.normalize:  # each member's bias shifted so the SFT demonstrations score 0 on average
            demos = self.arrays("sft_train")
            centred, means, stds = [], [], []
            for p in (rm_lib.unstack(params, k) if k > 1 else [params]):
                p, mean, std = rm_lib.center_on_demonstrations(graphdef, p, demos["tokens"], demos["segment_ids"])
                centred.append(p), means.append(mean), stds.append(std)
            params = centred[0] if k == 1 else rm_lib.stack(centred)
            summary["demonstration_mean_before_centering"] = means[0] if k == 1 else means
            summary["demonstration_std"] = stds[0] if k == 1 else stds
        if k > 1:
            summary.update(rm_lib.ensemble_held_out(graphdef, params, val, val_bs, self.reward_aggregate(summary)))
        summary["wall_seconds"] = time.perf_counter() - t0
        self.save_final("rm", params, summary)
        ckpt.close()
        return summary

    def reward_aggregate(self, rm_summary: dict):
        """scores [k, B] -> [B] as the config says (z-normalised by the demonstration statistics)."""
        c = self.c.rm
        stats = {}
        if c.znorm:
            stats = {"mean_K": jnp.zeros(c.members), "std_K": jnp.asarray(rm_summary["demonstration_std"])}
        return functools.partial(ensemble_lib.aggregate, kind=c.aggregate, lam=c.uncertainty_coef,
                                 ddof=c.variance_ddof, **stats)

    def rm_model(self, seed: int):
        """A freshly initialised reward model of the configured head ("scalar" or "inform")."""
        cfg = self.model_cfg(latent_dim=self.c.inform.latent_dim)
        return init_model(cfg, head=self.c.rm.head, seed=seed, mesh=self.mesh)

    def reward_model(self):
        """(reward, params, value graphdef, value init): the trained RM as PPO, best-of-n and the
        judge use it.

        `reward` is the RM's GraphDef for one RM (scalar or InfoRM head, read at the EOS), or a
        function (params, tokens, mask) -> aggregated scores for an ensemble; the value model is
        the RM's architecture, started from (the first) member.
        """
        k = self.c.rm.members
        scalar = self.rm_model(seed=self.c.seed + 1)
        if self.c.fg.components:
            return self.fine_grained_reward(scalar)
        if k == 1:
            params = self.load_final("rm", scalar.params)
            if not self.c.rm.znorm:
                return scalar.graphdef, params, scalar.graphdef, params
            std = (self.stage_done("rm") or {})["demonstration_std"]  # unit spread on the demonstrations
            reward = lambda p, t, m: rm_lib.score_sequences(scalar.graphdef, p, t, m) / std
            return reward, params, scalar.graphdef, params
        params = self.load_stacked("rm", scalar.params, k)
        agg = self.reward_aggregate(self.stage_done("rm") or {})
        reward = lambda p, t, m: agg(rm_lib.ensemble_scores(scalar.graphdef, p, t, m))
        return reward, params, scalar.graphdef, rm_lib.unstack(params, k)[0]

    def load_stacked(self, stage: str, member_params, k: int):
        """A stage's k stacked members (ensemble, fine-grained categories), replicated."""
        like = jax.eval_shape(lambda p: rm_lib.stack([p] * k), member_params)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), like)
        return self.load_final(stage, like)

    @functools.cached_property
    def token_classes(self):
        return token_classes(self.tokenizer)

    def category_model(self, seed: int):
        return init_model(self.model_cfg(), head="scalar", seed=seed, mesh=self.mesh)

    def fine_grained_reward(self, scalar):
        """The fine-grained reward as `reward_model` returns it: params = (stacked category
        models, holistic RM or None); the value model starts from the holistic RM if there is one."""
        f = self.c.fg
        components = parse_components(f.components)
        cats = self.load_stacked("fgrm", self.category_model(seed=0).params, len(components))
        rm, holistic = None, None
        if f.holistic_weight:
            rm = self.load_final("rm", scalar.params)
            std = (self.stage_done("rm") or {}).get("demonstration_std", 1.0)
            holistic = (scalar.graphdef, f.holistic_weight, 0.0, std)  # centred on demonstrations already
        reward = fg_lib.FineGrainedReward(scalar.graphdef, components, self.token_classes, self.c.data.max_prompt_len,
                                          f.min_words, f.reward, holistic)
        value_init = rm if rm is not None else rm_lib.unstack(cats, len(components))[0]
        return reward, (cats, rm), scalar.graphdef, value_init

    def run_fgrm(self) -> dict[str, Any]:
        """Fine-grained reward models: one per-segment classifier per component, trained together
        (one step vmapped over the categories) on span-annotated responses."""
        f = self.c.fg
        t0 = time.perf_counter()
        components = parse_components(f.components)
        if self.world is not None and not f.data:
            train_r = synthetic.finegrained_records(self.world, f.n_train, "train")
            val_r = synthetic.finegrained_records(self.world, f.n_val, "val")
        else:
            records = _read_source(f.data, "fine_grained", self.c.data.policy)
            n_val = max(1, int(len(records) * self.c.data.val_fraction))
            train_r, val_r = records[n_val:n_val + f.n_train], records[:n_val]
        make = lambda r: fg_lib.segment_arrays(r, self.tokenizer, self.tcfg, components, self.token_classes,
                                               f.min_words)
        (train, stats), (val, _) = make(train_r), make(val_r)
        print(f"[fgrm] {len(train_r)} train / {len(val_r)} val responses, {stats}", flush=True)
        init = self.sft_params() if (self.workdir / "sft" / "final").exists() else self.base.params
        members = [rm_lib.init_from_sft(init, self.category_model(seed=self.c.seed + 101 + j).params)
                   for j in range(len(components))]
        graphdef = abstract_model(self.model_cfg(), "scalar")[0]
        params = rm_lib.stack(members)
        it = self._iter(train, f.batch_size, 7)
        total = f.steps or f.epochs * it.steps_per_epoch
        tx, sched = make_optimizer(f.lr, total, warmup_steps=f.warmup_steps, schedule_kind=f.schedule,
                                   min_lr_ratio=f.min_lr_ratio, weight_decay=f.weight_decay,
                                   max_grad_norm=f.max_grad_norm)
        k = len(components)
        state = TrainState(params, jax.jit(jax.vmap(tx.init))(params), jnp.zeros((k,), jnp.int32))
        step_fn = rm_lib.ensemble_step(fg_lib.make_segment_step(graphdef, tx, sched))
        step, state = compile_step(step_fn, state, self._shard(next(self._iter(train, f.batch_size, 7))), self.mesh)
        ckpt = Checkpointer(self.workdir / "fgrm" / "checkpoints")
        state, start = self._resume("fgrm", ckpt, state, {"train": it})
        writer = self.writer("fgrm", ("loss", "accuracy"))
        result = run_loop("fgrm", step, state, lambda: self._shard(next(it)), total_steps=total, start_step=start,
                          rng=jax.random.fold_in(self.rng, 7), checkpointer=ckpt, save_every=f.save_every,
                          meta_fn=lambda: {"data": {"train": it.position()}}, writer=writer)
        writer.close()
        held = fg_lib.held_out(graphdef, result.state.params, val, min(f.batch_size, len(val["tokens"])),
                               [c.name for c in components])
        summary = {"steps": total, "components": [dataclasses.asdict(c) for c in components],
                   "train_segments": stats["segments"], "train_positive_rate": stats["positive_rate"],
                   **{f"{name}_{key}": v for name, m in held.items() for key, v in m.items()},
                   "wall_seconds": time.perf_counter() - t0}
        self.save_final("fgrm", result.state.params, summary)
        ckpt.close()
        return summary

    def run_ppo(self) -> dict[str, Any]:
        from rlhf_jax.eval.judge import evaluate_policies
        c = self.c.ppo
        t0 = time.perf_counter()
        cfg = self.ppo_config()
        sft = self.sft_params()
        reward, rm, value_gd, value_init = self.reward_model()
        graphdefs = (self.base.graphdef, value_gd, reward)
        copy = functools.partial(jax.tree.map, jnp.copy)
        params = {"policy": copy(sft), "value": copy(value_init)}
        tx, sched = make_optimizer(c.lr, c.iterations * c.epochs * c.minibatches, warmup_steps=c.warmup_steps,
                                   schedule_kind=c.schedule, max_grad_norm=c.max_grad_norm)
        state = PPOState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32),
                         jnp.asarray(c.kl_coef, jnp.float32), copy(sft) if c.ema_decay else None)
        data = {"prompts": (self.arrays("prompts"), c.batch_size, 3)}
        if c.ptx_coef:
            data["ptx"] = (self.arrays("ptx"), c.ptx_batch_size, 4)
        make_iterators = lambda: {name: self._iter(*args) for name, args in data.items()}
        iterators = make_iterators()

        def batch_from(its):
            return self._shard({k: v for it in its.values() for k, v in next(it).items()})

        constants = commit((copy(sft), rm), self.mesh)
        step, state = compile_step(ppo_lib.make_ppo_step(cfg, graphdefs, tx, sched), state,
                                   batch_from(make_iterators()), self.mesh, constants=constants)
        ckpt = Checkpointer(self.workdir / "ppo" / "checkpoints")
        state, start = self._resume("ppo", ckpt, state, iterators)
        writer = self.writer("ppo", ("score", "kl", "gold_reward"))
        track = self.latent_track(sft, rm) if self.c.rm.head == "inform" else None

        def on_metrics(step_no, host, aux):
            prompts_text = self.decode(aux["prompt"], aux["prompt_mask"])
            responses = self.decode(aux["response"], aux["response_mask"])
            golds = [self.gold(p, r) for p, r in zip(prompts_text, responses)]
            golds = [g for g in golds if g is not None]
            out = {"gold_reward": float(np.mean(golds))} if golds else {}
            return {**out, **(track.on_rollout(step_no, aux) if track else {})}

        result = run_loop("ppo", lambda s, b, r: step(s, b, r, constants), state, lambda: batch_from(iterators),
                          total_steps=c.iterations,
                          start_step=start, rng=jax.random.fold_in(self.rng, 3), checkpointer=ckpt,
                          save_every=c.save_every,
                          meta_fn=lambda: {"data": {k: v.position() for k, v in iterators.items()}},
                          writer=writer, on_metrics=on_metrics,
                          stop_after=self.c.debug_stop_after.ppo or None)
        writer.close()
        if result.steps < c.iterations:
            raise SystemExit(f"[ppo] stopped after step {result.steps} of {c.iterations} (debug_stop_after)")
        final_policy = result.state.ema if c.ema_decay else result.state.params["policy"]
        evals, samples = evaluate_policies(self, sft, final_policy, rm, reward, cfg)
        if track is not None:  # the SFT and final policies on the held-out prompts, in latent space
            prompts = self.records["eval_prompts"]
            evals.update(track.finish({name: track.latent_fn(self.sample_tokens(
                params, prompts, 1, cfg.temperature, cfg.max_new_tokens, seed=self.c.seed * 41 + 8))
                for name, params in (("sft", sft), ("final", final_policy))},
                self.workdir / "ppo" / "latents.png", f"InfoRM latents: {self.c.name} {self.c.get('variant', '')}"))
        summary = {"steps": c.iterations, "wall_seconds": time.perf_counter() - t0,
                   "score_final": result.last_metrics["score"], "kl_coef_final": result.last_metrics["kl_coef"],
                   **evals}
        (self.workdir / "ppo" / "samples.json").write_text(json.dumps(samples, indent=2))
        self.save_final("ppo", final_policy, summary)
        ckpt.close()
        return summary

    def latent_track(self, sft, rm_params):
        """InfoRM diagnostics: the reference is the latents of SFT samples on the training prompts."""
        from rlhf_jax.eval.latents import LatentMonitor, LatentTrack
        i = self.c.inform
        graphdef, _ = abstract_model(self.model_cfg(latent_dim=i.latent_dim), "inform")
        fn = jax.jit(lambda p, t, m: rm_lib.latents(graphdef, p, t, m))
        latent_fn = functools.partial(per_sequence, fn, rm_params)

        prompts = self.records["prompts"][:i.n_reference]
        reference = latent_fn(self.sample_tokens(sft, prompts, 1, self.c.ppo.temperature,
                                                 self.c.ppo.max_new_tokens, seed=self.c.seed * 43 + 9))
        monitor = LatentMonitor(reference, i.csi_eps, i.min_samples, i.outlier_quantile)
        return LatentTrack(monitor, latent_fn, self.workdir / "ppo" / "latents", i.track_every)

    def run_dpo(self) -> dict[str, Any]:
        """DPO (or cDPO / robust DPO / IPO) from the SFT policy on the RM's rankings."""
        from rlhf_jax.eval.judge import evaluate_policies
        c = self.c.dpo
        t0 = time.perf_counter()
        cfg = dpo_lib.DPOConfig(c.beta, c.loss, c.label_smoothing, c.logprob_reduction, c.cache_reference)
        train, val = self.preference_arrays()
        sft = self.sft_params()
        graphdef = self.base.graphdef
        ref = commit(jax.tree.map(jnp.copy, sft), self.mesh)
        val_bs = min(c.batch_size, len(val["tokens"]))
        val = {**val, "ref_logp": dpo_lib.reference_logprobs(graphdef, ref, val, val_bs, c.logprob_reduction)}
        if c.cache_reference:  # one pass of the reference over the data, before training
            train = {**train, "ref_logp": dpo_lib.reference_logprobs(graphdef, ref, train, c.batch_size,
                                                                     c.logprob_reduction)}
        it = self._iter(train, c.batch_size, 5)
        total = c.steps or c.epochs * it.steps_per_epoch
        tx, sched = make_optimizer(c.lr, total, warmup_steps=c.warmup_steps, schedule_kind=c.schedule,
                                   max_grad_norm=c.max_grad_norm, optimizer=c.optimizer)
        params = jax.tree.map(jnp.copy, sft)
        state = TrainState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32))
        constants = None if c.cache_reference else ref
        step, state = compile_step(dpo_lib.make_dpo_step(graphdef, tx, sched, cfg), state,
                                   self._shard(next(self._iter(train, c.batch_size, 5))), self.mesh,
                                   constants=constants)
        ckpt = Checkpointer(self.workdir / "dpo" / "checkpoints")
        state, start = self._resume("dpo", ckpt, state, {"train": it})
        writer = self.writer("dpo", ("loss", "reward_accuracy", "reward_margin"))
        result = run_loop("dpo", (lambda s, b, r: step(s, b, r, constants)) if constants is not None else step,
                          state, lambda: self._shard(next(it)), total_steps=total, start_step=start,
                          rng=jax.random.fold_in(self.rng, 5), checkpointer=ckpt, save_every=c.save_every,
                          meta_fn=lambda: {"data": {"train": it.position()}}, writer=writer,
                          stop_after=self.c.debug_stop_after.get("dpo", 0) or None)
        writer.close()
        if result.steps < total:
            raise SystemExit(f"[dpo] stopped after step {result.steps} of {total} (debug_stop_after)")
        final = result.state.params
        held_out = dpo_lib.held_out_metrics(graphdef, final, val, val_bs, cfg)
        sampling = dataclasses.replace(self.ppo_config(), temperature=1.0)
        evals, samples = evaluate_policies(self, sft, final, None, None, sampling, label="dpo")
        summary = {"steps": total, "wall_seconds": time.perf_counter() - t0,
                   "train_reward_accuracy": result.last_metrics["reward_accuracy"], **held_out, **evals}
        (self.workdir / "dpo" / "samples.json").write_text(json.dumps(samples, indent=2))
        self.save_final("dpo", final, summary)
        ckpt.close()
        return summary

    def run_bon(self) -> dict[str, Any]:
        """Best-of-n of the SFT policy under the trained reward (single, ensemble): the unbiased
        estimator of proxy and gold score for every n <= N, against KL_bon = log n - (n-1)/n."""
        c = self.c.bon
        t0 = time.perf_counter()
        reward, rm, _, _ = self.reward_model()
        prompts = self.records["eval_prompts"][:c.n_prompts]
        samples = self.sample_tokens(self.sft_params(), prompts, c.n_samples, c.temperature,
                                     self.c.ppo.max_new_tokens, seed=self.c.seed * 31 + 5)
        proxy, gold = self.score_samples(samples, reward, rm, prompts)
        if gold is not None and np.isnan(gold).any():
            print(f"[bon] {int(np.isnan(gold).sum())} samples have no gold score; counted as gold 0", flush=True)
            gold = np.nan_to_num(gold)
        if c.rank_by == "gold":  # the oracle ranker: the ceiling any proxy could reach
            proxy = gold
        ns = sorted({n for n in (2 ** i for i in range(16)) if n <= c.n_samples} | {c.n_samples})
        curve = bon_lib.bon_curve(proxy, gold, ns)
        (self.workdir / "bon").mkdir(parents=True, exist_ok=True)
        (self.workdir / "bon" / "curve.json").write_text(json.dumps(curve, indent=2))
        best = curve[-1]
        summary = {"n_samples": c.n_samples, "n_prompts": len(prompts), "kl_best_of_N": best["kl"],
                   "proxy_best_of_1": curve[0]["proxy"], "proxy_best_of_N": best["proxy"],
                   "wall_seconds": time.perf_counter() - t0}
        if gold is not None:
            peak = max(curve, key=lambda r: r["gold"])
            summary.update(gold_best_of_1=curve[0]["gold"], gold_best_of_N=best["gold"], gold_peak=peak["gold"],
                           gold_peak_n=peak["n"])
        (self.workdir / "bon" / "summary.json").write_text(json.dumps(summary, indent=2))
        (self.workdir / "bon" / "final").mkdir(exist_ok=True)
        return summary

    def run_rs(self) -> dict[str, Any]:
        """Rejection-sampling fine-tuning: SFT of the SFT policy on its best-of-N samples under the RM."""
        from rlhf_jax.data.tokenize import sft_arrays
        from rlhf_jax.eval.judge import evaluate_policies
        c = self.c.rs
        t0 = time.perf_counter()
        reward, rm, _, _ = self.reward_model()
        sft = self.sft_params()
        prompts = self.records["prompts"][:c.n_prompts]
        samples = self.sample_tokens(sft, prompts, c.n_samples, c.temperature, self.c.ppo.max_new_tokens,
                                     seed=self.c.seed * 37 + 6)
        proxy, _ = self.score_samples(samples, reward, rm, prompts)
        best = bon_lib.best_index(proxy)
        texts = self.decode(samples["response"], samples["response_mask"])
        records = [{"prompt": r["prompt"], "completion": texts[j * c.n_samples + int(best[j])]}
                   for j, r in enumerate(prompts)]
        train, _ = sft_arrays(records, self.tokenizer, self.tcfg)
        result, final = self.fine_tune("rs", train=train, init=sft)
        evals, report = evaluate_policies(self, sft, final, rm, reward, self.ppo_config(), label="rs")
        summary = {**result, "proxy_of_kept_samples": float(proxy.max(1).mean()), "proxy_mean": float(proxy.mean()),
                   **evals, "wall_seconds": time.perf_counter() - t0}
        (self.workdir / "rs" / "samples.json").write_text(json.dumps(report, indent=2))
        self.save_final("rs", final, summary)
        return summary

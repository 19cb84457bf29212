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
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train.lora import IN_DIMS as LORA_TARGETS, LoRAConfig
from rlhf_jax.train.loop import run_loop
from rlhf_jax.train.optim import freeze_mask, make_optimizer
from rlhf_jax.train.state import PPOState, TrainState, commit, compile_step

STAGES = ("sft", "rm", "ppo")


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
    for stage, field in (("sft", "batch_size"), ("rm", "batch_size"), ("ppo", "batch_size")):
        bs = c[stage][field]
        need(bs > 0 and bs % max(1, batch_devices) == 0, f"{stage}.{field}",
             f"{bs} must be a positive multiple of the {batch_devices} data-parallel devices")
    s = c.sft
    need(s.lora_rank >= 0, "sft.lora_rank", "must be >= 0 (0 = full fine-tuning)")
    need(not (s.lora_rank and s.freeze_layers), "sft.lora_rank", "LoRA and sft.freeze_layers exclude each other")
    bad = [t for t in s.lora_targets.split(",") if t not in LORA_TARGETS]
    need(not bad, "sft.lora_targets", f"{bad} are not among {sorted(LORA_TARGETS)}")
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
        for stage, field in (("sft", "sft_train"), ("rm", "rm_train"), ("ppo", "prompts")):
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
        tok = synthetic.tokenizer()
        cfg = PRESETS[c.model.preset].replace(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                              **dict(c.model.overrides), **dtypes)
        return init_model(cfg, seed=c.seed, mesh=self.mesh), tok

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
            if spec and (name in stages or name == "sft"):
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

    def sample(self, params, prompt_records: list[dict], copies: int, temperature: float, max_new: int,
               seed: int, chunk: int = 512) -> list[list[str]]:
        """`copies` sampled responses per prompt from an LM-head policy (decoded text)."""
        arrays, _ = prompt_arrays(prompt_records, self.tokenizer, self.tcfg)
        tokens, mask = np.repeat(arrays["tokens"], copies, 0), np.repeat(arrays["mask"], copies, 0)
        cfg = SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                             eos_token_ids=(self.tokenizer.eos_token_id,), pad_token_id=self.tokenizer.pad_token_id or 0)
        texts = []
        for i in range(0, len(tokens), chunk):
            gen = generate(self.base.graphdef, params, tokens[i:i + chunk], mask[i:i + chunk],
                           jax.random.key(seed + i), cfg)
            texts += self.decode(gen.tokens_BxN, gen.mask_BxN)
        return [texts[j * copies:(j + 1) * copies] for j in range(len(prompt_records))]

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
        c = self.c.sft
        t0 = time.perf_counter()
        train, val = self.arrays("sft_train"), self.arrays("sft_val")
        it = self._iter(train, c.batch_size, 1)
        total = c.steps or c.epochs * it.steps_per_epoch
        graphdef, _ = abstract_model(self.model_cfg(dropout_rate=c.dropout), "lm")
        mask = freeze_mask(self.base.params, c.freeze_layers, c.freeze_layers > 0) if c.freeze_layers else None
        tx, sched = make_optimizer(c.lr, total, warmup_steps=c.warmup_steps, schedule_kind=c.schedule,
                                   min_lr_ratio=c.min_lr_ratio, weight_decay=c.weight_decay,
                                   max_grad_norm=c.max_grad_norm, mask=mask)
        lora = (LoRAConfig(c.lora_rank, c.lora_alpha, tuple(t for t in c.lora_targets.split(",") if t))
                if c.lora_rank else None)
        if lora is None:  # full fine-tuning: the state holds every weight, nothing is frozen by constant
            params, base = jax.tree.map(jnp.copy, self.base.params), None
            view = lambda p: p
        else:  # LoRA: the state holds the adapters, the base weights are a frozen constant
            params, base = lora_lib.init(self.base.params, lora, jax.random.fold_in(self.rng, 11)), \
                commit(self.base.params, self.mesh)
            view = lambda p: lora_lib.merge(base, p, lora)
        state = TrainState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32))
        step, state = compile_step(sft_lib.make_sft_step(graphdef, tx, sched, c.dropout > 0, lora), state,
                                   self._shard(next(self._iter(train, c.batch_size, 1))), self.mesh, constants=base)
        ckpt = Checkpointer(self.workdir / "sft" / "checkpoints")
        state, start = self._resume("sft", ckpt, state, {"train": it})
        evaluate = sft_lib.make_sft_eval(abstract_model(self.model_cfg(), "lm")[0])
        merged = jax.jit(view)
        val_bs = min(c.batch_size, len(val["tokens"]))
        writer = self.writer("sft", ("loss", "lr"))
        result = run_loop("sft", (lambda s, b, r: step(s, b, r, base)) if lora else step, state,
                          lambda: self._shard(next(it)), total_steps=total, start_step=start,
                          rng=jax.random.fold_in(self.rng, 1), checkpointer=ckpt, save_every=c.save_every,
                          meta_fn=lambda: {"data": {"train": it.position()}}, writer=writer,
                          eval_fn=lambda s, _: sft_lib.validation_loss(evaluate, merged(s.params), val, val_bs),
                          eval_every=c.eval_every, stop_after=self.c.debug_stop_after.sft or None)
        writer.close()
        if result.steps < total:
            raise SystemExit(f"[sft] stopped after step {result.steps} of {total} (debug_stop_after)")
        final_params = merged(result.state.params)
        final = sft_lib.validation_loss(evaluate, final_params, val, val_bs)
        summary = {"steps": total, "wall_seconds": time.perf_counter() - t0, "train_loss": result.last_metrics["loss"],
                   "trainable_params": lora_lib.count(params) if mask is None else
                   int(sum(float((m * jnp.ones(x.shape)).sum()) for m, x in
                           zip(jax.tree.leaves(mask), jax.tree.leaves(params)))),
                   **final}
        self.save_final("sft", final_params, summary)
        ckpt.close()
        return summary

    def sft_params(self):
        return self.load_final("sft", self.base.params)

    def run_rm(self) -> dict[str, Any]:
        c = self.c.rm
        t0 = time.perf_counter()
        if self.world is not None and self.c.data.rm_from_policy:
            sft = self.sft_params()
            self.records["rm_train"] = self.policy_rankings(sft, self.c.data.n_rankings, "train")
            self.records["rm_val"] = self.policy_rankings(sft, self.c.data.n_rankings_val, "val")
        train, val = self.arrays("rm_train"), self.arrays("rm_val")
        it = self._iter(train, c.batch_size, 2)
        total = c.steps or c.epochs * it.steps_per_epoch
        scalar = init_model(self.model_cfg(), head="scalar", seed=self.c.seed + 1, mesh=self.mesh)
        params = rm_lib.init_from_sft(self.sft_params(), scalar.params)
        tx, sched = make_optimizer(c.lr, total, warmup_steps=c.warmup_steps, schedule_kind=c.schedule,
                                   min_lr_ratio=c.min_lr_ratio, weight_decay=c.weight_decay,
                                   max_grad_norm=c.max_grad_norm)
        state = TrainState(params, jax.jit(tx.init)(params), jnp.zeros((), jnp.int32))
        step, state = compile_step(rm_lib.make_rm_step(scalar.graphdef, tx, sched, c.margin, c.center_coef), state,
                            self._shard(next(self._iter(train, c.batch_size, 2))), self.mesh)
        ckpt = Checkpointer(self.workdir / "rm" / "checkpoints")
        state, start = self._resume("rm", ckpt, state, {"train": it})
        evaluate = rm_lib.make_rm_eval(scalar.graphdef, c.margin)
        val_bs = min(c.batch_size, len(val["tokens"]))
        writer = self.writer("rm", ("loss", "accuracy"))
        result = run_loop("rm", step, state, lambda: self._shard(next(it)), total_steps=total, start_step=start,
                          rng=jax.random.fold_in(self.rng, 2), checkpointer=ckpt, save_every=c.save_every,
                          meta_fn=lambda: {"data": {"train": it.position()}}, writer=writer,
                          stop_after=self.c.debug_stop_after.rm or None)
        writer.close()
        if result.steps < total:
            raise SystemExit(f"[rm] stopped after step {result.steps} of {total} (debug_stop_after)")
        params = result.state.params
        held_out = rm_lib.held_out_accuracy(evaluate, params, val, val_bs)
        summary = {"steps": total, "train_accuracy": result.last_metrics["accuracy"], **held_out}
        if c.normalize:
            demos = self.arrays("sft_train")
            params, mean = rm_lib.center_on_demonstrations(scalar.graphdef, params, demos["tokens"],
                                                           demos["segment_ids"])
            summary["demonstration_mean_before_centering"] = mean
        summary["wall_seconds"] = time.perf_counter() - t0
        self.save_final("rm", params, summary)
        ckpt.close()
        return summary

    def run_ppo(self) -> dict[str, Any]:
        from rlhf_jax.eval.judge import evaluate_policies
        c = self.c.ppo
        t0 = time.perf_counter()
        cfg = ppo_lib.PPOConfig(**{f.name: c[f.name] for f in dataclasses.fields(ppo_lib.PPOConfig)
                                   if f.name in c}, eos_token_id=self.tokenizer.eos_token_id,
                                pad_token_id=self.tokenizer.pad_token_id or 0)
        scalar = init_model(self.model_cfg(), head="scalar", seed=self.c.seed + 1, mesh=self.mesh)
        sft = self.sft_params()
        rm = self.load_final("rm", scalar.params)
        graphdefs = (self.base.graphdef, scalar.graphdef, scalar.graphdef)
        copy = functools.partial(jax.tree.map, jnp.copy)
        params = {"policy": copy(sft), "value": copy(rm)}
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

        def on_metrics(step_no, host, aux):
            prompts_text = self.decode(aux["prompt"], aux["prompt_mask"])
            responses = self.decode(aux["response"], aux["response_mask"])
            golds = [self.gold(p, r) for p, r in zip(prompts_text, responses)]
            golds = [g for g in golds if g is not None]
            return {"gold_reward": float(np.mean(golds))} if golds else {}

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
        evals, samples = evaluate_policies(self, sft, final_policy, rm, scalar.graphdef, cfg)
        summary = {"steps": c.iterations, "wall_seconds": time.perf_counter() - t0,
                   "score_final": result.last_metrics["score"], "kl_coef_final": result.last_metrics["kl_coef"],
                   **evals}
        (self.workdir / "ppo" / "samples.json").write_text(json.dumps(samples, indent=2))
        self.save_final("ppo", final_policy, summary)
        ckpt.close()
        return summary

"""The generator: any local instruct checkpoint, sampled in fixed-shape batches through the project's
KV-cache sampler (`rlhf_jax.generate.generate`).

    gen = Generator.load("~/.cache/rlhf_jax/models/SmolLM2-135M-Instruct.Q4_1.gguf", sampling_cfg, seed=0)
    texts = gen.complete([(messages, prefix), ...], max_new_tokens=128)

`--model` may be a HF directory (config.json + safetensors), a GGUF file, or `WORKDIR:STAGE`: the final
parameters of a finished stage (e.g. `runs/tiny:sft`), on the base model and tokenizer that run's
config.json names (as the eval stage loads `stage:NAME`).

Prompts are rendered with the tokenizer's chat template (the named 'plain' template when it has none),
the assistant prefix appended, and left-padded to a length rounded up to `prompt_bucket` tokens; the
last batch of a call is filled with copies of its last prompt, so each (bucket, max_new_tokens) pair
compiles once. A prompt longer than `max_prompt_len` keeps its end (the question) and is counted.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from rlhf_jax.data.tokenize import TokenizeConfig, Unfinished, encode_prompt, pad_left
from rlhf_jax.errors import UserError
from rlhf_jax.generate import SamplingConfig, generate
from rlhf_jax.paths import smollm2_path


class ModelNotFound(UserError):
    """--model names nothing loadable; the message says how to get the default one."""


def _stage_spec(spec: str) -> tuple[Path, str] | None:
    """(workdir, stage) when spec is WORKDIR:STAGE of a run directory (it holds config.json)."""
    head, sep, stage = spec.rpartition(":")
    if not sep or not stage or "/" in stage:
        return None
    workdir = Path(head).expanduser()
    return (workdir, stage) if (workdir / "config.json").is_file() else None


def load_model(spec: str | Path):
    """(Model, tokenizer) of a HF directory, a GGUF file or WORKDIR:STAGE; ModelNotFound otherwise."""
    from rlhf_jax.models import load_pretrained
    stage = _stage_spec(str(spec))
    if stage is not None:
        from rlhf_jax import checkpoint
        from rlhf_jax import sharding as shd
        from rlhf_jax.context import base_model
        from rlhf_jax.models import Model
        from rlhf_jax.workdir import stored_config
        workdir, name = stage
        config = stored_config(workdir)
        base, tokenizer = base_model(config, shd.make_mesh(shd.MeshConfig()))
        params = checkpoint.load_final(workdir, name, base.params)
        return Model(base.cfg, "lm", base.graphdef, params), tokenizer
    path = Path(spec).expanduser()
    if not path.exists():
        hint = (" Fetch it with `python tools/fetch_smollm2.py` (or set RLHF_JAX_SMOLLM2)."
                if path == smollm2_path() else "")
        raise ModelNotFound(f"--model {spec}: no such HF directory, GGUF file or WORKDIR:STAGE (a run directory "
                            f"holding config.json, then the stage name).{hint}")
    model, tokenizer = load_pretrained(path)
    if tokenizer is None:
        raise ModelNotFound(f"--model {spec}: has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@dataclasses.dataclass
class GenStats:
    calls: int = 0
    rows: int = 0  # real prompts (not the padding copies)
    padded_rows: int = 0
    new_tokens: int = 0
    cut_at_limit: int = 0  # responses that hit max_new_tokens before an EOS
    prompts_truncated: int = 0
    seconds: float = 0.0
    shapes: set = dataclasses.field(default_factory=set)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shapes"] = sorted(list(s) for s in self.shapes)
        d["seconds"] = round(self.seconds, 1)
        return d


class Generator:
    def __init__(self, model, tokenizer, sampling, seed: int = 0):
        self.model, self.tokenizer, self.s, self.seed = model, tokenizer, sampling, seed
        self.tcfg = TokenizeConfig(template=None if getattr(tokenizer, "chat_template", None) else "plain")
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
        self.stats = GenStats()

    @classmethod
    def load(cls, spec: str | Path, sampling, seed: int = 0) -> "Generator":
        model, tokenizer = load_model(spec)
        return cls(model, tokenizer, sampling, seed)

    def encode(self, messages: list[dict], prefix: str) -> list[int]:
        ids = encode_prompt(self.tokenizer, messages, self.tcfg)
        if prefix:
            ids = ids + list(self.tokenizer.encode(prefix, add_special_tokens=False))
        if len(ids) > self.s.max_prompt_len:
            self.stats.prompts_truncated += 1
            ids = ids[-self.s.max_prompt_len:]
        return ids

    def complete(self, prompts: Sequence[tuple[list[dict], str]], max_new_tokens: int) -> list[str]:
        """The model's continuation of each (messages, prefix), special tokens dropped; one that hit
        max_new_tokens before an EOS comes back `tokenize.Unfinished` (the mark every encoder and
        record reads); batches of `batch_size`, seeded by (seed, call number, batch number)."""
        if not prompts:
            return []
        t0 = time.perf_counter()
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=self.s.temperature, top_p=self.s.top_p,
                             top_k=self.s.top_k, eos_token_ids=self.eos, pad_token_id=self.pad,
                             sampler=self.s.sampler)
        encoded = [self.encode(m, p) for m, p in prompts]
        B, out = self.s.batch_size, []
        call = self.stats.calls
        self.stats.calls += 1
        for b, i in enumerate(range(0, len(encoded), B)):
            chunk = encoded[i:i + B]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (B - real)  # one compiled shape for every batch
            bucket = self.s.prompt_bucket
            length = min(-(-max(map(len, chunk)) // bucket) * bucket, max(self.s.max_prompt_len, 1))
            length = max(length, max(map(len, chunk)))
            tokens, mask = pad_left(chunk, pad_id=self.pad, length=length)
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), call), b)
            gen = generate(self.model.graphdef, self.model.params, tokens, mask, key, cfg)
            toks, kept = np.asarray(gen.tokens_BxN), np.asarray(gen.mask_BxN)
            self.stats.shapes.add((B, length, max_new_tokens))
            for r in range(real):
                ids = [int(t) for t, m in zip(toks[r], kept[r]) if m]
                self.stats.new_tokens += len(ids)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = len(ids) == max_new_tokens and not (self.eos and ids[-1] in self.eos)
                self.stats.cut_at_limit += cut
                out.append(Unfinished(text) if cut else text)
            self.stats.rows += real
            self.stats.padded_rows += B - real
        self.stats.seconds += time.perf_counter() - t0
        return out

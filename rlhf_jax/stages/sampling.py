"""Sampling a policy the way every stage does: the config's `sampling` block at the use's
temperature, prompts from records, rows prompt-major. A stage whose sampling is long (best-of-n,
rejection sampling) keeps each finished chunk on disk, so that a stopped run resumes at the chunk
it was in (`ChunkStore`)."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np

from rlhf_jax import checkpoint, distributed
from rlhf_jax.data.tokenize import decode_sampled, prompt_arrays
from rlhf_jax.generate import sample_rows
from rlhf_jax.stages.handoff import sft_stage
from rlhf_jax.train.ppo import sampling_config


CHUNK = 512  # rows sampled at once: a stopped stage loses at most the chunk it was in


class ChunkStore:
    """Finished sampling chunks as `directory/<key>_<first row>.npz`. `key` is a digest of all
    that decides the samples (prompts, copies, sampling settings, seed, chunk size and the
    caller's name for the weights), so a call with other inputs never reads another's chunks.
    On several processes nothing is kept (each would need every chunk file on its own disk)."""

    def __init__(self, directory: Path, key: str):
        self.directory, self.key = Path(directory), key
        self.enabled = distributed.process_count() == 1

    def _path(self, start: int) -> Path:
        return self.directory / f"{self.key}_{start:08d}.npz"

    def load(self, start: int):
        path = self._path(start)
        if not (self.enabled and path.exists()):
            return None
        with np.load(path) as f:
            return f["response"], f["response_mask"]

    def save(self, start: int, response, response_mask) -> None:
        if self.enabled:
            checkpoint.save_arrays_atomic(self._path(start), response=response, response_mask=response_mask)


def chunk_key(*parts) -> str:
    """A digest of arrays (their bytes, dtype and shape) and other values (their repr)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def sample(ctx, params, prompt_records: list[dict], copies: int, temperature: float, seed: int,
           max_new_tokens: int | None = None, keep: Path | None = None, weights: str | None = None,
           chunk: int | None = None) -> dict[str, np.ndarray]:
    """`copies` samples per prompt (rows prompt-major) from an LM-head policy: host arrays
    prompt, prompt_mask, response, response_mask. With `keep`, finished chunks of `chunk` rows
    are kept there (`ChunkStore`; `weights` names the parameters, e.g. the identity of the stage
    that wrote them) and a call made again reads them back."""
    chunk = chunk or CHUNK
    arrays, _ = prompt_arrays(prompt_records, ctx.tokenizer, ctx.data.tcfg)
    cfg = sampling_config(ctx.config.sampling, ctx.tokenizer, temperature, max_new_tokens)
    store = None
    if keep is not None:
        store = ChunkStore(keep, chunk_key(arrays["tokens"], arrays["mask"], copies, dataclasses.astuple(cfg),
                                           seed, chunk, weights))
    return sample_rows(ctx.base.graphdef, params, arrays["tokens"], arrays["mask"], copies, cfg, seed, chunk, store)


def kept_samples(ctx, stage: str) -> dict:
    """`sample`'s keep / weights for a stage sampling the SFT policy: WORKDIR/<stage>/samples,
    the weights named by the identity of the stage that wrote them (a rerun SFT gives other chunks)."""
    return {"keep": ctx.workdir / stage / "samples",
            "weights": checkpoint.summary_identity(ctx.workdir, sft_stage(ctx.workdir))}


def drop_kept_samples(ctx, stage: str, name: str = "samples") -> None:
    """Remove a finished stage's kept chunks (its summary holds what it made of them)."""
    if distributed.primary():
        shutil.rmtree(ctx.workdir / stage / name, ignore_errors=True)


def sample_texts(ctx, params, prompt_records: list[dict], copies: int, temperature: float, seed: int
                 ) -> list[list[str]]:
    """`copies` decoded responses per prompt; one cut at the length limit before any EOS is
    `tokenize.Unfinished`, so a reward model trained on it reads it at its last sampled token."""
    s = sample(ctx, params, prompt_records, copies, temperature, seed)
    texts, _ = decode_sampled(ctx.tokenizer, s["response"], s["response_mask"])
    return [texts[j * copies:(j + 1) * copies] for j in range(len(prompt_records))]

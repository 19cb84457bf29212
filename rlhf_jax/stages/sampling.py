"""Sampling a policy the way every stage does: the config's `sampling` block at the use's
temperature, prompts from records, rows prompt-major."""
from __future__ import annotations

import numpy as np

from rlhf_jax.data.tokenize import decode, prompt_arrays
from rlhf_jax.generate import sample_rows
from rlhf_jax.train.ppo import sampling_config


def sample(ctx, params, prompt_records: list[dict], copies: int, temperature: float, seed: int,
           max_new_tokens: int | None = None) -> dict[str, np.ndarray]:
    """`copies` samples per prompt (rows prompt-major) from an LM-head policy: host arrays
    prompt, prompt_mask, response, response_mask."""
    arrays, _ = prompt_arrays(prompt_records, ctx.tokenizer, ctx.data.tcfg)
    cfg = sampling_config(ctx.config.sampling, ctx.tokenizer, temperature, max_new_tokens)
    return sample_rows(ctx.base.graphdef, params, arrays["tokens"], arrays["mask"], copies, cfg, seed)


def sample_texts(ctx, params, prompt_records: list[dict], copies: int, temperature: float, seed: int
                 ) -> list[list[str]]:
    """`copies` decoded responses per prompt."""
    s = sample(ctx, params, prompt_records, copies, temperature, seed)
    texts = decode(ctx.tokenizer, s["response"], s["response_mask"])
    return [texts[j * copies:(j + 1) * copies] for j in range(len(prompt_records))]

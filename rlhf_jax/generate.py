"""Jitted KV-cache sampling: greedy, temperature, top-k, top-p; left-padded prompt batches.

    out = generate(model.graphdef, model.params, prompt_BxP, prompt_mask_BxP, rng, SamplingConfig(...))
    out.tokens_BxN, out.logprobs_BxN, out.mask_BxN

Prompts must be left-padded (real tokens flush right) so that every row's next token is
written to the same cache slot; `left_pad` builds such a batch. Positions count real tokens
only. A row stops at its first EOS: the EOS is kept (mask 1), later slots hold `pad_token_id`
with mask 0 and log-prob 0. The loop exits early once every row has stopped.

`logprobs_BxN` are log-probabilities of the sampled tokens under the distribution actually
sampled from: logits / temperature, then top-k and top-p filtering, renormalised. With
top_k=0 and top_p=1 that is exactly log_softmax(logits / T), the quantity PPO needs. For
greedy decoding (temperature 0) they are log_softmax(logits).

`sampler` picks how a token is drawn from that distribution: "gumbel" (the default,
`jax.random.categorical`: one Gumbel variate per vocabulary entry) or "inverse_cdf" (one uniform
per row against the cumulative probabilities). Both are exact; they use the random stream
differently, so the same seed gives other samples. With GPT-2's 50,257 tokens the Gumbel draw
is most of a CPU decoding step (449 ms of CPU for 256 rows, against 54 ms for the log-softmax).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax import signals
from rlhf_jax.data.tokenize import pad_left as left_pad  # noqa: F401  (re-exported)
from rlhf_jax.models.forward import positions_from_mask
from rlhf_jax.models.model import apply
from rlhf_jax.models.transformer import KVCache, per_layer_cache
from rlhf_jax.registry import Registry

# how a token is drawn from the processed distribution: fn(rng, processed logits_BxV, their log_softmax) -> token_B
SAMPLERS = Registry("sampler")
SAMPLERS.register("gumbel", lambda rng, logits_BxV, logp_BxV: jax.random.categorical(rng, logits_BxV, axis=-1))


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    sampler: str = "gumbel"  # "gumbel" (jax.random.categorical) or "inverse_cdf" (see the module docstring)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError("top_k must be >= 0 and max_new_tokens >= 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} must be one of {SAMPLERS.names()}")


class Generation(NamedTuple):
    tokens_BxN: jax.Array
    logprobs_BxN: jax.Array
    mask_BxN: jax.Array  # 1 for response tokens up to and including the first EOS


def process_logits(logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Temperature, top-k and top-p applied to float32 logits (filtered entries -> -inf)."""
    logits = logits_BxV.astype(jnp.float32)
    if cfg.temperature == 0:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # smallest kept logit: the last one whose preceding mass is still below top_p
        n_keep = jnp.sum(mass_before < cfg.top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_token(logits_BxV, rng, cfg: SamplingConfig):
    """(token_B, logprob_B) under the processed distribution."""
    processed = process_logits(logits_BxV, cfg)
    logp = jax.nn.log_softmax(processed, axis=-1)
    if cfg.temperature == 0:
        token = jnp.argmax(processed, axis=-1)
    else:
        token = SAMPLERS[cfg.sampler](rng, processed, logp)
    return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def inverse_cdf_sample(rng, logp_BxV, block: int = 256):
    """token_B drawn from exp(logp) with one uniform u per row: the first token whose cumulative
    probability exceeds u * total. Two levels (blocks of `block` tokens, then the tokens of the
    chosen block), because a cumulative sum over the whole vocabulary is slow on a CPU. A token
    of probability 0 is never drawn: rounding past the end falls back on the last block, and
    token, of positive probability."""
    B, V = logp_BxV.shape
    n_blocks = -(-V // block)
    probs_BxNxK = jnp.pad(jnp.exp(logp_BxV), ((0, 0), (0, n_blocks * block - V))).reshape(B, n_blocks, block)
    mass_BxN = probs_BxNxK.sum(-1)
    cum_BxN = jnp.cumsum(mass_BxN, axis=-1)
    u_B = jax.random.uniform(rng, (B,)) * cum_BxN[:, -1]
    j_B = jnp.minimum(jnp.sum(cum_BxN <= u_B[:, None], axis=-1), _last_positive(mass_BxN))
    before_B = jnp.where(j_B > 0, jnp.take_along_axis(cum_BxN, (j_B - 1).clip(0)[:, None], 1)[:, 0], 0.0)
    probs_BxK = jnp.take_along_axis(probs_BxNxK, j_B[:, None, None], 1)[:, 0]
    k_B = jnp.sum(jnp.cumsum(probs_BxK, axis=-1) <= (u_B - before_B)[:, None], axis=-1)
    return (j_B * block + jnp.minimum(k_B, _last_positive(probs_BxK))).astype(jnp.int32)


SAMPLERS.register("inverse_cdf", lambda rng, logits_BxV, logp_BxV: inverse_cdf_sample(rng, logp_BxV))


def _last_positive(values_BxN):
    """Index of each row's last positive entry."""
    return values_BxN.shape[-1] - 1 - jnp.argmax(values_BxN[:, ::-1] > 0, axis=-1)


def ends_with_eos(tokens_BxN, mask_BxN, cfg: SamplingConfig) -> jax.Array:
    """[B] bool: the response holds the (first) EOS token among its kept tokens, i.e. it was not cut."""
    return jnp.any((tokens_BxN == cfg.eos_token_ids[0]) & (mask_BxN > 0), axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "on_step"))
def generate(graphdef, params, prompt_BxP, prompt_mask_BxP, rng, cfg: SamplingConfig, on_step=None) -> Generation:
    """Sample up to cfg.max_new_tokens tokens after each left-padded prompt.

    `on_step(i, token_B, live_B)`, when given (a hashable host function; it is static), receives each
    step's tokens on the host as they are sampled (`jax.debug.callback`), for streaming; callbacks
    may arrive out of order on some backends, hence the step index `i`."""
    B, P = prompt_BxP.shape
    N = cfg.max_new_tokens
    model_cfg = graphdef_cfg(graphdef, params)
    cache = KVCache.init(model_cfg, B, P + N)
    mask = prompt_mask_BxP.astype(jnp.int32)
    positions = positions_from_mask(mask)
    # the prefill needs the logits of the last position only: the head (a d_model x vocab matmul)
    # over every prompt position would cost about a fifth of a SmolLM2-135M prefill for nothing
    model = nnx.merge(graphdef, params)
    hidden_BxPxD, cache = model(prompt_BxP, positions_BxT=positions, segment_ids_BxT=mask, cache=cache,
                                features=True)
    logits = model.head(hidden_BxPxD[:, -1:], model)
    next_pos_B = mask.sum(axis=1)
    eos = jnp.asarray(cfg.eos_token_ids or (-1,), jnp.int32)
    layers = None
    if decode_per_layer(model_cfg):  # the weights sliced per layer once, not at every token
        layers = model.blocks.per_layer()
        cache = per_layer_cache(cache)

    def cond(carry):
        i, _, _, _, done, _, _, _ = carry
        return (i < N) & ~jnp.all(done)

    def body(carry):
        i, tokens, logprobs, out_mask, done, cache, last_logits, rng = carry
        rng, step_rng = jax.random.split(rng)
        token, logprob = sample_token(last_logits, step_rng, cfg)
        live = ~done
        token = jnp.where(live, token, cfg.pad_token_id)
        tokens = tokens.at[:, i].set(token)
        logprobs = logprobs.at[:, i].set(jnp.where(live, logprob, 0.0))
        out_mask = out_mask.at[:, i].set(live.astype(jnp.int32))
        done = done | jnp.isin(token, eos)
        if on_step is not None:
            jax.debug.callback(on_step, i, token, live)
        step_logits, cache = apply(graphdef, params, token[:, None], positions_BxT=(next_pos_B + i)[:, None],
                                   segment_ids_BxT=jnp.ones((B, 1), jnp.int32), cache=cache,
                                   layers=layers)
        return i + 1, tokens, logprobs, out_mask, done, cache, step_logits[:, -1], rng

    init = (jnp.int32(0), jnp.full((B, N), cfg.pad_token_id, jnp.int32), jnp.zeros((B, N), jnp.float32),
            jnp.zeros((B, N), jnp.int32), jnp.zeros((B,), bool), cache, logits[:, -1], rng)
    _, tokens, logprobs, out_mask, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    return Generation(tokens, logprobs, out_mask)


def decode_per_layer(model_cfg) -> bool:
    """Whether sampling runs per-layer decoding (`ModelConfig.decode_layers`)."""
    if model_cfg.decode_layers == "auto":
        return jax.default_backend() == "cpu"
    return model_cfg.decode_layers == "per_layer"


def graphdef_cfg(graphdef, params):
    """The ModelConfig stored on the module (a static attribute of the graph)."""
    from flax import nnx
    return nnx.merge(graphdef, params).cfg


def sample_rows(graphdef, params, prompt_NxP, prompt_mask_NxP, copies: int, cfg: SamplingConfig, seed: int,
                chunk: int = 512, store=None) -> dict[str, np.ndarray]:
    """`copies` samples of each left-padded prompt (rows prompt-major), generated in chunks of
    `chunk` rows: host arrays prompt, prompt_mask [N * copies, P], response, response_mask [N * copies, M].

    `store` (optional) keeps finished chunks: `store.load(first_row)` gives a chunk's (response,
    response_mask) or None, `store.save(first_row, response, response_mask)` keeps one. A call
    stopped by a signal between chunks and made again samples only the chunks not kept; a chunk's
    random key depends on its first row only, so the rows equal an uninterrupted call's."""
    tokens, mask = np.repeat(prompt_NxP, copies, 0), np.repeat(prompt_mask_NxP, copies, 0)
    response, response_mask = [], []
    for i in range(0, len(tokens), chunk):
        kept = store.load(i) if store is not None else None
        if kept is None:
            signals.check("sampling")
            gen = generate(graphdef, params, tokens[i:i + chunk], mask[i:i + chunk], jax.random.key(seed + i), cfg)
            kept = np.asarray(gen.tokens_BxN), np.asarray(gen.mask_BxN)
            if store is not None:
                store.save(i, *kept)
        response.append(kept[0])
        response_mask.append(kept[1])
    return {"prompt": tokens, "prompt_mask": mask, "response": np.concatenate(response),
            "response_mask": np.concatenate(response_mask)}

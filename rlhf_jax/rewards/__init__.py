"""One reward interface over every kind of reward the pipeline optimises or judges with.

A `Reward` is a frozen description (graph definitions, static settings); its parameters
travel separately, so a jitted step receives them as constants. Every reward gives its
rewards in their own granularity (`rewards`: one score per sequence [B], or per-token rewards
on the response [B, N] with N = T - n_prompt), the same placed on the response tokens
(`placed`, [B, N]: a sequence score sits on the last response token) and a score per
sequence (`score`, their sum). PPO's missing-EOS penalty and clipping act on `rewards`, so
a penalised response loses its whole score whatever the reward's granularity.

- `ModelReward`: a scalar-head reward model read at the EOS (the InfoRM head reads g(mu)
  there too), optionally divided by its spread on the demonstrations (z-normalisation);
- `EnsembleReward`: k >= 1 stacked reward models, aggregated by a registered aggregator (one
  model with the mean: `ModelReward`, up to the last bits of a vmapped call);
- `FineGrainedReward` (rewards.finegrained): per-segment category models plus a holistic RM;
- `GoldReward`: a host function of decoded text (the task world's gold reward), usable
  inside jit through a host callback and directly on host arrays for monitoring.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import signals
from rlhf_jax.data.shared_prompt import continuation_batches, unique_rows
from rlhf_jax.models import forward as F
from rlhf_jax.objectives.ppo import at_last_token


class Reward:
    """Interface: `rewards(params, tokens_BxT, mask_BxT, n_prompt) -> rewards_B or rewards_BxN`."""

    def rewards(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        raise NotImplementedError

    def placed(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        """rewards_BxN on the N = T - n_prompt response columns."""
        return place(self.rewards(params, tokens_BxT, mask_BxT, n_prompt), mask_BxT[:, n_prompt:])

    def score(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        """scores_B: the total reward of each sequence."""
        r = self.rewards(params, tokens_BxT, mask_BxT, n_prompt)
        return r if r.ndim == 1 else r.sum(1)


def place(rewards, response_mask_BxN):
    """Per-token rewards [B, N]: a sequence score [B] goes on the last response token."""
    return rewards if rewards.ndim == 2 else rewards[:, None] * at_last_token(response_mask_BxN)


class SequenceReward(Reward):
    """A reward with one score per sequence, read from the whole prompt + response."""

    def sequence_score(self, params, tokens_BxT, mask_BxT):
        raise NotImplementedError

    def rewards(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        return self.sequence_score(params, tokens_BxT, mask_BxT)


class ModelReward(SequenceReward):
    """A single reward model (scalar or InfoRM head) at the EOS, divided by `scale` if given."""

    def __init__(self, graphdef, scale: float | None = None):
        self.graphdef, self.scale = graphdef, scale

    def sequence_score(self, params, tokens_BxT, mask_BxT):
        score = F.score_at_last(self.graphdef, params, tokens_BxT, mask_BxT)
        return score if self.scale is None else score / self.scale

    def packed_values(self, params, rows):
        """values_RxL at every slot of rows packed with each prompt once (`score_by_prompt`)."""
        values = F.packed_forward(self.graphdef, params, rows)
        return values if self.scale is None else values / self.scale


class EnsembleReward(SequenceReward):
    """k >= 1 reward models stacked on axis 0 of their params, scores [k, B] aggregated to [B]."""

    def __init__(self, graphdef, aggregate: Callable):
        self.graphdef, self.aggregate = graphdef, aggregate

    def member_scores(self, params, tokens_BxT, mask_BxT):
        return jax.vmap(F.score_at_last, in_axes=(None, 0, None, None))(self.graphdef, params, tokens_BxT, mask_BxT)

    def sequence_score(self, params, tokens_BxT, mask_BxT):
        return self.aggregate(self.member_scores(params, tokens_BxT, mask_BxT))

    def packed_values(self, params, rows):
        """The aggregate of the members' values at every slot of packed rows [R, L]."""
        values_KxRxL = jax.vmap(F.packed_forward, in_axes=(None, 0, None))(self.graphdef, params, rows)
        return self.aggregate(values_KxRxL.reshape(len(values_KxRxL), -1)).reshape(values_KxRxL.shape[1:])


class GoldReward(SequenceReward):
    """A host function `(prompt_texts, response_texts) -> scores` (NaN where undefined).

    `host_scores` runs it on host arrays (monitoring, evaluation); inside jit, `score` reaches
    it through `jax.pure_callback`, so PPO can optimise it like any other reward.
    """

    def __init__(self, fn: Callable[[list[str], list[str]], np.ndarray], tokenizer):
        self.fn, self.tokenizer = fn, tokenizer

    def host_scores(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> np.ndarray:
        from rlhf_jax.data.tokenize import decode, decode_sampled
        prompts = decode(self.tokenizer, prompt_BxP, prompt_mask_BxP)
        responses, _ = decode_sampled(self.tokenizer, response_BxN, response_mask_BxN)
        return np.asarray(self.fn(prompts, responses), np.float64)

    def rewards(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        def host(tokens, mask):
            tokens, mask = np.asarray(tokens), np.asarray(mask)
            return self.host_scores(tokens[:, :n_prompt], mask[:, :n_prompt], tokens[:, n_prompt:],
                                    mask[:, n_prompt:]).astype(np.float32)

        out = jax.ShapeDtypeStruct((tokens_BxT.shape[0],), jnp.float32)
        return jax.pure_callback(host, out, tokens_BxT, mask_BxT, vmap_method="sequential")


def score_in_chunks(reward: Reward, params, tokens_NxT, mask_NxT, n_prompt: int, chunk: int = 512) -> np.ndarray:
    """scores_N of many sequences (prompt in the first n_prompt columns): packed with each prompt
    once when the reward reads a model's value at the last token (`packed_values`: best-of-n's
    n samples of a prompt), else (or with n_prompt = 0) in padded chunks, jitted once per chunk shape."""
    if hasattr(reward, "packed_values") and n_prompt > 0:
        return score_by_prompt(jax.jit(reward.packed_values), params, tokens_NxT, mask_NxT, n_prompt)
    fn = jax.jit(lambda p, t, m: reward.score(p, t, m, n_prompt))
    return F.per_sequence_chunks(fn, params, tokens_NxT, mask_NxT, chunk)


def score_by_prompt(values_fn, params, tokens_NxT, mask_NxT, n_prompt: int, rows: int = 16,
                    max_row: int = 512) -> np.ndarray:
    """`score_split` of sequences whose prompt fills the first n_prompt columns (any padding)."""
    tokens_NxT, mask_NxT = np.asarray(tokens_NxT), np.asarray(mask_NxT)
    real = lambda t, m: t[m > 0].tolist()
    return score_split(values_fn, params, [real(t[:n_prompt], m[:n_prompt]) for t, m in zip(tokens_NxT, mask_NxT)],
                       [real(t[n_prompt:], m[n_prompt:]) for t, m in zip(tokens_NxT, mask_NxT)], rows, max_row)


def score_split(values_fn, params, prompts, responses, rows: int = 16, max_row: int = 512) -> np.ndarray:
    """scores_N read at the last token of each prompt + response (token-id lists) from
    `values_fn(params, packed rows) -> values_RxL`, the sequences that share a prompt packed with
    it once (`shared_prompt.continuation_batches`, `rows` rows of at most `max_row` tokens a
    call): the padded sequences' scores up to float rounding (tests/rewards/test_rewards.py);
    equal sequences are scored once, so they tie. An empty response is read at its prompt's last
    token, which moves into the continuation."""
    contexts, continuations = [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = list(p) + list(r)
        if len(seq) < 2:
            raise ValueError(f"sequence {i}: {len(seq)} token(s); a score needs a token to read and one before it")
        cut = max(1, min(len(p), len(seq) - 1))
        contexts.append(seq[:cut])
        continuations.append(seq[cut:])
    first, inverse = unique_rows(contexts, continuations)
    scores_U = np.full(len(first), np.nan)
    for packed in continuation_batches([contexts[i] for i in first], [continuations[i] for i in first], rows,
                                       max_row):
        signals.check("scoring")
        index, row, col = packed.last
        scores_U[index] = np.asarray(values_fn(params, packed.rows))[row, col]
    return scores_U[inverse]


def score_texts(values_fn, params, tokenizer, tcfg, prompts, responses, rows: int = 16) -> np.ndarray:
    """`score_split` of (prompt, response) texts encoded as an RM's pairs (prompt, response, EOS:
    `tokenize.encode_split`; no EOS after an `Unfinished` response, which is read at its last
    token): the text judges' scores (the `rm` judge, the `rm:` gold)."""
    from rlhf_jax.data.tokenize import encode_split
    split = [encode_split(tokenizer, p, r, tcfg) for p, r in zip(prompts, responses)]
    return score_split(values_fn, params, [p for p, _ in split], [r for _, r in split], rows)


__all__ = ["EnsembleReward", "GoldReward", "ModelReward", "Reward", "SequenceReward", "place", "score_by_prompt",
           "score_in_chunks", "score_split", "score_texts"]

"""Fine-grained rewards (Wu et al. 2023; docs/rlhf_notes.md section 7).

Several reward models, each scoring its own segment unit of the response. The units are the
registered segmenters (`SEGMENTERS`):

- "sentence": a segment ends after . ! ?; "word"; "token"; "response" (the whole response,
  read at its last token); "subsentence", Wu et al.'s released rule: the response is first cut
  into sentences (always split at a sentence end); inside a sentence a new piece may start
  after a word ending in , ; ! ? when more than `min_words` (5) words of the sentence follow;
  a piece shorter than `min_words` is merged backward into the piece before it (or forward,
  when it opens the sentence). The response's last real token always ends a segment.

Segments are found on token ids, inside jit: a table per vocabulary entry says whether the
token ends a sentence, ends a clause, or starts a word (computed once from the tokenizer, no
model downloaded). The same function labels the training data and places rewards in PPO, so
the reward model is read exactly where it was trained.

A category model is a scalar-head RM trained as a per-segment classifier: the logit at a
segment's last token predicts "this segment has no error of my category" (binary cross-
entropy). Its reward for segment j is w_k * (+1 if p > 1/2 else -1) ("hard", as the paper's
+-0.3 / +-0.5), or w_k * (2p - 1) ("soft"), placed on the segment's last token:

    r_t = sum_k sum_j [t == last token of segment j of model k] * w_k * R_k(x, y, j)

(the KL penalty is added per token by PPO as usual). A holistic preference RM joins as the
unit "response" with its z-normalised score.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.registry import Registry

SENTENCE_END = ".!?"
CLAUSE_END = ",;!?"  # Wu et al.'s sub-sentence marks: [,;!?] at the end of a whitespace word

# unit -> (tokens_BxT, response_mask_BxT [bool], token classes_BxTx3, last_BxT, min_words) -> ends_BxT [bool]
SEGMENTERS = Registry("segment unit")


@dataclasses.dataclass(frozen=True)
class Component:
    """One fine-grained reward model: its name, segment unit, weight and the error categories
    of the span annotations it learns to detect (default: its own name)."""
    name: str
    unit: str
    weight: float
    errors: tuple[str, ...]


def parse_components(spec: str) -> list[Component]:
    """"name:unit:weight[:Error1|Error2],..." -> components; a clear error on a bad entry."""
    out = []
    for i, item in enumerate(s for s in spec.split(",") if s.strip()):
        parts = item.strip().split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"component {i} {item!r}: expected name:unit:weight[:Error1|Error2]")
        name, unit, weight = parts[:3]
        if unit not in SEGMENTERS:
            raise ValueError(f"component {i} {item!r}: unit {unit!r} is not one of {SEGMENTERS.names()}")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"component {i} {item!r}: weight {weight!r} is not a number") from None
        errors = tuple(e for e in parts[3].split("|") if e) if len(parts) == 4 else (name,)
        out.append(Component(name, unit, w, errors))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"component names {names} repeat")
    return out


def token_classes(tokenizer) -> np.ndarray:
    """[V, 3] bool: (ends a sentence, ends a clause, starts a word) for every token id."""
    vocab = len(tokenizer)
    specials = set(tokenizer.all_special_ids)
    probe = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a")[0]) if tokenizer.tokenize("a") else None
    base = tokenizer.decode([probe]) if probe is not None else ""
    table = np.zeros((vocab, 3), bool)
    for i in range(vocab):
        if i in specials:
            continue
        text = tokenizer.decode([i])
        stripped = text.rstrip()
        table[i, 0] = bool(stripped) and stripped[-1] in SENTENCE_END
        table[i, 1] = bool(stripped) and stripped[-1] in CLAUSE_END
        if probe is not None:  # does the token open a new word when it follows another one?
            joined = tokenizer.decode([probe, i])
            table[i, 2] = joined[len(base):len(base) + 1].isspace() or text[:1].isspace()
        else:
            table[i, 2] = text[:1].isspace()
    return table


def segment_ends(tokens_BxT, response_mask_BxT, classes_Vx3, unit: str, min_words: int = 5):
    """ends_BxT: 1.0 on the last token of every segment of the response (response_mask = 1)."""
    segmenter = SEGMENTERS[unit]
    resp = response_mask_BxT.astype(bool)
    T = tokens_BxT.shape[1]
    idx = jnp.where(resp, jnp.arange(T)[None, :], -1)
    last = (jnp.arange(T)[None, :] == idx.max(1, keepdims=True)) & resp
    cls = jnp.asarray(classes_Vx3)[tokens_BxT]  # [B, T, 3]: sentence end, clause end, starts a word
    return ((segmenter(tokens_BxT, resp, cls, last, min_words) | last) & resp).astype(jnp.float32)


def _shift_right(x_BxT, fill=False):
    """x[:, t - 1] at t (fill at t = 0)."""
    return jnp.concatenate([jnp.full_like(x_BxT[:, :1], fill), x_BxT[:, :-1]], 1)


@SEGMENTERS.register("response")
def _response(tokens, resp, cls, last, min_words):
    return last


@SEGMENTERS.register("token")
def _token(tokens, resp, cls, last, min_words):
    return resp


@SEGMENTERS.register("word")
def _word(tokens, resp, cls, last, min_words):
    """A segment ends where the next response token opens a word (or there is none)."""
    next_starts = jnp.concatenate([cls[:, 1:, 2] & resp[:, 1:], jnp.zeros_like(resp[:, :1])], 1)
    return next_starts


@SEGMENTERS.register("sentence")
def _sentence(tokens, resp, cls, last, min_words):
    return cls[..., 0]


@SEGMENTERS.register("subsentence")
def _subsentence(tokens, resp, cls, last, min_words):
    """Wu et al.'s rule (module docstring), on whitespace words, sentence by sentence."""
    sentence_end = (cls[..., 0] | last) & resp
    sentence_start = resp & ~_shift_right(resp) | resp & _shift_right(sentence_end)
    word_start = resp & (cls[..., 2] | sentence_start)
    # word index inside the sentence, and the sentence's number of words, from running counts
    words = jnp.cumsum(word_start, 1)
    before = jax.lax.cummax(jnp.where(sentence_start, words - 1, 0), axis=1)
    big = jnp.iinfo(jnp.int32).max
    at_end = jax.lax.cummin(jnp.where(sentence_end, words, big), axis=1, reverse=True)
    word_idx, n_words = words - before - 1, at_end - before
    candidate = (word_start & ~sentence_start & _shift_right(cls[..., 1])
                 & (word_idx + min_words < n_words))

    def forward(prev_B, xs):  # prev: word index where the current piece started
        start_B, cand_B, j_B = xs
        prev_B = jnp.where(start_B, 0, prev_B)
        short_B = j_B - prev_B < min_words
        mark_B = cand_B & (~short_B | (prev_B > 0))
        kill_B = cand_B & short_B & (prev_B > 0)  # the previous piece was short: merge it backward
        return jnp.where(mark_B, j_B, prev_B), (mark_B, kill_B)

    zeros_B = jnp.zeros(tokens.shape[0], jnp.int32)
    _, (mark_TxB, kill_TxB) = jax.lax.scan(forward, zeros_B, (sentence_start.T, candidate.T, word_idx.T))

    def backward(next_kill_B, xs):  # a piece start survives unless the next start merges it away
        mark_B, kill_B, start_B = xs
        keep_B = mark_B & ~next_kill_B
        next_kill_B = jnp.where(mark_B, kill_B, next_kill_B) & ~start_B
        return next_kill_B, keep_B

    _, keep_TxB = jax.lax.scan(backward, jnp.zeros_like(resp[:, 0]), (mark_TxB, kill_TxB, sentence_start.T),
                               reverse=True)
    piece_start = keep_TxB.T
    return sentence_end | jnp.concatenate([piece_start[:, 1:], jnp.zeros_like(resp[:, :1])], 1)


def segment_loss(logits_BxT, ends_BxT, labels_BxT):
    """Mean binary cross-entropy over segment ends (label 1: no error); (loss, metrics)."""
    n = jnp.maximum(ends_BxT.sum(), 1.0)
    bce = -(labels_BxT * jax.nn.log_sigmoid(logits_BxT) + (1 - labels_BxT) * jax.nn.log_sigmoid(-logits_BxT))
    loss = (bce * ends_BxT).sum() / n
    correct = ((logits_BxT > 0) == (labels_BxT > 0.5)).astype(jnp.float32)
    return loss, {"accuracy": (correct * ends_BxT).sum() / n, "segments": ends_BxT.sum(),
                  "positive_rate": (labels_BxT * ends_BxT).sum() / n}


def segment_rewards(logits_BxT, ends_BxT, weight: float, mode: str = "hard"):
    """w * (+-1 or 2p - 1) on every segment end, 0 elsewhere."""
    if mode == "hard":
        r = jnp.where(logits_BxT > 0, 1.0, -1.0)
    elif mode == "soft":
        r = 2.0 * jax.nn.sigmoid(logits_BxT) - 1.0
    else:
        raise ValueError(f"segment reward mode {mode!r} must be 'hard' or 'soft'")
    return weight * r * ends_BxT


def segment_labels(ends: np.ndarray, response_ids: list[int], tokenizer, spans, errors) -> np.ndarray:
    """Host side: 1 for each segment end whose characters overlap no error span of `errors`.

    ends: [R] over the response tokens; spans: [{start, end, category}] in characters of the
    decoded response. A segment covers the characters its tokens add to the decoded prefix.
    """
    bad = [(s["start"], s["end"]) for s in spans if s["category"] in errors]
    labels = np.zeros(len(ends), np.float32)
    start_char = 0
    for t in np.flatnonzero(ends):
        prefix = tokenizer.decode(response_ids[:t + 1], skip_special_tokens=True)
        end_char, text = len(prefix), prefix[start_char:]
        lo = start_char + (len(text) - len(text.lstrip()))  # leading spaces belong to no span
        labels[t] = float(not any(a < end_char and lo < b for a, b in bad))
        start_char = end_char
    return labels

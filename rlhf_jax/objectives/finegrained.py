"""Fine-grained rewards (Wu et al. 2023; RLHF_NOTES section 7).

Several reward models, each scoring its own segment unit of the response:

- "subsentence": a segment ends after , ; ! ? or . once it holds at least `min_words` words
  (Wu et al.: 5); "sentence": after . ! ?; "word"; "token"; "response" (the whole response,
  read at its last token). The response's last real token always ends a segment.

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

UNITS = ("token", "word", "subsentence", "sentence", "response")
SENTENCE_END = ".!?"
CLAUSE_END = ",;!?."


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
        if unit not in UNITS:
            raise ValueError(f"component {i} {item!r}: unit {unit!r} is not one of {UNITS}")
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
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of {UNITS}")
    resp = response_mask_BxT.astype(bool)
    T = tokens_BxT.shape[1]
    idx = jnp.where(resp, jnp.arange(T)[None, :], -1)
    last = (jnp.arange(T)[None, :] == idx.max(1, keepdims=True)) & resp
    if unit == "response":
        return last.astype(jnp.float32)
    if unit == "token":
        return resp.astype(jnp.float32)
    cls = jnp.asarray(classes_Vx3)[tokens_BxT]  # [B, T, 3]
    starts_word = cls[..., 2]
    if unit == "word":  # the next response token opens a word (or there is none)
        next_starts = jnp.concatenate([starts_word[:, 1:] & resp[:, 1:], jnp.zeros_like(resp[:, :1])], 1)
        return ((next_starts | last) & resp).astype(jnp.float32)
    if unit == "sentence":
        return ((cls[..., 0] | last) & resp).astype(jnp.float32)
    # sub-sentence: a clause mark closes the segment once it holds min_words words
    def step(words_B, xs):
        starts_B, clause_B, resp_B = xs
        words_B = words_B + (starts_B & resp_B).astype(jnp.int32)
        end_B = clause_B & resp_B & (words_B >= min_words)
        return jnp.where(end_B, 0, words_B), end_B

    first_word = resp & ~jnp.concatenate([jnp.zeros_like(resp[:, :1]), resp[:, :-1]], 1)  # 1st token counts
    _, ends_TxB = jax.lax.scan(step, jnp.zeros(tokens_BxT.shape[0], jnp.int32),
                               ((starts_word | first_word).T, cls[..., 1].T, resp.T))
    return ((ends_TxB.T | last) & resp).astype(jnp.float32)


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

"""A binary text classifier: a scalar-head decoder whose output at the last token of a text is
the logit of p(positive), trained with binary cross-entropy (the IMDb experiment's gold reward).

Texts are cut to a random length in [min_len, max_len] tokens, so the classifier learns to
judge the short openings a policy writes as well as longer text.
"""
from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.data.batches import evaluate_all
from rlhf_jax.data.tokenize import pad_right
from rlhf_jax.models.forward import score_at_last
from rlhf_jax.train.step import make_train_step


def labelled_arrays(records: list[dict], tokenizer, min_len: int, max_len: int, seed: int) -> dict[str, np.ndarray]:
    """{"text", "label"} records -> tokens, mask [N, max_len] (right-padded, each text cut to a
    random length in [min_len, max_len] tokens, no EOS: the classifier reads text) and label [N]."""
    rng = np.random.default_rng(seed)
    chars = 8 * max_len  # a review's first tokens need no more characters than this
    ids = tokenizer([r["text"][:chars] for r in records], add_special_tokens=False)["input_ids"]
    cut = [seq[:int(rng.integers(min_len, max_len + 1))] for seq in ids]
    tokens, mask = pad_right(cut, tokenizer.pad_token_id or 0, max_len)
    return {"tokens": tokens, "mask": mask, "label": np.array([r["label"] for r in records], np.float32)}


def binary_cross_entropy(logits_B, labels_B):
    """(mean BCE of sigmoid(logits) against labels in {0, 1}, {"accuracy", "positive_rate"})."""
    loss_B = labels_B * jax.nn.softplus(-logits_B) + (1.0 - labels_B) * jax.nn.softplus(logits_B)
    correct_B = (logits_B > 0) == (labels_B > 0.5)
    return loss_B.mean(), {"accuracy": correct_B.mean(), "positive_rate": (logits_B > 0).mean()}


def classifier_loss(graphdef):
    def loss_fn(params, batch, rng, constants):
        logits_B = score_at_last(graphdef, params, batch["tokens"], batch["mask"])
        return binary_cross_entropy(logits_B, batch["label"])

    return loss_fn


def make_classifier_step(graphdef, tx, schedule):
    return make_train_step(classifier_loss(graphdef), tx, schedule)


def predictions(graphdef, params, arrays: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """logits_N of every row of tokens/mask [N, T] (in batches of one shape)."""
    fn = jax.jit(lambda p, b: {"logits": score_at_last(graphdef, p, b["tokens"], b["mask"])})
    out = evaluate_all(fn, params, {"tokens": arrays["tokens"], "mask": arrays["mask"]}, batch_size)
    return out["logits"].reshape(-1)[:len(arrays["tokens"])]

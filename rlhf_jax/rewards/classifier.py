"""A trained binary classifier as the gold reward (the IMDb experiment's sentiment classifier).

`ClassifierReward` is a `GoldReward` that is also a model: inside jit it scores token arrays
with the parameters passed in (so PPO optimises it like a reward model, with no host
callback), and on the host it scores token arrays (`host_scores`: monitoring, evaluation,
ranking) or texts (`fn`: the evaluation stage's judge) with the parameters it holds.

The score is read at the last token of the text: an EOS is not text, so it is masked out, and a
continuation that ended and one that was cut off are judged alike. `output` = "prob" gives
p(positive) = sigmoid(logit), the paper's reward axis in [0, 1]; "logit" gives the logit.
"""
from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.data.tokenize import pad_right
from rlhf_jax.models.forward import per_sequence_chunks, score_at_last
from rlhf_jax.rewards import GoldReward, score_by_prompt

OUTPUTS = ("prob", "logit")


class HeldModelReward(GoldReward):
    """A gold reward that is a model with the parameters it holds: `sequence_score(params, tokens,
    mask)` in jit (so PPO can optimise it), and on the host token arrays scored in fixed-shape
    chunks (`host_scores`). Subclasses set `params`, `chunk`, `_score` (the jitted
    sequence_score) and define `sequence_score` and `fn`."""

    def rewards(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        return self.sequence_score(params, tokens_BxT, mask_BxT)

    def host_scores(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> np.ndarray:
        tokens = np.concatenate([np.asarray(prompt_BxP), np.asarray(response_BxN)], 1)
        mask = np.concatenate([np.asarray(prompt_mask_BxP), np.asarray(response_mask_BxN)], 1).astype(np.int32)
        n_prompt = np.asarray(prompt_BxP).shape[1]
        if hasattr(self, "packed_values") and n_prompt > 0:  # the samples of a prompt share it
            return score_by_prompt(self._packed, self.params, tokens, mask, n_prompt)
        return self._chunks(tokens, mask)

    def _chunks(self, tokens_NxT, mask_NxT) -> np.ndarray:
        n = len(tokens_NxT)
        rows = -(-n // self.chunk) * self.chunk if n > self.chunk else n  # one shape for every chunk
        pad = lambda x: np.concatenate([x, np.zeros((rows - n, x.shape[1]), x.dtype)])
        out = per_sequence_chunks(self._score, self.params, pad(tokens_NxT), pad(mask_NxT), self.chunk)
        return np.asarray(out[:n], np.float64)


class ClassifierReward(HeldModelReward):
    """p(positive) (or its logit) of a scalar-head classifier at the last non-EOS token."""

    def __init__(self, graphdef, params, tokenizer, output: str = "prob", chunk: int = 256):
        if output not in OUTPUTS:
            raise ValueError(f"classifier output {output!r} must be one of {OUTPUTS}")
        self.graphdef, self.params, self.tokenizer, self.output, self.chunk = graphdef, params, tokenizer, output, chunk
        self.eos_id = tokenizer.eos_token_id
        self._score = jax.jit(self.sequence_score)

    def sequence_score(self, params, tokens_BxT, mask_BxT):
        """scores_B of prompt + response token rows (any padding)."""
        text_mask_BxT = mask_BxT * (tokens_BxT != self.eos_id).astype(mask_BxT.dtype)
        logits_B = score_at_last(self.graphdef, params, tokens_BxT, text_mask_BxT)
        return jax.nn.sigmoid(logits_B) if self.output == "prob" else logits_B

    def fn(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """scores of (prompt, response) texts, the text being prompt + response."""
        ids = [self.tokenizer.encode(p + r, add_special_tokens=False) or [self.eos_id]
               for p, r in zip(prompts, responses)]
        tokens, mask = pad_right(ids, self.tokenizer.pad_token_id or 0)
        return self._chunks(tokens, mask)


__all__ = ["OUTPUTS", "ClassifierReward", "HeldModelReward"]

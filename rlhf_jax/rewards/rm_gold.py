"""Another run's trained reward model as the gold reward (`data.gold = "rm:WORKDIR"`): Gao et
al.'s setting on real data, where a larger RM trained on pairs the policies' proxy never saw
stands in for human judgement.

`RMGoldReward` is a `GoldReward` that is also a model, as `ClassifierReward` is: inside jit it
scores token arrays with the parameters passed in (PPO can optimise it), on the host it scores
token arrays (`host_scores`: monitoring, best-of-n) or texts (`fn`: the evaluation's gold judge,
tokenised as the RM's training pairs were). Its k >= 1 members (stacked on axis 0) are read at
the EOS, as the RM stage reads them, and averaged.
"""
from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.rewards import EnsembleReward, score_texts
from rlhf_jax.rewards.classifier import HeldModelReward


class RMGoldReward(HeldModelReward):
    """The mean over k stacked reward models of the score at the last (EOS) token."""

    def __init__(self, graphdef, params_K, tokenizer, tcfg, chunk: int = 64):
        self.model = EnsembleReward(graphdef, lambda s_KxB: s_KxB.mean(0))
        self.params, self.tokenizer, self.tcfg, self.chunk = params_K, tokenizer, tcfg, chunk
        self._score = jax.jit(self.sequence_score)
        self._packed = jax.jit(self.model.packed_values)

    def sequence_score(self, params_K, tokens_BxT, mask_BxT):
        """scores_B of prompt + response token rows (any padding)."""
        return self.model.sequence_score(params_K, tokens_BxT, mask_BxT)

    def packed_values(self, params_K, rows):
        """The members' mean at every slot of packed rows (`host_scores` packs a prompt's samples)."""
        return self.model.packed_values(params_K, rows)

    def fn(self, prompts: list, responses: list[str]) -> np.ndarray:
        """scores of (prompt, response) texts, encoded as the RM's pairs (prompt, response, EOS), the
        responses to one prompt packed after it once (`score_texts`)."""
        return score_texts(self._packed, self.params, self.tokenizer, self.tcfg, prompts, responses)


__all__ = ["RMGoldReward"]

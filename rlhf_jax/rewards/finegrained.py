"""The fine-grained reward (Wu et al. 2023): per-segment category models plus, optionally, the
holistic preference RM at the EOS, as per-token rewards on the response.

    r_t = sum_k sum_j [t == last token of segment j of model k] * w_k * R_k(x, y, j)
          + w_holistic * (RM score - mean) / std at the EOS

(the KL penalty is added per token by PPO as usual). params = (stacked category params,
holistic RM params or None).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.models.forward import forward
from rlhf_jax.objectives import finegrained as F
from rlhf_jax.rewards import Reward


class FineGrainedReward(Reward):
    def __init__(self, graphdef, components, classes, min_words: int = 5, mode: str = "hard", holistic=None):
        """holistic: None or (graphdef, weight, mean, std): w * (score - mean) / std at the EOS."""
        self.graphdef, self.components, self.classes = graphdef, components, jnp.asarray(classes)
        self.min_words, self.mode, self.holistic = min_words, mode, holistic

    def rewards(self, params, tokens_BxT, mask_BxT, n_prompt: int):
        """rewards_BxN on the response columns."""
        cats, rm = params
        resp_mask = mask_BxT * (jnp.arange(tokens_BxT.shape[1]) >= n_prompt)[None, :]
        logits = jax.vmap(forward, in_axes=(None, 0, None, None))(self.graphdef, cats, tokens_BxT, mask_BxT)
        total = jnp.zeros(tokens_BxT.shape, jnp.float32)
        for j, c in enumerate(self.components):
            ends = F.segment_ends(tokens_BxT, resp_mask, self.classes, c.unit, self.min_words)
            total = total + F.segment_rewards(logits[j], ends, c.weight, self.mode)
        if self.holistic is not None:
            graphdef, weight, mean, std = self.holistic
            values = forward(graphdef, rm, tokens_BxT, mask_BxT)
            last = F.segment_ends(tokens_BxT, resp_mask, self.classes, "response")
            total = total + weight * (values - mean) / std * last
        return total[:, n_prompt:]

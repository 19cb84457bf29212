"""Online DPO (Guo et al. 2024): sample two responses per prompt from the current policy, let
an annotator (the trained reward, or the gold reward through a host callback) choose the
better one, and train a registered preference loss on those pairs against the fixed SFT
reference, all in one jitted step.

One iteration on B prompts: 2B responses sampled at `hp.temperature`, each scored once by the
annotator; per prompt the higher-scored response is chosen (ranks 0 / 1), a tie or a score
that is not finite (a gold reward that is undefined) makes no pair; the reference's summed
log-probs of the 2B responses are computed once; then `epochs` x `minibatches` updates of
`preference_loss` over minibatches of B / minibatches prompts, as PPO's update. The
log-probs in the loss are the policy's own (temperature 1), as offline DPO reads them, so
the step's loss on a pair is `preference_loss` on that pair as an offline ranking batch.
`hp` is the config's `online_dpo` block.

Metrics: the preference loss, implicit-reward accuracy / margin / chosen / rejected (means over
the updates, pair-weighted); the annotator's mean `score` and its score of the chosen and the
rejected responses; `frac_tied` (prompts without a pair: tied or unscored); `kl`, the k1
estimate sum(log pi - log pi_ref) per response at the pre-update policy; response length and
the fraction without EOS.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.generate import SamplingConfig, ends_with_eos, generate
from rlhf_jax.objectives.preference import PREFERENCE_LOSSES, SequenceLogprobs, preference_loss
from rlhf_jax.rewards import Reward
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train.dpo import response_logprobs
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.step import apply_gradients, minibatch_order

PAIR_METRICS = ("loss", "reward_chosen", "reward_rejected", "reward_accuracy", "reward_margin")


class OnlineModels(NamedTuple):
    """What is static: the policy's graph definition (the reference shares it), the annotator
    and the LoRA settings when the policy trains adapters (then the trainable params are
    `lora.split` parts over `constants["reference"]`, the frozen SFT policy, int8 with
    lora_int8, which with the adapters off is also the reference)."""
    policy: Any
    reward: Reward
    lora: Any = None

    def full(self, params, constants):
        """The weights the policy runs with."""
        return params if self.lora is None else lora_lib.view(constants["reference"], params, self.lora)

    def reference(self, constants):
        return lora_lib.lowrank_base(constants["reference"])


class Pairs(NamedTuple):
    """One iteration's samples, prompt-major (rows 2b and 2b + 1 answer prompt b): the fields
    `stages.ppo.gold_hook` reads, and the annotator's score of each response."""
    prompt_BxP: jax.Array
    prompt_mask_BxP: jax.Array
    response_BxN: jax.Array
    response_mask_BxN: jax.Array
    score_B: jax.Array


def label_pairs(score_Bx2):
    """(ranks_Bx2, valid_Bx2) of two scored responses per prompt, as a ranking batch: the higher
    score ranks 0, the lower 1; equal scores rank 0 both (`pair_matrix` makes no pair of a tie);
    a score that is not finite (NaN: undefined gold) is not valid, so its prompt has no pair."""
    first, second = score_Bx2[:, 0], score_Bx2[:, 1]
    ranks = jnp.stack([(first < second), (second < first)], 1).astype(jnp.int32)
    finite = jnp.isfinite(score_Bx2)
    valid = finite & finite.all(1, keepdims=True)
    return ranks, valid


def pair_batch(prompt_BxP, prompt_mask_BxP, response_2BxN, response_mask_2BxN):
    """The ranking batch (tokens, mask, loss_mask [B, 2, P + N]) of two responses per prompt:
    the prompt (left-padded) then the response, loss_mask on the response tokens, as offline
    DPO's batches mark them."""
    B, P = prompt_BxP.shape
    prompt2 = jnp.repeat(prompt_BxP, 2, axis=0)
    mask2 = jnp.repeat(prompt_mask_BxP, 2, axis=0).astype(jnp.int32)
    resp_mask = response_mask_2BxN.astype(jnp.int32)
    tokens = jnp.concatenate([prompt2, response_2BxN], 1)
    mask = jnp.concatenate([mask2, resp_mask], 1)
    loss_mask = jnp.concatenate([jnp.zeros_like(mask2), resp_mask], 1)
    return {k: v.reshape(B, 2, -1) for k, v in (("tokens", tokens), ("mask", mask), ("loss_mask", loss_mask))}


def _pair_weighted(upd: dict) -> dict:
    """Means over the updates of the preference metrics, each update weighted by its pairs."""
    pairs = upd["pairs"]
    total = jnp.maximum(pairs.sum(), 1.0)
    out = {k: jnp.dot(pairs, upd[k]) / total for k in PAIR_METRICS}
    out["grad_norm"] = upd["grad_norm"].mean()
    return out


def make_online_dpo_step(hp, sampling: SamplingConfig, models: OnlineModels, tx, schedule):
    """(state, batch, rng, constants) -> (state, metrics, Pairs): one online DPO iteration.

    batch: prompt, prompt_mask [B, P]; constants: {"reference": frozen SFT params (the LoRA
    base with lora), "reward": the annotator's params (None for host code)}.
    """
    needs_reference = PREFERENCE_LOSSES[hp.loss].needs_reference

    def step(state: TrainState, batch, rng, constants):
        rng_gen, rng_perm = jax.random.split(rng)
        prompt, prompt_mask = batch["prompt"], batch["prompt_mask"]
        B, P = prompt.shape
        full = models.full(state.params, constants)
        gen = generate(models.policy, full, jnp.repeat(prompt, 2, axis=0), jnp.repeat(prompt_mask, 2, axis=0),
                       rng_gen, sampling)
        data = pair_batch(prompt, prompt_mask, gen.tokens_BxN, gen.mask_BxN)
        flat = {k: v.reshape(2 * B, -1) for k, v in data.items()}
        score = models.reward.score(constants["reward"], flat["tokens"], flat["mask"], P).astype(jnp.float32)
        ranks, valid = label_pairs(score.reshape(B, 2))
        before = response_logprobs(models.policy, full, data)
        ref = jax.lax.stop_gradient(response_logprobs(models.policy, models.reference(constants), data))
        data = {**data, "ranks": ranks, "valid": valid, "ref_logp": ref.sum_BxK}

        def loss_fn(params, mb):
            policy = response_logprobs(models.policy, models.full(params, constants), mb)
            reference = SequenceLogprobs(mb["ref_logp"], policy.count_BxK) if needs_reference else None
            return preference_loss(hp.loss, policy, reference, mb["ranks"], mb["valid"], hp)

        def minibatch(carry, idx):
            params, opt_state = carry
            mb = jax.tree.map(lambda x: x[idx], data)
            (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
            params, opt_state, grad_norm = apply_gradients(tx, params, opt_state, grads)
            return (params, opt_state), {**m, "loss": loss, "grad_norm": grad_norm}

        order = minibatch_order(rng_perm, B, hp.epochs, hp.minibatches)
        (params, opt_state), upd = jax.lax.scan(minibatch, (state.params, state.opt_state), order)

        wins = (ranks[:, 0] != ranks[:, 1]) & valid.all(1)  # prompts with a pair
        n_pairs = jnp.maximum(wins.sum(), 1)
        chosen = jnp.where(ranks[:, 0] == 0, score.reshape(B, 2)[:, 0], score.reshape(B, 2)[:, 1])
        rejected = jnp.where(ranks[:, 0] == 0, score.reshape(B, 2)[:, 1], score.reshape(B, 2)[:, 0])
        finite = jnp.isfinite(score)
        resp_mask = gen.mask_BxN.astype(jnp.float32)
        has_eos = ends_with_eos(gen.tokens_BxN, gen.mask_BxN, sampling)
        metrics = {
            **_pair_weighted(upd),
            "score": jnp.where(finite, score, 0.0).sum() / jnp.maximum(finite.sum(), 1),
            "score_chosen": jnp.where(wins, chosen, 0.0).sum() / n_pairs,
            "score_rejected": jnp.where(wins, rejected, 0.0).sum() / n_pairs,
            "frac_tied": 1.0 - wins.mean(),
            # k1 estimate of KL(policy || SFT) on the samples, before this iteration's updates
            "kl": (before.sum_BxK - ref.sum_BxK).mean(),
            "response_length": resp_mask.sum(1).mean(), "frac_no_eos": 1.0 - has_eos.mean(),
            "lr": schedule(state.step * hp.epochs * hp.minibatches),
        }
        pairs = Pairs(jnp.repeat(prompt, 2, axis=0), jnp.repeat(prompt_mask, 2, axis=0), gen.tokens_BxN,
                      gen.mask_BxN, score)
        return TrainState(params, opt_state, state.step + 1), metrics, pairs

    return step

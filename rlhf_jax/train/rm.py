"""Reward model: the SFT backbone with a scalar head, trained with K-wise Bradley-Terry; or with
the InfoRM head, trained with Bradley-Terry on sampled latents plus the bottleneck's KL."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flax.nnx as nnx

from rlhf_jax.data.batches import eval_batches
from rlhf_jax.models.heads import last_token_index, last_token_values
from rlhf_jax.models.model import apply
from rlhf_jax.objectives.inform import inform_loss
from rlhf_jax.objectives.reward import bradley_terry_loss
from rlhf_jax.train.state import TrainState


def score_sequences(graphdef, params, tokens_NxT, mask_NxT):
    """Reward per sequence, read at its last real token (the EOS)."""
    positions = jnp.maximum(jnp.cumsum(mask_NxT, 1) - 1, 0)
    values, _ = apply(graphdef, params, tokens_NxT, positions_BxT=positions, segment_ids_BxT=mask_NxT)
    return last_token_values(values, mask_NxT)


def score_rankings(graphdef, params, batch):
    """scores_BxK for batch tokens/mask [B, K, T]: every response is one forward pass."""
    B, K, T = batch["tokens"].shape
    scores = score_sequences(graphdef, params, batch["tokens"].reshape(B * K, T), batch["mask"].reshape(B * K, T))
    return scores.reshape(B, K)


def latent_posterior(graphdef, params, tokens_NxT, mask_NxT):
    """InfoRM: (mu, log variance) [N, L] of the latent at each sequence's last real token."""
    model = nnx.merge(graphdef, params)
    positions = jnp.maximum(jnp.cumsum(mask_NxT, 1) - 1, 0)
    hidden, _ = model(tokens_NxT, positions_BxT=positions, segment_ids_BxT=mask_NxT, features=True)
    last = jnp.take_along_axis(hidden, last_token_index(mask_NxT)[:, None, None], axis=1)[:, 0]
    return model.head.encode(last)


def latents(graphdef, params, tokens_NxT, mask_NxT):
    """InfoRM: the evaluation-mode latent z = mu of each sequence, [N, L]."""
    return latent_posterior(graphdef, params, tokens_NxT, mask_NxT)[0]


def inform_rankings(graphdef, params, batch, rng):
    """(scores_BxK decoded from z = mu + sigma * eps, mu, log variance [B, K, L])."""
    B, K, T = batch["tokens"].shape
    mu, logvar = latent_posterior(graphdef, params, batch["tokens"].reshape(B * K, T),
                                  batch["mask"].reshape(B * K, T))
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)
    scores = nnx.merge(graphdef, params).head.decode(z)
    return scores.reshape(B, K), mu.reshape(B, K, -1), logvar.reshape(B, K, -1)


def make_rm_step(graphdef, tx, schedule, margin: float = 0.0, center_coef: float = 0.0,
                 ib_beta: float | None = None, kl_form: str = "per_dim_sum"):
    """A scalar RM's step, or InfoRM's when `ib_beta` is given (z sampled from the step's rng)."""
    def loss_fn(params, batch, rng):
        if ib_beta is None:
            scores = score_rankings(graphdef, params, batch)
            return bradley_terry_loss(scores, batch["ranks"], batch["valid"], margin, center_coef)
        scores, mu, logvar = inform_rankings(graphdef, params, batch, rng)
        return inform_loss(scores, mu, logvar, batch["ranks"], batch["valid"], ib_beta, kl_form, margin,
                           center_coef)

    def step(state: TrainState, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


def make_rm_eval(graphdef, margin: float = 0.0):
    @jax.jit
    def evaluate(params, batch):
        scores = score_rankings(graphdef, params, batch)
        loss, metrics = bradley_terry_loss(scores, batch["ranks"], batch["valid"], margin)
        return loss, metrics["accuracy"] * metrics["pairs"], metrics["pairs"]

    return evaluate


def held_out_accuracy(evaluate, params, arrays, batch_size: int) -> dict[str, float]:
    losses, correct, pairs = [], 0.0, 0.0
    for batch in eval_batches(arrays, batch_size):
        loss, c, p = evaluate(params, batch)
        losses.append(float(loss))
        correct, pairs = correct + float(c), pairs + float(p)
    return {"val_loss": float(np.mean(losses)), "val_accuracy": correct / max(pairs, 1.0)}


def init_from_sft(sft_params, scalar_params):
    """RM parameters: the SFT backbone plus a freshly initialised scalar head."""
    backbone = {k: v for k, v in sft_params.items() if k != "head"}
    return {**backbone, "head": scalar_params["head"]}


def center_on_demonstrations(graphdef, params, tokens, mask, batch_size: int = 64):
    """Shift the head bias so the SFT demonstrations score 0 on average; returns (params, old mean, std)."""
    score = jax.jit(lambda p, t, m: score_sequences(graphdef, p, t, m))
    scores = np.concatenate([np.asarray(score(params, tokens[i:i + batch_size], mask[i:i + batch_size]))
                             for i in range(0, len(tokens), batch_size)])
    mean = float(scores.mean())
    head = dict(params["head"], bias=params["head"]["bias"] - mean)
    return {**params, "head": head}, mean, float(scores.std())


# --- ensembles: k members stacked on a leading axis -----------------------------------------

def stack(members: list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def unstack(stacked, k: int) -> list:
    return [jax.tree.map(lambda x: x[i], stacked) for i in range(k)]


def ensemble_step(single_step):
    """The single-RM step vmapped over members (state axis 0, batch axis 1); metrics averaged,
    with the weakest member's accuracy kept."""
    vstep = jax.vmap(single_step, in_axes=(0, 1, None))

    def step(state, batch, rng):
        state, m = vstep(state, batch, rng)
        return state, {**{k: v.mean() for k, v in m.items()}, "accuracy_min": m["accuracy"].min()}

    return step


def ensemble_scores(graphdef, stacked, tokens, mask):
    """[k, B] scores of every member."""
    return jax.vmap(score_sequences, in_axes=(None, 0, None, None))(graphdef, stacked, tokens, mask)


def ensemble_held_out(graphdef, stacked, arrays, batch_size: int, aggregate) -> dict:
    """Held-out pair accuracy of each member and of the aggregated ensemble score."""
    @jax.jit
    def scores(p, b):
        B, K, T = b["tokens"].shape
        s = ensemble_scores(graphdef, p, b["tokens"].reshape(B * K, T), b["mask"].reshape(B * K, T))
        return s.reshape(-1, B, K), aggregate(s).reshape(B, K)

    member_correct, agg_correct, pairs = 0.0, 0.0, 0.0
    for batch in eval_batches(arrays, batch_size):
        per, agg = scores(stacked, batch)
        accs = [bradley_terry_loss(per[i], batch["ranks"], batch["valid"])[1] for i in range(per.shape[0])]
        n = float(accs[0]["pairs"])
        member_correct = member_correct + np.array([float(a["accuracy"]) for a in accs]) * n
        agg_correct += float(bradley_terry_loss(agg, batch["ranks"], batch["valid"])[1]["accuracy"]) * n
        pairs += n
    member = member_correct / max(pairs, 1.0)
    return {"val_accuracy": agg_correct / max(pairs, 1.0), "val_accuracy_members": [float(a) for a in member],
            "val_accuracy_member_mean": float(np.mean(member))}

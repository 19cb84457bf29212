"""Reward model: the SFT backbone with a scalar head, trained with K-wise Bradley-Terry; or with
the InfoRM head, trained with Bradley-Terry on sampled latents plus the bottleneck's KL.
Ensembles (k members stacked on a leading axis) train in one step vmapped over members."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import flax.nnx as nnx

from rlhf_jax.data.batches import evaluate_all
from rlhf_jax.data.shared_prompt import packed_batch, pad_rows
from rlhf_jax.models.forward import latent_posterior, packed_forward, per_sequence_chunks, score_at_last
from rlhf_jax.objectives.inform import inform_loss
from rlhf_jax.objectives.reward import bradley_terry_loss, pair_matrix
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.step import make_train_step


def _flat(batch):
    """tokens/mask [B, K, T] -> [B * K, T]: every response is one forward pass."""
    B, K, T = batch["tokens"].shape
    return batch["tokens"].reshape(B * K, T), batch["mask"].reshape(B * K, T)


def score_rankings(graphdef, params, batch):
    """scores_BxK for batch tokens/mask [B, K, T], or for rankings packed with every prompt once
    (`packed_batches`: rows [R, L], each response's score read at its last token's slot)."""
    if "parent_ids" in batch:
        return packed_forward(graphdef, params, batch)[batch["score_row"], batch["score_col"]]
    B, K, _ = batch["tokens"].shape
    return score_at_last(graphdef, params, *_flat(batch)).reshape(B, K)


def inform_rankings(graphdef, params, batch, rng):
    """(scores_BxK decoded from z = mu + sigma * eps, mu, log variance [B, K, L])."""
    B, K, _ = batch["tokens"].shape
    mu, logvar = latent_posterior(graphdef, params, *_flat(batch))
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)
    scores = nnx.merge(graphdef, params).head.decode(z)
    return scores.reshape(B, K), mu.reshape(B, K, -1), logvar.reshape(B, K, -1)


def rm_loss(graphdef, margin: float = 0.0, center_coef: float = 0.0, ib_beta: float | None = None,
            kl_form: str = "per_dim_sum"):
    """A scalar RM's loss, or InfoRM's when `ib_beta` is given (z sampled from the step's rng)."""
    def loss_fn(params, batch, rng, constants):
        if ib_beta is None:
            scores = score_rankings(graphdef, params, batch)
            return bradley_terry_loss(scores, batch["ranks"], batch["valid"], margin, center_coef)
        scores, mu, logvar = inform_rankings(graphdef, params, batch, rng)
        return inform_loss(scores, mu, logvar, batch["ranks"], batch["valid"], ib_beta, kl_form, margin,
                           center_coef)

    return loss_fn


def ranked_prompts(batch):
    """The number of prompts with at least one ranked pair: what the Bradley-Terry loss (and the
    preference losses) average over, so a microbatch's weight."""
    return (pair_matrix(batch["ranks"], batch["valid"]).sum((1, 2)) > 0).sum().astype(jnp.float32)


def make_rm_step(graphdef, tx, schedule, margin: float = 0.0, center_coef: float = 0.0,
                 ib_beta: float | None = None, kl_form: str = "per_dim_sum", microbatches: int = 1, lora=None):
    """(state, batch, rng) -> (state, metrics); `microbatches` > 1 accumulates the gradient over
    slices of the batch, each weighted by its ranked prompts (the whole batch's update)."""
    if microbatches > 1 and ib_beta is not None and kl_form == "mean_then_kl":
        raise ValueError("microbatches > 1 with InfoRM's kl_form='mean_then_kl' is not supported: its KL term "
                         "averages over responses, the Bradley-Terry term over prompts")
    return make_train_step(rm_loss(graphdef, margin, center_coef, ib_beta, kl_form), tx, schedule, microbatches,
                           ranked_prompts, lora=lora)


def make_rm_eval(graphdef, margin: float = 0.0):
    """(params, batch) -> loss, prompts with pairs, correctly ordered pairs, pairs."""
    @jax.jit
    def evaluate(params, batch):
        scores = score_rankings(graphdef, params, batch)
        loss, metrics = bradley_terry_loss(scores, batch["ranks"], batch["valid"], margin)
        prompts = (pair_matrix(batch["ranks"], batch["valid"]).sum((1, 2)) > 0).sum()
        return {"loss": loss, "prompts": prompts, "correct": metrics["accuracy"] * metrics["pairs"],
                "pairs": metrics["pairs"]}

    return evaluate


def held_out_accuracy(evaluate, params, arrays, batch_size: int) -> dict[str, float]:
    """Prompt-weighted loss and pair accuracy over every held-out ranking."""
    out = evaluate_all(evaluate, params, arrays, batch_size)
    return {"val_loss": float(np.sum(out["loss"] * out["prompts"]) / max(float(np.sum(out["prompts"])), 1.0)),
            "val_accuracy": float(np.sum(out["correct"])) / max(float(np.sum(out["pairs"])), 1.0)}


def init_from_sft(sft_params, scalar_params):
    """RM parameters: the SFT backbone plus a freshly initialised scalar head."""
    backbone = {k: v for k, v in sft_params.items() if k != "head"}
    return {**backbone, "head": scalar_params["head"]}


def demonstration_scores(graphdef, params, tokens, mask, batch_size: int = 64) -> np.ndarray:
    """scores_N of the demonstrations (prompt + completion + EOS, one per row)."""
    score = jax.jit(lambda p, t, m: score_at_last(graphdef, p, t, m))
    return per_sequence_chunks(score, params, tokens, mask, batch_size)


def center_on_demonstrations(graphdef, params, tokens, mask, batch_size: int = 64):
    """Shift the head bias so the SFT demonstrations score 0 on average; returns (params, old mean, std)."""
    scores = demonstration_scores(graphdef, params, tokens, mask, batch_size)
    mean = float(scores.mean())
    head = dict(params["head"], bias=params["head"]["bias"] - mean)
    return {**params, "head": head}, mean, float(scores.std())


# --- ensembles: k members stacked on a leading axis -----------------------------------------

def stack(members: list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def unstack(stacked, k: int) -> list:
    return [jax.tree.map(lambda x: x[i], stacked) for i in range(k)]


def packed_batches(multiple: int):
    """The rm stage's `combine` with rm.pack: each member's batch of rankings [B, K, T] packed with
    every prompt once (`shared_prompt.packed_batch`), padded with empty rows to the members'
    largest row count, stacked on axis 1 as `stack_batches` stacks. Each row count compiles once;
    the rows vary with the batch's lengths."""
    def combine(batches: dict[str, dict]) -> dict:
        members = [packed_batch(b, multiple) for b in batches.values()]
        n = max(len(m["tokens"]) for m in members)
        members = [pad_rows(m, n) for m in members]
        return {k: np.stack([m[k] for m in members], 1) for k in members[0]}

    return combine


def ensemble_step(single_step):
    """A member's step vmapped over members (state axis 0, batch axis 1); metrics averaged,
    with the weakest member's accuracy kept. A state with a scalar step counter is one member
    stored without the member axis (`member_state` for k = 1, as every stage keeps it): the
    member's own step runs on it with the batch's member axis squeezed. The vmapped program of
    one member was 13% slower at the SmolLM2 shape (batched matmuls of batch 1), and a stacked
    member of one, squeezed and restacked around the step, made XLA copy the donated optimizer
    state every step (5-8% of the step; docs/benchmarks.md). A stacked state of one member is
    vmapped like any k."""
    vstep = jax.vmap(single_step, in_axes=(0, 1, None, None))

    def alone(state, batch, rng, constants):
        state, m = single_step(state, jax.tree.map(lambda x: jax.lax.squeeze(x, (1,)), batch), rng, constants)
        return state, jax.tree.map(lambda x: x[None], m)

    def step(state, batch, rng, constants=None):  # constants (a shared frozen base) are not per member
        state, m = (alone if state.step.ndim == 0 else vstep)(state, batch, rng, constants)  # static
        return state, {**{k: v.mean() for k, v in m.items()}, "accuracy_min": m["accuracy"].min()}

    return step


def member_state(members: list, tx) -> TrainState:
    """The training state of k members for `ensemble_step`: stacked on axis 0 (the optimizer
    initialised per member), or for k = 1 the member alone, without the member axis."""
    if len(members) == 1:
        return TrainState(members[0], jax.jit(tx.init)(members[0]), jnp.zeros((), jnp.int32))
    stacked = stack(members)
    return TrainState(stacked, jax.jit(jax.vmap(tx.init))(stacked), jnp.zeros((len(members),), jnp.int32))


def member_params(state: TrainState) -> list:
    """The members' parameters of a `member_state` (or of a stacked state of any k)."""
    return [state.params] if state.step.ndim == 0 else unstack(state.params, state.step.shape[0])


def stacked_params(state: TrainState):
    """The members' parameters of a `member_state` stacked on axis 0, for every k."""
    return jax.tree.map(lambda x: x[None], state.params) if state.step.ndim == 0 else state.params


def ensemble_held_out(graphdef, stacked, arrays, batch_size: int, aggregate, score_members,
                      margin: float = 0.0) -> dict:
    """Held-out prompt-weighted Bradley-Terry loss and pair accuracy of the aggregated score of k >= 1
    stacked members (for k = 1 and the mean: the model's own, as `held_out_accuracy` gives them),
    and each member's pair accuracy."""
    @jax.jit
    def evaluate(p, b):
        B, K, _ = b["tokens"].shape
        s = score_members(p, *_flat(b))
        per = s.reshape(-1, B, K)
        bt = lambda scores: bradley_terry_loss(scores, b["ranks"], b["valid"], margin)
        members = jax.vmap(lambda scores: bt(scores)[1])(per)
        loss, agg = bt(aggregate(s).reshape(B, K))
        prompts = (pair_matrix(b["ranks"], b["valid"]).sum((1, 2)) > 0).sum()
        return {"loss": loss, "prompts": prompts, "members": members["accuracy"] * members["pairs"],
                "aggregate": agg["accuracy"] * agg["pairs"], "pairs": agg["pairs"]}

    out = evaluate_all(evaluate, stacked, arrays, batch_size)
    pairs = max(float(np.sum(out["pairs"])), 1.0)
    member = np.sum(out["members"], 0) / pairs
    return {"val_loss": float(np.sum(out["loss"] * out["prompts"]) / max(float(np.sum(out["prompts"])), 1.0)),
            "val_accuracy": float(np.sum(out["aggregate"])) / pairs,
            "val_accuracy_members": [float(a) for a in member], "val_accuracy_member_mean": float(np.mean(member))}

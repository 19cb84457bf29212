"""Where an SFT / RM step's time goes at the SmolLM2-135M shape: the step taken apart, each
piece jitted and timed alone, beside its FLOPs (XLA's cost analysis) and the matmul rate this
machine reaches at the step's own shapes.

    python tools/profile_step.py --batch 4 --seq 128 --out experiments/benchmarks/profile_cpu.json

Pieces: the full SFT step; forward + backward without the optimizer; the forward alone; the
AdamW update alone; the transformer body alone (hidden states, no LM head) forward + backward;
the LM head + log-softmax + loss alone forward + backward; and the same SFT step with the
layers unrolled instead of `lax.scan`ned. Matmul probes: the step's weight matmuls
(B*T x 576 x {576, 192, 1536}, B*T x 1536 x 576, B*T x 576 x 49152) in float32, timed alone
(`benchmark_pipeline.matmul_rate`).
Each time is the median of `--repeats` calls after a warm-up.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rlhf_jax.models import PRESETS, init_model  # noqa: E402
from rlhf_jax.models.forward import forward  # noqa: E402
from rlhf_jax.objectives.lm import next_token_loss  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.train.state import TrainState  # noqa: E402
from tools._common import parser, report  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_pipeline import matmul_rate, median_time  # noqa: E402


def flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def piece(name: str, fn, args, repeats: int) -> dict:
    jitted = jax.jit(fn)
    t = median_time(lambda: jitted(*args), repeats)  # one warm-up call, then the median
    f = flops(jitted, *args)
    return {"piece": name, "seconds": t, "gflop": f / 1e9, "gflop_per_s": f / t / 1e9}


def main():
    ap = parser(__doc__, out=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    B, T = args.batch, args.seq
    cfg = PRESETS["135m"]
    model = init_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (B, T)), jnp.int32)
    batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens), "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.broadcast_to(jnp.arange(T), (B, T))}
    tx, sched = make_optimizer(1e-5, 1000)
    state = TrainState(model.params, tx.init(model.params), jnp.zeros((), jnp.int32))
    gd, p = model.graphdef, model.params

    def loss(params, b):
        logits = sft_lib.lm_forward(gd, params, b)
        return next_token_loss(logits, b["tokens"], b["loss_mask"])[0]

    def body(params, b):  # hidden states only: the transformer without the LM head
        h = forward(gd, params, b["tokens"], positions_BxT=b["positions"], segment_ids_BxT=b["segment_ids"],
                    features=True)
        return jnp.sum(h * h) * 1e-6

    hidden = forward(gd, p, tokens, positions_BxT=batch["positions"], segment_ids_BxT=batch["segment_ids"],
                     features=True)
    embed = p["embed"]

    def head(h, e, b):  # LM head (tied) + log-softmax + the loss
        logits = jnp.einsum("btd,vd->btv", h, e)
        return next_token_loss(logits, b["tokens"], b["loss_mask"])[0]

    grads = jax.grad(loss)(p, batch)
    step = sft_lib.make_sft_step(gd, tx, sched)
    unrolled = init_model(cfg.replace(scan_unroll=cfg.n_layers), seed=0)
    pieces = [
        # the new state is returned, or XLA would drop the backward pass and the update as dead code
        piece("sft_step (forward + backward + AdamW)", lambda s, b: step(s, b, jax.random.key(0))[:2],
              (state, batch), args.repeats),
        piece("forward + backward (no optimizer)", jax.value_and_grad(loss), (p, batch), args.repeats),
        piece("forward only (loss)", loss, (p, batch), args.repeats),
        piece("AdamW update only", lambda g, s, params: optax.apply_updates(params, tx.update(g, s, params)[0]),
              (grads, state.opt_state, p), args.repeats),
        piece("transformer body forward + backward", jax.grad(body), (p, batch), args.repeats),
        piece("LM head + log-softmax + loss forward + backward", jax.grad(head, argnums=(0, 1)),
              (hidden, embed, batch), args.repeats),
        piece("forward + backward, layers unrolled (scan_unroll = n_layers)",
              jax.value_and_grad(lambda q, b: next_token_loss(
                  sft_lib.lm_forward(unrolled.graphdef, q, b), b["tokens"], b["loss_mask"])[0]),
              (unrolled.params, batch), args.repeats),
    ]
    result = {"device": jax.devices()[0].device_kind, "batch": B, "seq": T, "params": cfg.num_params(),
              "pieces": pieces, "matmul_probes": matmul_rate(cfg, B * T, args.repeats)["probes"]}
    report(result, args.out, indent=1)


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

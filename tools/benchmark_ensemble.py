"""Cost of a k-member reward-model ensemble: one vmapped step against k separate steps.

    python tools/benchmark_ensemble.py --members 5

Both sides train k members on k different batches (same shapes as the tiny RM stage:
32 rankings of K=4, 24 tokens, the tiny default model); the separate side calls one jitted
single-member step k times, as k independent trainings would. Prints one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.models import PRESETS, init_model  # noqa: E402
from rlhf_jax.train import rm as rm_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.train.state import TrainState  # noqa: E402
from tools._common import parser  # noqa: E402


def main():
    ap = parser(__doc__)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    k, B, K, T = args.members, args.batch, 4, 24
    cfg = PRESETS["test"].replace(vocab_size=22, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                                  max_seq_len=64)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 22, (B, k, K, T)).astype(np.int32)
    batch_k = {"tokens": tokens, "mask": np.ones_like(tokens), "ranks": np.tile(np.arange(K), (B, k, 1)),
               "valid": np.ones((B, k, K), np.int32)}
    members = [init_model(cfg, head="scalar", seed=i) for i in range(k)]
    tx, sched = make_optimizer(1e-3, 1000)
    single = rm_lib.make_rm_step(members[0].graphdef, tx, sched, center_coef=0.01)

    def run(step, state, batches):
        state, _ = jax.block_until_ready(step(state, batches[0], jax.random.key(0)))  # compile
        t = time.perf_counter()
        for i in range(args.steps):
            for b in batches:
                state, m = step(state, b, jax.random.key(i))
        jax.block_until_ready(state)
        return (time.perf_counter() - t) / args.steps

    stacked = rm_lib.stack([m.params for m in members])
    # the state donated and the new one passed on, as the `rm` stage runs its step
    vm = run(jax.jit(rm_lib.ensemble_step(single), donate_argnums=0),
             TrainState(stacked, jax.vmap(tx.init)(stacked), jnp.zeros((k,), jnp.int32)), [batch_k])
    one = jax.jit(single, donate_argnums=0)
    p0 = members[0].params
    per_member = [{key: v[:, i] for key, v in batch_k.items()} for i in range(k)]
    sep = run(one, TrainState(p0, tx.init(p0), jnp.zeros((), jnp.int32)), per_member)
    print(json.dumps({"device": jax.devices()[0].device_kind, "members": k, "batch": [B, K, T],
                      "vmapped_step_s": vm, "separate_steps_s": sep, "speedup": sep / vm}, indent=2))


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

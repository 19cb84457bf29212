"""A/B of the SmolLM2-shape train step (random tokens, fp32): JAX autodiff of silu(gate) * up against
layers.swiglu's hand-written backward, both compiled first, then timed interleaved; prints JSON.

    python tools/ab_swiglu.py [REPEATS] [sft|rm]
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlhf_jax.hostenv import reexec_with_huge_pages  # noqa: E402

reexec_with_huge_pages()  # as a CLI run: glibc's malloc with huge pages

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.models import init_model  # noqa: E402
from rlhf_jax.models import layers as L  # noqa: E402
from rlhf_jax.sharding import make_mesh  # noqa: E402
from rlhf_jax.train import rm as rm_lib  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.train.state import TrainState, compile_step  # noqa: E402
from tools import benchmark_pipeline as bp  # noqa: E402

custom = L.swiglu
plain = lambda g, u: jax.nn.silu(g) * u
shape = bp.SHAPES["smollm2"]
cfg = shape["model"].replace(eos_token_id=bp.EOS, pad_token_id=bp.PAD)
B, T = shape["batch"], shape["seq"]
rng = np.random.default_rng(0)
tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (B, T)), jnp.int32)
batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens), "segment_ids": jnp.ones_like(tokens),
         "positions": jnp.broadcast_to(jnp.arange(T), (B, T))}
lm = init_model(cfg, seed=0)
tx, sched = make_optimizer(1e-5, 1000)
mesh = make_mesh()
steps, states, losses = {}, {}, {}
KIND = sys.argv[2] if len(sys.argv) > 2 else "sft"
if KIND == "rm":
    R = shape["rm_batch"]
    rm_tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (R, 1, 2, T)), jnp.int32)
    batch = {"tokens": rm_tokens, "mask": jnp.ones_like(rm_tokens), "ranks": jnp.tile(jnp.arange(2), (R, 1, 1)),
             "valid": jnp.ones((R, 1, 2), bool)}
    lm = init_model(cfg, head="scalar", seed=1)
for name, fn in (("autodiff", plain), ("custom_vjp", custom)):
    L.swiglu = fn
    if KIND == "rm":
        members = rm_lib.stack([jax.tree.map(jnp.copy, lm.params)])
        state = TrainState(members, jax.vmap(tx.init)(members), jnp.zeros((1,), jnp.int32))
        fn_step = rm_lib.ensemble_step(rm_lib.make_rm_step(lm.graphdef, tx, sched))
    else:
        state = TrainState(jax.tree.map(jnp.copy, lm.params), tx.init(lm.params), jnp.zeros((), jnp.int32))
        fn_step = sft_lib.make_sft_step(lm.graphdef, tx, sched)
    step, state = compile_step(fn_step, state, batch, mesh)
    state, m = step(state, batch, jax.random.key(0))
    losses[name] = float(m["loss"])
    steps[name], states[name] = step, state
L.swiglu = custom
times = {n: [] for n in steps}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
    for n in steps:
        t0 = time.perf_counter()
        states[n], m = steps[n](states[n], batch, jax.random.key(0))
        jax.block_until_ready(m["loss"])
        times[n].append(time.perf_counter() - t0)
print(json.dumps({"losses": losses, **{n: {"median_s": float(np.median(v)), "all": [round(x, 3) for x in v]} for n, v in times.items()}}))

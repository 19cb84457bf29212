"""A/B of the SmolLM2-shape train step (random tokens, fp32): JAX autodiff of silu(gate) * up against
layers.swiglu's hand-written backward, both compiled first (tools/profile_ops.build_step: the step
as a run compiles it), then timed interleaved; prints JSON.

    python tools/ab_swiglu.py [REPEATS] [sft|rm]
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlhf_jax.hostenv import prepare_process  # noqa: E402

prepare_process()  # as a CLI run: its XLA flags, glibc's malloc with huge pages

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.models import PRESETS  # noqa: E402
from rlhf_jax.models import layers as L  # noqa: E402
from tools.profile_ops import advance, build_step  # noqa: E402

custom = L.swiglu
plain = lambda g, u: jax.nn.silu(g) * u
KIND = sys.argv[2] if len(sys.argv) > 2 else "sft"
steps, losses = {}, {}
for name, fn in (("autodiff", plain), ("custom_vjp", custom)):
    L.swiglu = fn  # read when the step is traced, inside build_step
    jitted, args = build_step(KIND, PRESETS["135m"], 4, 128)
    state, metrics = jitted(*args)  # compiles; the state is donated, so the new one is passed on
    losses[name] = float(metrics["loss"])
    steps[name] = [jitted, (state, *args[1:])]
L.swiglu = custom
times = {n: [] for n in steps}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
    for n, s in steps.items():
        t0 = time.perf_counter()
        s[1] = advance(s[0], s[1])
        times[n].append(time.perf_counter() - t0)
print(json.dumps({"losses": losses, **{n: {"median_s": float(np.median(v)), "all": [round(x, 3) for x in v]}
                                      for n, v in times.items()}}))

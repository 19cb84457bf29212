"""A/B of XLA:CPU's YNNPACK product fusions (rlhf_jax/hostenv.py, `xla_cpu_defaults`): the
SmolLM2-shape train step as a run compiles it (tools/profile_ops.build_step), timed in fresh
processes, alternately with XLA's default (`RLHF_JAX_YNN_FUSION=0`) and with
`--xla_cpu_experimental_ynn_fusion_type=dot,reduce` (hostenv.YNN_FUSION), so each pair of
processes starts from the same state of the machine. XLA reads its flags once per process, hence one process per measurement. Prints
one JSON object: per step kind and setting, each process's median step time and its loss.

    python tools/ab_ynn.py --pairs 3 --steps sft,rm --repeats 4
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"xla_default": {"RLHF_JAX_YNN_FUSION": "0"}, "products_fused": {"RLHF_JAX_YNN_FUSION": "1"}}


def child(step: str, repeats: int, batch: int, seq: int) -> None:
    """One measurement: compile the step, run it `repeats` times, print its times and loss."""
    from rlhf_jax.hostenv import prepare_process
    prepare_process()
    import jax
    import numpy as np

    from rlhf_jax.hostenv import cpu_info
    from rlhf_jax.models import PRESETS
    from tools.profile_ops import advance, build_step
    jitted, args = build_step(step, PRESETS["135m"], batch, seq)
    state, metrics = jax.block_until_ready(jitted(*args))  # compiles
    args, times = (state, *args[1:]), []
    for _ in range(repeats):
        t = time.perf_counter()
        args = advance(jitted, args)
        times.append(time.perf_counter() - t)
    print(json.dumps({"median_s": float(np.median(times)), "times_s": [round(t, 4) for t in times],
                      "loss": float(metrics["loss"]), "xla_ynn_fusion": cpu_info()["xla_ynn_fusion"]}))


def main() -> None:
    from tools._common import cpu_info, parser, report
    ap = parser(__doc__, out=True)
    ap.add_argument("--pairs", type=int, default=3, help="processes per setting, run alternately")
    ap.add_argument("--steps", default="sft,rm")
    ap.add_argument("--repeats", type=int, default=4, help="timed steps per process, after the compiling one")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--child", default=None, help="internal: run one measurement of this step kind")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.repeats, args.batch, args.seq)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" or "ynn_fusion_type" not in v}
    out = {"host": cpu_info(), "batch": args.batch, "seq": args.seq, "repeats": args.repeats, "steps": {}}
    for step in args.steps.split(","):
        runs = {name: [] for name in SETTINGS}
        for _ in range(args.pairs):
            for name, extra in SETTINGS.items():
                p = subprocess.run([sys.executable, __file__, "--child", step, "--repeats", str(args.repeats),
                                    "--batch", str(args.batch), "--seq", str(args.seq)],
                                   env={**env, **extra}, capture_output=True, text=True, cwd=ROOT)
                if p.returncode:
                    raise SystemExit(f"{step} / {name}: the child failed:\n{p.stderr[-3000:]}")
                runs[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
        a, b = ([r["median_s"] for r in runs[n]] for n in SETTINGS)
        out["steps"][step] = {**runs, "ratio_default_over_ynn": [round(x / y, 3) for x, y in zip(a, b)],
                              "pairs_ynn_faster": sum(y < x for x, y in zip(a, b)), "pairs": args.pairs}
    report(out, args.out)


if __name__ == "__main__":
    main()

"""XLA's and torch's matmul rates at a decoder's own weight products, in float32 and bfloat16.

    python tools/probe_matmul.py --out experiments/benchmarks/matmul_dtypes_cpu_xeon.json
    python tools/probe_matmul.py --model test --rows 64 --dtypes float32

The products of one forward pass of the model (`--model`, a preset: each layer's q, k, v, o,
gate, up and down, the LM head; tools/benchmark_pipeline.py's `matmul_mix`), `--rows` tokens
each, timed alone (median of `--steps`) with both libraries in this process (torch with a thread
for each core this process may run on), per dtype. bfloat16 products take bfloat16 operands and
return bfloat16, as a step in bfloat16 compute runs them. Prints one JSON object: per dtype and
library the rate weighted as a forward pass uses the shapes, and each probe. What it shows on a
CPU with bfloat16 matrix units (AMX) is written up in docs/benchmarks.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._common import cpu_info, parser, report, torch_on_every_core  # noqa: E402

DTYPES = ("float32", "bfloat16")


def main(argv=None) -> dict:
    ap = parser(__doc__, out=True)
    ap.add_argument("--model", default="135m", help="a preset of rlhf_jax.models.PRESETS")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    args = ap.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SystemExit(f"error: unknown dtype {', '.join(bad)}; valid: {', '.join(DTYPES)}")
    from rlhf_jax.models import PRESETS
    if args.model not in PRESETS:
        raise SystemExit(f"error: unknown model {args.model!r}; valid: {', '.join(PRESETS)}")
    import jax
    import torch

    from tools.benchmark_pipeline import matmul_rate, torch_matmul_rate
    cfg = PRESETS[args.model]
    with torch_on_every_core() as threads:
        out = {"cpu": cpu_info(), "jax": jax.__version__, "torch": torch.__version__, "torch_threads": threads,
               "model": args.model, "rows": args.rows, "steps": args.steps, "rates": {}}
        for dtype in dtypes:
            xla = matmul_rate(cfg, args.rows, args.steps, dtype)
            pt = torch_matmul_rate(cfg, args.rows, args.steps, dtype)
            out["rates"][dtype] = {"xla": xla, "torch": pt, "torch_over_xla": pt["gflop_per_s"] / xla["gflop_per_s"]}
    report(out, args.out)
    return out


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # the XLA flags a run sets
    main()

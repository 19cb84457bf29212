"""The layer scan against unrolled layers: SFT step time and compile time at several depths.

    python tools/benchmark_scan.py --depths 4,8,16,30 --out experiments/benchmarks/scan_cpu.json

At the SmolLM2-135M width (d_model 576, d_ff 1536, 9 heads / 3 KV heads, vocab 49152), the
full SFT step (forward, backward, AdamW; the new state returned, as a run executes it) with
`model.scan_unroll` = 1 (a `lax.scan` over the layers) and = the depth (the layers unrolled),
for each depth. Each time is the median of `--repeats` calls after the compiling one; the
compile time is that first call's. Prints one JSON object with the unrolled/scanned ratios.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.models import PRESETS  # noqa: E402
from tools._common import parser, report  # noqa: E402
from tools.profile_ops import build_step  # noqa: E402


def time_step(cfg, batch: int, seq: int, repeats: int) -> dict:
    jitted, args = build_step("sft", cfg, batch, seq)
    t = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t)
    return {"compile_and_first_s": first, "step_s": float(np.median(times)), "tokens_per_s": batch * seq / float(np.median(times))}


def main():
    ap = parser(__doc__, out=True)
    ap.add_argument("--depths", default="4,8,16,30")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for depth in map(int, args.depths.split(",")):
        cfg = PRESETS["135m"].replace(n_layers=depth)
        scanned = time_step(cfg, args.batch, args.seq, args.repeats)
        unrolled = time_step(cfg.replace(scan_unroll=depth), args.batch, args.seq, args.repeats)
        rows.append({"layers": depth, "scan": scanned, "unrolled": unrolled,
                     "unrolled_speedup": scanned["step_s"] / unrolled["step_s"],
                     "unrolled_compile_ratio": unrolled["compile_and_first_s"] / scanned["compile_and_first_s"]})
        print(rows[-1], file=sys.stderr, flush=True)
    report({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "batch": args.batch, "seq": args.seq,
            "rows": rows}, args.out, indent=1)


if __name__ == "__main__":
    main()

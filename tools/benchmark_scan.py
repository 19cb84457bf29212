"""The layer scan against unrolled layers: SFT step time and compile time at several depths.

    python tools/benchmark_scan.py --depths 4,8,16,30 --out experiments/benchmarks/scan_cpu.json
    python tools/benchmark_scan.py --width llama6m --depths 2,4,8 --batch 32 --seq 96

At the SmolLM2-135M width (d_model 576, d_ff 1536, 9 heads / 3 KV heads, vocab 49152), the
full SFT step (forward, backward, AdamW; the new state returned, as a run executes it) with
`model.scan_unroll` = 1 (a `lax.scan` over the layers) and = the depth (the layers unrolled),
for each depth. The two are called alternately `--repeats` times after the compiling call;
the speedup is the median of the paired ratios, the compile time the first call's. Prints one JSON object with the unrolled/scanned ratios.
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
from tools.profile_ops import advance, build_step  # noqa: E402


# smollm2: SmolLM2-135M's width; llama6m: a 6M-parameter Llama (vocab 8192, d_model 256, 4 heads / 2 KV
# heads of 64, d_ff 1024, tied embeddings), where per-layer overhead weighs more
WIDTHS = {"smollm2": PRESETS["135m"],
          "llama6m": PRESETS["135m"].replace(vocab_size=8192, d_model=256, n_heads=4, n_kv_heads=2, head_dim=64,
                                             d_ff=1024)}


def paired(cfg, batch: int, seq: int, repeats: int) -> dict:
    """Scanned and unrolled steps compiled, then called alternately: the per-pair ratio is robust to
    load that changes over the run (this CPU is shared)."""
    steps = {"scan": build_step("sft", cfg, batch, seq), "unrolled": build_step("sft", cfg.replace(
        scan_unroll=cfg.n_layers), batch, seq)}
    out, times = {}, {name: [] for name in steps}
    args = {name: a for name, (_, a) in steps.items()}
    for name, (jitted, _) in steps.items():
        t = time.perf_counter()
        args[name] = advance(jitted, args[name])
        out[name] = {"compile_and_first_s": time.perf_counter() - t}
    for _ in range(repeats):
        for name, (jitted, _) in steps.items():
            t = time.perf_counter()
            args[name] = advance(jitted, args[name])
            times[name].append(time.perf_counter() - t)
    for name in steps:
        out[name].update(step_s=float(np.median(times[name])), tokens_per_s=batch * seq / float(np.median(times[name])))
    out["unrolled_speedup"] = float(np.median(np.array(times["scan"]) / np.array(times["unrolled"])))
    out["unrolled_compile_ratio"] = out["unrolled"]["compile_and_first_s"] / out["scan"]["compile_and_first_s"]
    return out


def main():
    ap = parser(__doc__, out=True)
    ap.add_argument("--depths", default="4,8,16,30")
    ap.add_argument("--width", choices=sorted(WIDTHS), default="smollm2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for depth in map(int, args.depths.split(",")):
        cfg = WIDTHS[args.width].replace(n_layers=depth)
        rows.append({"layers": depth, **paired(cfg, args.batch, args.seq, args.repeats)})
        print(rows[-1], file=sys.stderr, flush=True)
    report({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "width": args.width,
            "batch": args.batch, "seq": args.seq,
            "rows": rows}, args.out, indent=1)


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

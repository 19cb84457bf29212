"""SFT's held-out pass on a config's base model, timed in both layouts: every batch padded to
data.max_len (`batches.evaluate_all` without row ends), and the rows in order of length with
each batch cut after its longest row, in 32-column steps (`sft.validation_loss`, what stage sft
and sft_select run).

    python tools/time_heldout.py --config experiments/configs/real_model.py:proxy,cpu

The config's held-out demonstrations (data.val_fraction of its SFT source, tokenised as stage sft
reads them), `--rows` of them (default all), in batches of sft.batch_size. Each layout runs twice:
the first call (its compilations included) and the second are both recorded; the losses of the two
layouts and their relative difference are kept. Prints one JSON object.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_jax.context import build_context  # noqa: E402
from rlhf_jax.data.batches import evaluate_all  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from tools._common import cpu_info, parser, report  # noqa: E402
from tools.trl_reward_baseline import load_config  # noqa: E402


def main() -> None:
    p = parser(__doc__, out=True)
    p.add_argument("--config", default="experiments/configs/real_model.py:proxy,cpu")
    p.add_argument("--rows", type=int, default=0, help="the first this many held-out rows (default: all)")
    args = p.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    c = load_config(args.config)
    ctx = build_context(c, tempfile.mkdtemp(), use_wandb=False)
    val = ctx.data.arrays("sft_val")
    if args.rows:
        val = {k: v[:args.rows] for k, v in val.items()}
    evaluate, params, bs = sft_lib.make_sft_eval(ctx.base.graphdef), ctx.base.params, c.sft.batch_size

    def padded():
        out = evaluate_all(evaluate, params, val, bs)
        return float(np.sum(out["nll"])) / max(float(np.sum(out["tokens"])), 1.0)

    layouts = {"padded": padded, "cut": lambda: sft_lib.validation_loss(evaluate, params, val, bs)["val_loss"]}
    out = {"config": args.config, "cpu": cpu_info(), "rows": int(len(val["tokens"])), "batch_size": int(bs),
           "max_len": int(val["tokens"].shape[1]), "mean_real_tokens": float(val["segment_ids"].astype(bool).sum(1).mean()),
           "layouts": {}}
    for name, fn in layouts.items():
        times, loss = [], None
        for _ in range(2):
            t0 = time.perf_counter()
            loss = fn()
            times.append(time.perf_counter() - t0)
        out["layouts"][name] = {"seconds": times[1], "first_call_seconds": times[0], "val_loss": loss}
        print(f"[time_heldout] {name}: {times[1]:.1f}s (first call {times[0]:.1f}s)", file=sys.stderr, flush=True)
    out["cut_over_padded_seconds"] = out["layouts"]["cut"]["seconds"] / out["layouts"]["padded"]["seconds"]
    a, b = out["layouts"]["padded"]["val_loss"], out["layouts"]["cut"]["val_loss"]
    out["val_loss_relative_difference"] = abs(a - b) / abs(a)
    report(out, args.out)


if __name__ == "__main__":
    main()

"""TruthfulQA MC on a config's base model, timed: what the evaluation's truthfulqa suite costs a
policy, and the positions its scoring computes.

    python tools/time_truthfulqa.py --items 40 --out /tmp/tqa.json

For each prompt format (`--formats`, default the evaluation's), `benchmarks.truthfulqa_mc` on the
first `--items` questions runs twice: the first call compiles, the second is timed (`seconds`).
Beside it, the positions per question of the two layouts: `padded`, every (question, answer)
row on its own, right-padded to its batch's longest (the layout before each prompt was packed
once; batches of `--batch_size` rows sorted by length, rounded up to 32 as the old scoring did)
and `packed`, what `scoring.score_continuations` computes now (`shared_prompt.continuation_batches`:
the prompt once, then its answers; the rows times their length; null in a checkout from before
it). MC1 / MC2 and every answer's
log-prob are kept (`--out`), so two checkouts' runs can be compared number by number.
Prints one JSON object.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_jax.context import base_model  # noqa: E402
from rlhf_jax.data import corpora  # noqa: E402
from rlhf_jax.eval import benchmarks  # noqa: E402
from tools._common import cpu_info, parser, report  # noqa: E402
from tools.trl_reward_baseline import load_config  # noqa: E402


def layout_positions(contexts, continuations, batch_size: int) -> dict:
    """Positions per layout (module docstring) for one format's rows."""
    try:
        from rlhf_jax.data.shared_prompt import continuation_batches
    except ImportError:  # a checkout from before the packed scoring
        continuation_batches = None
    lengths = np.sort([len(c) + len(x) for c, x in zip(contexts, continuations)])
    padded = sum(-(-int(lengths[i:i + batch_size].max()) // 32) * 32 * batch_size
                 for i in range(0, len(lengths), batch_size))
    packed = None if continuation_batches is None else sum(b["tokens"].size for b, *_ in
                                          continuation_batches(contexts, continuations, batch_size))
    return {"rows": len(lengths), "real": int(lengths.sum()), "padded": int(padded),
            "packed": None if packed is None else int(packed)}


def main() -> None:
    p = parser(__doc__, out=True)
    p.add_argument("--config", default="experiments/configs/real_model.py:proxy,cpu")
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--formats", default="", help="comma-separated (default: the config's evaluate.truthfulqa_formats)")
    p.add_argument("--batch_size", type=int, default=0, help="default: the config's evaluate.batch_size")
    args = p.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    c = load_config(args.config)
    model, tok = base_model(c, None)
    items, _ = corpora.truthfulqa()
    items = items[:args.items]
    batch = args.batch_size or c.evaluate.batch_size
    out = {"config": args.config, "cpu": cpu_info(), "items": len(items), "batch_size": batch, "formats": {}}
    for fmt in [f for f in (args.formats or c.evaluate.truthfulqa_formats).split(",") if f]:
        contexts, conts, _ = benchmarks.truthfulqa_rows(items, tok, fmt)
        run = lambda: benchmarks.truthfulqa_mc(model, tok, items, prompt_format=fmt, batch_size=batch, n_resamples=10)
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = run()
        out["formats"][fmt] = {"seconds": time.perf_counter() - t0, "first_call_seconds": first,
                               "positions": layout_positions(contexts, conts, batch),
                               "mc1": res["mc1"]["value"], "mc2": res["mc2"]["value"],
                               "logprobs": [r["logprobs"] for r in res["per_item"]]}
        print(f"[time_truthfulqa] {fmt}: {out['formats'][fmt]['seconds']:.1f}s", file=sys.stderr, flush=True)
    report(out, args.out, indent=None)


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

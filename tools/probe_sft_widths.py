"""How wide an SFT stage's batches are, and what cutting them after their longest row saves
(`sft.cut_bucket`). Prints JSON.

    python tools/probe_sft_widths.py --config configs/instructgpt.py:smollm2_hh
    python tools/probe_sft_widths.py --config configs/instructgpt.py:smollm2_hh --time 2 --bucket 64 \
        --set sft.batch_size=8

Every batch of one epoch, in the order the stage draws them (the run's seed, the stage's salt):
the columns its rows need, and per bucket the mean width the cut leaves, as a share of
data.max_len, and how many widths (compiles) occur. With --time K: the stage's own step (its
model, LoRA or not, its optimizer, donated state) on the first K batches, each at data.max_len
and cut, alternately, every width compiled first (the compile times reported apart): the median
of --repeats steps each. Needs what the config needs (RLHF_JAX_DATA_DIR, the model file).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools._common import host, load_config, parser, report  # noqa: E402


def widths(ctx, c, buckets: list[int]) -> tuple[list[dict], dict]:
    """(the epoch's batches, per bucket: mean width, its share of T, distinct widths)."""
    import numpy as np

    from rlhf_jax.data.batches import cut_width
    from rlhf_jax.models.forward import row_ends
    from rlhf_jax.stages.sft import SALT
    arrays = ctx.data.arrays("sft_train")
    T = arrays["tokens"].shape[1]
    it = ctx.iterator(arrays, c.sft.batch_size, SALT)
    batches = [next(it) for _ in range(it.steps_per_epoch)]
    ends = [row_ends(b["segment_ids"], b["loss_mask"]) for b in batches]
    out = {"max_len": T, "batch_size": c.sft.batch_size, "batches": len(batches),
           "real_tokens_share": float(np.mean([e.mean() for e in ends]) / T),
           "longest_row_share": float(np.mean([e.max() for e in ends]) / T)}
    for bucket in buckets:
        w = [cut_width(e, T, bucket) for e in ends]
        out[f"bucket_{bucket}"] = {"mean_width": float(np.mean(w)), "share_of_max_len": float(np.mean(w) / T),
                                   "widths": sorted(set(w))}
    return batches, out


def time_steps(ctx, c, batches: list[dict], bucket: int, repeats: int) -> tuple[list[dict], dict]:
    """Per batch: its cut width, the step's median seconds at max_len and cut, and the first
    (compiling) call's seconds at each width."""
    import jax

    from rlhf_jax.models import abstract_model
    from rlhf_jax.stages.base import adapters, train_state
    from rlhf_jax.train import lora as lora_lib
    from rlhf_jax.train import optim
    from rlhf_jax.train import sft as sft_lib
    from rlhf_jax.train.state import compile_step
    s = c.sft
    graphdef, _ = abstract_model(ctx.model_cfg(dropout_rate=s.dropout), "lm")
    tx, sched = optim.from_config(s, len(batches))
    params, base, _ = adapters(ctx, s, ctx.base.params, 11)
    constants = None if base is None else (base, None)
    fn = sft_lib.make_sft_step(graphdef, tx, sched, s.dropout > 0, lora_lib.from_block(s), microbatches=s.grad_accum)
    step, state = compile_step(fn, train_state(params, tx), ctx.shard(batches[0]), ctx.mesh, constants=constants)
    rng = jax.random.key(0)
    compiled: dict[int, float] = {}

    def run(state, batch):
        t0 = time.perf_counter()
        state, m = step(state, batch, rng) if constants is None else step(state, batch, rng, constants)
        jax.block_until_ready(m)
        return state, time.perf_counter() - t0

    rows = []
    for batch in batches:
        forms = {"max_len": ctx.shard(batch), "cut": ctx.shard(sft_lib.cut_batch(batch, bucket))}
        times: dict[str, list[float]] = {name: [] for name in forms}
        for name, b in forms.items():
            width = b["tokens"].shape[1]
            state, seconds = run(state, b)
            compiled.setdefault(width, seconds)
        for _ in range(repeats):
            for name, b in forms.items():
                state, seconds = run(state, b)
                times[name].append(seconds)
        rows.append({"width": int(forms["cut"]["tokens"].shape[1]),
                     **{f"{name}_s": statistics.median(t) for name, t in times.items()},
                     "cut_over_max_len": statistics.median(times["cut"]) / statistics.median(times["max_len"])})
    return rows, {str(w): s for w, s in compiled.items()}


def main(argv=None):
    ap = parser(__doc__, out=True)
    ap.add_argument("--config", default="configs/instructgpt.py:smollm2_hh")
    ap.add_argument("--buckets", default="32,64,128", help="the cut_bucket values to count widths for")
    ap.add_argument("--time", type=int, default=0, help="time the step on the first K batches (0: widths only)")
    ap.add_argument("--bucket", type=int, default=64, help="with --time: the cut_bucket timed")
    ap.add_argument("--repeats", type=int, default=2, help="with --time: steps per batch and form after the compile")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override, e.g. sft.batch_size=8 (repeatable)")
    args = ap.parse_args(argv)
    from rlhf_jax.context import build_context
    c = load_config(args.config, args.set)
    with tempfile.TemporaryDirectory() as work:
        ctx = build_context(c, Path(work), use_wandb=False)
        batches, result = widths(ctx, c, [int(b) for b in args.buckets.split(",")])
        result = {"config": args.config, "sets": args.set, "host": host(), **result}
        if args.time:
            rows, compiles = time_steps(ctx, c, batches[:args.time], args.bucket, args.repeats)
            result["timed"] = {"bucket": args.bucket, "repeats": args.repeats, "batches": rows,
                               "first_call_s_by_width": compiles}
    report(result, args.out)
    return result


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

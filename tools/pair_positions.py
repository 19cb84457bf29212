"""Token positions one preference pair costs a reward-model step, under each layout, at a config's
own truncation and batch size: what padding costs, and what a layout could save.

    python tools/pair_positions.py --config experiments/configs/real_model.py:proxy,cpu

Over the config's rm_train pairs, tokenised as the rm stage tokenises them (prompt + response +
EOS, cut by data.max_len / data.max_prompt_len), the mean positions per pair of:
- `padded`: 2 x data.max_len, what our rm step computes (every sequence padded to the limit);
- `batch_longest`: 2 x the longest sequence of its batch, as TRL's RewardTrainer pads (chosen and
  rejected of rm.batch_size pairs padded together to the longest), averaged over `--epochs`
  shuffled epochs;
- `real`: the two sequences' own lengths (no padding);
- `shared_prompt`: the prompt once plus both responses (under causal attention the prompt's
  hidden states are the same in both sequences, so a layout that packs a pair as prompt, then
  each response attending to the prompt and itself, computes the same scores from these);
- `packed`: what rm.pack computes: each shuffled batch's pairs laid out that way
  (`shared_prompt.pack_rankings`) in rows of 2 x data.max_len, the rows times their length over the
  pairs (the empty ends of rows included), with the count of batches per row count.
Each layout's share of `padded` is beside it. Prints one JSON object.
"""
from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_jax.context import base_model  # noqa: E402
from rlhf_jax.data.run_data import RunData  # noqa: E402
from rlhf_jax.data.shared_prompt import pack_rankings  # noqa: E402
from tools._common import parser, report  # noqa: E402
from tools.trl_reward_baseline import load_config  # noqa: E402


def positions(arrays: dict, max_len: int, batch_size: int, epochs: int, seed: int = 0) -> dict:
    """Mean positions per pair under each layout (module docstring) for ranking arrays of K = 2:
    mask and loss_mask [N, 2, T] (loss_mask marks the response)."""
    lengths = arrays["mask"].sum(-1)  # N x 2
    if lengths.shape[1] != 2:
        raise SystemExit(f"pairs only: these rankings have K = {lengths.shape[1]}")
    prompt = lengths[:, 0] - arrays["loss_mask"][:, 0].sum(-1)
    n = len(lengths) // batch_size * batch_size  # whole batches, as the rm stage draws them
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(lengths))[:n] for _ in range(epochs)]
    longest = [2 * lengths[order].reshape(-1, batch_size * 2).max(1).mean() for order in orders]
    rows = collections.Counter(len(pack_rankings({k: arrays[k][b] for k in ("tokens", "mask", "loss_mask")},
                                                 2 * max_len)["tokens"])
                               for order in orders for b in order.reshape(-1, batch_size))
    out = {"padded": 2.0 * max_len, "batch_longest": float(np.mean(longest)),
           "real": float(lengths.sum(1).mean()), "shared_prompt": float((lengths.sum(1) - prompt).mean()),
           "packed": sum(r * c for r, c in rows.items()) / sum(rows.values()) * 2 * max_len / batch_size}
    return {"pairs": int(len(lengths)), "batch_size": batch_size, "max_len": max_len,
            "mean_prompt": float(prompt.mean()), "mean_response": float((lengths - prompt[:, None]).mean()),
            "positions_per_pair": out, "share_of_padded": {k: v / out["padded"] for k, v in out.items()},
            "packed_rows_per_batch": {str(r): rows[r] for r in sorted(rows)}}


def main() -> None:
    p = parser(__doc__, out=True)
    p.add_argument("--config", default="experiments/configs/real_model.py:proxy,cpu")
    p.add_argument("--epochs", type=int, default=3, help="shuffled epochs the batch-longest mean is taken over")
    args = p.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    c = load_config(args.config)
    if c.data.source == "synthetic":
        raise SystemExit(f"{args.config}: data.source is the task world, whose rankings are sampled during a run; "
                         f"this tool reads file rankings (data.source = 'files')")
    _, tok = base_model(c, None)
    result = positions(RunData(c, tok, None).arrays("rm_train"), c.data.max_len, c.rm.batch_size, args.epochs,
                       c.seed)
    report({"config": args.config, **result}, args.out)


if __name__ == "__main__":
    main()

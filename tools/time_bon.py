"""Best-of-n's two costs on a config's base model, timed: sampling (`--decode_rows`) and scoring n
samples per prompt in both layouts with a scalar head (what stage bon pays per reward model: the
proxy, and a gold `rm:` RM).

    python tools/time_bon.py --prompts 4 --samples 64 --decode_rows 8,64

The config's held-out prompts (tokenised and left-padded as stage bon samples them), each with
`--samples` responses of random tokens, lengths uniform in [min(8, N), N = sampling.max_new_tokens] (the
scores' values do not change the cost). `padded`: every prompt + response row on its own
(`rewards.score_in_chunks` with n_prompt = 0, the path of rewards without packed values);
`packed`: each prompt once, then its samples (`score_in_chunks` with the prompt width:
`score_by_prompt`). Each runs twice, the second timed; the largest score difference between the
two is kept. `decode`: `generate.sample_rows` of sampling.max_new_tokens new tokens at the
config's sampling settings, temperature 1, for each row count (the first held-out prompts, as many
copies as needed), the second of two calls timed; its per-token time is what the experiment's
estimate prices decoding at. Prints one JSON object.
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
from rlhf_jax.data.tokenize import prompt_arrays  # noqa: E402
from rlhf_jax.generate import sample_rows  # noqa: E402
from rlhf_jax.rewards import ModelReward, score_in_chunks  # noqa: E402
from rlhf_jax.stages.reward import reward_model  # noqa: E402
from rlhf_jax.train.ppo import sampling_config  # noqa: E402
from rlhf_jax.train.rm import init_from_sft  # noqa: E402
from tools._common import cpu_info, parser, report  # noqa: E402
from tools.trl_reward_baseline import load_config  # noqa: E402


def main() -> None:
    p = parser(__doc__, out=True)
    p.add_argument("--config", default="experiments/configs/real_model.py:proxy,cpu")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--decode_rows", default="", help="comma-separated batch sizes to time sampling at (default: none)")
    args = p.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    c = load_config(args.config)
    ctx = build_context(c, tempfile.mkdtemp(), use_wandb=False)
    tok, head = ctx.tokenizer, reward_model(ctx, seed=0)  # the base model with a fresh scalar head, as stage rm
    params = init_from_sft(ctx.base.params, head.params)
    arrays, _ = prompt_arrays(ctx.data.records("eval_prompts")[:args.prompts], tok, ctx.data.tcfg)
    rng = np.random.default_rng(0)
    n, N = args.prompts * args.samples, c.sampling.max_new_tokens
    lengths = rng.integers(min(8, N), N + 1, n)
    response = rng.integers(3, tok.vocab_size, (n, N)).astype(np.int32)
    response_mask = (np.arange(N)[None] < lengths[:, None]).astype(np.int32)
    tokens = np.concatenate([np.repeat(arrays["tokens"], args.samples, 0), response], 1)
    mask = np.concatenate([np.repeat(arrays["mask"], args.samples, 0), response_mask], 1)
    reward, P = ModelReward(head.graphdef), arrays["tokens"].shape[1]
    out = {"config": args.config, "cpu": cpu_info(), "prompts": args.prompts, "samples": args.samples,
           "prompt_width": int(P), "mean_prompt": float(arrays["mask"].sum(1).mean()),
           "mean_response": float(lengths.mean()), "layouts": {}}
    scores = {}
    for name, n_prompt in (("padded", 0), ("packed", P)):
        score_in_chunks(reward, params, tokens, mask, n_prompt)
        t0 = time.perf_counter()
        scores[name] = score_in_chunks(reward, params, tokens, mask, n_prompt)
        out["layouts"][name] = {"seconds": time.perf_counter() - t0}
        print(f"[time_bon] {name}: {out['layouts'][name]['seconds']:.1f}s", file=sys.stderr, flush=True)
    out["speedup"] = out["layouts"]["padded"]["seconds"] / out["layouts"]["packed"]["seconds"]
    out["max_abs_score_difference"] = float(np.abs(scores["padded"] - scores["packed"]).max())
    out["score_spread"] = float(np.ptp(scores["padded"]))
    cfg, out["decode"] = sampling_config(c.sampling, tok, 1.0, None), {}
    for rows in [int(r) for r in args.decode_rows.split(",") if r]:
        take = min(rows, args.prompts)
        times = []
        for rep in range(2):
            t0 = time.perf_counter()
            s = sample_rows(ctx.base.graphdef, ctx.base.params, arrays["tokens"][:take], arrays["mask"][:take],
                            -(-rows // take), cfg, seed=rep)
            times.append(time.perf_counter() - t0)
        new = int(s["response"].shape[1])
        out["decode"][str(rows)] = {"rows": int(len(s["response"])), "new_tokens": new, "seconds": times[1],
                                    "first_call_seconds": times[0], "seconds_per_token": times[1] / new}
        print(f"[time_bon] decode {rows} rows: {times[1]:.1f}s", file=sys.stderr, flush=True)
    report(out, args.out)


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

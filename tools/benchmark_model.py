"""Model-core benchmark: forward+backward tokens/s and MFU, decode tokens/s against a roofline.

    python tools/benchmark_model.py                       # 10m and 135m on the default device
    python tools/benchmark_model.py --sizes 1b --dtype bfloat16 --batch 8 --seq 2048   # a GPU

MFU = achieved model FLOP/s / measured peak of a large matmul on the same device and dtype
(not the vendor's datasheet number). Model FLOPs per token = 6 * (non-embedding params + the
LM-head matmul) + 12 * layers * heads * head_dim * seq (causal attention counted in full, as
in PaLM's MFU). Decode is compared with a memory roofline: every step must read all the
weights and the KV cache once, at the measured copy bandwidth. Prints one JSON object.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.generate import SamplingConfig, generate  # noqa: E402
from rlhf_jax.models import PRESETS, apply, init_model  # noqa: E402
from rlhf_jax.objectives.lm import next_token_loss  # noqa: E402
from tools._common import parser  # noqa: E402


def timeit(fn, *args, warmup=1, iters=3):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_peak(dtype, n):
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n ** 3 / timeit(f, a, b, iters=5)


def copy_bandwidth(n_bytes):
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda x: x * 1.0001)
    return 2 * n_bytes / timeit(f, x, iters=5)  # read + write


def flops_per_token(cfg, seq):
    non_embed = cfg.num_params(include_embeddings=False)
    head = cfg.d_model * cfg.vocab_size  # the LM head matmul (tied or not)
    return 6 * (non_embed + head) + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq


def bench_train(cfg, batch, seq):
    model = init_model(cfg)
    tokens = jax.random.randint(jax.random.key(0), (batch, seq), 0, cfg.vocab_size)
    mask = jnp.ones((batch, seq), jnp.int32)

    def loss(p):
        logits, _ = apply(model.graphdef, p, tokens)
        return next_token_loss(logits, tokens, mask)[0]

    step = jax.jit(jax.value_and_grad(loss))
    seconds = timeit(step, model.params)
    return batch * seq / seconds, seconds


def bench_decode(cfg, batch, prompt_len, new_tokens):
    model = init_model(cfg)
    prompt = jax.random.randint(jax.random.key(0), (batch, prompt_len), 0, cfg.vocab_size)
    mask = jnp.ones((batch, prompt_len), jnp.int32)
    scfg = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0)
    run = lambda: generate(model.graphdef, model.params, prompt, mask, jax.random.key(1), scfg).tokens_BxN
    seconds = timeit(run, warmup=1, iters=2)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    kv_bytes = 2 * cfg.n_layers * batch * (prompt_len + new_tokens) * cfg.n_kv_heads * cfg.head_dim * \
        jnp.dtype(cfg.dtype).itemsize
    return batch * new_tokens / seconds, seconds, param_bytes + kv_bytes / 2  # cache half full on average


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="10m,135m")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--decode-batch", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    batch = args.batch or (4 if backend == "cpu" else 16)
    seq = args.seq or (256 if backend == "cpu" else 2048)
    decode_batch = args.decode_batch or (4 if backend == "cpu" else 64)
    peak = matmul_peak(jnp.dtype(dtype), 2048 if backend == "cpu" else 8192)
    bandwidth = copy_bandwidth(256 << 20 if backend == "cpu" else 4 << 30)
    device = jax.devices()[0]
    result = {"device": getattr(device, "device_kind", str(device)), "backend": backend,
              "host": platform.processor() or platform.machine(), "jax": jax.__version__, "dtype": dtype,
              "matmul_peak_tflops": peak / 1e12, "copy_bandwidth_gbs": bandwidth / 1e9, "configs": {}}
    for size in args.sizes.split(","):
        cfg = PRESETS[size].replace(param_dtype=dtype, dtype=dtype)
        tps, step_s = bench_train(cfg, batch, seq)
        achieved = tps * flops_per_token(cfg, seq)
        dtps, decode_s, bytes_per_step = bench_decode(cfg, decode_batch, 32, args.new_tokens)
        roofline_tps = decode_batch * bandwidth / bytes_per_step
        result["configs"][size] = {
            "params_m": cfg.num_params() / 1e6, "batch": batch, "seq": seq,
            "train_tokens_per_s": tps, "train_step_s": step_s, "train_tflops": achieved / 1e12,
            "mfu": achieved / peak,
            "decode_batch": decode_batch, "decode_new_tokens": args.new_tokens, "decode_tokens_per_s": dtps,
            "decode_roofline_tokens_per_s": roofline_tps, "decode_fraction_of_roofline": dtps / roofline_tps,
        }
        print(json.dumps({size: result["configs"][size]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

"""How fast a decode step's weight products stream the weights, against this machine's read rate.

    python tools/probe_decode.py --out experiments/benchmarks/decode_products_cpu_xeon.json
    RLHF_JAX_YNN_FUSION=0 python tools/probe_decode.py     # XLA's products without YNNPACK
    python tools/probe_decode.py --model test --rows 2 --steps 1

Sampling one token for `--rows` sequences multiplies a few rows by every weight matrix of the model
(`--model`, a preset: each layer's q, k, v, o, gate, up and down, then the LM head;
tools/benchmark_pipeline.py's `layer_products`): each weight is read once per token, so the step is
bound by how fast the products read their weights. This times one such pass, every layer with its
own weights (as a model's decode step reads them: from memory, not from a cache that a repeated
single product would hit), in XLA (this process's XLA flags) and in torch (a thread for each core
this process may run on), and the machine's read rate: XLA summing a float32 buffer of the same size.
Prints one JSON object: per library (`passes`) the pass's median seconds over `--steps` (after a
warm-up call), the weights' bytes read per second and that as a share of the read rate. What it showed is in docs/benchmarks.md (the
PPO iteration against TRL, generation).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tools._common import cpu_info, parser, report, torch_on_every_core  # noqa: E402
from tools.benchmark_pipeline import layer_products, median_time  # noqa: E402


def shapes(cfg) -> list[tuple[int, int]]:
    """(k, n) of every weight one decode step reads, layer by layer, the LM head last."""
    return layer_products(cfg) * cfg.n_layers + [(cfg.d_model, cfg.vocab_size)]


def xla_program(kns, rows: int):
    """(jitted pass, its arguments): every weight of `kns` times `rows` rows, each product's result
    summed, so that each product runs and none waits for another."""
    key = jax.random.key(0)
    weights = [jax.random.normal(jax.random.fold_in(key, i), kn, jnp.float32) for i, kn in enumerate(kns)]
    xs = {k: jax.random.normal(jax.random.fold_in(jax.random.key(1), k), (rows, k), jnp.float32) for k, _ in kns}
    return jax.jit(lambda xs, ws: sum(jnp.sum(xs[w.shape[0]] @ w) for w in ws)), (xs, weights)


def xla_pass(kns, rows: int, steps: int) -> float:
    one, args = xla_program(kns, rows)
    return median_time(lambda: one(*args), steps)


def torch_pass(kns, rows: int, steps: int) -> float:
    import torch
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(*kn, generator=gen) for kn in kns]
    xs = {k: torch.randn(rows, k, generator=gen) for k, _ in kns}

    def one():
        with torch.no_grad():
            return sum(float((xs[w.shape[0]] @ w).sum()) for w in weights)
    return median_time(one, steps)


def read_rate(nbytes: int, steps: int) -> float:
    """Bytes per second XLA reads summing a float32 buffer of `nbytes`."""
    buf = jnp.ones((nbytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return nbytes / median_time(lambda: total(buf), steps)


def main(argv=None) -> dict:
    ap = parser(__doc__, out=True)
    ap.add_argument("--model", default="135m", help="a preset of rlhf_jax.models.PRESETS")
    ap.add_argument("--rows", type=int, default=4, help="sequences sampled at once (a PPO rollout's batch)")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    from rlhf_jax.models import PRESETS
    if args.model not in PRESETS:
        raise SystemExit(f"error: unknown model {args.model!r}; valid: {', '.join(PRESETS)}")
    if args.rows < 1 or args.steps < 1:
        raise SystemExit("error: --rows and --steps must be at least 1")
    import torch
    kns = shapes(PRESETS[args.model])
    nbytes = 4 * sum(k * n for k, n in kns)
    rate = read_rate(nbytes, args.steps)
    with torch_on_every_core() as torch_threads:
        seconds = {"xla": xla_pass(kns, args.rows, args.steps), "torch": torch_pass(kns, args.rows, args.steps)}
    out = {"cpu": cpu_info(), "jax": jax.__version__, "torch": torch.__version__,
           "torch_threads": torch_threads, "model": args.model,
           "rows": args.rows, "steps": args.steps, "products": len(kns), "weight_bytes": nbytes,
           "read_bytes_per_s": rate,
           "passes": {lib: {"pass_s": s, "weight_bytes_per_s": nbytes / s, "share_of_read_rate": nbytes / s / rate}
                      for lib, s in seconds.items()}}
    report(out, args.out)
    return out


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # the XLA flags a run sets
    main()

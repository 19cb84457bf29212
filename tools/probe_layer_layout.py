"""What the stacked layer weights cost a training step: the same SFT step over four layouts.

    python tools/probe_layer_layout.py --repeats 6 --out experiments/benchmarks/layer_layout_cpu_xeon.json

The model keeps each block weight stacked on a leading layer axis and runs the blocks under
`lax.scan` (`rlhf_jax/models/transformer.py`). A scan slices every layer's weights and saved
activations out of the stacked buffers and writes every layer's gradient back into one; unrolled
layers over the same stacked weights slice them too. This probe times one SFT step (forward,
backward, the project's clipped AdamW; the state donated and the new one returned) at the
SmolLM2-135M shape with the model's own block (`transformer._block`), four ways:

  scan             stacked weights, `lax.scan` over the layers (what a run executes)
  unrolled         stacked weights, the scan unrolled (`model.scan_unroll` = the depth)
  per_layer        one weight leaf per layer, the layers a Python loop: nothing sliced or stacked
  per_layer_fused  per_layer, with the q/k/v products as one product and gate/up as one (the
                   weights concatenated inside the step, as a fused checkpoint layout would avoid)

The variants are called in turn `--repeats` times after their compiling calls (one process, so
drift in the machine's speed hits all alike); each ratio is the median of the per-round ratios
against `scan`. The loss is the same in every variant (checked: it is printed). Prints one JSON
object.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.nnx as nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rlhf_jax.models import PRESETS, init_model  # noqa: E402
from rlhf_jax.models import layers as L  # noqa: E402
from rlhf_jax.models import transformer  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from tools._common import cpu_info, parser, report  # noqa: E402

VARIANTS = ("scan", "unrolled", "per_layer", "per_layer_fused")


def fused_block(cfg, w, x, positions, mask):
    """`transformer._block` for a Llama-style config (RMSNorm, RoPE, SwiGLU, no biases), with
    q, k and v from one product and gate and up from one."""
    B, T, D = x.shape
    H, G, K, F = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    h = L.norm(x, w["attn_norm_scale"], None, cfg)
    qkv = h @ jnp.concatenate([w["wq"].reshape(D, H * K), w["wk"].reshape(D, G * K), w["wv"].reshape(D, G * K)], 1)
    q = qkv[..., :H * K].reshape(B, T, H, K)
    k = qkv[..., H * K:(H + G) * K].reshape(B, T, G, K)
    v = qkv[..., (H + G) * K:].reshape(B, T, G, K)
    q, k = L.apply_rope(q, positions, cfg), L.apply_rope(k, positions, cfg)
    att = L.fused_attention(q, k, v, mask, aligned=True, window=cfg.sliding_window)
    x = x + jnp.einsum("bthk,hkd->btd", att, w["wo"])
    gate_up = L.norm(x, w["mlp_norm_scale"], None, cfg) @ jnp.concatenate([w["w_gate"], w["w_up"]], 1)
    return x + L.swiglu(gate_up[..., :F], gate_up[..., F:]) @ w["w_down"]


def build(variant: str, cfg, batch: int, seq: int):
    """(jitted step, state, tokens) for one layout; the step is (state, tokens) -> (state, loss)."""
    init = init_model(cfg, seed=0)
    model = nnx.merge(init.graphdef, init.params)
    blocks = model.blocks.weights() if variant in ("scan", "unrolled") else model.blocks.per_layer()
    params = {"embed": model.embed[...], "final_norm_scale": model.final_norm_scale[...], "blocks": blocks}
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, seq)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    ones = jnp.ones((batch, seq), jnp.int32)
    idx = jnp.arange(seq, dtype=jnp.int32)
    tx, _ = make_optimizer(1e-5, 1000)

    def loss_fn(p, tokens):
        mask = L.attention_mask(idx, idx, ones, ones, cfg.sliding_window, None, None)
        x = jnp.take(p["embed"], tokens, axis=0)
        if variant == "per_layer_fused":
            for w in p["blocks"]:
                x = fused_block(cfg, w, x, positions, mask)
        else:
            def body(x, w):
                return transformer._block(cfg, w, x, positions, mask, None, None, None)[0], None
            if variant == "per_layer":
                for w in p["blocks"]:
                    x, _ = body(x, w)
            else:
                x, _ = jax.lax.scan(body, x, p["blocks"], unroll=cfg.n_layers if variant == "unrolled" else 1)
        x = L.norm(x, p["final_norm_scale"], None, cfg)
        logp = jax.nn.log_softmax(jnp.einsum("btd,vd->btv", x, p["embed"])[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

    def step(state, tokens):
        p, opt = state
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    return jax.jit(step, donate_argnums=0), (params, tx.init(params)), tokens


def main(argv=None):
    ap = parser(__doc__, out=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--model", default="135m", help="a preset of rlhf_jax.models.PRESETS (a Llama-style one)")
    ap.add_argument("--layers", type=int, default=None, help="its depth (default: the preset's)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "scan" not in variants:
        raise SystemExit(f"error: --variants {args.variants}: choose from {', '.join(VARIANTS)}, scan included")
    if args.model not in PRESETS:
        raise SystemExit(f"error: unknown model {args.model!r}; valid: {', '.join(sorted(PRESETS))}")
    cfg = PRESETS[args.model].replace(n_layers=args.layers or PRESETS[args.model].n_layers)
    steps, out, times = {}, {}, {v: [] for v in variants}
    for v in variants:
        fn, state, tokens = build(v, cfg, args.batch, args.seq)
        t = time.perf_counter()
        state, loss = jax.block_until_ready(fn(state, tokens))
        out[v] = {"compile_and_first_s": time.perf_counter() - t, "first_loss": float(loss)}
        steps[v] = [fn, state, tokens]
        print(v, out[v], file=sys.stderr, flush=True)
    for _ in range(args.repeats):
        for v in variants:
            fn, state, tokens = steps[v]
            t = time.perf_counter()
            steps[v][1], _ = jax.block_until_ready(fn(state, tokens))
            times[v].append(time.perf_counter() - t)
    base = np.array(times["scan"])
    for v in variants:
        out[v].update(step_s=float(np.median(times[v])), all_s=[round(x, 4) for x in times[v]],
                      speedup_vs_scan=float(np.median(base / np.array(times[v]))))
    report({"cpu": cpu_info(), "jax": jax.__version__, "model": args.model, "layers": cfg.n_layers,
            "batch": args.batch, "seq": args.seq, "repeats": args.repeats, "variants": out}, args.out, indent=1)
    return out


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

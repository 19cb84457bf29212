"""The accelerator checks in one run: one JSON and one Markdown table.

    python tools/accelerator_check.py --out check.json --md check.md           # a GPU or TPU host
    python tools/accelerator_check.py --smoke --out /tmp/c.json --md /tmp/c.md  # any CPU, under a minute

Every figure is of one device, jax.devices()[0] (on a host of several, the others sit idle).
Sections (each a function returning a dict that names the device and dtype it measured; a
section that raises is recorded with its error, the others still run, and the exit code is 1):
  device     jax.devices(), the device kind, memory_stats() where the backend has them.
  memory     the PPO update (policy + value model, one epoch of one minibatch, AdamW) at the
             SmolLM2-135M shape: XLA's compiled estimate (memory_analysis: arguments + outputs
             - aliased + temporaries) and, where the device reports memory_stats(), the measured
             peak (peak_bytes_in_use after running it, less the bytes in use before its
             arguments were made). Run first, so no earlier section's peak hides it.
  attention  jax.nn.dot_product_attention (XLA) and, on GPU, cuDNN against the manual attention
             (rlhf_jax.models.layers.attention): max abs difference of the outputs and of the
             gradients w.r.t. q, k, v, against a tolerance derived from the dtype, and the time
             of one forward + backward call.
  mfu        the SFT step (loss, gradient, AdamW) at the 1b preset: tokens/s and MFU = model
             FLOP/s / the measured peak of a large matmul in the same dtype. Model FLOPs per
             token = 6 * (non-embedding params + LM head) + 12 * layers * heads * head_dim * seq
             (tools/benchmark_model.flops_per_token); remat recompute is not counted.
  decode     KV-cache sampling tokens/s against the roofline: every step reads all weights and
             the (half-full on average) KV cache once at the measured copy bandwidth.
  trl        our SFT / RM / PPO steps against TRL's at the SmolLM2 shape
             (tools/benchmark_pipeline), only if `trl` imports; else skipped with the reason.
--smoke picks tiny shapes (the test preset) in bfloat16, the accelerator's dtype, so the whole run
fits in a minute on a CPU and exercises the code an accelerator run will.
"""
from __future__ import annotations

import contextlib
import gc
import math
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.models import PRESETS, init_model  # noqa: E402
from rlhf_jax.models import layers as L  # noqa: E402
from rlhf_jax.sharding import make_mesh  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.train.state import TrainState, compile_step  # noqa: E402
from tools import aot_memory, benchmark_memory, benchmark_model, benchmark_pipeline  # noqa: E402
from tools._common import parser, report  # noqa: E402

GB = 1024 ** 3
LAMBDA = 8.0  # the confidence parameter of tests/tolerance.py (probabilistic rounding bound)


def _device() -> dict:
    d = jax.devices()[0]
    return {"device": getattr(d, "device_kind", str(d)), "platform": d.platform}


def _memory_stats(d) -> dict | None:
    try:
        return d.memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None


def sizes(smoke: bool, backend: str, args) -> dict:
    """The shapes every section uses: tiny under --smoke, the issue's shapes otherwise (flags override)."""
    accel = backend != "cpu"
    s = dict(dtype="bfloat16" if accel else "float32", preset="1b", batch=8, seq=2048, remat="full",
             logits_chunk=256, peak_n=8192 if accel else 2048, bw_bytes=(4 << 30) if accel else (256 << 20),
             decode_preset="1b", decode_batch=64 if accel else 8, decode_prompt=128, decode_new=64,
             ppo_preset="135m", ppo_batch=64, ppo_prompt=256, ppo_response=256, ppo_variant="chunk64_remat_full",
             attn=(8, 2048, 32, 8, 64), trl_steps=5)
    if smoke:
        # the accelerator's dtype, so that CI runs the same code path as the accelerator run
        s.update(dtype="bfloat16", preset="test", batch=4, seq=32, remat="none", logits_chunk=0, peak_n=256, bw_bytes=4 << 20,
                 decode_preset="test", decode_batch=2, decode_prompt=8, decode_new=8, ppo_preset="test",
                 ppo_batch=4, ppo_prompt=8, ppo_response=8, ppo_variant="baseline", attn=(2, 16, 4, 2, 8),
                 trl_steps=2)
    for k in ("dtype", "preset", "batch", "seq", "decode_preset", "ppo_preset", "ppo_batch"):
        if getattr(args, k, None) is not None:
            s[k] = getattr(args, k)
    if getattr(args, "attn", None):
        s["attn"] = tuple(int(x) for x in args.attn.split(","))
        if len(s["attn"]) != 5 or s["attn"][2] % s["attn"][3]:
            raise ValueError(f"--attn {args.attn!r}: want B,T,H,G,K with G dividing H")
    return s


# --- sections ---------------------------------------------------------------------------------

def device_info(s: dict) -> dict:
    devices = jax.devices()
    d = devices[0]
    return {**_device(), "dtype": None, "backend": jax.default_backend(), "jax": jax.__version__,
            "count": len(devices), "devices": [str(x) for x in devices],
            "host": platform.processor() or platform.machine(), "memory_stats": _memory_stats(d)}


def memory(s: dict) -> dict:
    """Compiled estimate and (where memory_stats exist) measured peak of the PPO update."""
    changes, accum = benchmark_memory.VARIANTS[s["ppo_variant"]][:2]
    cfg = PRESETS[s["ppo_preset"]].replace(dtype=s["dtype"], **changes)
    B, P, N = s["ppo_batch"], s["ppo_prompt"], s["ppo_response"]
    fn, abstract = benchmark_memory.ppo_update(cfg, accum, B, P, N)
    dev = jax.devices()[0]
    out = {**_device(), "dtype": f"compute {s['dtype']}, parameters float32", "preset": s["ppo_preset"],
           "variant": s["ppo_variant"], "model": changes, "grad_accum": accum, "batch": B, "prompt_len": P,
           "response_len": N}
    before = _memory_stats(dev)
    # every input as ones (a random key for the rng): the values do not change the memory
    concrete = jax.tree.map(lambda a: jax.random.key(0) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                            else jnp.ones(a.shape, a.dtype), abstract)
    jitted = jax.jit(fn, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = jitted.lower(*concrete).compile()
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    est = aot_memory.analyse(compiled)
    out.update({f"estimate_{k}": v for k, v in est.items()})
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*concrete))
    out["update_s"] = round(time.perf_counter() - t0, 3)
    after = _memory_stats(dev)
    if before and after and "peak_bytes_in_use" in after:
        peak = after["peak_bytes_in_use"] - before.get("bytes_in_use", 0)
        out["measured_peak_gb"] = peak / GB
        out["measured_over_estimate"] = peak / (est["peak_gb"] * GB)
        out["measured_peak_note"] = ("peak_bytes_in_use after the update less bytes_in_use before its inputs "
                                     "were made" + ("" if after["peak_bytes_in_use"] > before.get(
                                         "peak_bytes_in_use", 0) else "; NOT a new peak: an earlier one hides it"))
    else:
        out["measured_peak_gb"] = None
        out["measured_peak_note"] = f"{dev.platform} reports no memory_stats(): the compiled estimate only"
    return out


def attention_tolerance(dtype, head_dim: int, seq: int, scale: float, roundings: int) -> float:
    """How far two orderings of one attention can land apart, from the dtype. In float32: the
    longest accumulation chain (scores over head_dim, the softmax sum and the mix over seq:
    head_dim + 2 * seq roundings) at tests/tolerance.py's bound lam * sqrt(n) * eps32 * scale.
    Below float32, plus `roundings` casts to the storage dtype on the way (forward: the probs
    and the output, 2; backward: also dO, dP, dS and dq/dk/dv, 8), each of up to half an ulp
    in either evaluation and few enough to add up in the worst case: roundings * eps * scale.
    The probs sum to 1, so a cast of them moves the output by at most eps/2 * max|v|: `scale`
    is the largest magnitude among the result and the values it mixes."""
    eps32 = float(np.finfo(np.float32).eps)
    low = 0.0 if jnp.dtype(dtype) == jnp.float32 else roundings * float(jnp.finfo(dtype).eps)
    return (LAMBDA * math.sqrt(head_dim + 2 * seq) * eps32 + low) * scale


def attention(s: dict) -> dict:
    """dot_product (and cuDNN on GPU) against the manual attention: outputs, gradients, time."""
    B, T, H, G, K = s["attn"]
    dtype = jnp.dtype(s["dtype"])
    kq, kk, kv, kc = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (B, T, H, K), dtype)
    k = jax.random.normal(kk, (B, T, G, K), dtype)
    v = jax.random.normal(kv, (B, T, G, K), dtype)
    cot = jax.random.normal(kc, (B, T, H, K), dtype)
    idx = jnp.arange(T)
    # every row has at least itself to attend to (no fully masked rows, whose output is arbitrary):
    # one sequence, and in the last row two packed segments
    seg = jnp.ones((B, T), jnp.int32).at[-1, T // 2:].set(2)
    mask = L.attention_mask(idx, idx, seg, seg, None)

    def fwd_bwd(attn):
        def f(q, k, v):
            out, vjp = jax.vjp(attn, q, k, v)
            return out, vjp(cot)
        return jax.jit(f)

    impls = {"xla_manual": lambda q, k, v: L.attention(q, k, v, mask),
             "dot_product": lambda q, k, v: L.fused_attention(q, k, v, mask, aligned=True)}
    if jax.default_backend() == "gpu":
        impls["cudnn"] = lambda q, k, v: L.fused_attention(q, k, v, mask, aligned=True, implementation="cudnn")
    out = {**_device(), "dtype": str(dtype), "shape_BxTxHxGxK": [B, T, H, G, K], "impls": {}}
    ref_out, ref_grads = fwd_bwd(impls["xla_manual"])(q, k, v)
    f32 = lambda x: np.asarray(x, np.float32)
    out_scale = max(float(np.abs(f32(ref_out)).max()), float(np.abs(f32(v)).max()))
    grad_scale = max(float(np.abs(f32(x)).max()) for x in (*ref_grads, cot, q, k, v))
    tol_out = attention_tolerance(dtype, K, T, out_scale, roundings=2)
    tol_grad = attention_tolerance(dtype, K, T, grad_scale, roundings=8)
    out.update(tolerance_output=tol_out, tolerance_gradient=tol_grad)
    failures = []
    for name, attn in impls.items():
        fn = fwd_bwd(attn)
        try:
            o, g = fn(q, k, v)
            row = {"seconds_per_call": benchmark_model.timeit(fn, q, k, v, warmup=1, iters=5)}
        except Exception as e:  # one implementation failing (cuDNN on an unsupported shape) keeps the others
            out["impls"][name] = {"error": f"{type(e).__name__}: {e}"}
            failures.append(name)
            continue
        if name != "xla_manual":
            row["max_abs_diff_output"] = float(np.abs(f32(o) - f32(ref_out)).max())
            row["max_abs_diff_gradient"] = max(float(np.abs(f32(a) - f32(b)).max()) for a, b in zip(g, ref_grads))
            row["parity"] = bool(row["max_abs_diff_output"] <= tol_out and row["max_abs_diff_gradient"] <= tol_grad)
            row["speedup_over_manual"] = out["impls"]["xla_manual"]["seconds_per_call"] / row["seconds_per_call"]
            if not row["parity"]:
                failures.append(name)
        out["impls"][name] = row
    if jax.default_backend() != "gpu":
        out["cudnn"] = f"skipped: cuDNN needs a GPU (backend {jax.default_backend()})"
    if failures:  # recorded as a failed section, with every figure measured
        out.update(status="error", error=f"attention fails (parity or error) for {failures}")
    return out


def mfu(s: dict) -> dict:
    """Tokens/s and MFU of the SFT step (a stage's compiled, donated step) at s['preset']."""
    dtype = s["dtype"]
    cfg = PRESETS[s["preset"]].replace(dtype=dtype, param_dtype=dtype, remat=s["remat"],
                                       logits_chunk=s["logits_chunk"])
    B, T = s["batch"], s["seq"]
    peak = benchmark_model.matmul_peak(jnp.dtype(dtype), s["peak_n"])
    model = init_model(cfg, seed=0)
    tx, sched = make_optimizer(1e-5, 1000)
    tokens = jax.random.randint(jax.random.key(0), (B, T), 3, cfg.vocab_size)
    batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens), "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.broadcast_to(jnp.arange(T), (B, T))}
    state = TrainState(model.params, tx.init(model.params), jnp.zeros((), jnp.int32))
    step, state = compile_step(sft_lib.make_sft_step(model.graphdef, tx, sched), state, batch,
                               make_mesh(devices=jax.devices()[:1]))  # one chip: MFU per device
    box = [state]

    def once():
        box[0], m = step(box[0], batch, jax.random.key(0))
        return m["loss"]
    seconds = benchmark_pipeline.median_time(once, 3)
    fpt = benchmark_model.flops_per_token(cfg, T)
    achieved = B * T * fpt / seconds
    return {**_device(), "dtype": f"{dtype} (parameters and compute)", "preset": s["preset"],
            "params_m": cfg.num_params() / 1e6, "batch": B, "seq": T, "remat": s["remat"],
            "step_s": seconds, "tokens_per_s": B * T / seconds, "flops_per_token": fpt,
            "flop_formula": "6 * (non-embedding params + d_model * vocab) + 12 * layers * heads * head_dim * seq",
            "achieved_tflops": achieved / 1e12, "matmul_peak_tflops": peak / 1e12,
            "matmul_peak_n": s["peak_n"], "mfu": achieved / peak}


def decode(s: dict) -> dict:
    dtype = s["dtype"]
    cfg = PRESETS[s["decode_preset"]].replace(dtype=dtype, param_dtype=dtype)
    bandwidth = benchmark_model.copy_bandwidth(s["bw_bytes"])
    B, P, N = s["decode_batch"], s["decode_prompt"], s["decode_new"]
    tps, seconds, bytes_per_step = benchmark_model.bench_decode(cfg, B, P, N)
    roofline = B * bandwidth / bytes_per_step
    return {**_device(), "dtype": dtype, "preset": s["decode_preset"], "batch": B, "prompt_len": P,
            "new_tokens": N, "seconds": seconds, "tokens_per_s": tps, "copy_bandwidth_gbs": bandwidth / 1e9,
            "bytes_per_step": bytes_per_step, "roofline_tokens_per_s": roofline, "fraction_of_roofline": tps / roofline}


def trl(s: dict) -> dict:
    try:
        import trl as trl_pkg  # noqa: F401
    except ImportError as e:
        return {**_device(), "dtype": "float32", "status": "skipped",
                "reason": f"trl is not importable ({e}); pip install trl==0.29.0"}
    shape = benchmark_pipeline.SHAPES["tiny" if s["preset"] == "test" else "smollm2"]
    ours = benchmark_pipeline.ours(shape, s["trl_steps"], make_mesh(devices=jax.devices()[:1]))
    with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs
        theirs = benchmark_pipeline.trl_side(shape, s["trl_steps"])
    return {**_device(), "dtype": "float32", "shape": {k: v for k, v in shape.items() if k != "model"},
            "ours": ours, "trl": theirs, **benchmark_pipeline.compare(ours, theirs)}


SECTIONS = {"device": device_info, "memory": memory, "attention": attention, "mfu": mfu, "decode": decode,
            "trl": trl}


def run(s: dict, names=tuple(SECTIONS)) -> dict:
    """Every section in order; one that raises is recorded as status "error" with its message."""
    results = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            r = SECTIONS[name](s)
            r.setdefault("status", "ok")
        except Exception as e:  # recorded, and the run goes on
            r = {**_device(), "dtype": s["dtype"], "status": "error", "error": f"{type(e).__name__}: {e}",
                 "traceback": traceback.format_exc(limit=6)}
        r["section_s"] = round(time.perf_counter() - t0, 1)
        results[name] = r
        print(f"[accelerator_check] {name}: {r['status']} ({r['section_s']} s)", file=sys.stderr, flush=True)
        gc.collect()
    return results


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(result: dict) -> str:
    """One row per figure: section, figure, value, device, dtype."""
    rows = ["| section | figure | value | device | dtype |", "|---|---|---|---|---|"]
    skip = {"device", "dtype", "platform", "devices", "traceback", "memory_stats", "model", "ours", "trl", "shape"}
    for name, r in result["sections"].items():
        flat = {}
        for key, v in r.items():
            if key in skip:
                continue
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    items = v2.items() if isinstance(v2, dict) else [("", v2)]
                    for k3, v3 in items:
                        flat[".".join(x for x in (key, k2, k3) if x)] = v3
            else:
                flat[key] = v
        for key, v in flat.items():
            text = _fmt(v).replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {name} | {key} | {text} | {r.get('device', '')} | {r.get('dtype') or ''} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = parser(__doc__, out=True)
    ap.add_argument("--md", default="", help="also write the Markdown table here")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, CI)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {list(SECTIONS)}")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on an accelerator and with --smoke, else float32")
    ap.add_argument("--preset", default=None, help="the SFT step's model (mfu); default 1b, --smoke test")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--decode_preset", default=None)
    ap.add_argument("--ppo_preset", default=None)
    ap.add_argument("--ppo_batch", type=int, default=None)
    ap.add_argument("--attn", default=None, help="attention shape B,T,H,G,K (default 8,2048,32,8,64: the 1b preset)")
    args = ap.parse_args(argv)
    names = args.sections.split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; valid: {list(SECTIONS)}")
    s = sizes(args.smoke, jax.default_backend(), args)
    t0 = time.perf_counter()
    sections = run(s, names)
    failed = [n for n, r in sections.items() if r["status"] == "error"]
    result = {"smoke": args.smoke, "sizes": {k: v for k, v in s.items()}, "total_s": round(time.perf_counter() - t0, 1),
              "failed": failed, "sections": sections}
    report(result, args.out, indent=1, default=str)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(markdown(result), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

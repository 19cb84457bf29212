"""Compiled memory of the PPO update (or the SFT step) under the memory options, from abstract inputs.

    PYTHONPATH=. python tools/benchmark_memory.py                      # SmolLM2-135M, 64 x (256 + 256)
    PYTHONPATH=. python tools/benchmark_memory.py --stage sft --variants baseline,chunk64
    PYTHONPATH=. python tools/benchmark_memory.py --preset test --batch 8 --prompt_len 8 --response_len 8

Every variant is compiled only (`jax.jit(fn).lower(ShapeDtypeStructs).compile()`): no parameter,
batch or logit array is ever allocated, so shapes far beyond this machine's memory can be
measured. Prints one JSON object: the setting, the size of the full float32 logits, and per
variant XLA's `memory_analysis()` (argument, output, alias and temp bytes, and their sum
`total_bytes` = argument + output + temp - alias, the step's footprint on one device; the
CPU backend's `peak_memory_in_bytes` is not reported: it comes out below the temporaries alone).

The PPO update is `train.ppo.update` with one epoch of one minibatch: the policy (LM head) and
value model (scalar head) forward and backward on the whole batch, AdamW on both.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.common import base  # noqa: E402
from rlhf_jax.models import PRESETS, abstract_model  # noqa: E402
from rlhf_jax.rewards import ModelReward
from rlhf_jax.train import lora as lora_lib
from rlhf_jax.train import ppo as ppo_lib
from rlhf_jax.train import sft as sft_lib
from rlhf_jax.train.optim import make_optimizer
from rlhf_jax.train.state import TrainState
from tools._common import parser  # noqa: E402

# name -> (ModelConfig changes, grad_accum[, LoRA: "float" or "int8" base])
VARIANTS = {
    "frozen_included": ({"logits_chunk": 64, "remat": "full"}, 8, "none"),
    "lora16": ({"logits_chunk": 64, "remat": "full"}, 8, "float"),
    "lora16_int8": ({"logits_chunk": 64, "remat": "full"}, 8, "int8"),
    "baseline": ({}, 1),
    "remat_full": ({"remat": "full"}, 1),
    "grad_accum4": ({}, 4),
    "chunk64": ({"logits_chunk": 64}, 1),
    "chunk64_vocab8192": ({"logits_chunk": 64, "vocab_chunk": 8192}, 1),
    "chunk64_remat_full": ({"logits_chunk": 64, "remat": "full"}, 1),
    "chunk64_remat_save_matmuls": ({"logits_chunk": 64, "remat": "save_matmuls"}, 1),
    "chunk64_remat_full_accum4": ({"logits_chunk": 64, "remat": "full"}, 4),
    "remat_full_accum4": ({"remat": "full"}, 4),
    "chunk64_vocab8192_remat_full_accum4": ({"logits_chunk": 64, "vocab_chunk": 8192, "remat": "full"}, 4),
    "chunk64_remat_full_accum8": ({"logits_chunk": 64, "remat": "full"}, 8),
    "chunk64_remat_full_dot_product": ({"logits_chunk": 64, "remat": "full", "attention_impl": "dot_product"}, 1),
}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def ppo_update(cfg, grad_accum: int, B: int, P: int, N: int, lora: str | None = None):
    """(function, abstract arguments) of one PPO update (1 epoch x 1 minibatch) on B x (P + N).

    With `lora` ("none", "float" or "int8") the frozen models are arguments too: the reference
    and the reward model in full ("none"), or, with LoRA (rank 16 on every block matrix of the
    policy and the value model), the two frozen bases they share (the reference is the policy's
    base with the adapters off, the value model's base is the reward model), in float32 or int8.
    """
    policy_gd, policy = abstract_model(cfg, "lm")
    value_gd, value = abstract_model(cfg, "scalar")
    lcfg = lora_lib.LoRAConfig(rank=16, alpha=32.0) if lora in ("float", "int8") else None
    models = ppo_lib.PPOModels(policy_gd, value_gd, ModelReward(value_gd), lcfg)
    hp = base().ppo
    hp.update(minibatches=1, epochs=1, grad_accum=grad_accum)
    tx, _ = make_optimizer(1e-5, 10)
    params, constants = {"policy": policy, "value": value}, None
    if lora == "none":
        constants = {"reference": policy, "reward": value}
    elif lcfg is not None:
        frozen = (lambda p: jax.eval_shape(lora_lib.quantize, p)) if lora == "int8" else (lambda p: p)
        constants = {"reference": frozen(policy), "value_base": frozen(value)}
        params = {"policy": jax.eval_shape(lambda p: lora_lib.split(p, lcfg, jax.random.key(0)), policy),
                  "value": jax.eval_shape(lambda p: lora_lib.split(p, lcfg, jax.random.key(0), ("head",)), value)}
    opt_state = jax.eval_shape(tx.init, params)
    T = P + N
    i32, f32 = jnp.int32, jnp.float32
    data = ppo_lib.Rollout(*(jax.ShapeDtypeStruct(s, d) for s, d in [
        ((B, T), i32), ((B, T), i32), ((B, T), i32), ((B, N), i32), ((B, N), f32), ((B, N), f32),
        ((B, N), f32), ((B, N), f32), ((B, N), f32)]))

    def fn(params, opt_state, data, rng, constants):
        params, opt_state, metrics = ppo_lib.update(hp, models, tx, params, opt_state, data, {}, rng, constants)
        return params, opt_state, metrics["loss"]

    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    return fn, (params, opt_state, data, rng, constants)


def sft_step(cfg, grad_accum: int, B: int, P: int, N: int, lora: str | None = None):
    """(function, abstract arguments) of one SFT step on B x (P + N) tokens."""
    gd, params = abstract_model(cfg, "lm")
    tx, sched = make_optimizer(1e-5, 10)
    lcfg = lora_lib.LoRAConfig(rank=16, alpha=32.0) if lora in ("float", "int8") else None
    step = sft_lib.make_sft_step(gd, tx, sched, microbatches=grad_accum, lora=lcfg)
    constants = None
    if lcfg is not None:
        base = jax.eval_shape(lora_lib.quantize, params) if lora == "int8" else params
        params, constants = jax.eval_shape(lambda p: lora_lib.split(p, lcfg, jax.random.key(0)), params), (base, None)
    state = TrainState(params, jax.eval_shape(tx.init, params), jax.ShapeDtypeStruct((), jnp.int32))
    batch = {k: jax.ShapeDtypeStruct((B, P + N), jnp.int32)
             for k in ("tokens", "loss_mask", "segment_ids", "positions")}
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    return step, (state, batch, rng, constants)


def measure(build, cfg, grad_accum: int, B: int, P: int, N: int, lora: str | None = None) -> dict:
    """XLA's memory analysis of the compiled function (state donated, as the stages do)."""
    fn, args = build(cfg, grad_accum, B, P, N, lora) if lora else build(cfg, grad_accum, B, P, N)
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=(0, 1) if build is ppo_update else (0,)).lower(*args).compile()
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                           "alias_size_in_bytes", "temp_size_in_bytes")}
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                          + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
    out["total_gib"] = round(out["total_bytes"] / 2 ** 30, 3)
    out["compile_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--preset", default="135m")
    ap.add_argument("--stage", choices=("ppo", "sft"), default="ppo")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt_len", type=int, default=256)
    ap.add_argument("--response_len", type=int, default=256)
    ap.add_argument("--dtype", default="float32", help="compute dtype (parameters stay float32)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    args = ap.parse_args()
    cfg = PRESETS[args.preset].replace(dtype=args.dtype)
    B, P, N = args.batch, args.prompt_len, args.response_len
    build = ppo_update if args.stage == "ppo" else sft_step
    result = {"stage": args.stage, "preset": args.preset, "vocab_size": cfg.vocab_size, "batch": B,
              "prompt_len": P, "response_len": N, "dtype": args.dtype, "backend": jax.default_backend(),
              "full_logits_float32_bytes": B * (P + N) * cfg.vocab_size * 4, "variants": {}}
    for name in args.variants.split(","):
        changes, accum, *lora = VARIANTS[name]
        lora = lora[0] if lora else None
        result["variants"][name] = {"model": changes, "grad_accum": accum, "lora": lora,
                                    **measure(build, cfg.replace(**changes), accum, B, P, N, lora)}
        print(f"# {name}: {result['variants'][name]['total_gib']} GiB", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

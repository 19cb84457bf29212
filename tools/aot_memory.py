"""Per-device memory of the SFT step and the PPO update for models past one device, compiled
ahead of time from abstract inputs on a mesh of fake CPU devices (nothing is allocated).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/aot_memory.py \
        --models 1.7b,8b --mesh 1,4,2 --batch 8 --seq 2048 --out experiments/benchmarks/aot_memory.json

For each model shape (SmolLM2-135M, SmolLM2-1.7B, Llama-3-8B), step (sft: one full training step;
ppo_update: PPO's epochs x minibatches update of policy and value model on a rollout;
grpo_update: the same update of a critic-free estimator, GRPO, with no value model and the KL
to the reference as a loss term) and LoRA on / off, the
step is lowered with the parameters, optimizer state and batch as ShapeDtypeStructs carrying
their shardings (FSDP over `fsdp`, tensor parallelism over `tensor`, the batch over
`data` x `fsdp`, by `sharding.DEFAULT_RULES`) and compiled; `memory_analysis()` gives the bytes
each device holds: arguments (parameters, optimizer moments, frozen constants, batch), outputs,
temporaries (activations, gradients), and the peak (arguments + outputs not aliased to an
argument + temporaries). `--fit` also searches the largest batch whose peak fits `--device_gb`.
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
from rlhf_jax import sharding as shd  # noqa: E402
from rlhf_jax.models import ModelConfig, abstract_model  # noqa: E402
from rlhf_jax.models.hf import nnx_state_of  # noqa: E402
from rlhf_jax.rewards import ModelReward  # noqa: E402
from rlhf_jax.train import lora as lora_lib  # noqa: E402
from rlhf_jax.train import ppo as ppo_lib  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.train.state import TrainState  # noqa: E402
from tools._common import parser, report  # noqa: E402

SHAPES = {
    # SmolLM2-135M: GQA 9/3, tied embeddings, theta 100000
    "135m": ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                        d_ff=1536, max_seq_len=8192, rope_theta=100000.0, norm_eps=1e-5),
    # SmolLM2-1.7B: Llama architecture, MHA 32/32, tied embeddings, theta 130000
    "1.7b": ModelConfig(vocab_size=49152, d_model=2048, n_layers=24, n_heads=32, n_kv_heads=32, head_dim=64,
                        d_ff=8192, max_seq_len=8192, rope_theta=130000.0, norm_eps=1e-5),
    # Llama-3-8B: GQA 32/8, untied, theta 500000
    "8b": ModelConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                      d_ff=14336, max_seq_len=8192, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=False),
}
GB = 1024 ** 3


def abstract_sharded(cfg: ModelConfig, head: str, mesh):
    """(graphdef, params as ShapeDtypeStructs with their shardings)."""
    graphdef, abstract = abstract_model(cfg, head)
    axes = shd.logical_axes(nnx_state_of(graphdef, abstract))
    shardings = shd.param_shardings(abstract, axes, mesh)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return graphdef, params


def with_sharding(tree, like_params=None, mesh=None):
    """ShapeDtypeStructs of jax.eval_shape output, sharded like the parameter they mirror
    (optimizer moments), replicated otherwise (counters, scalars)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_shape = {}
    if like_params is not None:
        for leaf in jax.tree.leaves(like_params):
            by_shape.setdefault((leaf.shape, leaf.dtype), leaf.sharding)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                        sharding=by_shape.get((x.shape, x.dtype), replicated)), tree)


def batch_struct(mesh, shape, dtype=jnp.int32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, len(shape)))


def analyse(compiled) -> dict:
    m = compiled.memory_analysis()
    args, out, temp, alias = (m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes,
                              m.alias_size_in_bytes)
    return {"arguments_gb": args / GB, "outputs_gb": out / GB, "temp_gb": temp / GB, "alias_gb": alias / GB,
            "peak_gb": (args + out - alias + temp) / GB}


def sft_step(cfg, mesh, batch: int, seq: int, lora: bool, microbatches: int = 1):
    """(compiled SFT step, its abstract arguments)."""
    graphdef, params = abstract_sharded(cfg, "lm", mesh)
    tx, sched = make_optimizer(1e-5, 1000)
    lcfg = lora_lib.LoRAConfig(rank=16, alpha=32.0) if lora else None
    if lora:
        trainable = jax.eval_shape(lambda p: lora_lib.split(p, lcfg, jax.random.key(0)), params)
        trainable = with_sharding(trainable, mesh=mesh)
    else:
        trainable = params
    opt = with_sharding(jax.eval_shape(tx.init, trainable), trainable, mesh)
    state = TrainState(trainable, opt, jax.ShapeDtypeStruct((), jnp.int32, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec())))
    b = {k: batch_struct(mesh, (batch, seq)) for k in ("tokens", "loss_mask", "segment_ids", "positions")}
    step = sft_lib.make_sft_step(graphdef, tx, sched, lora=lcfg)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    fn = (lambda s, x, r, base: step(s, x, r, (base, None))) if lora else (lambda s, x, r: step(s, x, r))
    args = (state, b, key) + ((params,) if lora else ())
    return jax.jit(fn, donate_argnums=(0,), keep_unused=True).lower(*args).compile(), args


def ppo_update(cfg, mesh, batch: int, seq: int, lora: bool, critic: bool = True):
    """PPO's update phase (one epoch, one minibatch) of policy and value on a rollout of `batch`
    sequences of `seq` tokens (half prompt, half response). With LoRA the trained parameters are
    the adapters (and the value head) over two frozen bases: the policy's, which is also the
    reference, and the value model's, passed as constants as the PPO stage does. Without a
    critic (GRPO): the policy alone, the rollout carrying the reference's log-probs instead of
    values and returns. Returns (compiled update, its abstract arguments)."""
    hp = base().ppo
    hp.update(epochs=1, minibatches=1)
    if not critic:
        hp.update(advantage_estimator="grpo", group_size=2, policy_loss="grpo", kl_estimator="k3")
    policy_gd, policy = abstract_sharded(cfg, "lm", mesh)
    value_gd, value = abstract_sharded(cfg, "scalar", mesh) if critic else (None, None)
    lcfg = lora_lib.LoRAConfig(rank=16, alpha=32.0) if lora else None
    models = ppo_lib.PPOModels(policy_gd, value_gd, ModelReward(value_gd), lcfg)
    tx, _ = make_optimizer(1e-6, 1000)
    if lora:
        key = jax.random.key(0)
        params = {"policy": with_sharding(jax.eval_shape(lambda p: lora_lib.split(p, lcfg, key), policy), mesh=mesh)}
        constants = {"reference": policy}
        if critic:
            params["value"] = with_sharding(jax.eval_shape(lambda p: lora_lib.split(p, lcfg, key, extras=("head",)),
                                                           value), mesh=mesh)
            constants["value_base"] = value
    else:
        params, constants = ({"policy": policy, "value": value} if critic else {"policy": policy}), {}
    n = seq // 2
    f32 = lambda: batch_struct(mesh, (batch, n), jnp.float32)
    data = ppo_lib.Rollout(batch_struct(mesh, (batch, seq)), batch_struct(mesh, (batch, seq)),
                           batch_struct(mesh, (batch, seq)), batch_struct(mesh, (batch, n)), f32(), f32(),
                           f32() if critic else None, f32(), f32() if critic else None, None if critic else f32())
    opt = with_sharding(jax.eval_shape(tx.init, params), params, mesh)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    fn = lambda p, o, d, r, c: ppo_lib.update(hp, models, tx, p, o, d, {}, r, c)[:2]
    args = (params, opt, data, rng, constants)
    return jax.jit(fn, donate_argnums=(0, 1), keep_unused=True).lower(*args).compile(), args


def measure(model: str, step: str, mesh, batch: int, seq: int, lora: bool, remat: str = "full",
            logits_chunk: int = 256) -> dict:
    cfg = SHAPES[model].replace(remat=remat, logits_chunk=logits_chunk)
    t0 = time.perf_counter()
    if step == "sft":
        compiled, _ = sft_step(cfg, mesh, batch, seq, lora)
    else:
        compiled, _ = ppo_update(cfg, mesh, batch, seq, lora, critic=step == "ppo_update")
    return {"model": model, "params_b": round(cfg.num_params() / 1e9, 2), "step": step, "lora": lora,
            "batch": batch, "seq": seq, "mesh": dict(mesh.shape), "remat": remat, "logits_chunk": logits_chunk,
            **analyse(compiled),
            "compile_s": round(time.perf_counter() - t0, 1)}


def main():
    ap = parser(__doc__, out=True)
    ap.add_argument("--models", default="1.7b,8b")
    ap.add_argument("--steps", default="sft,ppo_update", help="of sft, ppo_update, grpo_update")
    ap.add_argument("--mesh", default="1,4,2", help="data,fsdp,tensor over the (fake) devices")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--fit", action="store_true", help="also the largest batch (powers of 2) under --device_gb")
    ap.add_argument("--device_gb", type=float, default=80.0)
    ap.add_argument("--remat", default="full", help="the models' remat policy (none, full, save_matmuls)")
    ap.add_argument("--logits_chunk", type=int, default=256, help="sequence chunk of the LM head (0: full logits)")
    args = ap.parse_args()
    mesh = shd.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
    rows = []
    for model in args.models.split(","):
        for step in args.steps.split(","):
            for lora in (False, True):
                row = measure(model, step, mesh, args.batch, args.seq, lora, args.remat, args.logits_chunk)
                if args.fit:
                    b, fits = args.batch, None
                    while b <= 4096:
                        probe = measure(model, step, mesh, b, args.seq, lora, args.remat, args.logits_chunk)
                        if probe["peak_gb"] > args.device_gb:
                            break
                        fits, b = probe["batch"], b * 2
                    row["largest_batch_fitting"] = fits
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    out = {"devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind, "device_gb": args.device_gb,
           "rows": rows}
    report(out, args.out, indent=1)


if __name__ == "__main__":
    main()

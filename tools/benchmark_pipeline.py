"""Pipeline benchmark: SFT / RM step rates and PPO time per phase, against TRL on the same shapes.

    python tools/benchmark_pipeline.py                     # tiny and smollm2 shapes, ours and TRL
    python tools/benchmark_pipeline.py --shapes tiny --no-trl
    python tools/benchmark_pipeline.py --shapes smollm2_cpu   # the real-model experiment's own shapes

For each shape: our jitted SFT step, RM step (K=2, i.e. pairs, the case TRL's RewardTrainer
handles) and PPO iteration, and the PPO iteration split into its three phases (generation,
scoring = policy/reference/value/reward forward passes + GAE, update = epochs x minibatches)
by jitting each phase alone. TRL (`pip install trl==0.29.0`, the last release with a PPO
trainer; it is not a project dependency) runs SFTTrainer, RewardTrainer and
trl.experimental.ppo.PPOTrainer on a transformers model of the same shape with the same batch
and sequence lengths; its step time is the median gap between `on_step_end` callbacks after
two warm-up steps. Both sides use random weights and random token ids of exactly the stated
lengths (no padding), float32, on the default device. TRL's configs turn on bfloat16 autocast
and activation checkpointing on every device, CPU included, unless told not to; by default
both are off, as in our steps (`--trl-settings matched`; `default` times TRL as it comes).
Prints one JSON object (the CPU's model and instruction sets
included), with the ratios and whether the targets (>= 1x TRL tokens/s for SFT and RM, stretch
1.3x; >= 3x for a PPO iteration; the SFT step's model FLOPs at >= 75% of XLA's matmul rate at the
step's own shapes, probed in the same run) are met.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.common import base  # noqa: E402
from rlhf_jax.generate import SamplingConfig, generate  # noqa: E402
from rlhf_jax.models import PRESETS, init_model  # noqa: E402
from rlhf_jax.models.config import to_hf_config  # noqa: E402
from rlhf_jax.rewards import ModelReward  # noqa: E402
from rlhf_jax.train import ppo as ppo_lib  # noqa: E402
from rlhf_jax.train import rm as rm_lib  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.sharding import make_mesh  # noqa: E402
from rlhf_jax.train.state import PPOState, TrainState, compile_step  # noqa: E402
from tools._common import cpu_info, parser, report, trl_settings  # noqa: E402
from tools.benchmark_model import flops_per_token  # noqa: E402

# model shape, SFT/RM batch x seq, PPO batch, prompt length, new tokens, minibatches, epochs
SHAPES = {
    "tiny": dict(model=PRESETS["test"].replace(vocab_size=22, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                                head_dim=16, d_ff=128, max_seq_len=64),
                 batch=64, seq=24, rm_batch=32, ppo_batch=64, prompt=10, new=10, minibatches=2, epochs=4),
    "smollm2": dict(model=PRESETS["135m"], batch=4, seq=128, rm_batch=4, ppo_batch=4, prompt=64, new=32,
                    minibatches=1, epochs=1),
    # what configs/instructgpt.py:smollm2_hh,cpu runs (experiments/configs/real_model.py): pairs of 160
    # tokens in batches of 8, PPO on 8 prompts of 112 tokens with 32 new tokens
    "smollm2_cpu": dict(model=PRESETS["135m"], batch=8, seq=160, rm_batch=8, ppo_batch=8, prompt=112, new=32,
                        minibatches=1, epochs=1),
}
EOS, PAD = 2, 0


def median_time(fn, steps: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def layer_products(cfg) -> list[tuple[int, int]]:
    """(k, n) of one decoder layer's weight matmuls, in order: q, k, v, o, gate, up, down."""
    d, q, kv, f = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    return [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]


def matmul_mix(cfg) -> dict:
    """{(k, n): count}: the weight matmuls of one forward pass (each layer's `layer_products`; the
    LM head last), each the tokens times a k x n matrix. Products of one shape share a count (q's
    and o's where d_model = heads x head_dim, as in SmolLM2)."""
    mix = {}
    for kn in layer_products(cfg):
        mix[kn] = mix.get(kn, 0) + cfg.n_layers
    head = (cfg.d_model, cfg.vocab_size)
    mix[head] = mix.pop(head, 0) + 1
    return mix


def probe_rate(matmul, timer, cfg, rows: int, steps: int) -> dict:
    """`matmul(rows, k, n) -> f` (a thunk of one matmul) timed by `timer(f, steps)` at
    every shape of `matmul_mix`: FLOPs of the mix over its summed probe time."""
    probes, total_flops, total_s = [], 0.0, 0.0
    for (k, n), count in matmul_mix(cfg).items():
        t = timer(matmul(rows, k, n), steps)
        probes.append({"shape": [rows, k, n], "count": count, "seconds": t, "gflop_per_s": 2 * rows * k * n / t / 1e9})
        total_flops, total_s = total_flops + count * 2 * rows * k * n, total_s + count * t
    return {"gflop_per_s": total_flops / total_s / 1e9, "probes": probes}


def matmul_rate(cfg, rows: int, steps: int, dtype: str = "float32") -> dict:
    """XLA's matmul rate on this machine at a decoder step's own weight matmuls, weighted as one
    forward pass uses them (`probe_rate`), operands and result in `dtype`. The SFT step's FLOP rate
    is compared with the float32 one (`share_of_matmul_rate`); `trl_side` probes torch's at the
    same shapes."""
    rng = np.random.default_rng(0)
    mm = jax.jit(lambda x, y: x @ y)

    def matmul(rows, k, n):
        a = jnp.asarray(rng.standard_normal((rows, k)), dtype)
        b = jnp.asarray(rng.standard_normal((k, n)), dtype)
        return lambda: mm(a, b)
    return probe_rate(matmul, median_time, cfg, rows, steps)


def torch_matmul_rate(cfg, rows: int, steps: int, dtype: str = "float32") -> dict:
    """torch's matmul rate at `matmul_rate`'s shapes and weights (what TRL's steps run on)."""
    import torch
    gen = torch.Generator().manual_seed(0)

    def matmul(rows, k, n):
        a, b = (torch.randn(*s, generator=gen).to(getattr(torch, dtype)) for s in ((rows, k), (k, n)))
        return lambda: a @ b
    return probe_rate(matmul, median_time, cfg, rows, steps)


def random_setup(cfg):
    """What our timed programs start from, at model shape `cfg`: (cfg with the benchmark's EOS and
    PAD ids, an LM-head model (seed 0), a scalar-head model (seed 1), AdamW and its schedule,
    `ids(*shape)` drawing random token ids from a generator of its own). Also used by
    tools/benchmark_tunix.py and tools/profile_ops.py."""
    cfg = cfg.replace(eos_token_id=EOS, pad_token_id=PAD)
    rng = np.random.default_rng(0)
    ids = lambda *s: jnp.asarray(rng.integers(3, cfg.vocab_size, s), jnp.int32)
    tx, sched = make_optimizer(1e-5, 1000)
    return cfg, init_model(cfg, seed=0), init_model(cfg, head="scalar", seed=1), tx, sched, ids


def ours(shape: dict, steps: int, mesh=None) -> dict:
    cfg, lm, scalar, tx, sched, ids = random_setup(shape["model"])
    B, T, R = shape["batch"], shape["seq"], shape["rm_batch"]
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # the steps donate their state
    out = {}

    tokens = ids(B, T)
    batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens), "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.broadcast_to(jnp.arange(T), (B, T))}
    mesh = mesh or make_mesh()  # default: the run's mesh, every device on the data axis

    def time_step(step_fn, state, batch) -> float:
        """Median seconds of a train step compiled as a stage compiles it (`compile_step`: explicit
        shardings, the state donated), fed its own output state."""
        step, state = compile_step(step_fn, state, batch, mesh)
        box = [state]

        def once():
            box[0], m = step(box[0], batch, jax.random.key(0))
            return m["loss"]
        return median_time(once, steps)

    state = TrainState(copy(lm.params), tx.init(lm.params), jnp.zeros((), jnp.int32))
    t = time_step(sft_lib.make_sft_step(lm.graphdef, tx, sched), state, batch)
    rate = matmul_rate(cfg, B * T, steps)
    gflops = flops_per_token(cfg, T) * B * T / t / 1e9  # the step's model FLOPs (forward, backward) per second
    out["sft"] = {"step_s": t, "tokens_per_s": B * T / t, "gflop_per_s": gflops,
                  "share_of_matmul_rate": gflops / rate["gflop_per_s"]}
    out["matmul"] = rate

    # the rm stage's step: `ensemble_step` on one member's state (`member_state`), the batch's
    # member axis 1
    rm_tokens = ids(R, 1, 2, T)
    rm_batch = {"tokens": rm_tokens, "mask": jnp.ones_like(rm_tokens), "ranks": jnp.tile(jnp.arange(2), (R, 1, 1)),
                "valid": jnp.ones((R, 1, 2), bool)}
    state = rm_lib.member_state([copy(scalar.params)], tx)
    t = time_step(rm_lib.ensemble_step(rm_lib.make_rm_step(scalar.graphdef, tx, sched)), state, rm_batch)
    out["rm"] = {"step_s": t, "tokens_per_s": R * 2 * T / t}

    out["ppo"] = ppo_times(shape, lm, scalar, tx, sched, ids, steps)
    return out


def ppo_program(shape: dict, lm, scalar, tx, ids) -> dict:
    """What our PPO iteration runs on at `shape` (ppo_batch, prompt, new, minibatches, epochs):
    the config's PPO settings, sampling (every response full length), the models, the state
    (policy and reference from `lm`, value and reward from `scalar`), the frozen constants and
    random prompts drawn by `ids(*shape)`. Used by `ppo_times` and tools/profile_ops.py."""
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # the full step donates its state
    pcfg = base().ppo  # the config's PPO settings, at the benchmark's shape
    pcfg.update(minibatches=shape["minibatches"], epochs=shape["epochs"])
    # eos -1: every response has full length
    sampling = SamplingConfig(max_new_tokens=shape["new"], eos_token_ids=(-1,), pad_token_id=PAD)
    params = {"policy": copy(lm.params), "value": copy(scalar.params)}
    Bp, Pl = shape["ppo_batch"], shape["prompt"]
    return dict(pcfg=pcfg, sampling=sampling,
                models=ppo_lib.PPOModels(lm.graphdef, scalar.graphdef, ModelReward(scalar.graphdef)),
                state=PPOState(params, tx.init(params), jnp.zeros((), jnp.int32), jnp.float32(0.05), None),
                constants={"reference": lm.params, "reward": scalar.params},
                prompts={"prompt": ids(Bp, Pl), "prompt_mask": jnp.ones((Bp, Pl), jnp.int32)})


def ppo_times(shape: dict, lm, scalar, tx, sched, ids, steps: int) -> dict:
    """Our PPO iteration (one donated program) and its three phases each jitted alone, at `shape`
    (`ppo_program`). Also used by benchmark_tunix."""
    prog = ppo_program(shape, lm, scalar, tx, ids)
    pcfg, sampling, models, state, constants, prompts = (prog[k] for k in (
        "pcfg", "sampling", "models", "state", "constants", "prompts"))
    Bp, Pl = shape["ppo_batch"], shape["prompt"]
    gen = jax.jit(lambda st, b, r: generate(lm.graphdef, st.params["policy"], b["prompt"], b["prompt_mask"], r,
                                            sampling))
    g = gen(state, prompts, jax.random.key(0))
    score = jax.jit(lambda st, c, b, resp, m: ppo_lib.score_rollout(pcfg, sampling, models, st, c, b["prompt"],
                                                                     b["prompt_mask"], resp, m))
    data, _ = score(state, constants, prompts, g.tokens_BxN, g.mask_BxN)
    # the new parameters and optimizer state are returned, as in a run: with the loss alone XLA
    # drops the backward pass and the optimizer step as dead code. The old ones are donated and
    # the new ones passed on, as the iteration does: without, every call wrote the new state
    # (3.2 GB at the SmolLM2 shape) to new buffers and took 5.61 s against 3.79 s donated
    # (docs/benchmarks.md, the update phase's figure before the fix)
    upd = jax.jit(lambda p, o, d, r: ppo_lib.update(pcfg, models, tx, p, o, d, {}, r), donate_argnums=(0, 1))
    held = []

    def update():
        out = upd(*held[0], data, jax.random.key(2))
        held[0] = out[:2]
        return held[0]
    phases = {
        "generation_s": median_time(lambda: gen(state, prompts, jax.random.key(1)).tokens_BxN, steps),
        "scoring_s": median_time(lambda: score(state, constants, prompts, g.tokens_BxN, g.mask_BxN)[0].advantages_BxN,
                                 steps),
    }
    held.append(jax.tree.map(jnp.copy, (state.params, state.opt_state)))  # copied only now: the phases
    phases["update_s"] = median_time(update, steps)                       # above ran without it
    held.clear()
    def iteration(reuse_forward):
        """(median seconds, XLA's temporary bytes) of the iteration program."""
        full = jax.jit(ppo_lib.make_ppo_step(pcfg, sampling, models, tx, sched, reuse_forward=reuse_forward),
                       donate_argnums=0)
        box = [jax.tree.map(jnp.copy, state)]
        full = full.lower(box[0], prompts, jax.random.key(3), constants).compile()
        temp = getattr(full.memory_analysis(), "temp_size_in_bytes", None)

        def ppo():
            box[0], m, _ = full(box[0], prompts, jax.random.key(3), constants)
            return m["loss"]
        return median_time(ppo, steps), temp
    # the iteration as a run takes it (at 1 epoch x 1 minibatch the update's gradient goes through
    # the scoring's forward pass, train.ppo.one_pass), and with a second forward pass in the update
    t, temp = iteration(None)
    out = {"iteration_s": t, "one_pass": ppo_lib.one_pass(pcfg), "temp_bytes": temp}
    if ppo_lib.one_pass(pcfg):
        out["iteration_two_pass_s"], out["temp_bytes_two_pass"] = iteration(False)
    return {**out, "sequences_per_s": Bp / t, "tokens_per_s": Bp * (Pl + shape["new"]) / t, **phases}


class StepClock:
    """A transformers callback: the gaps between optimizer steps."""
    def __new__(cls):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.marks = []

            def on_step_end(self, args, state, control, **kw):
                self.marks.append(time.perf_counter())

            def step_s(self, skip=2):
                gaps = np.diff(self.marks)[skip:]
                return float(np.median(gaps)) if len(gaps) else float("nan")
        return Clock()


def hf_config(cfg):
    """The transformers config of our model config (the same architecture, for the torch side)."""
    import transformers
    hf = to_hf_config(cfg)
    return transformers.AutoConfig.for_model(**{k: v for k, v in hf.items() if k != "model_type"},
                                             model_type=hf["model_type"])


def trl_side(shape: dict, steps: int, settings: str = "matched") -> dict:
    import datasets
    import torch
    import transformers
    import trl
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    cfg = shape["model"].replace(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=1)
    hf_cfg = hf_config(cfg)
    hf_cfg.num_labels = 1
    lm = lambda: transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    seqcls = lambda: transformers.AutoModelForSequenceClassification.from_config(hf_cfg, dtype=torch.float32)
    from rlhf_jax.data.synthetic import tokenizer
    tok = tokenizer()
    B, T, R, n = shape["batch"], shape["seq"], shape["rm_batch"], steps + 3
    rng = np.random.default_rng(0)
    ids = lambda *s: rng.integers(3, cfg.vocab_size, s).tolist()
    common = dict(output_dir=tempfile.mkdtemp(), report_to=[], save_strategy="no", logging_strategy="no",
                  use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0, learning_rate=1e-5,
                  **trl_settings(settings))
    out = {"version": trl.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "settings": settings}

    clock = StepClock()
    data = datasets.Dataset.from_dict({"input_ids": ids(B * n, T)})
    trainer = trl.SFTTrainer(model=lm(), processing_class=tok, train_dataset=data, callbacks=[clock],
                             args=trl.SFTConfig(per_device_train_batch_size=B, max_steps=n, max_length=T,
                                                packing=False, **common))
    trainer.train()
    gflops = flops_per_token(cfg, T) * B * T / clock.step_s() / 1e9
    out["matmul"] = torch_matmul_rate(cfg, B * T, steps)  # torch's limit at the shapes ours is measured at
    out["sft"] = {"step_s": clock.step_s(), "tokens_per_s": B * T / clock.step_s(), "gflop_per_s": gflops,
                  "share_of_matmul_rate": gflops / out["matmul"]["gflop_per_s"]}
    # what the trainers ran under (the same args for all three)
    out["bf16"], out["gradient_checkpointing"] = bool(trainer.args.bf16), bool(trainer.args.gradient_checkpointing)

    clock = StepClock()
    data = datasets.Dataset.from_dict({"chosen_ids": ids(R * n, T), "rejected_ids": ids(R * n, T)})
    trainer = trl.RewardTrainer(model=seqcls(), processing_class=tok, train_dataset=data, callbacks=[clock],
                                args=trl.RewardConfig(per_device_train_batch_size=R, max_steps=n, max_length=T,
                                                      **common))
    trainer.train()
    out["rm"] = {"step_s": clock.step_s(), "tokens_per_s": R * 2 * T / clock.step_s()}

    clock = StepClock()
    Bp, Pl = shape["ppo_batch"], shape["prompt"]
    data = datasets.Dataset.from_dict({"input_ids": ids(Bp * n, Pl)})
    args = PPOConfig(per_device_train_batch_size=Bp, total_episodes=Bp * n, num_mini_batches=shape["minibatches"],
                     num_ppo_epochs=shape["epochs"], response_length=shape["new"], stop_token=None,
                     local_rollout_forward_batch_size=Bp, num_sample_generations=0, temperature=1.0,
                     missing_eos_penalty=None, **common)
    trainer = PPOTrainer(args=args, processing_class=tok, model=lm(), ref_model=lm(), reward_model=seqcls(),
                         value_model=seqcls(), train_dataset=data, callbacks=[clock])
    trainer.train()
    t = clock.step_s()
    out["ppo"] = {"iteration_s": t, "sequences_per_s": Bp / t, "tokens_per_s": Bp * (Pl + shape["new"]) / t}
    return out


def compare(o: dict, t: dict) -> dict:
    """Our figures `o` over TRL's `t` (from `ours` and `trl_side`), and whether the targets are met."""
    ratios = {"sft_tokens_per_s": o["sft"]["tokens_per_s"] / t["sft"]["tokens_per_s"],
              "rm_tokens_per_s": o["rm"]["tokens_per_s"] / t["rm"]["tokens_per_s"],
              "ppo_iteration_speedup": t["ppo"]["iteration_s"] / o["ppo"]["iteration_s"]}
    if "iteration_two_pass_s" in o["ppo"]:  # ours with the update's own forward pass, as before one_pass
        ratios["ppo_iteration_speedup_two_pass"] = t["ppo"]["iteration_s"] / o["ppo"]["iteration_two_pass_s"]
    if "matmul" in t:  # the two libraries' matmul rates at the SFT step's shapes, one over the other
        ratios["matmul_rate_xla_over_torch"] = o["matmul"]["gflop_per_s"] / t["matmul"]["gflop_per_s"]
    return {"ratio_ours_over_trl": ratios,
            "targets_met": {"sft_1x": ratios["sft_tokens_per_s"] >= 1, "rm_1x": ratios["rm_tokens_per_s"] >= 1,
                            "sft_1.3x": ratios["sft_tokens_per_s"] >= 1.3, "rm_1.3x": ratios["rm_tokens_per_s"] >= 1.3,
                            "ppo_3x": ratios["ppo_iteration_speedup"] >= 3,
                            "sft_75pct_of_matmul_rate": o["sft"]["share_of_matmul_rate"] >= 0.75}}


def main():
    ap = parser(__doc__, out=True)
    ap.add_argument("--shapes", default="tiny,smollm2")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--trl-settings", default="matched", help="matched (float32, no activation checkpointing, as "
                    "our steps run: the default) or default (TRL's own: bfloat16 autocast and activation "
                    "checkpointing on every device, CPU included)")
    args = ap.parse_args()
    unknown = [n for n in args.shapes.split(",") if n not in SHAPES]
    if unknown:
        ap.error(f"unknown shape {', '.join(unknown)}; valid: {', '.join(SHAPES)}")
    result = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "cpu": cpu_info(), "jax": jax.__version__, "shapes": {}}
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        row = {"shape": {k: v for k, v in shape.items() if k != "model"},
               "params": shape["model"].num_params(), "ours": ours(shape, args.steps)}
        print(f"[bench] {name} ours: {json.dumps(row['ours'])}", file=sys.stderr, flush=True)
        if not args.no_trl:
            try:
                with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs
                    row["trl"] = trl_side(shape, args.steps, args.trl_settings)
            except ImportError as e:
                row["trl"] = {"error": f"TRL not importable ({e}); pip install trl==0.29.0"}
        if "sft" in row.get("trl", {}):
            row.update(compare(row["ours"], row["trl"]))
        result["shapes"][name] = row
    report(result, args.out)


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

"""Seeds as a vmapped axis: S seeds of a stage's step in one compiled program against S
sequential steps, at the task world's shapes (the tiny default model and batches).

    python tools/benchmark_seeds.py --seeds 4 --stages sft,rm,ppo

For each stage both sides do the same work: S models that differ only in their seed (init
and data), one step each on their own batch. The vmapped side stacks the S states, batches,
rngs and frozen constants on a leading axis and runs `jax.vmap(step)` once; the sequential
side calls one jitted single-seed step S times, as S separate runs would. Prints one JSON
object with seconds per round (S steps) and the speed-up.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.common import base  # noqa: E402
from rlhf_jax.data import synthetic  # noqa: E402
from rlhf_jax.data.tokenize import TokenizeConfig, prompt_arrays, ranking_arrays, sft_arrays  # noqa: E402
from rlhf_jax.models import PRESETS, init_model  # noqa: E402
from rlhf_jax.rewards import ModelReward  # noqa: E402
from rlhf_jax.train import ppo as ppo_lib  # noqa: E402
from rlhf_jax.train import rm as rm_lib  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.train.state import PPOState, TrainState  # noqa: E402
from tools._common import parser, report  # noqa: E402

TOK = synthetic.tokenizer()
TCFG = TokenizeConfig(max_len=24, max_prompt_len=10)


def model_cfg():
    return PRESETS["test"].replace(vocab_size=len(TOK), d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                                   max_seq_len=64, eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def seed_setup(stage: str, seeds: int, batch: int, tx=None):
    """(single-seed step, [per-seed (state, batch, constants)]) at the tiny shapes (AdamW unless `tx`)."""
    cfg, world = model_cfg(), synthetic.WorldConfig(seed=0, max_items=4)
    sched = lambda step: 1e-3
    tx = tx or make_optimizer(1e-3, 1000)[0]
    per_seed = []
    for s in range(seeds):
        lm, scalar = init_model(cfg, seed=s), init_model(cfg, head="scalar", seed=100 + s)
        rng = np.random.default_rng(s)
        if stage == "sft":
            arrays, _ = sft_arrays(synthetic.sft_records(world, 4 * batch, f"s{s}"), TOK, TCFG)
            rows = rng.permutation(len(arrays["tokens"]))[:batch]
            per_seed.append((TrainState(lm.params, tx.init(lm.params), jnp.zeros((), jnp.int32)),
                             {k: v[rows] for k, v in arrays.items()}, None))
            step = sft_lib.make_sft_step(lm.graphdef, tx, sched)
        elif stage == "rm":
            arrays, _ = ranking_arrays(synthetic.ranking_records(world, 2 * batch, 4, f"s{s}"), TOK, TCFG)
            rows = rng.permutation(len(arrays["tokens"]))[:batch // 2]
            per_seed.append((TrainState(scalar.params, tx.init(scalar.params), jnp.zeros((), jnp.int32)),
                             {k: v[rows] for k, v in arrays.items()}, None))
            step = rm_lib.make_rm_step(scalar.graphdef, tx, sched, center_coef=0.01)
        else:
            hp = base().ppo
            models = ppo_lib.PPOModels(lm.graphdef, scalar.graphdef, ModelReward(scalar.graphdef))
            arrays, _ = prompt_arrays(synthetic.prompts(world, batch, f"s{s}"), TOK, TCFG)
            params = {"policy": lm.params, "value": scalar.params}
            state = PPOState(params, tx.init(params), jnp.zeros((), jnp.int32), jnp.float32(hp.kl_coef), None)
            per_seed.append((state, {"prompt": arrays["tokens"], "prompt_mask": arrays["mask"]},
                             {"reference": lm.params, "reward": scalar.params}))
            sampling = ppo_lib.sampling_config(base().sampling, TOK, hp.temperature)
            step = ppo_lib.make_ppo_step(hp, sampling, models, tx, sched)
    return step, per_seed


def timed(fn, rounds: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    t = time.perf_counter()
    for _ in range(rounds):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / rounds


def measure(stage: str, seeds: int, batch: int, rounds: int) -> dict:
    step, per_seed = seed_setup(stage, seeds, batch)
    with_constants = per_seed[0][2] is not None
    call = (lambda s, b, r, c: step(s, b, r, c)) if with_constants else (lambda s, b, r, c: step(s, b, r))
    one = jax.jit(call)
    many = jax.jit(jax.vmap(call))
    keys = jax.random.split(jax.random.key(0), seeds)
    states, batches = stack([p[0] for p in per_seed]), stack([p[1] for p in per_seed])
    constants = stack([p[2] for p in per_seed]) if with_constants else None
    vm = timed(lambda: many(states, batches, keys, constants)[1], rounds)
    seq = timed(lambda: [one(s, b, k, c)[1] for (s, b, c), k in zip(per_seed, keys)], rounds)
    return {"batch": batch, "vmapped_round_s": vm, "sequential_round_s": seq, "speedup": seq / vm}


def main():
    ap = parser(__doc__, out=True)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--stages", default="sft,rm,ppo")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    batches = {"sft": 64, "rm": 64, "ppo": 64}  # the tiny default's batch sizes (rm: 32 rankings of K = 4)
    result = {"device": jax.devices()[0].device_kind, "cpu_devices": jax.device_count(), "seeds": args.seeds,
              "stages": {s: measure(s, args.seeds, batches[s], args.rounds) for s in args.stages.split(",")}}
    report(result, args.out)


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

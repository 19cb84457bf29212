"""A/B of one PPO iteration at 1 epoch x 1 minibatch: the update's gradient pulled back through the
scoring's forward pass (`train.ppo.one_pass`, what a run does) against a second forward pass of
the policy and value model inside the update. tools/benchmark_pipeline.py's shapes, random weights
and prompts, float32, every response full length; both programs compiled first (XLA's temporary
bytes recorded), then timed interleaved, each fed its own new state; prints JSON.

    python tools/ab_one_pass.py --shape smollm2 --repeats 8 --out experiments/benchmarks/ppo_one_pass_cpu.json
    python tools/ab_one_pass.py --shape smollm2_cpu --lora_rank 8 --repeats 6   # as the real-model PPO runs

With --lora_rank R the policy and value model train rank-R adapters (alpha 2R, every block matrix)
over frozen float32 bases, the value model's head in full, as stage ppo builds them.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlhf_jax.hostenv import prepare_process  # noqa: E402

prepare_process()  # as a CLI run: its XLA flags, glibc's malloc with huge pages

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.common import base  # noqa: E402
from rlhf_jax.generate import SamplingConfig  # noqa: E402
from rlhf_jax.rewards import ModelReward  # noqa: E402
from rlhf_jax.train import lora as lora_lib  # noqa: E402
from rlhf_jax.train import ppo as ppo_lib  # noqa: E402
from rlhf_jax.train.state import PPOState  # noqa: E402
from tools._common import cpu_info, parser, report  # noqa: E402
from tools.benchmark_pipeline import PAD, SHAPES, random_setup  # noqa: E402


def main(argv=None):
    ap = parser(__doc__, out=True)
    ap.add_argument("--shape", default="smollm2", choices=sorted(SHAPES))
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--lora_rank", type=int, default=0, help="0: full fine-tuning (default)")
    args = ap.parse_args(argv)
    shape = SHAPES[args.shape]
    cfg, lm, scalar, tx, sched, ids = random_setup(shape["model"])
    hp = base().ppo
    hp.update(minibatches=1, epochs=1)
    sampling = SamplingConfig(max_new_tokens=shape["new"], eos_token_ids=(-1,), pad_token_id=PAD)
    lora = lora_lib.LoRAConfig(args.lora_rank, 2.0 * args.lora_rank) if args.lora_rank else None
    models = ppo_lib.PPOModels(lm.graphdef, scalar.graphdef, ModelReward(scalar.graphdef), lora)
    constants = {"reference": lm.params, "reward": scalar.params, **({"value_base": scalar.params} if lora else {})}
    Bp, Pl = shape["ppo_batch"], shape["prompt"]
    prompts = {"prompt": ids(Bp, Pl), "prompt_mask": jnp.ones((Bp, Pl), jnp.int32)}

    def fresh():
        if lora:  # as stage ppo builds them: fresh adapters (B = 0) over the frozen bases, the value head in full
            params = {"policy": lora_lib.split(lm.params, lora, jax.random.key(0)),
                      "value": lora_lib.split(scalar.params, lora, jax.random.key(1), extras=("head",))}
        else:
            params = jax.tree.map(jnp.copy, {"policy": lm.params, "value": scalar.params})
        return PPOState(params, tx.init(params), jnp.zeros((), jnp.int32), jnp.float32(0.05), None)

    arms, first = {}, {}
    for name, reuse in (("one_pass", True), ("two_pass", False)):
        state = fresh()
        step = jax.jit(ppo_lib.make_ppo_step(hp, sampling, models, tx, sched, reuse_forward=reuse),
                       donate_argnums=0).lower(state, prompts, jax.random.key(0), constants).compile()
        state, metrics, _ = step(state, prompts, jax.random.key(0), constants)  # the same first iteration
        first[name] = {k: float(metrics[k]) for k in ("loss", "policy_loss", "value_loss", "grad_norm", "kl")}
        arms[name] = {"step": step, "state": state, "times": [],
                      "temp_bytes": getattr(step.memory_analysis(), "temp_size_in_bytes", None)}
    for r in range(args.repeats):
        for arm in arms.values():
            t0 = time.perf_counter()
            arm["state"], m, _ = arm["step"](arm["state"], prompts, jax.random.key(r + 1), constants)
            jax.block_until_ready(m["loss"])
            arm["times"].append(time.perf_counter() - t0)
    a, b = (np.asarray(arms[n]["times"]) for n in ("one_pass", "two_pass"))
    report({"shape": {k: v for k, v in shape.items() if k != "model"}, "params": cfg.num_params(),
            "lora_rank": args.lora_rank,
            "cpu": cpu_info(), "jax": jax.__version__, "repeats": args.repeats,
            "first_iteration_metrics": first,
            **{n: {"median_s": float(np.median(arm["times"])), "all_s": [round(x, 3) for x in arm["times"]],
                   "temp_bytes": arm["temp_bytes"]} for n, arm in arms.items()},
            "two_pass_over_one_pass": float(np.median(b) / np.median(a)),
            "pairs_one_pass_faster": int((a < b).sum())}, args.out)


if __name__ == "__main__":
    main()

"""The Tunix side of tools/benchmark_tunix.py, run with the Python of a venv holding Google
Tunix (`pip install google-tunix==0.1.7`); it imports nothing from this project.

    /tmp/tunix-venv/bin/python tools/_tunix_side.py '{"vocab": 8192, ...}'

Builds Tunix's own Llama3 (`tunix.models.llama3`) at the given shape, with random weights: a
policy, a separate reference, and a critic and a reward model that are the same Llama body with a
one-output head; runs `PPOLearner.train` (rollout engine "vanilla") for warm-up + timed
iterations on random prompts of exactly `prompt` tokens; and prints one JSON line on stdout:
iteration seconds (median of the timed global steps) and the median per-iteration time of each
phase Tunix exposes as a method (rollout generation; generation + scoring + GAE; actor update;
critic update).
"""
from __future__ import annotations

import json
import statistics
import sys
import time


def main(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    import tunix
    from tunix.models.llama3 import model as llama3
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.ppo import ppo_learner
    from tunix.rl.rollout import base_rollout

    V, B, P, N = spec["vocab"], spec["batch"], spec["prompt"], spec["new"]
    warmup, steps = spec["warmup"], spec["steps"]

    class IdTokenizer:
        """Prompts are space-separated token ids; no BOS (bos_id 0 is falsy, so the sampler
        prepends nothing), pad 0, eos 2 (generation ignores it: eos_tokens=[-1] below)."""
        def encode(self, text, **kw):
            if not isinstance(text, str):  # the learner hands each prompt over as a (1,) string array
                text = str(np.asarray(text).reshape(-1)[0])
            return [int(t) for t in text.split()]

        def decode(self, ids, **kw):
            return " ".join(str(int(i)) for i in ids)

        def bos_id(self):
            return 0

        def eos_id(self):
            return 2

        def pad_id(self):
            return 0

    cfg = llama3.ModelConfig(num_layers=spec["layers"], vocab_size=V, embed_dim=spec["d_model"],
                             hidden_dim=spec["d_ff"], num_heads=spec["heads"], head_dim=spec["head_dim"],
                             num_kv_heads=spec["kv_heads"], rope_theta=int(spec["rope_theta"]),
                             norm_eps=spec["norm_eps"], weight_tying=True)

    class Scalar(nnx.Module):
        """A Llama3 body with a one-output head: [B, T] tokens -> [B, T, 1] scores, the form
        `tunix.rl.common.compute_score` reads from the critic and the reward model."""
        def __init__(self, seed):
            self.body = llama3.Llama3(cfg, rngs=nnx.Rngs(seed))
            self.head = nnx.Linear(cfg.embed_dim, 1, rngs=nnx.Rngs(seed + 100))

        def __call__(self, input_tokens, positions, cache, attention_mask, **kw):
            x = self.body.embedder.encode(input_tokens)
            for layer in self.body.layers:
                _, x = layer(x, positions, None, attention_mask)
            return self.head(self.body.final_norm(x)), None

    axis = jax.sharding.AxisType.Auto  # jax 0.10's default mesh axis type is Explicit
    mesh = jax.make_mesh((1, len(jax.devices())), ("fsdp", "tp"), axis_types=(axis, axis))
    with jax.set_mesh(mesh):
        actor = llama3.Llama3(cfg, rngs=nnx.Rngs(0))
        reference = llama3.Llama3(cfg, rngs=nnx.Rngs(0))
        critic, reward = Scalar(1), Scalar(2)
    lr = 1e-5
    n_iter = warmup + steps
    train_cfg = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.adamw(lr), critic_optimizer=optax.adamw(lr), eval_every_n_steps=10**9,
        max_steps=n_iter, mini_batch_size=B, train_micro_batch_size=B)
    rollout_cfg = base_rollout.RolloutConfig(max_tokens_to_generate=N, max_prompt_length=P, temperature=1.0,
                                             kv_cache_size=P + N + 8, eos_tokens=[-1])
    roles = rl_cluster_lib.Role
    cluster_cfg = rl_cluster_lib.ClusterConfig(
        role_to_mesh={r: mesh for r in (roles.ACTOR, roles.CRITIC, roles.REFERENCE, roles.REWARD, roles.ROLLOUT)},
        rollout_engine="vanilla", offload_to_cpu=False, training_config=train_cfg, rollout_config=rollout_cfg)
    cluster = rl_cluster_lib.RLCluster(actor=actor, critic=critic, reference=reference, reward=reward,
                                       tokenizer=IdTokenizer(), cluster_config=cluster_cfg)
    learner = ppo_learner.PPOLearner(rl_cluster=cluster, ppo_config=ppo_learner.PPOConfig(num_iterations=1))

    # per-phase wall times: wrap the methods the learner calls, blocking on their results
    log: dict[str, list[float]] = {}

    def timed(obj, name, key, result=lambda out: out):
        """Wrap obj.name to record its wall time, until `result(out)` is computed: the updates
        return nothing and dispatch asynchronously, so those block on the trained model's state."""
        fn = getattr(obj, name)

        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            jax.block_until_ready(jax.tree.leaves(result(out)))
            log.setdefault(key, []).append(time.perf_counter() - t)
            return out
        setattr(obj, name, wrapper)

    lengths = []  # response lengths, to show that every response ran to full length
    timed(cluster, "generate", "generation_s", lambda out: lengths.extend(len(t) for t in out.tokens) or out.tokens)
    timed(learner, "_generate_and_compute_advantage", "generation_and_scoring_s")
    timed(cluster, "update_actor", "actor_update_s", lambda _: nnx.state(cluster.actor_trainer.model))
    timed(cluster, "update_critic", "critic_update_s", lambda _: nnx.state(cluster.critic_trainer.model))
    marks = []
    step_fn = learner._run_global_step

    def step(*a, **kw):
        out = step_fn(*a, **kw)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        jax.block_until_ready(nnx.state(cluster.critic_trainer.model))
        marks.append(time.perf_counter())
        return out
    learner._run_global_step = step

    rng = np.random.default_rng(0)
    data = [{"prompts": [" ".join(map(str, row)) for row in rng.integers(3, V, (B, P))]} for _ in range(n_iter)]
    marks.append(time.perf_counter())
    learner.train(data)
    gaps = np.diff(marks)[warmup:]
    skip = lambda v: v[warmup:] if len(v) == n_iter else v  # one call per iteration: drop the warm-up ones
    phases = {k: statistics.median(skip(v)) for k, v in log.items()}
    phases["scoring_s"] = phases["generation_and_scoring_s"] - phases["generation_s"]
    phases["update_s"] = phases["actor_update_s"] + phases["critic_update_s"]
    return {"version": getattr(tunix, "__version__", None) or _version("google-tunix"), "jax": jax.__version__,
            "flax": _version("flax"), "iterations_timed": len(gaps), "iteration_s": float(np.median(gaps)),
            "iteration_times_s": [float(g) for g in gaps],
            "response_tokens_min_max": [min(lengths), max(lengths)], **phases}


def _version(dist: str):
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("TUNIX_RESULT " + json.dumps(result), flush=True)

"""PPO iteration against Google Tunix 0.1.7's PPOLearner, at the same shape, side by side in one run.

    python tools/benchmark_tunix.py                              # the 6M-parameter Llama shape
    python tools/benchmark_tunix.py --shape smollm2 --steps 3
    python tools/benchmark_tunix.py --scan-unroll 4              # our layers unrolled (4 = n_layers)
    python tools/benchmark_tunix.py --no-tunix --decode-layers scan   # our side alone, one setting

Tunix is not a project dependency. Install it in a venv of its own, with this project's jax and
flax versions (its mesh is built here with `AxisType.Auto`, which jax 0.10 needs):

    python3 -m venv /tmp/tunix-venv
    /tmp/tunix-venv/bin/pip install google-tunix==0.1.7 jax==0.10.2 flax==0.12.8

Our side runs in this process: the PPO iteration exactly as tools/benchmark_pipeline.py times it
(one jitted program: generation, scoring by policy / reference / value / reward forward passes +
GAE, update; the new parameters and optimizer state returned), and each phase jitted alone. The
Tunix side runs tools/_tunix_side.py with --tunix-python: Tunix's own Llama3 at the same shape
(tied embeddings; the critic and reward model are that body with a one-output head), separate
reference, `PPOLearner.train` with the "vanilla" rollout engine, 1 PPO epoch, 1 minibatch; its
phases are the wall times of the methods the learner calls (rollout generation; generation +
log-probs + values + rewards + GAE; actor update; critic update). Both sides: random weights,
random prompts of exactly `prompt` tokens, `new` tokens sampled at temperature 1 with no EOS stop
(every response full length), fp32, on the default device. The Tunix process inherits this one's
environment, so both sides compile with the same XLA flags (YNNPACK's fused products,
rlhf_jax/hostenv.py) and run with the same huge pages; the JSON's `cpu` records them. Iteration seconds are medians over
`--steps` iterations after warm-up; Tunix's iteration is the wall time of one global step of its
training loop, host work included (tokenizing the prompts, padding, metrics), as a Tunix run pays
it. The sides run one after the other, not interleaved: the JSON records the load average around
each. Prints one JSON object; `tunix_over_ours` is Tunix's iteration
time over ours (> 1: ours is faster). If the Tunix venv is missing, the "tunix" entry is an error
saying how to install it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._common import cpu_info, parser, report  # noqa: E402

# model shape (our ModelConfig fields), PPO batch, prompt length, new tokens; 1 epoch x 1 minibatch
SHAPES = {
    "llama6m": dict(model=dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64,
                               d_ff=1024, max_seq_len=256, tie_embeddings=True),
                    ppo_batch=32, prompt=64, new=32),
    "smollm2": dict(model="135m", ppo_batch=4, prompt=64, new=32),
}
DEFAULT_TUNIX_PYTHON = "/tmp/tunix-venv/bin/python"
INSTALL = ("python3 -m venv /tmp/tunix-venv && /tmp/tunix-venv/bin/pip install google-tunix==0.1.7 "
           "jax==<this venv's jax> flax==<this venv's flax>")


def model_config(shape: dict, scan_unroll: int = 1, decode_layers: str = "auto"):
    """Our ModelConfig for a SHAPES entry (a preset name or ModelConfig fields), fp32."""
    from rlhf_jax.models import PRESETS, ModelConfig
    m = shape["model"]
    cfg = PRESETS[m] if isinstance(m, str) else ModelConfig(**m)
    return cfg.replace(param_dtype="float32", dtype="float32", scan_unroll=scan_unroll, decode_layers=decode_layers)


def tunix_spec(shape: dict, warmup: int, steps: int) -> dict:
    """What tools/_tunix_side.py reads: the same model and batch shape in plain numbers."""
    c = model_config(shape)
    return dict(vocab=c.vocab_size, d_model=c.d_model, layers=c.n_layers, heads=c.n_heads, kv_heads=c.n_kv_heads,
                head_dim=c.head_dim, d_ff=c.d_ff, rope_theta=c.rope_theta, norm_eps=c.norm_eps,
                batch=shape["ppo_batch"], prompt=shape["prompt"], new=shape["new"], warmup=warmup, steps=steps)


def ours(shape: dict, steps: int, scan_unroll: int = 1, decode_layers: str = "auto") -> dict:
    """Our PPO iteration and its three phases, timed by tools/benchmark_pipeline.py's `ppo_times`
    (1 epoch x 1 minibatch)."""
    from tools.benchmark_pipeline import ppo_times, random_setup

    _, lm, scalar, tx, sched, ids = random_setup(model_config(shape, scan_unroll, decode_layers))
    out = ppo_times({**shape, "minibatches": 1, "epochs": 1}, lm, scalar, tx, sched, ids, steps)
    return {**out, "scan_unroll": scan_unroll, "decode_layers": decode_layers}


def tunix_side(shape: dict, warmup: int, steps: int, python: str, timeout: float) -> dict:
    """Run tools/_tunix_side.py with the Tunix venv's Python; its result, or {"error": ...}."""
    if not Path(python).exists():
        return {"error": f"no Tunix Python at {python}; install it with: {INSTALL} "
                         "(or pass --tunix-python PATH)"}
    script = Path(__file__).with_name("_tunix_side.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # Tunix imports nothing of ours
    try:
        proc = subprocess.run([python, str(script), json.dumps(tunix_spec(shape, warmup, steps))], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"the Tunix side ran past --tunix-timeout {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TUNIX_RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"the Tunix side exited with {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1][len("TUNIX_RESULT "):])


def main(argv=None):
    ap = parser(__doc__, out=True)
    ap.add_argument("--shape", default="llama6m", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=5, help="timed iterations per side, after warm-up")
    ap.add_argument("--warmup", type=int, default=2, help="Tunix iterations not timed (compilation)")
    ap.add_argument("--scan-unroll", type=int, default=1, help="our model.scan_unroll (n_layers: fully unrolled)")
    ap.add_argument("--tunix-python", default=DEFAULT_TUNIX_PYTHON, help="Python of a venv with google-tunix")
    ap.add_argument("--tunix-timeout", type=float, default=1800.0, help="seconds before the Tunix side is abandoned")
    ap.add_argument("--decode-layers", default="auto", choices=("auto", "scan", "per_layer"),
                    help="our model.decode_layers")
    ap.add_argument("--no-ours", action="store_true", help="run the Tunix side only")
    ap.add_argument("--no-tunix", action="store_true", help="run our side only (an A/B of our settings)")
    args = ap.parse_args(argv)
    shape = SHAPES[args.shape]
    # checks the shape, scan_unroll and decode_layers before anything runs
    cfg = model_config(shape, args.scan_unroll, args.decode_layers)

    import jax
    result = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "cpu": cpu_info(), "jax": jax.__version__,
              "shape_name": args.shape, "shape": {k: v for k, v in shape.items() if k != "model"},
              "model": {k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                                     "head_dim", "d_ff", "tie_embeddings", "dtype")},
              "params": cfg.num_params(), "epochs": 1, "minibatches": 1, "steps": args.steps,
              "command": "python tools/benchmark_tunix.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    # the 1-minute load average around each side: the two sides run one after the other, so a
    # change in other processes' load between them moves the ratio
    load = result["load_average_1m"] = {"start": os.getloadavg()[0]}
    if not args.no_ours:
        result["ours"] = ours(shape, args.steps, args.scan_unroll, args.decode_layers)
        load["after_ours"] = os.getloadavg()[0]
        print(f"[bench] ours: {json.dumps(result['ours'])}", file=sys.stderr, flush=True)
    if not args.no_tunix:
        result["tunix"] = tunix_side(shape, args.warmup, args.steps, args.tunix_python, args.tunix_timeout)
    load["after_tunix"] = os.getloadavg()[0]
    if "iteration_s" in result.get("tunix", {}) and "ours" in result:
        result["tunix_over_ours"] = result["tunix"]["iteration_s"] / result["ours"]["iteration_s"]
        result["target_1p5x_met"] = result["tunix_over_ours"] >= 1.5
    report(result, args.out)
    return result


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

"""A/B of glibc's malloc with and without transparent huge pages (rlhf_jax/hostenv.py): the
SmolLM2-shape SFT and RM steps (fp32, random tokens, tools/benchmark_pipeline.py's `smollm2`
shape), a torch training step of the same shape, and optionally a compile-bound CLI run, each in
fresh processes, the two settings alternating; prints JSON.

    python tools/ab_hugepages.py [--processes 2] [--steps 8] [--cases sft,rm,torch,micro] [--out FILE]

Each process compiles its step (with XLA's flags as a CLI run sets them: rlhf_jax/hostenv.py),
runs `--steps`, and reports the median of all but the first;
`micro` is `python -m rlhf_jax.main --config configs/instructgpt.py:micro
--config.stages=sft,rm,ppo,dpo` from an empty compile cache, timed whole.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"default": {"RLHF_JAX_HUGEPAGES": "0", "GLIBC_TUNABLES": ""},
            "huge_pages": {"RLHF_JAX_HUGEPAGES": "0", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}


def child(case: str, steps: int) -> None:
    """One process's step times: prints {"median_s", "all"}."""
    import numpy as np

    from tools import benchmark_pipeline as bp
    shape = bp.SHAPES["smollm2"]
    cfg = shape["model"].replace(eos_token_id=bp.EOS, pad_token_id=bp.PAD)
    B, T = shape["batch"], shape["seq"]
    rng = np.random.default_rng(0)
    if case == "torch":
        import torch
        import transformers

        from rlhf_jax.hostenv import usable_cores
        torch.set_num_threads(usable_cores())
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(bp.hf_config(cfg.replace(bos_token_id=1)),
                                                              dtype=torch.float32)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        x = torch.from_numpy(rng.integers(3, cfg.vocab_size, (B, T)))

        def step():
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
    else:
        from rlhf_jax.models import PRESETS
        from tools.profile_ops import advance, build_step
        jitted, box = build_step(case, PRESETS["135m"], B, T)  # the step as a run compiles it
        box = [box]

        def step():
            box[0] = advance(jitted, box[0])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": float(np.median(times[1:])), "all": [round(t, 3) for t in times]}))


def run(case: str, setting: str, steps: int) -> dict:
    from rlhf_jax.hostenv import xla_cpu_defaults
    env = {**os.environ, **SETTINGS[setting]}
    xla_cpu_defaults(env)  # XLA's flags as a CLI run sets them, in both settings
    if not env["GLIBC_TUNABLES"]:
        del env["GLIBC_TUNABLES"]
    if case == "micro":
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config", "configs/instructgpt.py:micro",
                            "--config.stages=sft,rm,ppo,dpo", "--workdir", f"{tmp}/run", "--no_wandb"], cwd=ROOT,
                           env={**env, "RLHF_JAX_JAX_CACHE": f"{tmp}/cache", "JAX_COMPILATION_CACHE_DIR": f"{tmp}/cache"},
                           check=True, capture_output=True)
            return {"median_s": time.perf_counter() - t0}
    out = subprocess.run([sys.executable, __file__, "--child", case, str(steps)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from tools._common import cpu_info, parser, report
    ap = parser(__doc__, out=True)
    ap.add_argument("--processes", type=int, default=2, help="processes per case and setting")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cases", default="sft,rm,torch,micro")
    args = ap.parse_args()
    from rlhf_jax import hostenv
    result = {"cpu": cpu_info(), "glibc": hostenv.glibc_version(), "thp": hostenv.thp_mode(),
              "steps": args.steps, "processes": args.processes, "cases": {}}
    for case in args.cases.split(","):
        rows = {s: [] for s in SETTINGS}
        for _ in range(args.processes):
            for s in SETTINGS:
                rows[s].append(run(case, s, args.steps))
                print(f"[ab_hugepages] {case} {s}: {rows[s][-1]['median_s']:.3f} s", file=sys.stderr, flush=True)
        med = {s: sorted(r["median_s"] for r in v) for s, v in rows.items()}
        result["cases"][case] = {"seconds": med, "runs": rows,
                                 "change": sum(med["huge_pages"]) / sum(med["default"]) - 1.0}
    report(result, args.out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()

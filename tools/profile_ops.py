"""Per-operation profile of a train step: where the time of each compiled XLA operation goes.

    python tools/profile_ops.py --step sft --batch 4 --seq 128 --out experiments/benchmarks/ops_sft.json
    python tools/profile_ops.py --step rm --batch 2 --seq 128      # pairs: 2 x 2 x 128 tokens, as the stage runs
    python tools/profile_ops.py --step sft --set scan_unroll=30    # a model field changed
    python tools/profile_ops.py --step sft --batch 8 --seq 160 --lora 8   # the LoRA step, as smollm2_hh,cpu trains
    python tools/profile_ops.py --step generate --batch 4 --seq 64 --new 32   # sampling, as a PPO rollout
    python tools/profile_ops.py --step ppo --batch 4 --seq 64 --new 32        # a PPO iteration, as benchmarked

The step (the one a run executes, new state returned) is compiled once and run under the JAX
profiler; the trace's events are the XLA runtime's executed operations (one per fusion, dot,
copy... and per layer when the layers are scanned). Each event is joined with the compiled
module's text: its opcode, the operations fused inside it, its result shape and the source
line and JAX operation it came from. Operations are grouped by phase (forward; backward, i.e.
JAX's transpose of the forward; the optimizer and the rest), by kind (matmul, transpose or
copy, reduction, elementwise, scan bookkeeping) and by the model function they come from
(attention, RMSNorm, RoPE, the MLP...). Prints one JSON object: the step's wall time, the
summed operation time, the groups and the `--top` costliest operations.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.models import PRESETS, init_model  # noqa: E402
from rlhf_jax.train import rm as rm_lib  # noqa: E402
from rlhf_jax.train import sft as sft_lib  # noqa: E402
from rlhf_jax.train.optim import make_optimizer  # noqa: E402
from rlhf_jax.sharding import make_mesh  # noqa: E402
from rlhf_jax.train.state import TrainState, compile_step  # noqa: E402
from tools._common import cpu_info, parser, report  # noqa: E402

CONTAINERS = {"while", "conditional", "call"}  # their events contain their bodies' events
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?\[[^\]]*\](?:\{[^}]*\})?|\([^)]*\)|\S+) (\S+?)\(")


def parse_module(text: str) -> dict[str, dict]:
    """Every instruction of a compiled module's text: name -> opcode, shape, the opcodes fused in
    it, its JAX operation name and its innermost source frame (function, file:line)."""
    files = dict(re.findall(r'^(\d+) "(.*)"$', text.split("FunctionNames")[0], re.M))
    section = lambda a, b: text.split(a, 1)[1].split(b, 1)[0] if a in text else ""
    functions = dict(re.findall(r'^(\d+) "(.*)"$', section("FunctionNames", "FileLocations"), re.M))
    locations = {i: (f, fn, line) for i, f, fn, line in re.findall(
        r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", section("FileLocations", "StackFrames"),
        re.M)}
    frames = dict(re.findall(r"^(\d+) \{file_location_id=(\d+)", section("StackFrames", "\n\n\n"), re.M))
    computations: dict[str, list[str]] = collections.defaultdict(list)
    inner: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)  # (op_name, source) inside
    instructions, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) \(", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            continue
        m = INSTRUCTION.match(line)
        if not m or current is None:
            continue
        name, shape, opcode = m.groups()
        computations[current].append(opcode)
        op_name = re.search(r'op_name="([^"]*)"', line)
        frame = re.search(r"stack_frame_id=(\d+)", line)
        source = ""
        if frame and frames.get(frame.group(1)) in locations:
            f, fn, ln = locations[frames[frame.group(1)]]
            source = f"{functions.get(fn, '?')} ({Path(files.get(f, '?')).name}:{ln})"
        calls = re.search(r"calls=%([\w.\-]+)", line)
        instructions[name] = {"opcode": opcode, "shape": shape.split("{")[0],
                              "op_name": op_name.group(1) if op_name else "", "source": source,
                              "calls": calls.group(1) if calls else None}
        if op_name:  # a dot's metadata first: it names a matmul fusion best
            inner[current].insert(0 if opcode == "dot" else len(inner[current]), (op_name.group(1), source))
    for ins in instructions.values():
        called = ins.pop("calls") or ""
        ins["fused"] = sorted(set(computations.get(called, [])) - {"parameter", "constant"})
        if not ins["op_name"] and inner.get(called):  # a fusion without metadata: its contents'
            ins["op_name"], ins["source"] = inner[called][0]
    return instructions


def kind(ins: dict) -> str:
    ops = set(ins["fused"]) | {ins["opcode"]}
    if ops & {"dot", "convolution"} or "ynn" in ins.get("name", ""):
        return "matmul"
    if ops & {"dynamic-update-slice", "dynamic-slice"}:
        return "scan slicing (dynamic-(update-)slice) + what is fused with it"
    if ops <= {"copy", "transpose", "bitcast", "reshape", "fusion", "broadcast", "slice", "concatenate"}:
        return "transpose / copy / layout"
    if ops & {"reduce", "reduce-window"}:
        return "reduction (+ fused elementwise)"
    if ops & {"gather", "scatter", "sort"}:
        return "gather / scatter"
    return "elementwise"


def phase(op_name: str) -> str:
    if "transpose(jvp" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer and other"


def trace_events(logdir: str) -> list[dict]:
    path = sorted(glob.glob(f"{logdir}/**/perfetto_trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as f:
        data = json.load(f)
    return [e for e in (data["traceEvents"] if isinstance(data, dict) else data) if e.get("ph") == "X"]


def advance(jitted, args: tuple, state: bool = True) -> tuple:
    """Call `jitted(*args)` and wait; with `state` (a step from `build_step`, whose state argument
    is donated) the next call's arguments carry the new state, else the same arguments."""
    out = jax.block_until_ready(jitted(*args))
    return (out[0], *args[1:]) if state else args


def profile(jitted, args, repeats: int, top: int = 25, state: bool = False) -> dict:
    """Run `jitted(*args)` `repeats` times under the profiler; per-operation times per call. With
    `state`, `jitted` is a step from `build_step` (state donated, the new one passed on)."""
    compiled = jitted.lower(*args).compile()
    instructions = parse_module(compiled.as_text())
    for name, ins in instructions.items():
        ins["name"] = name
    args = advance(jitted, args, state)  # warm
    import time
    with tempfile.TemporaryDirectory() as logdir:
        walls = []
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            for _ in range(repeats):
                t = time.perf_counter()
                args = advance(jitted, args, state)
                walls.append(time.perf_counter() - t)
        events = trace_events(logdir)
    per_op = collections.Counter()
    count = collections.Counter()
    executed = []
    for e in events:
        ins = instructions.get(e["name"])
        if ins is None or ins["opcode"] in CONTAINERS:
            continue
        executed.append(e)
        per_op[e["name"]] += e["dur"] / 1e6 / repeats
        count[e["name"]] += 1
    groups = {g: collections.Counter() for g in ("phase", "kind", "phase_kind", "source")}
    for name, s in per_op.items():
        ins = instructions[name]
        p, k = phase(ins["op_name"]), kind(ins)
        groups["phase"][p] += s
        groups["kind"][k] += s
        groups["phase_kind"][f"{p}: {k}"] += s
        groups["source"][ins["source"].split(" (")[0] or "?"] += s
    total = sum(per_op.values())
    table = lambda c: [{"group": g, "seconds": s, "share": s / total} for g, s in c.most_common()]
    rows = [{"op": n, "seconds": s, "share": s / total, "calls": count[n] // repeats, "phase": phase(instructions[n]["op_name"]),
             "kind": kind(instructions[n]), "shape": instructions[n]["shape"], "fused": instructions[n]["fused"],
             "source": instructions[n]["source"], "op_name": instructions[n]["op_name"][-120:]}
            for n, s in per_op.most_common(top)]
    return {"wall_s": float(np.median(walls)), "ops_s": total, "flops": _flops(compiled),
            "concurrency_s": concurrency(executed, repeats),
            "by_phase": table(groups["phase"]), "by_kind": table(groups["kind"]),
            "by_phase_kind": table(groups["phase_kind"]), "by_source": table(groups["source"])[:20], "top": rows}


def concurrency(events: list[dict], repeats: int = 1) -> dict[str, float]:
    """{"k": seconds per call during which exactly k operations ran at once}, k >= 1, from the
    trace's operation events (XLA:CPU runs independent operations side by side on its thread
    pool, so the summed operation time exceeds the wall time). sum(k * seconds) is the summed
    operation time; sum(seconds) the time any operation ran."""
    edges = sorted([(e["ts"], 1) for e in events] + [(e["ts"] + e["dur"], -1) for e in events])
    level, last, out = 0, None, collections.Counter()
    for t, step in edges:
        if level > 0:
            out[str(level)] += (t - last) / 1e6 / repeats
        level, last = level + step, t
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def build_step(step: str, cfg, B: int, T: int, devices=None, lora_rank: int = 0):
    """(step, its arguments (state, batch, rng[, constants])) as a run executes it: compiled by
    `compile_step` on a mesh over `devices` (default all; explicit shardings, the state donated and
    the new one returned, so XLA keeps the backward pass and the update and reuses the state's
    buffers). `lora_rank` > 0 (sft only): the sft stage's LoRA step, adapters of that rank (alpha
    16) on every block matrix, the base a constant. Call it through `advance`."""
    rng = np.random.default_rng(0)
    tx, sched = make_optimizer(1e-5, 1000)
    constants = None  # the LoRA step's frozen base (and no reference): passed after the rng
    if lora_rank and step != "sft":
        raise SystemExit(f"error: --lora is for --step sft, not {step}")
    if step == "sft":
        model = init_model(cfg, seed=0)
        tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (B, T)), jnp.int32)
        batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens), "segment_ids": jnp.ones_like(tokens),
                 "positions": jnp.broadcast_to(jnp.arange(T), (B, T))}
        lora, params = None, model.params
        if lora_rank:
            from rlhf_jax.train import lora as lora_lib
            lora = lora_lib.LoRAConfig(lora_rank, 16.0)
            params, constants = lora_lib.split(model.params, lora, jax.random.key(11)), (model.params, None)
        fn = sft_lib.make_sft_step(model.graphdef, tx, sched, lora=lora)
        state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    else:
        model = init_model(cfg, head="scalar", seed=1)
        tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (B, 2, T)), jnp.int32)
        batch = {"tokens": tokens, "mask": jnp.ones_like(tokens), "ranks": jnp.tile(jnp.arange(2), (B, 1)),
                 "valid": jnp.ones((B, 2), bool)}
        fn = rm_lib.make_rm_step(model.graphdef, tx, sched)
        state = TrainState(model.params, tx.init(model.params), jnp.zeros((), jnp.int32))
        if step == "rm":  # as the stage runs it: `ensemble_step` on one member's state, batch axis 1
            fn = rm_lib.ensemble_step(fn)
            batch = jax.tree.map(lambda x: x[:, None], batch)
            state = rm_lib.member_state([model.params], tx)
    jitted, state = compile_step(fn, state, batch, make_mesh(devices=devices), constants=constants)
    return jitted, (state, batch, jax.random.key(0)) + ((constants,) if constants is not None else ())


def build_generate(cfg, B: int, prompt: int, new: int):
    """(jitted sampling, its arguments): `new` tokens at temperature 1 after B random prompts of
    `prompt` tokens, no EOS stop (every response full length), as a PPO rollout samples."""
    from rlhf_jax.generate import SamplingConfig, generate
    model = init_model(cfg, seed=0)
    prompts = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (B, prompt)), jnp.int32)
    sampling = SamplingConfig(max_new_tokens=new, temperature=1.0, eos_token_ids=(), pad_token_id=0)
    fn = jax.jit(lambda params, p, mask, key: generate(model.graphdef, params, p, mask, key, sampling))
    return fn, (model.params, prompts, jnp.ones_like(prompts), jax.random.key(0))


def build_ppo(cfg, B: int, prompt: int, new: int):
    """(one PPO iteration, its arguments (state, prompts, rng, constants)) as
    tools/benchmark_pipeline.py times it: the state donated, 1 epoch x 1 minibatch (so the update's
    gradient goes through the scoring's forward pass), B prompts of `prompt` tokens, `new` sampled."""
    from rlhf_jax.train import ppo as ppo_lib
    from tools.benchmark_pipeline import ppo_program, random_setup
    _, lm, scalar, tx, sched, ids = random_setup(cfg)
    prog = ppo_program(dict(ppo_batch=B, prompt=prompt, new=new, minibatches=1, epochs=1), lm, scalar, tx, ids)
    step = ppo_lib.make_ppo_step(prog["pcfg"], prog["sampling"], prog["models"], tx, sched)
    return jax.jit(step, donate_argnums=0), (prog["state"], prog["prompts"], jax.random.key(3), prog["constants"])


def field_value(current, key: str, text: str):
    """`--set key=text` as the type of the field's current value: true/false for a flag, a number
    for a number, and for a field that is None (e.g. sliding_window) a number if it reads as one."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"error: --set {key}={text}: {key} is true or false")
        return text.lower() in ("true", "1")
    if current is None:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return None if text.lower() == "none" else text
    try:
        return type(current)(text)
    except ValueError:
        raise SystemExit(f"error: --set {key}={text}: {key} must be {type(current).__name__}") from None


def main():
    ap = parser(__doc__, out=True)
    ap.add_argument("--step", choices=("sft", "rm", "rm_plain", "generate", "ppo"), default="sft",
                    help="rm: the step as the rm stage runs it (an ensemble of one); rm_plain: without the member "
                         "axis; generate: sampling --new tokens after prompts of --seq tokens; ppo: one PPO "
                         "iteration on --batch prompts of --seq tokens, --new sampled")
    ap.add_argument("--new", type=int, default=32, help="with --step generate or ppo: tokens sampled per prompt")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--model", default="135m", help=f"a preset: {', '.join(PRESETS)}")
    ap.add_argument("--set", action="append", default=[], help="model field=value (e.g. scan_unroll=30)")
    ap.add_argument("--lora", type=int, default=0, metavar="RANK", help="with --step sft: the LoRA step (adapters "
                    "of this rank on every block matrix, alpha 16, the base frozen), as the sft stage runs it")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    cfg = PRESETS[args.model]
    fields = dict(item.partition("=")[::2] for item in args.set)  # applied together: a shape is checked whole
    unknown = sorted(set(fields) - set(vars(cfg)))
    if unknown:
        raise SystemExit(f"error: --set {', '.join(unknown)}: not a model field; valid: {', '.join(sorted(vars(cfg)))}")
    cfg = cfg.replace(**{key: field_value(getattr(cfg, key), key, value) for key, value in fields.items()})
    generating = args.step == "generate"
    if generating:
        jitted, fargs = build_generate(cfg, args.batch, args.seq, args.new)
        tokens = args.batch * args.new
    elif args.step == "ppo":
        jitted, fargs = build_ppo(cfg, args.batch, args.seq, args.new)
        tokens = args.batch * (args.seq + args.new)
    else:
        jitted, fargs = build_step(args.step, cfg, args.batch, args.seq, lora_rank=args.lora)
        tokens = args.batch * args.seq * (1 if args.step == "sft" else 2)
    out = {"step": args.step, "batch": args.batch, "seq": args.seq, "tokens": tokens, "model": args.model,
           "set": args.set, "lora_rank": args.lora, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "cpu": cpu_info(),
           **profile(jitted, fargs, args.repeats, args.top, state=not generating)}
    out["tokens_per_s"] = tokens / out["wall_s"]
    report(out, args.out, indent=1)


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # time what a CLI run executes: its XLA flags, glibc's malloc with huge pages
    main()

"""Synthetic instruction data: Self-Instruct, Evol-Instruct, and their diversity report.

    python -m rlhf_jax.generate_data self_instruct --model CKPT --seed-tasks FILE --n 500 --out DIR
    python -m rlhf_jax.generate_data evol_instruct --model CKPT --instructions FILE --rounds 2 --out DIR
    python -m rlhf_jax.generate_data report DIR

CKPT: a HF directory, a GGUF file or WORKDIR:STAGE (default: the SmolLM2-135M-Instruct GGUF that
tools/fetch_smollm2.py fetches). The seed tasks default to self_instruct_seed_tasks.jsonl in
$RLHF_JAX_DATA_DIR; --instructions (the input of Evol-Instruct) defaults to them too and may be a
Self-Instruct output (DIR/records.jsonl). Prompts and filter settings come from
configs/generate_data.py (`--config FILE:VARIANT`, `--set field=value`, `--smoke` for a tiny run).

Writes DIR/records.jsonl (validated sft records with their provenance), DIR/rejected.jsonl (every
rejected candidate with its reason), DIR/run.json (counts, time, generator statistics, config),
DIR/report.json and DIR/report.png (rlhf_jax/synth/report.py). Exit 2 on a bad flag, file or model.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import random
import shlex
import sys
import time
from pathlib import Path

from rlhf_jax.errors import ConfigError, UserError
from rlhf_jax.paths import data_file, smollm2_path

ROOT = Path(__file__).resolve().parents[1]
SEED_TASKS = "self_instruct_seed_tasks.jsonl"


def load_config(spec: str, smoke: bool = False, overrides: list[str] = ()):
    """The ConfigDict of FILE[:VARIANT] (+ the smoke variant), with `field.path=value` overrides."""
    path, _, variant = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {spec}: {file} is not a file")
    sys.path.insert(0, str(file.resolve().parents[1]))  # configs/ imports configs.variants
    module_spec = importlib.util.spec_from_file_location(f"_generate_data_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    variants = ",".join(v for v in (variant, "smoke" if smoke else "") if v) or None
    try:
        cfg = module.get_config(variants)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected field.path=value")
        node, *rest = key.split(".")
        parent, name = cfg, node
        for part in rest:
            if name not in parent or not hasattr(parent[name], "keys"):
                raise ConfigError(f"--set {item}: {key} is not a config field; sections: {sorted(cfg.keys())}")
            parent, name = parent[name], part
        if name not in parent:
            raise ConfigError(f"--set {item}: {key} is not a config field; valid here: {sorted(parent.keys())}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        try:
            parent[name] = value
        except TypeError as e:
            raise ConfigError(f"--set {item}: {e}") from None
    return cfg


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rlhf_jax.generate_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("self_instruct", "evol_instruct"):
        p = sub.add_parser(name)
        p.add_argument("--model", default=str(smollm2_path()), help="HF dir, GGUF file or WORKDIR:STAGE")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--config", default=str(ROOT / "configs" / "generate_data.py"), help="FILE[:VARIANT]")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
        p.add_argument("--smoke", action="store_true", help="add the config's smoke variant (a tiny run)")
        p.add_argument("--seed", type=int, default=None, help="overrides config.seed")
        p.add_argument("--seed-tasks", type=Path, default=None, help=f"default: $RLHF_JAX_DATA_DIR/{SEED_TASKS}")
        if name == "self_instruct":
            p.add_argument("--n", type=int, default=500, help="stop once this many records are kept")
            p.add_argument("--max-candidates", type=int, default=None,
                           help="or once this many candidates (checked between rounds)")
        else:
            p.add_argument("--instructions", type=Path, default=None, help="default: the seed tasks")
            p.add_argument("--limit", type=int, default=None, help="evolve a seeded sample of this many")
            p.add_argument("--rounds", type=int, default=None, help="overrides evol_instruct.rounds")
    p = sub.add_parser("report")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed-tasks", type=Path, default=None, help="the pool to measure overlap against "
                                                                 "(default: the one run.json names)")
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


def _seed_file(args) -> Path:
    return args.seed_tasks if args.seed_tasks is not None else data_file(SEED_TASKS)


def _reference(path: Path) -> list[str]:
    """The instructions a report measures overlap against: seed tasks, or any instruction file."""
    from rlhf_jax.synth.io import load_instructions, read_jsonl
    rows = read_jsonl(path)
    if rows and "instances" in rows[0]:
        return [r["instruction"] for r in rows]
    return [r["prompt"] for r in load_instructions(path)]


def generate(args) -> int:
    from rlhf_jax.synth.evol import run_evol_instruct
    from rlhf_jax.synth.generator import Generator
    from rlhf_jax.synth.io import load_instructions, load_seed_tasks, write_jsonl
    from rlhf_jax.synth.report import write_report
    from rlhf_jax.synth.self_instruct import run_self_instruct
    cfg = load_config(args.config, args.smoke, args.set)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.command == "self_instruct":
        if args.n < 1:
            raise ConfigError(f"--n {args.n}: must be >= 1")
        reference = _seed_file(args)
        inputs = load_seed_tasks(reference)
    else:
        reference = args.instructions if args.instructions is not None else _seed_file(args)
        inputs = load_instructions(reference)
        if args.limit is not None:
            inputs = random.Random(cfg.seed).sample(inputs, min(args.limit, len(inputs)))
        if args.rounds is not None:
            cfg.evol_instruct.rounds = args.rounds
    t0 = time.perf_counter()
    gen = Generator.load(args.model, cfg.sampling, seed=cfg.seed)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.command == "self_instruct":
        result = run_self_instruct(gen.complete, inputs, args.n, cfg, args.max_candidates)
    else:
        result = run_evol_instruct(gen.complete, inputs, cfg.evol_instruct.rounds, cfg)
    seconds = time.perf_counter() - t0
    out = args.out
    write_jsonl(out / "records.jsonl", result.records)
    write_jsonl(out / "rejected.jsonl", result.rejected)
    run = {"method": args.command, "model": str(args.model), "reference": str(reference), "inputs": len(inputs),
           "seconds": round(seconds, 1), "load_seconds": round(load_s, 1), "counts": result.counts(),
           "rounds": result.rounds, "generator": gen.stats.as_dict(),
           "command": "python -m rlhf_jax.generate_data " + shlex.join(args.argv),
           "config": cfg.to_dict()}
    (out / "run.json").write_text(json.dumps(run, indent=1, default=list) + "\n")
    report = write_report(out, _reference(Path(reference)), title=f"{args.command}: {Path(str(args.model)).name}")
    print(json.dumps({"out": str(out), "seconds": run["seconds"], **report["counts"]}, indent=1))
    return 0


def report(args) -> int:
    from rlhf_jax.synth.report import write_report
    d = args.dir
    for name in ("records.jsonl", "rejected.jsonl"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name}: missing; is {d} the --out of a generation run?")
    run = json.loads((d / "run.json").read_text()) if (d / "run.json").is_file() else {}
    reference = args.seed_tasks or (Path(run["reference"]) if "reference" in run else _seed_file(args))
    title = run.get("method", "generated set") + (f": {Path(run['model']).name}" if "model" in run else "")
    rep = write_report(d, _reference(reference), title=title)
    print(json.dumps(rep["counts"], indent=1))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rlhf_jax.data.records import DataError
    try:
        return report(args) if args.command == "report" else generate(args)
    except (UserError, DataError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # as rlhf_jax.main: XLA's flags, glibc's malloc with huge pages for XLA's buffers
    raise SystemExit(main())

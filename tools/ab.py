"""A/B of a timing tool in fresh processes, the two sides alternating.

    python tools/ab.py --pairs 3 --a-root ../parent --pick ours.iteration_s,ours.scoring_s \
        -- tools/benchmark_tunix.py --steps 3 --no-tunix
    python tools/ab.py --pairs 3 --a-env RLHF_JAX_YNN_FUSION=0 --pick shapes.smollm2.ours.sft.step_s \
        -- tools/benchmark_pipeline.py --shapes smollm2 --no-trl

Runs the tool after `--` once per side and pair, each in a fresh Python process (XLA reads its
flags once per process, and a process's first steps pay for its allocations): A then B in odd
pairs, B then A in even ones, so a drift of the machine's speed within an hour (10-20% on this
VM) or an effect of going second weighs on both sides alike; only ratios within a pair are read.

A side is the code of a checkout (`--a-root`, `--b-root`: e.g. a `git worktree` of the parent
commit; default this one) and environment variables (`--a-env`, `--b-env`, KEY=VALUE,
repeatable). The tool (a path relative to the checkout) runs with its checkout as working
directory and `--out FILE` appended; `--pick` names the numbers read from that JSON (dotted
paths). Both sides share JAX's persistent compile cache; the timing tools report steps after
their compiling one, so that changes compile times only.

Prints one JSON object: the sides, every run's picked numbers, their medians, and per number in
how many pairs B took less than A (numbers that are times: smaller is better).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools._common import cpu_info, parser, report  # noqa: E402


def pick(result: dict, path: str, source: str):
    """The number at dotted `path` of `result`; a missing key names the keys there."""
    node = result
    for i, key in enumerate(path.split(".")):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(path.split(".")[:i]) or "the top level"
            have = ", ".join(sorted(node)) if isinstance(node, dict) else type(node).__name__
            raise SystemExit(f"error: --pick {path}: no {key!r} at {where} of {source}'s JSON; there: {have}")
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise SystemExit(f"error: --pick {path}: {source}'s JSON has {type(node).__name__} there, not a number")
    return node


def side(root: str, env: list[str]) -> dict:
    bad = [e for e in env if "=" not in e]
    if bad:
        raise SystemExit(f"error: environment settings must be KEY=VALUE: {', '.join(bad)}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise SystemExit(f"error: no such checkout: {root}")
    return {"root": str(root), "env": dict(e.split("=", 1) for e in env)}


def run_once(s: dict, command: list[str], keys: list[str], timeout: float) -> dict:
    """Run the tool once on side `s`; its picked numbers."""
    script, *args = command
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        try:
            p = subprocess.run([sys.executable, str(Path(s["root"]) / script), *args, "--out", str(out)],
                               cwd=s["root"], env={**os.environ, **s["env"]}, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"error: {script} in {s['root']} ran past --timeout {timeout:g} s") from None
        if p.returncode:
            raise SystemExit(f"error: {script} in {s['root']} exited {p.returncode}:\n{p.stderr[-3000:]}")
        if not out.exists():
            raise SystemExit(f"error: {script} in {s['root']} exited 0 but wrote no --out file (does it take --out?)")
        try:
            result = json.loads(out.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {script} in {s['root']} wrote --out that is not JSON: {e}") from None
    return {k: pick(result, k, script) for k in keys}


def main(argv=None) -> dict:
    ap = parser(__doc__, out=True)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--a-root", default=str(ROOT), help="checkout whose code side A runs (default: this one)")
    ap.add_argument("--b-root", default=str(ROOT), help="checkout whose code side B runs (default: this one)")
    ap.add_argument("--a-env", action="append", default=[], help="KEY=VALUE for side A's processes")
    ap.add_argument("--b-env", action="append", default=[], help="KEY=VALUE for side B's processes")
    ap.add_argument("--pick", required=True, help="comma-separated dotted paths of numbers in the tool's JSON")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    ap.add_argument("command", nargs="+", help="after --: the tool (a path inside the checkout) and its flags")
    args = ap.parse_args(argv)
    if args.pairs < 1:
        raise SystemExit("error: --pairs must be at least 1")
    if Path(args.command[0]).is_absolute():
        raise SystemExit(f"error: the tool {args.command[0]} must be a path inside the checkouts (relative), "
                         "or both sides would run the same code")
    sides = {"a": side(args.a_root, args.a_env), "b": side(args.b_root, args.b_env)}
    if sides["a"] == sides["b"]:
        raise SystemExit("error: sides A and B are the same checkout with the same environment")
    keys = [k for k in args.pick.split(",") if k]
    runs = {"a": [], "b": []}
    for i in range(args.pairs):
        for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
            runs[name].append(run_once(sides[name], args.command, keys, args.timeout))
            print(f"[ab] pair {i + 1} side {name}: {json.dumps(runs[name][-1])}", file=sys.stderr, flush=True)
    out = {"command": "python tools/ab.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "tool": " ".join(args.command), "cpu": cpu_info(), "sides": sides, "pairs": args.pairs, "runs": runs,
           "medians": {n: {k: statistics.median(r[k] for r in runs[n]) for k in keys} for n in runs},
           "pairs_b_less": {k: sum(b[k] < a[k] for a, b in zip(runs["a"], runs["b"])) for k in keys}}
    report(out, args.out)
    return out


if __name__ == "__main__":
    main()

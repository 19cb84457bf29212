"""Fuzz the record readers: generated malformed files of every kind, format and policy.

    python tools/fuzz_readers.py --cases 10000 --seed 0

Prints JSON: outcome counts in total, per kind and policy, and per mutation, and the first
failing cases. Exits 1 if any read ended uncaught, hung, dropped a row silently, kept a
record that is not clean text, or rejected a valid file (see rlhf_jax/data/fuzz.py).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_jax.data import fuzz  # noqa: E402
from tools._common import parser  # noqa: E402


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--cases", type=int, default=10_000, help="files to generate (each read under both policies)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per read before it counts as a hang")
    ap.add_argument("--failures", type=int, default=20, help="failing cases to list")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    result = fuzz.run(args.cases, args.seed, args.timeout, keep_failures=args.failures)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    return 1 if any(result["totals"][o] for o in fuzz.BAD) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Near-duplicate removal: the library's datasketch MinHash LSH against the hand-written MinHash
it replaced (kept here only, for this comparison), on IMDb reviews from $RLHF_JAX_DATA_DIR.

    RLHF_JAX_DATA_DIR=../shared/data python tools/benchmark_dedup.py --sizes 10000,50000

Both use CurateConfig's defaults (threshold 0.8, 64 permutations, 16 bands, word 5-shingles)
on the first N reviews of imdb/train then imdb/test. Prints one JSON object: wall time and
duplicates found per implementation and size, and how many of the old one's duplicates the
new one also drops (and what each pair's exact shingle Jaccard is where they disagree).
"""
from __future__ import annotations

import collections
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from rlhf_jax.data import curate  # noqa: E402
from rlhf_jax.data.sources import iter_rows  # noqa: E402
from rlhf_jax.paths import data_dir  # noqa: E402
from tools._common import parser  # noqa: E402

# --- the replaced implementation, verbatim from rlhf_jax/data/curate.py before datasketch -------
_RNG = np.random.default_rng(1234)
_A = _RNG.integers(1, 2 ** 63, 1024, dtype=np.uint64) | np.uint64(1)  # odd multipliers
_B = _RNG.integers(0, 2 ** 63, 1024, dtype=np.uint64)


def old_minhash(text: str, cfg: curate.CurateConfig) -> np.ndarray:
    words = curate._normalise(text).split()
    if len(words) >= cfg.shingle:
        shingles = {" ".join(words[i:i + cfg.shingle]) for i in range(len(words) - cfg.shingle + 1)}
    else:
        t = " ".join(words)
        shingles = {t[i:i + 5] for i in range(max(1, len(t) - 4))}
    x = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                  for s in shingles], dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = _A[:cfg.num_perm, None] * x[None, :] + _B[:cfg.num_perm, None]
    return h.min(axis=1)


def old_near_dedup(records: list[dict], cfg: curate.CurateConfig) -> tuple[list[dict], int]:
    rows = cfg.num_perm // cfg.bands
    buckets: dict[tuple, list[int]] = collections.defaultdict(list)
    kept, signatures = [], []
    for r in records:
        sig = old_minhash(curate.record_text(r), cfg)
        keys = [(band, sig[band * rows:(band + 1) * rows].tobytes()) for band in range(cfg.bands)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        if any(np.mean(signatures[j] == sig) >= cfg.near_dup_threshold for j in candidates):
            continue
        idx = len(kept)
        kept.append(r)
        signatures.append(sig)
        for key in keys:
            buckets[key].append(idx)
    return kept, len(records) - len(kept)
# ---------------------------------------------------------------------------------------------


def imdb_reviews(n: int) -> list[dict]:
    root = data_dir()
    if root is None:
        raise SystemExit("set RLHF_JAX_DATA_DIR to the data directory (imdb/train.jsonl.gz, imdb/test.jsonl.gz)")
    out = []
    for split in ("train", "test"):
        for _, row in iter_rows(root / "imdb" / f"{split}.jsonl.gz"):
            out.append({"text": row["text"]})
            if len(out) == n:
                return out
    return out


def timed(fn, records, cfg) -> tuple[float, list[dict], int]:
    start = time.perf_counter()
    kept, dropped = fn(records, cfg)
    return time.perf_counter() - start, kept, dropped


def compare(records, cfg) -> dict:
    t_new, kept_new, n_new = timed(curate.near_dedup, records, cfg)
    t_old, kept_old, n_old = timed(old_near_dedup, records, cfg)
    new_ids, old_ids = {id(r) for r in kept_new}, {id(r) for r in kept_old}
    only_new = [i for i, r in enumerate(records) if id(r) in old_ids and id(r) not in new_ids]
    only_old = [i for i, r in enumerate(records) if id(r) in new_ids and id(r) not in old_ids]
    return {"records": len(records), "new_seconds": round(t_new, 2), "new_duplicates": n_new,
            "old_seconds": round(t_old, 2), "old_duplicates": n_old,
            "dropped_by_both": sum(1 for r in records if id(r) not in new_ids and id(r) not in old_ids),
            "dropped_only_by_new": len(only_new), "dropped_only_by_old": len(only_old),
            "disagreements": disagreements(records, only_new, only_old, cfg)}


def disagreements(records, only_new, only_old, cfg, limit: int = 20) -> list[dict]:
    """For each record only one side dropped: its highest exact shingle Jaccard with an earlier record."""
    cases = sorted([(i, "new") for i in only_new] + [(i, "old") for i in only_old])[:limit]
    if not cases:
        return []
    prints = [curate.shingle_hashes(curate.record_text(r), cfg) for r in records[:cases[-1][0] + 1]]
    return [{"index": i, "dropped_only_by": side,
             "max_exact_jaccard_with_earlier": round(max(curate.jaccard(prints[j], prints[i]) for j in range(i)), 3)}
            for i, side in cases]


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="10000,50000", help="comma-separated numbers of reviews")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    records = imdb_reviews(max(sizes))
    cfg = curate.CurateConfig()
    out = {"config": {"threshold": cfg.near_dup_threshold, "num_perm": cfg.num_perm, "bands": cfg.bands,
                      "shingle": cfg.shingle},
           "runs": [compare(records[:n], cfg) for n in sizes]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

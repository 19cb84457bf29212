"""Curate preference / SFT / prompt data: filter, scrub PII, dedup, split, convert, report.

    python tools/curate.py run hh_rlhf --out runs/curated_hh            # a named real dataset
    python tools/curate.py run my_prefs.jsonl --kind pair --out DIR --near-dup-threshold 0.7
    python tools/curate.py convert rankings.jsonl --kind ranking --to pair --out pairs.jsonl
    python tools/curate.py stats alpaca --out DIR

INPUT is a file (.jsonl/.json/.csv, gzip ok) or the name of a reader in
rlhf_jax.data.corpora (read from $RLHF_JAX_DATA_DIR). `run` writes DIR/{train,validation,
test}.jsonl, DIR/report.json (counts, length histograms, duplicate and scrub counts) and
DIR/report.png, and prints the report.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_jax.data import corpora, curate  # noqa: E402
from rlhf_jax.data.records import DataError  # noqa: E402
from rlhf_jax.data.sources import read_records  # noqa: E402
from tools._common import parser  # noqa: E402

READER_KINDS = {"hh_rlhf": "pair", "oasst_rankings": "ranking", "oasst_sft": "sft", "alpaca": "sft",
                "qa_feedback": "fine_grained", "qa_feedback_pairs": "pair", "alpaca_eval": "prompt",
                "tiny_shakespeare": "text", "imdb_unsup": "text"}


def load(source: str, kind: str | None, policy: str):
    if source in READER_KINDS:
        records, report = corpora.READERS[source](policy=policy)
        return records, READER_KINDS[source], report
    if kind is None:
        raise SystemExit(f"{source}: pass --kind (sft, pair, ranking, preference, prompt, text, fine_grained)")
    records, report = read_records(source, kind, policy=policy)
    return records, kind, report


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes[:2], ("prompt_chars", "record_chars")):
        h = report["lengths"][key]
        if h:
            edges = h["bin_edges"]
            ax.bar(edges[:-1], h["histogram"], width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge")
        ax.set_title(f"{key.replace('_', ' ')} (n={report['counts']['input']})")
        ax.set_xlabel("characters")
    c = report["counts"]
    bars = {"input": c["input"], **{f"drop:{k}": v for k, v in c["filtered"].items()},
            "exact dup": c["exact_duplicates"], "near dup": c["near_duplicates"],
            **{f"pii:{k}": v for k, v in c["pii_scrubbed"].items()}, **{f"split:{k}": v for k, v in c["output"].items()}}
    names, values = list(bars)[::-1], list(bars.values())[::-1]
    axes[2].barh(names, [max(v, 0.5) for v in values])
    axes[2].set_xscale("log")
    for i, v in enumerate(values):
        axes[2].text(max(v, 0.5), i, f" {v}", va="center", fontsize=8)
    axes[2].set_title("counts (log scale)")
    fig.suptitle(report["source"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cmd_run(args, stats_only: bool = False) -> int:
    records, kind, load_report = load(args.input, args.kind, args.policy)
    cfg = curate.CurateConfig(
        near_dup_threshold=None if args.near_dup_threshold <= 0 else args.near_dup_threshold,
        scrub_pii=not args.no_scrub, min_chars=args.min_chars, max_chars=args.max_chars,
        language=None if args.language == "none" else args.language,
        split_fractions=tuple(float(x) for x in args.splits.split(",")))
    splits, counts = curate.curate(records, cfg)
    report = {"source": args.input, "kind": kind, "load": load_report.as_dict(), "config": dataclasses.asdict(cfg),
              "counts": counts, "lengths": curate.length_stats(records)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not stats_only:
        for name, rows in splits.items():
            corpora.dump_jsonl(rows, out / f"{name}.jsonl")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "report.png")
    brief = {k: report[k] for k in ("source", "kind", "load", "counts")}
    print(json.dumps(brief, indent=2))
    print(f"wrote {out}/report.json, {out}/report.png" + ("" if stats_only else f", {out}/{{train,validation,test}}.jsonl"))
    return 0


def cmd_convert(args) -> int:
    records, kind, report = load(args.input, args.kind, args.policy)
    converted = curate.convert(records, kind, args.to)
    corpora.dump_jsonl(converted, args.out)
    print(json.dumps({"input": report.as_dict(), "from": kind, "to": args.to, "written": len(converted),
                      "out": str(args.out)}))
    return 0


def main(argv=None) -> int:
    ap = parser(__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("run", "stats", "convert"):
        p = sub.add_parser(name)
        p.add_argument("input")
        p.add_argument("--kind", choices=["sft", "pair", "ranking", "preference", "prompt", "text", "fine_grained"])
        p.add_argument("--out", required=True)
        p.add_argument("--policy", choices=["error", "skip"], default="skip")
        if name == "convert":
            p.add_argument("--to", required=True, choices=["pair", "ranking", "chat", "prompt", "text"])
        else:
            p.add_argument("--near-dup-threshold", type=float, default=0.8, help="0 disables")
            p.add_argument("--no-scrub", action="store_true")
            p.add_argument("--min-chars", type=int, default=1)
            p.add_argument("--max-chars", type=int, default=20000)
            p.add_argument("--language", default="en", help="ISO 639-1 code of the language to keep, or none")
            p.add_argument("--splits", default="0.9,0.05,0.05")
    args = ap.parse_args(argv)
    try:
        if args.command == "convert":
            return cmd_convert(args)
        return cmd_run(args, stats_only=args.command == "stats")
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

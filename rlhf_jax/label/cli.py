"""python -m rlhf_jax.label {serve,annotators,batch,export,report,simulate}: the labelling app's commands.

A mistake of the user (a bad file line, an unknown kind or rule, a missing database) prints one line
`error: ...` naming the file/line/field and exits 2; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rlhf_jax.errors import UserError

KINDS = ("sft", "ranking", "rating", "spans")
EXPORT_KINDS = ("ranking", "pairs", "sft", "rating", "fine_grained")


def _existing_db(spec: str) -> str:
    """--db for commands that read: a SQLite file must exist (a typo would otherwise create an empty one)."""
    if "://" not in spec and not Path(spec).expanduser().is_file():
        raise UserError(f"--db {spec}: no such database file (create it with `annotators add` or `batch`)")
    if spec.startswith("sqlite:///") and spec != "sqlite:///:memory:" and not Path(spec[10:]).is_file():
        raise UserError(f"--db {spec}: no such database file")
    return spec


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def serve(args) -> int:
    import uvicorn

    from rlhf_jax.label.server import create_app
    app = create_app(args.db)
    print(f"labelling app on http://{args.host}:{args.port}/ (db {args.db})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def annotators(args) -> int:
    from rlhf_jax.label.store import open_store
    if args.action == "add":
        store = open_store(args.db)
        token = store.add_annotator(args.name, admin=args.admin)
        print(token)
        print(f"annotator {args.name!r}{' (admin)' if args.admin else ''} added; the token is shown once, "
              "keep it", file=sys.stderr)
    else:
        store = open_store(_existing_db(args.db))
        for a in store.list_annotators():
            print(f"{a['id']}\t{a['name']}\t{a['role']}\ttasks={a['tasks']}\tlabels={a['labels']}")
    return 0


def batch(args) -> int:
    from rlhf_jax.label import batch as B
    from rlhf_jax.label.store import open_store
    if args.kind not in KINDS:
        raise UserError(f"--kind {args.kind}: unknown; valid: {', '.join(KINDS)}")
    meta = B.kind_meta(args.kind, _csv(args.criteria), _csv(args.categories))
    stats: dict = {}
    if args.responses is not None:
        if args.model is not None:
            raise UserError("--responses and --model: give one (responses from a file, or sampled from a model)")
        rows = B.items_from_file(args.responses, args.kind, meta)
    elif args.model is not None:
        if args.prompts is None:
            raise UserError("--model needs --prompts FILE (jsonl rows with a prompt)")
        rows, stats = B.items_from_model(args.model, args.prompts, args.kind, args.k, seed=args.seed,
                                         max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                         top_p=args.top_p, batch_size=args.batch_size)
        rows = [dict(r, meta={**r["meta"], **meta}) for r in rows]
    elif args.prompts is not None:
        if args.kind != "sft":
            raise UserError(f"--prompts alone makes sft items; --kind {args.kind} needs --model or --responses")
        rows = B.items_from_file(args.prompts, "sft", meta)
    else:
        raise UserError("give --responses FILE, --model SPEC with --prompts FILE, or (sft) --prompts FILE")
    if args.select is not None or args.rm is not None or args.budget is not None:
        rows, selection = _select(args, rows)
    else:
        selection = None
    gold = B.gold_from_file(args.gold, args.kind, meta) if args.gold is not None else []
    if gold and args.gold_rate <= 0:
        raise UserError("--gold needs --gold-rate > 0 (the share of each queue that is screening items)")
    store = open_store(args.db)
    names = None if args.annotators in (None, "all") else _csv(args.annotators)
    config = {"source": str(args.responses or args.prompts), "model": args.model, "k": args.k,
              "gold": str(args.gold) if args.gold else None, "sampling": stats or None, "selection": selection}
    out = store.create_batch(args.name, args.kind, rows, names, overlap=args.overlap, seed=args.seed,
                             gold=gold, gold_rate=args.gold_rate, config=config)
    print(json.dumps(dict(out, **({"sampling": stats} if stats else {}), **({"selection": selection} if selection else {}))))
    return 0


def _select(args, rows: list[dict]) -> tuple[list[dict], dict]:
    """--select/--rm/--budget: the comparisons an active-selection strategy picks, as pair items."""
    from rlhf_jax.label import select as S
    if args.kind != "ranking":
        raise UserError(f"--select chooses comparisons: it needs --kind ranking, not {args.kind}")
    if args.select is None or args.budget is None or (args.rm is None and args.select != "random"):
        raise UserError("--select STRATEGY, --budget N and (except for random) --rm WORKDIR go together")
    if args.budget < 1:
        raise UserError(f"--budget {args.budget}: must be >= 1")
    if args.rm is None:  # random needs no scores: one member of zeros keeps the shapes
        import numpy as np
        scores = np.zeros((1, len(rows), len(rows[0]["responses"]) if rows else 0))
    else:
        scores = S.reward_scorer(args.rm)(rows)
    picked, info = S.select_pairs(rows, scores, args.select, args.budget, args.seed, args.per_cluster)
    return picked, dict(info, rm=args.rm)


def export(args) -> int:
    from rlhf_jax.label.export import export as run_export
    from rlhf_jax.label.export import write_jsonl
    from rlhf_jax.label.store import open_store
    store = open_store(_existing_db(args.db))
    records, summary = run_export(store, args.kind, args.consensus, args.exclude_below, batch=args.batch)
    if not records:
        raise UserError(f"--kind {args.kind}: no records to export ({summary['labels']} labels, "
                        f"{summary['items']} items; skipped {summary['skipped'] or 'none'})")
    write_jsonl(args.out, records)
    summary["out"] = str(args.out)
    print(json.dumps(summary))
    return 0


def report(args) -> int:
    from rlhf_jax.label.server import quality_report
    from rlhf_jax.label.store import open_store
    store = open_store(_existing_db(args.db))
    rep = quality_report(store, args.gold_threshold)
    if rep is None:
        raise UserError("report needs rlhf_jax.label.quality, which is not installed in this checkout")
    text = json.dumps(rep, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def simulate(argv: list[str]) -> int:
    try:
        from rlhf_jax.label.simulate import main as sim_main
    except ImportError:
        raise UserError("simulate needs rlhf_jax.label.simulate, which is not installed in this checkout") from None
    return sim_main(argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rlhf_jax.label", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    db_help = "a SQLite file (created if new), sqlite:///PATH or postgresql://USER@HOST/DB"

    p = sub.add_parser("serve", help="run the web app")
    p.add_argument("--db", required=True, help=db_help)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))

    p = sub.add_parser("annotators", help="add or list annotators")
    p.add_argument("action", choices=("add", "list"))
    p.add_argument("--db", required=True, help=db_help)
    p.add_argument("--name", help="the annotator's name (add)")
    p.add_argument("--admin", action="store_true", help="may see the report")

    p = sub.add_parser("batch", help="create a batch of tasks")
    p.add_argument("--db", required=True, help=db_help)
    p.add_argument("--name", required=True, help="the batch's unique name")
    p.add_argument("--kind", required=True, help=f"one of {', '.join(KINDS)}")
    p.add_argument("--responses", type=Path, help="jsonl rows {prompt, responses} (rating/spans: {prompt, response})")
    p.add_argument("--prompts", type=Path, help="jsonl rows {prompt}: sft items, or prompts for --model")
    p.add_argument("--model", help="HF directory, GGUF file or WORKDIR:STAGE to sample K responses per prompt from")
    p.add_argument("--k", type=int, default=4, help="responses per prompt sampled from --model")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overlap", type=int, default=1, help="annotators per item")
    p.add_argument("--annotators", default="all", help="comma-separated names, or all (every non-admin)")
    p.add_argument("--gold", type=Path, help="jsonl screening items with a 'gold' answer")
    p.add_argument("--gold-rate", type=float, default=0.0, help="share of each queue that is gold items")
    p.add_argument("--criteria", help="rating criteria, comma-separated (default helpfulness,honesty,harmlessness)")
    p.add_argument("--categories", help="span categories, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--select", help="ranking: send only the comparisons this active-selection strategy picks "
                                    "(random, uncertainty, disagreement, diverse_disagreement), as pairs")
    p.add_argument("--rm", help="with --select: a run directory whose stage rm has finished (its ensemble scores)")
    p.add_argument("--budget", type=int, help="with --select: how many comparisons")
    p.add_argument("--per-cluster", type=int, default=1, help="diverse_disagreement: at most this many per prompt")

    p = sub.add_parser("export", help="consensus records for training")
    p.add_argument("--db", required=True, help=db_help)
    p.add_argument("--kind", required=True, choices=EXPORT_KINDS)
    p.add_argument("--consensus", help="borda (ranking, pairs), majority (pairs, fine_grained), mean (rating), "
                                       "all (sft); default: the first")
    p.add_argument("--exclude-below", type=float, help="leave out annotators with gold accuracy below this")
    p.add_argument("--batch", help="only this batch")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("report", help="agreement, gold accuracy and bias audit as JSON")
    p.add_argument("--db", required=True, help=db_help)
    p.add_argument("--gold-threshold", type=float, default=0.7)
    p.add_argument("--out", type=Path)

    sub.add_parser("simulate", help="simulated annotators over HTTP (see its --help)", add_help=False)
    for p in sub.choices.values():
        if p.prog.endswith("simulate"):
            continue
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        try:
            return simulate(argv[1:])
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "annotators" and args.action == "add" and not args.name:
        print("error: annotators add needs --name", file=sys.stderr)
        return 2
    try:
        return {"serve": serve, "annotators": annotators, "batch": batch, "export": export,
                "report": report}[args.command](args)
    except UserError as e:  # records.DataError is a UserError: file:line: field '...': message
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code

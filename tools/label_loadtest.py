"""Load test of the labelling app on localhost: N concurrent simulated annotators (threads, one
httpx client each) answer task-world ranking queues through the HTTP API for a bounded time,
re-sending a share of their submissions with the same client_id (double clicks); then the
database is read back and every acknowledged label is looked for.

    python tools/label_loadtest.py --annotators 50 --seconds 30 --out experiments/benchmarks/label_loadtest.json

Without --url the tool starts the app itself (a uvicorn subprocess on a free port, the same
create_app that `python -m rlhf_jax.label serve` runs) on --db (default: a new SQLite file in a
temporary folder). With --url it drives that server, and --db must be the database it serves.
Annotators and one ranking batch (K=4, overlap --overlap) are created in --db first.

Prints one JSON object: requests and latency percentiles (p50/p95/p99, ms) per endpoint with
status counts, labels acknowledged, the batch's rows in the labels table, "lost" (acknowledged but absent,
or present with another label id) and "duplicated" (tasks with more than one label row); both
must be 0, and the exit status is 1 otherwise.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tools._common import parser, report  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, log: Path) -> subprocess.Popen:
    """The app in its own process (as `serve` runs it), so that client threads do not share its GIL."""
    code = ("import sys, uvicorn; from rlhf_jax.label.server import create_app; "
            "uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-c", code, db, str(port)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env)


def make_batch(store, n_annotators: int, tasks_per_annotator: int, overlap: int, seed: int) -> tuple[list, dict]:
    """Annotators load-0..N-1 (name, token) and one ranking batch of task-world items (K=4)."""
    from rlhf_jax.data import synthetic
    stamp = f"{int(time.time() * 1000):x}"  # a reused --db gets fresh names
    names = [f"load-{stamp}-{i}" for i in range(n_annotators)]
    tokens = [(n, store.add_annotator(n)) for n in names]
    n_items = -(-n_annotators * tasks_per_annotator // overlap)
    world = synthetic.WorldConfig(seed=seed)
    rows = [{"prompt": r["prompt"], "responses": r["responses"], "meta": {"source": "loadtest"}}
            for r in synthetic.ranking_records(world, n_items, k=4)]
    while len(rows) < n_items:  # ranking_records drops all-tied draws: top up from another split
        rows += [{"prompt": r["prompt"], "responses": r["responses"], "meta": {"source": "loadtest"}}
                 for r in synthetic.ranking_records(world, n_items - len(rows), k=4, split=f"top{len(rows)}")]
    info = store.create_batch(f"loadtest-{stamp}", "ranking", rows, names, overlap=overlap, seed=seed)
    return tokens, info


def percentiles(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def count_rows(store, batch_id: int) -> tuple[dict[int, list[int]], int]:
    """{task_id: [label ids]} of the batch's labels (a reused --db may hold others), and their count."""
    import sqlalchemy as sa
    from rlhf_jax.label.store import items, labels, tasks
    q = (sa.select(labels.c.task_id, labels.c.id).join(tasks, tasks.c.id == labels.c.task_id)
         .join(items, items.c.id == tasks.c.item_id).where(items.c.batch_id == batch_id))
    with store.engine.connect() as c:
        rows = c.execute(q).all()
    by_task: dict[int, list[int]] = defaultdict(list)
    for task_id, label_id in rows:
        by_task[task_id].append(label_id)
    return by_task, len(rows)


def run(args) -> dict:
    from rlhf_jax.data import synthetic
    from rlhf_jax.label import simulate
    from rlhf_jax.label.store import open_store

    load_before = os.getloadavg()[0]  # other work on the machine shares the cores with server and clients
    tmp = tempfile.mkdtemp(prefix="label_loadtest_")
    db = args.db or str(Path(tmp) / "labels.sqlite")
    store = open_store(db)
    tokens, batch = make_batch(store, args.annotators, args.tasks_per_annotator, args.overlap, args.seed)
    proc = None
    url = args.url.rstrip("/")
    if not url:
        url = f"http://127.0.0.1:{free_port()}"
        proc = start_server(db, int(url.rsplit(":", 1)[1]), Path(tmp) / "server.log")
    try:
        simulate.wait_ready(url, proc)
        world = synthetic.WorldConfig(seed=args.seed, n_annotators=args.annotators)
        annotators = [simulate.Annotator(n, t, i, "bt", args.seed) for i, (n, t) in enumerate(tokens)]
        timings: list[tuple[str, float, int]] = []  # list.append is atomic under the GIL
        record = lambda endpoint, seconds, status: timings.append((endpoint, seconds, status))  # noqa: E731
        t0 = time.monotonic()
        stats = simulate.run_all(url, annotators, world, resend=args.resend, deadline=t0 + args.seconds,
                                 record=record, timeout=60.0)
        wall = time.monotonic() - t0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    by_task, n_rows = count_rows(store, batch["batch_id"])
    acknowledged = {task: label for s in stats for task, label in s.acknowledged.items()}
    lost = sum(1 for task, label in acknowledged.items() if label not in by_task.get(task, ()))
    endpoints = {}
    for endpoint in sorted({e for e, _, _ in timings}):
        mine = [(s, st) for e, s, st in timings if e == endpoint]
        status = defaultdict(int)
        for _, st in mine:
            status[str(st)] += 1
        endpoints[endpoint] = {"requests": len(mine), **percentiles([s for s, _ in mine]), "status": dict(status)}
    labels = sum(s.labels for s in stats)
    out = {
        "annotators": args.annotators, "seconds": round(wall, 2), "db": "sqlite" if store.sqlite else "postgresql",
        "batch": batch, "resend": args.resend, "requests": len(timings),
        "requests_per_s": round(len(timings) / wall, 1), "labels_acknowledged": labels,
        "labels_per_s": round(labels / wall, 1), "double_clicks": sum(s.resent for s in stats),
        "double_clicks_answered_200": sum(s.resent_ok for s in stats), "conflicts": sum(s.conflicts for s in stats),
        "retries": sum(s.retries for s in stats), "failures": sum(s.failures for s in stats),
        "rows_in_db": n_rows, "lost": lost, "duplicated": sum(1 for v in by_task.values() if len(v) > 1),
        "endpoints": endpoints,
        "machine": {"cpus": os.cpu_count(), "load_avg_1min_before": round(load_before, 2), "python": platform.python_version(), "platform": platform.platform()},
    }
    store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, out=True)
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the annotators label")
    ap.add_argument("--tasks-per-annotator", type=int, default=400, help="queue length (kept ahead of the run)")
    ap.add_argument("--overlap", type=int, default=3)
    ap.add_argument("--resend", type=float, default=0.1, help="share of submissions sent twice")
    ap.add_argument("--db", default="", help="database path or URL (default: a new SQLite file)")
    ap.add_argument("--url", default="", help="an already running server on --db (default: start one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.url and not args.db:
        ap.error("--url needs --db: the database that server uses (to create the batch and count rows)")
    if not 1 <= args.overlap <= args.annotators:
        ap.error(f"--overlap {args.overlap} must be in 1..--annotators ({args.annotators})")
    out = {"command": " ".join(["python tools/label_loadtest.py", *(sys.argv[1:] if argv is None else argv)]),
           **run(args)}
    report(out, args.out)
    return 0 if out["lost"] == 0 and out["duplicated"] == 0 and out["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

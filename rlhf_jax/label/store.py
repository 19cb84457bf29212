"""Storage of the labelling app: one SQLAlchemy Core schema for SQLite (the embedded default, one
file) and PostgreSQL (a team's server).

    store = open_store("labels.sqlite")            # or "sqlite:///x.db", "postgresql://user@host/db"
    token = store.add_annotator("ann1")            # shown once; only its sha256 is stored
    store.create_batch("b1", "ranking", items, ["ann1", "ann2"], overlap=2, seed=0)
    task = store.next_task(annotator_id)
    status, label_id = store.submit_label(task["id"], annotator_id, value, client_id)

Durability: a label is acknowledged only after its transaction commits; SQLite runs in WAL mode with
synchronous=FULL, so a committed label survives kill -9 of the server (and a power cut). Writes on
SQLite begin IMMEDIATE (they take the write lock up front and wait busy_timeout for it) so that two
writers never deadlock on a read lock upgrade.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import random
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rlhf_jax.errors import UserError

ITEM_KINDS = ("sft", "ranking", "rating", "spans")
ROLES = ("annotator", "admin")

metadata = sa.MetaData()
annotators = sa.Table(
    "annotators", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False, default="annotator"),
    sa.Column("created", sa.Float, nullable=False))
batches = sa.Table(
    "batches", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("created", sa.Float, nullable=False))
items = sa.Table(
    "items", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("responses", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("gold", sa.JSON(none_as_null=True), nullable=True))
tasks = sa.Table(
    "tasks", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("display", sa.JSON, nullable=False),
    sa.UniqueConstraint("item_id", "annotator_id"))
labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False, unique=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False, index=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("seconds", sa.Float, nullable=True),
    sa.Column("created", sa.Float, nullable=False))


def db_url(spec: str) -> str:
    """The SQLAlchemy URL of --db: a file path, sqlite:///..., or postgresql://... (psycopg 3)."""
    spec = str(spec)
    if spec.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + spec.split("://", 1)[1]
    if "://" in spec:
        return spec
    return "sqlite:///" + str(Path(spec).expanduser())


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def assign(n_items: int, annotator_ids: Sequence[int], overlap: int, rng: random.Random) -> list[list[int]]:
    """For each item, `overlap` distinct annotators, keeping loads within one of each other: items go
    out in random order, each to the least-loaded annotators (ties broken at random)."""
    if not 1 <= overlap <= len(annotator_ids):
        raise UserError(f"--overlap {overlap}: must be 1..{len(annotator_ids)} (the number of annotators)")
    load = {a: 0 for a in annotator_ids}
    out: list[list[int]] = [[] for _ in range(n_items)]
    order = list(range(n_items))
    rng.shuffle(order)
    for i in order:
        chosen = sorted(annotator_ids, key=lambda a: (load[a], rng.random()))[:overlap]
        for a in chosen:
            load[a] += 1
        out[i] = sorted(chosen)
    return out


class Store:
    """The app's data: annotators, batches of items, tasks (an item in an annotator's queue), labels."""

    def __init__(self, url: str):
        self.url = db_url(url)
        self.sqlite = self.url.startswith("sqlite")
        if self.sqlite and self.url not in ("sqlite://", "sqlite:///:memory:"):
            parent = Path(self.url.split("///", 1)[1]).parent
            if not parent.is_dir():
                raise UserError(f"--db {url}: directory {parent} does not exist")
        self.engine = sa.create_engine(self.url, future=True)
        # SQLite has one writer at a time: queueing this process's writers on a lock (first come,
        # first served) replaces the busy handler's sleep-and-retry, which sets the tail latency
        self._write_lock = threading.Lock() if self.sqlite else contextlib.nullcontext()
        if self.sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        try:
            metadata.create_all(self.engine)
        except sa.exc.OperationalError as e:
            raise UserError(f"--db {url}: cannot open the database ({e.orig})") from None

    @contextlib.contextmanager
    def _write(self):
        with self._write_lock, self.engine.connect() as c:
            c = c.execution_options(sqlite_begin="IMMEDIATE")
            with c.begin():
                yield c

    @contextlib.contextmanager
    def _read(self):
        with self.engine.connect() as c:
            yield c

    def ping(self) -> bool:
        with self._read() as c:
            return c.execute(sa.text("SELECT 1")).scalar() == 1

    # -- annotators --------------------------------------------------------------------------------
    def add_annotator(self, name: str, admin: bool = False) -> str:
        """A new annotator; returns its access token (not stored: only its sha256 is)."""
        name = name.strip()
        if not name or len(name) > 200:
            raise UserError(f"--name {name!r}: must be 1..200 characters")
        token = secrets.token_urlsafe(24)
        try:
            with self._write() as c:
                c.execute(annotators.insert().values(name=name, token_sha256=hash_token(token),
                                                     role="admin" if admin else "annotator", created=time.time()))
        except IntegrityError:
            raise UserError(f"--name {name}: an annotator of that name exists") from None
        return token

    def annotator_by_token(self, token: str | None) -> dict | None:
        """The annotator holding `token`, or None. The lookup is by the token's hash, so timing tells
        nothing about the token itself; the final comparison is constant-time all the same."""
        if not token or len(token) > 200:
            return None
        digest = hash_token(token)
        with self._read() as c:
            row = c.execute(sa.select(annotators).where(annotators.c.token_sha256 == digest)).mappings().first()
        if row is None or not hmac.compare_digest(row["token_sha256"], digest):
            return None
        return {"id": row["id"], "name": row["name"], "role": row["role"]}

    def list_annotators(self) -> list[dict]:
        lab = sa.select(sa.func.count()).where(labels.c.annotator_id == annotators.c.id).scalar_subquery()
        tas = sa.select(sa.func.count()).where(tasks.c.annotator_id == annotators.c.id).scalar_subquery()
        with self._read() as c:
            rows = c.execute(sa.select(annotators.c.id, annotators.c.name, annotators.c.role,
                                       tas.label("tasks"), lab.label("labels")).order_by(annotators.c.id))
            return [dict(r._mapping) for r in rows]

    def annotator_ids(self, names: Iterable[str] | None) -> list[int]:
        """Ids of the named annotators (None or "all": every non-admin); unknown names list the known."""
        with self._read() as c:
            known = {r.name: (r.id, r.role) for r in c.execute(sa.select(annotators))}
        if names is None:
            ids = [i for i, role in known.values() if role == "annotator"]
            if not ids:
                raise UserError("no annotators yet: add some with `python -m rlhf_jax.label annotators add`")
            return sorted(ids)
        names = list(names)
        missing = [n for n in names if n not in known]
        if missing:
            raise UserError(f"--annotators: unknown {', '.join(missing)}; known: {', '.join(sorted(known)) or '(none)'}")
        if len(set(names)) != len(names):
            raise UserError("--annotators: a name appears twice")
        return [known[n][0] for n in names]

    # -- batches -------------------------------------------------------------------------------------
    def create_batch(self, name: str, kind: str, rows: Sequence[dict], annotator_names: Sequence[str] | None,
                     overlap: int = 1, seed: int = 0, gold: Sequence[dict] = (), gold_rate: float = 0.0,
                     config: dict | None = None) -> dict:
        """Store a batch: `rows` ({prompt, responses, meta}) each to `overlap` annotators; `gold` rows
        (with a "gold" value, item order) mixed into each queue at `gold_rate` of its tasks. Queue order
        is random per annotator; the display order of responses is shuffled per task. Returns counts."""
        if kind not in ITEM_KINDS:
            raise UserError(f"--kind {kind}: unknown; valid: {', '.join(ITEM_KINDS)}")
        if not 0.0 <= gold_rate < 1.0:
            raise UserError(f"--gold-rate {gold_rate}: must be in [0, 1)")
        rng = random.Random(seed)
        ids = self.annotator_ids(annotator_names)
        plan = assign(len(rows), ids, overlap, rng)
        per = {a: [] for a in ids}  # annotator -> [row index]; gold rows indexed after the regular ones
        for i, chosen in enumerate(plan):
            for a in chosen:
                per[a].append(i)
        if gold and gold_rate > 0:
            for a in ids:
                n = min(len(gold), max(1, round(gold_rate * len(per[a]) / (1 - gold_rate))))
                per[a] += [len(rows) + g for g in rng.sample(range(len(gold)), n)]
        all_rows = list(rows) + list(gold)
        cfg = dict(config or {}, overlap=overlap, seed=seed, gold_rate=gold_rate, annotators=ids)
        now = time.time()
        try:
            with self._write() as c:
                batch_id = c.execute(batches.insert().values(name=name, kind=kind, config=cfg, created=now)
                                     ).inserted_primary_key[0]
                item_ids = []
                for r in all_rows:
                    item_ids.append(c.execute(items.insert().values(
                        batch_id=batch_id, kind=kind, prompt=r["prompt"], responses=list(r.get("responses", [])),
                        meta=dict(r.get("meta") or {}), gold=r.get("gold"))).inserted_primary_key[0])
                n_tasks = 0
                for a, idx in per.items():
                    start = c.execute(sa.select(sa.func.coalesce(sa.func.max(tasks.c.position), -1))
                                      .where(tasks.c.annotator_id == a)).scalar() + 1
                    rng.shuffle(idx)
                    values = []
                    for pos, i in enumerate(idx):
                        display = list(range(len(all_rows[i].get("responses", []))))
                        rng.shuffle(display)
                        values.append(dict(item_id=item_ids[i], annotator_id=a, position=start + pos,
                                           display=display))
                    if values:
                        c.execute(tasks.insert(), values)
                    n_tasks += len(values)
        except IntegrityError:
            raise UserError(f"--name {name}: a batch of that name exists") from None
        return {"batch_id": batch_id, "items": len(rows), "gold_items": len(gold), "tasks": n_tasks}

    # -- tasks and labels ----------------------------------------------------------------------------
    def _task_query(self):
        return (sa.select(tasks.c.id, tasks.c.item_id, tasks.c.annotator_id, tasks.c.position, tasks.c.display,
                          items.c.kind, items.c.prompt, items.c.responses, items.c.meta, items.c.gold)
                .join(items, items.c.id == tasks.c.item_id))

    def next_task(self, annotator_id: int) -> dict | None:
        """The annotator's first unlabelled task in queue order, with "remaining" (itself included)."""
        open_ = sa.not_(sa.exists().where(labels.c.task_id == tasks.c.id))
        with self._read() as c:
            row = c.execute(self._task_query().where(tasks.c.annotator_id == annotator_id, open_)
                            .order_by(tasks.c.position, tasks.c.id).limit(1)).mappings().first()
            if row is None:
                return None
            remaining = c.execute(sa.select(sa.func.count()).select_from(tasks)
                                  .where(tasks.c.annotator_id == annotator_id, open_)).scalar()
        return dict(row, remaining=remaining)

    def get_task(self, task_id: int, annotator_id: int) -> dict | None:
        """The task if it is in this annotator's queue (None otherwise), with its label if any."""
        with self._read() as c:
            row = c.execute(self._task_query().where(tasks.c.id == task_id, tasks.c.annotator_id == annotator_id)
                            ).mappings().first()
            if row is None:
                return None
            label = c.execute(sa.select(labels).where(labels.c.task_id == task_id)).mappings().first()
        return dict(row, label=dict(label) if label else None)

    def queue(self, annotator_id: int) -> list[dict]:
        """The annotator's tasks in queue order: id, kind, a prompt excerpt, done."""
        done = sa.exists().where(labels.c.task_id == tasks.c.id)
        with self._read() as c:
            rows = c.execute(sa.select(tasks.c.id, tasks.c.position, items.c.kind, items.c.prompt, done.label("done"))
                             .join(items, items.c.id == tasks.c.item_id).where(tasks.c.annotator_id == annotator_id)
                             .order_by(tasks.c.position, tasks.c.id))
            return [dict(r._mapping, done=bool(r.done)) for r in rows]

    def submit_label(self, task_id: int, annotator_id: int, value: Any, client_id: str,
                     seconds: float | None = None) -> tuple[str, int]:
        """Store `value` (item order) for the task in one transaction. Returns ("created", label_id);
        ("exists", label_id) when this client_id already stored it (a double submit: nothing written);
        ("conflict", label_id) when another client_id did. The unique task_id decides races; a
        resend whose label is already stored is answered from a read, without queueing for the writer."""
        found = self._existing(task_id, client_id)
        if found is not None:
            return found
        try:
            with self._write() as c:
                label_id = c.execute(labels.insert().values(
                    task_id=task_id, annotator_id=annotator_id, value=value, client_id=client_id,
                    seconds=seconds, created=time.time())).inserted_primary_key[0]
            return "created", label_id
        except IntegrityError:
            found = self._existing(task_id, client_id)
        if found is None:  # the insert failed for another reason (a task id that does not exist)
            raise KeyError(task_id)
        return found

    def _existing(self, task_id: int, client_id: str) -> tuple[str, int] | None:
        with self._read() as c:
            row = c.execute(sa.select(labels.c.id, labels.c.client_id).where(labels.c.task_id == task_id)).first()
        if row is None:
            return None
        return ("exists" if hmac.compare_digest(row.client_id, client_id) else "conflict"), row.id

    def label_rows(self, kind: str | None = None, batch: str | None = None) -> list[dict]:
        """Every label as quality.py reads it: {item_id, annotator, kind, value (item order), gold,
        responses, display}, plus prompt, meta, batch, seconds for exports."""
        q = (sa.select(labels.c.value, labels.c.seconds, tasks.c.item_id, tasks.c.display,
                       annotators.c.name.label("annotator"), items.c.kind, items.c.gold, items.c.responses,
                       items.c.prompt, items.c.meta, batches.c.name.label("batch"))
             .join(tasks, tasks.c.id == labels.c.task_id).join(items, items.c.id == tasks.c.item_id)
             .join(annotators, annotators.c.id == labels.c.annotator_id).join(batches, batches.c.id == items.c.batch_id)
             .order_by(tasks.c.item_id, labels.c.id))
        if kind is not None:
            q = q.where(items.c.kind == kind)
        if batch is not None:
            q = q.where(batches.c.name == batch)
        with self._read() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def counts(self) -> dict[str, int]:
        with self._read() as c:
            return {t.name: c.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                    for t in (annotators, batches, items, tasks, labels)}

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # pysqlite's own BEGIN handling off: _sqlite_begin emits it
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA busy_timeout = 30000")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = FULL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "DEFERRED"))


def open_store(url: str) -> Store:
    return Store(url)

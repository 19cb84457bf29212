"""The storage layer of the labelling app, on SQLite always and on PostgreSQL when the `pg_url`
fixture (tests/label/conftest.py) can start a server (it skips naming the reason otherwise)."""
from __future__ import annotations

import collections
import threading

import pytest
import sqlalchemy as sa

from rlhf_jax.errors import UserError
from rlhf_jax.label.store import assign, db_url, hash_token, open_store


@pytest.fixture(params=["sqlite", "pg"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = str(tmp_path / "labels.sqlite")
    else:
        try:
            url = request.getfixturevalue("pg_url")
        except pytest.FixtureLookupError:
            pytest.skip("no pg_url fixture (tests/label/conftest.py) in this checkout")
    s = open_store(url)
    yield s
    if request.param == "pg":  # the server may be shared by tests: leave it empty
        from rlhf_jax.label.store import metadata
        metadata.drop_all(s.engine)
    s.close()


def ranking_rows(n, k=3):
    return [{"prompt": f"prompt {i}", "responses": [f"response {i}.{j}" for j in range(k)], "meta": {"i": i}}
            for i in range(n)]


def test_db_url_forms(tmp_path):
    assert db_url(str(tmp_path / "x.sqlite")) == f"sqlite:///{tmp_path}/x.sqlite"
    assert db_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert db_url("sqlite:///a.db") == "sqlite:///a.db"
    with pytest.raises(UserError, match="does not exist"):
        open_store(str(tmp_path / "missing" / "x.sqlite"))


def test_sqlite_runs_in_wal_with_full_sync(tmp_path):
    s = open_store(str(tmp_path / "l.sqlite"))
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_tokens_are_stored_hashed_and_found(store):
    token = store.add_annotator("ann1")
    admin = store.add_annotator("boss", admin=True)
    me = store.annotator_by_token(token)
    assert me["name"] == "ann1" and me["role"] == "annotator"
    assert store.annotator_by_token(admin)["role"] == "admin"
    assert store.annotator_by_token(token + "x") is None
    assert store.annotator_by_token("") is None and store.annotator_by_token(None) is None
    with store.engine.connect() as c:
        stored = [r[0] for r in c.execute(sa.text("SELECT token_sha256 FROM annotators"))]
    assert hash_token(token) in stored and token not in stored
    with pytest.raises(UserError, match="exists"):
        store.add_annotator("ann1")


def test_assign_gives_each_item_r_distinct_annotators_with_balanced_load():
    import random
    plan = assign(10, [1, 2, 3, 4], 3, random.Random(0))
    assert all(len(set(p)) == 3 for p in plan)
    load = collections.Counter(a for p in plan for a in p)
    assert sum(load.values()) == 30 and max(load.values()) - min(load.values()) <= 1
    with pytest.raises(UserError, match="overlap 5: must be 1..4"):
        assign(3, [1, 2, 3, 4], 5, random.Random(0))


def test_batch_queues_are_shuffled_per_annotator_and_seeded(store):
    for n in ("a", "b", "c"):
        store.add_annotator(n)
    out = store.create_batch("b1", "ranking", ranking_rows(12, k=4), None, overlap=2, seed=3)
    assert out == {"batch_id": out["batch_id"], "items": 12, "gold_items": 0, "tasks": 24}
    with store.engine.connect() as c:
        rows = c.execute(sa.text("SELECT item_id, annotator_id, position, display FROM tasks")).all()
    per_item = collections.Counter(r.item_id for r in rows)
    assert set(per_item.values()) == {2}
    by_ann = collections.defaultdict(list)
    for r in rows:
        by_ann[r.annotator_id].append(r)
    assert sorted(len(v) for v in by_ann.values()) == [8, 8, 8]
    orders = []
    for v in by_ann.values():
        assert sorted(r.position for r in v) == list(range(len(v)))
        orders.append([r.item_id for r in sorted(v, key=lambda r: r.position)])
    # queue order is random: not item order, and display orders are permutations that differ
    assert any(o != sorted(o) for o in orders)
    displays = [tuple(r.display if isinstance(r.display, list) else __import__("json").loads(r.display))
                for r in rows]
    assert all(sorted(d) == [0, 1, 2, 3] for d in displays) and len(set(displays)) > 1
    with pytest.raises(UserError, match="batch of that name exists"):
        store.create_batch("b1", "ranking", ranking_rows(1), None, overlap=1)
    with pytest.raises(UserError, match="unknown; valid: sft, ranking, rating, spans"):
        store.create_batch("b2", "pairs", ranking_rows(1), None)
    with pytest.raises(UserError, match="unknown d; known: a, b, c"):
        store.create_batch("b3", "ranking", ranking_rows(1), ["a", "d"])


def test_gold_items_are_mixed_into_every_queue(store):
    for n in ("a", "b"):
        store.add_annotator(n)
    gold = [dict(r, gold={"ranks": [0, 1, 2]}) for r in ranking_rows(5)]
    out = store.create_batch("g", "ranking", ranking_rows(8), ["a", "b"], overlap=1, seed=0, gold=gold,
                             gold_rate=0.2)
    # 4 regular tasks each; 0.2 of a queue -> round(0.2 * 4 / 0.8) = 1 gold task each
    assert out["tasks"] == 8 + 2
    with store.engine.connect() as c:
        n_gold = c.execute(sa.text("SELECT tasks.annotator_id, COUNT(*) FROM tasks JOIN items ON items.id = "
                                   "tasks.item_id WHERE items.gold IS NOT NULL GROUP BY tasks.annotator_id")).all()
    assert sorted(n for _, n in n_gold) == [1, 1]


def test_submit_is_idempotent_by_client_id_and_conflicts_otherwise(store):
    token = store.add_annotator("a")
    me = store.annotator_by_token(token)
    store.create_batch("b", "ranking", ranking_rows(2), None, overlap=1, seed=0)
    task = store.next_task(me["id"])
    assert task["remaining"] == 2
    first = store.submit_label(task["id"], me["id"], {"ranks": [1, 0, 2]}, "click-1", 3.5)
    assert first[0] == "created"
    assert store.submit_label(task["id"], me["id"], {"ranks": [1, 0, 2]}, "click-1") == ("exists", first[1])
    assert store.submit_label(task["id"], me["id"], {"ranks": [0, 1, 2]}, "other") == ("conflict", first[1])
    assert store.counts()["labels"] == 1
    nxt = store.next_task(me["id"])
    assert nxt["id"] != task["id"] and nxt["remaining"] == 1
    store.submit_label(nxt["id"], me["id"], {"ranks": [0, 0, 1]}, "click-2")
    assert store.next_task(me["id"]) is None
    rows = store.label_rows(kind="ranking")
    assert len(rows) == 2
    r = next(r for r in rows if r["value"] == {"ranks": [1, 0, 2]})
    assert set(r) >= {"item_id", "annotator", "kind", "value", "gold", "responses", "display"}
    assert r["annotator"] == "a" and r["kind"] == "ranking" and r["gold"] is None and r["seconds"] == 3.5
    assert sorted(r["display"]) == [0, 1, 2] and len(r["responses"]) == 3
    assert store.label_rows(kind="rating") == []


def test_another_annotators_task_is_invisible(store):
    a = store.annotator_by_token(store.add_annotator("a"))
    b = store.annotator_by_token(store.add_annotator("b"))
    store.create_batch("b", "ranking", ranking_rows(1), ["a"], overlap=1)
    task = store.next_task(a["id"])
    assert store.get_task(task["id"], b["id"]) is None
    assert store.next_task(b["id"]) is None


def test_racing_submits_store_exactly_one_label(store):
    me = store.annotator_by_token(store.add_annotator("a"))
    store.create_batch("b", "ranking", ranking_rows(1), None, overlap=1)
    task = store.next_task(me["id"])
    results, barrier = [], threading.Barrier(8)

    def submit(i):
        barrier.wait()
        results.append(store.submit_label(task["id"], me["id"], {"ranks": [0, 1, 2]}, f"c{i}"))
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for s, _ in results) == ["conflict"] * 7 + ["created"]
    assert len({label_id for _, label_id in results}) == 1
    assert store.counts()["labels"] == 1

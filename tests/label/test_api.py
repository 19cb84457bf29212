"""The app's HTTP API and pages through FastAPI's TestClient: auth, idempotent submits, validation
messages, body limits, escaping, cookies, and the page flow of each task kind."""
from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from rlhf_jax.label.server import MAX_BODY, create_app, report_rows
from rlhf_jax.label.store import open_store

XSS = "<script>alert(1)</script>"


@pytest.fixture
def app(sqlite_url):
    """(store, client, tokens) with annotators a, b and admin boss, and one batch of each kind for a."""
    store = open_store(sqlite_url)
    tokens = {n: store.add_annotator(n) for n in ("a", "b")}
    tokens["boss"] = store.add_annotator("boss", admin=True)
    rank = [{"prompt": "rank these", "responses": ["first " + XSS, "second", "third"]}]
    store.create_batch("r", "ranking", rank, ["a"], seed=1)
    store.create_batch("t", "rating", [{"prompt": "rate", "responses": ["one answer"],
                                        "meta": {"criteria": ["helpfulness", "honesty"]}}], ["a"], seed=1)
    store.create_batch("s", "spans", [{"prompt": "mark", "responses": ["The sky is green."],
                                       "meta": {"categories": ["factual", "style"]}}], ["a"], seed=1)
    store.create_batch("f", "sft", [{"prompt": "write", "responses": []}], ["a"], seed=1)
    return store, TestClient(create_app(store)), tokens


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def next_task(client, token):
    r = client.get("/api/next", headers=auth(token))
    return r.json()["task"] if r.status_code == 200 else None


def task_of_kind(store, token, kind):
    me = store.annotator_by_token(token)
    row = next(r for r in store.queue(me["id"]) if r["kind"] == kind)
    return row["id"]


def post(client, token, task_id, value, client_id="c1", **extra):
    return client.post(f"/api/tasks/{task_id}/label", headers=auth(token),
                       json={"value": value, "client_id": client_id, **extra})


def test_healthz_and_auth(app):
    store, client, tokens = app
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/api/next").status_code == 401
    assert client.get("/api/next", headers=auth("nope")).status_code == 401
    assert client.get("/api/next", headers=auth(tokens["a"])).status_code == 200
    assert client.get("/api/next", headers=auth(tokens["b"])).status_code == 204  # b has no tasks
    client.cookies.set("label_token", tokens["a"])
    assert client.get("/api/next").status_code == 200


def test_next_shows_display_order_and_labels_are_stored_in_item_order(app):
    store, client, tokens = app
    tid = task_of_kind(store, tokens["a"], "ranking")
    me = store.annotator_by_token(tokens["a"])
    task = store.get_task(tid, me["id"])
    shown = [task["responses"][i] for i in task["display"]]
    assert post(client, tokens["a"], tid, {"ranks": [2, 0, 1]}).status_code == 201
    stored = store.label_rows(kind="ranking")[0]["value"]["ranks"]
    # the response shown in slot s has stored rank ranks[s]
    assert [stored[task["responses"].index(text)] for text in shown] == [2, 0, 1]
    # the API's next task carries the shown order
    first = next_task(client, tokens["a"])
    assert first["remaining"] == 3 and first["id"] != tid


def test_double_submit_stores_one_label_and_another_client_gets_409(app):
    store, client, tokens = app
    tid = task_of_kind(store, tokens["a"], "sft")
    r1 = post(client, tokens["a"], tid, {"completion": "hello"}, "click")
    r2 = post(client, tokens["a"], tid, {"completion": "hello"}, "click")
    r3 = post(client, tokens["a"], tid, {"completion": "other"}, "tab-2")
    assert (r1.status_code, r2.status_code, r3.status_code) == (201, 200, 409)
    assert r1.json() == r2.json() == {"label_id": r1.json()["label_id"]}
    assert store.counts()["labels"] == 1


def test_another_annotators_task_is_a_404(app):
    store, client, tokens = app
    tid = task_of_kind(store, tokens["a"], "sft")
    r = post(client, tokens["b"], tid, {"completion": "mine"})
    assert r.status_code == 404 and store.counts()["labels"] == 0
    client.cookies.set("label_token", tokens["b"])
    assert client.get(f"/task/{tid}").status_code == 404


@pytest.mark.parametrize("kind,value,detail", [
    ("ranking", {"ranks": [0, 2, 2]}, "value.ranks: [0, 2, 2] are not dense ranks"),
    ("ranking", {"ranks": [0, 1]}, "value.ranks: expected a list of 3 integers"),
    ("ranking", {"ranks": [0, 0, 0]}, "value.ranks: all responses are tied"),
    ("ranking", {"ranks": [0, 1, True]}, "value.ranks: are not all integers"),
    ("rating", {"scores": {"helpfulness": 3}}, "value.scores.honesty: missing"),
    ("rating", {"scores": {"helpfulness": 6, "honesty": 1}}, "value.scores.helpfulness: 6 is not an integer 1..5"),
    ("rating", {"scores": {"helpfulness": 1, "honesty": 1, "fun": 2}}, "value.scores.fun: unknown criterion"),
    ("spans", {"spans": [{"start": 4, "end": 40, "category": "factual"}]}, "value.spans[0]: [4, 40) is not inside"),
    ("spans", {"spans": [{"start": 0, "end": 3, "category": "rude"}]}, "value.spans[0].category: 'rude' is not one"),
    ("spans", {"spans": [{"start": 0, "end": 5, "category": "factual"}, {"start": 4, "end": 8, "category": "style"}]},
     "value.spans: [0, 5) and [4, 8) overlap"),
    ("sft", {"completion": "   "}, "value.completion: is empty"),
    ("sft", {"completion": "x" * 20_001}, "value.completion: has 20001 characters, more than 20000"),
    ("sft", "text", "value: expected an object"),
])
def test_bad_values_get_422_naming_the_field(app, kind, value, detail):
    store, client, tokens = app
    r = post(client, tokens["a"], task_of_kind(store, tokens["a"], kind), value)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(detail)
    assert store.counts()["labels"] == 0


def test_good_values_of_each_kind_are_accepted(app):
    store, client, tokens = app
    a = tokens["a"]
    assert post(client, a, task_of_kind(store, a, "rating"),
                {"scores": {"helpfulness": 4, "honesty": 5}, "comment": "ok"}).status_code == 201
    assert post(client, a, task_of_kind(store, a, "spans"),
                {"spans": [{"start": 11, "end": 16, "category": "factual"}]}).status_code == 201
    rows = {r["kind"]: r["value"] for r in store.label_rows()}
    assert rows["rating"] == {"scores": {"helpfulness": 4, "honesty": 5}, "comment": "ok"}
    assert rows["spans"] == {"spans": [{"start": 11, "end": 16, "category": "factual"}]}


def test_envelope_checks(app):
    store, client, tokens = app
    tid = task_of_kind(store, tokens["a"], "sft")
    url, h = f"/api/tasks/{tid}/label", auth(tokens["a"])
    assert client.post(url, headers=h, content=b"{not json").json() == {"detail": "body: not valid JSON"}
    assert client.post(url, headers=h, json={"client_id": "x"}).json() == {"detail": "value: missing"}
    r = client.post(url, headers=h, json={"value": {"completion": "a"}, "client_id": "x" * 65})
    assert r.status_code == 422 and r.json()["detail"].startswith("client_id:")
    r = client.post(url, headers=h, json={"value": {"completion": "a"}, "client_id": "x", "seconds": -1})
    assert r.status_code == 422 and r.json()["detail"].startswith("seconds:")
    r = client.post("/api/tasks/abc/label", headers=h, json={})
    assert r.status_code == 422 and r.json()["detail"].startswith("task_id:")


def test_bodies_over_64_kib_get_413_before_parsing(app):
    store, client, tokens = app
    tid = task_of_kind(store, tokens["a"], "sft")
    h = auth(tokens["a"])
    big = json.dumps({"value": {"completion": "x" * MAX_BODY}, "client_id": "c"}).encode()
    assert client.post(f"/api/tasks/{tid}/label", headers=h, content=big).status_code == 413
    # a streamed body without Content-Length is counted as it arrives
    chunks = (b"x" * 8192 for _ in range(10))
    r = client.post(f"/api/tasks/{tid}/label", headers=h, content=chunks)
    assert r.status_code == 413 and r.json()["detail"] == f"body: larger than {MAX_BODY} bytes"
    # the form posts of the pages too
    client.cookies.set("label_token", tokens["a"])
    assert client.post(f"/task/{tid}", data={"completion": "x" * (MAX_BODY + 1)}).status_code == 413
    assert store.counts()["labels"] == 0


def test_script_in_a_response_is_rendered_escaped(app):
    store, client, tokens = app
    client.cookies.set("label_token", tokens["a"])
    html = client.get(f"/task/{task_of_kind(store, tokens['a'], 'ranking')}").text
    assert XSS not in html
    assert "first &lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_login_sets_an_httponly_strict_cookie(app):
    _, client, tokens = app
    r = client.post("/login", data={"token": "wrong"}, follow_redirects=False)
    assert r.status_code == 401 and 'id="error"' in r.text and "token: not valid" in r.text
    r = client.post("/login", data={"token": tokens["a"]}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"label_token={tokens['a']};")
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()


def hidden(html, name):
    return re.search(rf'name="{name}" value="([^"]*)"', html).group(1)


def test_pages_carry_the_dom_hooks_and_forms_walk_the_queue(app):
    store, client, tokens = app
    client.cookies.set("label_token", tokens["a"])
    assert 'id="queue"' in client.get("/queue").text
    seen = set()
    page = client.get("/next")
    while 'id="done"' not in page.text:
        html = page.text
        tid = int(re.search(r'action="/task/(\d+)"', html).group(1))
        kind = re.search(r'data-kind="(\w+)"', html).group(1)
        seen.add(kind)
        form = {"client_id": hidden(html, "client_id")}
        if kind == "ranking":
            assert '<ol id="ranking">' in html and 'id="ranks-json"' in html
            assert len(re.findall(r'<li class="response" data-slot="\d" data-rank-label="\d" tabindex="0" draggable="true">', html)) == 3
            form["ranks-json"] = "[1, 0, 2]"
        elif kind == "rating":
            assert html.count('name="score-helpfulness"') == 5 and 'id="comment"' in html
            bad = client.post(f"/task/{tid}", data=dict(form, **{"score-helpfulness": "3"}))
            assert bad.status_code == 422 and "value.scores.honesty: missing" in bad.text
            form.update({"score-helpfulness": "3", "score-honesty": "4", "comment": "fine"})
        elif kind == "spans":
            assert 'id="response-text"' in html and 'id="category"' in html and 'id="add-span"' in html
            assert '<ul id="spans">' in html
            form["spans-json"] = json.dumps([{"start": 0, "end": 3, "category": "style"}])
        else:
            assert 'id="completion"' in html
            form["completion"] = "A demonstration."
        assert 'id="submit"' in html
        page = client.post(f"/task/{tid}", data=form)
        # a double click (the same form, the same client_id) stores nothing new and goes on
        again = client.post(f"/task/{tid}", data=form)
        assert again.status_code == 200
    assert seen == {"ranking", "rating", "spans", "sft"}
    assert store.counts()["labels"] == 4


def test_report_is_for_admins(app, monkeypatch):
    store, client, tokens = app
    assert client.get("/api/report", headers=auth(tokens["a"])).status_code == 403
    client.cookies.set("label_token", tokens["a"])
    assert client.get("/report").status_code == 403
    client.cookies.set("label_token", tokens["boss"])
    html = client.get("/report").text
    for table in ("agreement", "gold", "bias"):
        assert f'<table id="{table}">' in html
    import importlib.util
    if importlib.util.find_spec("rlhf_jax.label.quality") is None:
        assert "quality module missing" in html
        assert client.get("/api/report", headers=auth(tokens["boss"])).status_code == 501
    else:
        assert client.get("/api/report", headers=auth(tokens["boss"])).status_code == 200


def test_report_rows_sorts_leaves_into_the_three_tables():
    rows = report_rows({"gold_threshold": 0.7, "kinds": {"ranking": {
        "alpha": 0.5, "gold": {"a": {"accuracy": 1.0}}, "bias": {"length_corr": {"spearman": None}}}}})
    assert rows["agreement"] == [("ranking.alpha", "0.500")]
    assert rows["gold"] == [("gold_threshold", "0.700"), ("ranking.gold.a.accuracy", "1.000")]
    assert rows["bias"] == [("ranking.bias.length_corr.spearman", "-")]


def test_the_api_on_postgresql(pg_url):
    """The same app on a PostgreSQL server: a label round trip, the double submit and the 409."""
    store = open_store(pg_url)
    token = store.add_annotator("a")
    store.create_batch("r", "ranking", [{"prompt": "p", "responses": ["x", "y", "z"]}], None, seed=0)
    client = TestClient(create_app(store))
    assert client.get("/healthz").json() == {"ok": True}
    task = next_task(client, token)
    codes = [post(client, token, task["id"], {"ranks": [0, 1, 2]}, cid).status_code for cid in ("c", "c", "d")]
    assert codes == [201, 200, 409]
    row = store.label_rows()[0]
    assert [row["value"]["ranks"][i] for i in row["display"]] == [0, 1, 2]  # back in display order
    assert client.get("/api/next", headers=auth(token)).status_code == 204
    store.close()


def test_a_full_length_demonstration_in_any_script_fits_the_body_limit(app):
    """20,000 characters of CJK text (3 UTF-8 bytes each) posted as the page's multipart form (raw
    UTF-8) stays under 64 KiB; url-encoding would have tripled it past the limit."""
    store, client, tokens = app
    client.cookies.set("label_token", tokens["a"])
    tid = task_of_kind(store, tokens["a"], "sft")
    assert 'enctype="multipart/form-data"' in client.get(f"/task/{tid}").text
    text = "漢" * 20_000
    r = client.post(f"/task/{tid}", files={"completion": (None, text), "client_id": (None, "c1")},
                    follow_redirects=False)
    assert r.status_code == 303, r.text[:200]
    assert store.label_rows(kind="sft")[0]["value"]["completion"] == text

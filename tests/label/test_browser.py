"""The labelling app in a real browser: Chromium driven by Playwright against `python -m rlhf_jax.label
serve`. Each task kind is done the way a person does it (keys, drag and drop, radio buttons, a text
selection), and the label the database stores is checked against what was done on the page.

Set RLHF_JAX_SCREENSHOTS=DIR to save a screenshot of each page (the README's come from here)."""
from __future__ import annotations

import os
import pathlib

import pytest

from rlhf_jax.label.store import open_store
from tests.label.conftest import serve

XSS = "<script>alert('xss')</script>"
# a character outside the BMP before the marked span: JS counts it as 2 UTF-16 units, Python as 1
SPAN_TEXT = "Paris 🗼 is the capital of Italy. It has 2 million people."
CRITERIA = ["helpfulness", "honesty", "harmlessness"]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """A served database: annotator `ann` with one task of each kind, `other` with the same ranking
    item, and admin `boss`."""
    db = str(tmp_path_factory.mktemp("browser") / "labels.sqlite")
    store = open_store(db)
    tokens = {"ann": store.add_annotator("ann"), "other": store.add_annotator("other"),
              "boss": store.add_annotator("boss", admin=True)}
    ranking = [{"prompt": "Which reply is best? " + XSS,
                "responses": ["alpha: a short reply", "bravo: a longer, careful reply " + XSS,
                              "charlie: off topic", "delta: wrong"]},
               {"prompt": "Rank these by hand with the mouse.",
                "responses": ["one", "two", "three"]}]
    store.create_batch("rank", "ranking", ranking, ["ann", "other"], overlap=2, seed=3)
    store.create_batch("rate", "rating", [{"prompt": "Explain rain.", "responses": ["Water falls from clouds."],
                                           "meta": {"criteria": CRITERIA}}], ["ann"], seed=3)
    store.create_batch("spans", "spans", [{"prompt": "Tell me about Paris.", "responses": [SPAN_TEXT],
                                           "meta": {"categories": ["factual", "irrelevant", "style"]}}],
                       ["ann"], seed=3)
    store.create_batch("demo", "sft", [{"prompt": "Write a haiku about JAX.", "responses": []}], ["ann"], seed=3)
    store.close()
    with serve(db) as (url, _proc):
        yield url, db, tokens


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    pg = context.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    yield pg
    context.close()


def shot(page, name: str) -> None:
    where = os.environ.get("RLHF_JAX_SCREENSHOTS")
    if where:
        pathlib.Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(pathlib.Path(where) / f"label_{name}.png"), full_page=True)


def login(page, url: str, token: str) -> None:
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(url + "/queue")


def task_id(db: str, who: str, kind: str, prompt_start: str = "") -> int:
    store = open_store(db)
    try:
        me = next(a for a in store.list_annotators() if a["name"] == who)
        return next(r["id"] for r in store.queue(me["id"]) if r["kind"] == kind and r["prompt"].startswith(prompt_start))
    finally:
        store.close()


def stored(db: str, who: str, kind: str, prompt_start: str = "") -> dict:
    """The stored label (item order) and the item's responses."""
    store = open_store(db)
    try:
        rows = [r for r in store.label_rows(kind) if r["annotator"] == who and r["prompt"].startswith(prompt_start)]
    finally:
        store.close()
    assert len(rows) == 1, rows
    return rows[0]


def submit(page) -> None:
    """Submit the task form and wait for the next page (the next task, or the empty queue)."""
    with page.expect_navigation():
        page.click("#submit")
    assert page.locator("#error").is_hidden(), page.inner_text("#error")


def shown_order(page) -> list[str]:
    return [t.strip() for t in page.locator("#ranking li.response .text").all_inner_texts()]


def test_login_rejects_a_bad_token_and_shows_the_queue(page, app_server):
    url, _db, tokens = app_server
    page.goto(url + "/")
    shot(page, "login")
    page.fill("#token", "not-a-token")
    page.click("#login")
    assert "token: not valid" in page.inner_text("#error")
    login(page, url, tokens["ann"])
    assert page.locator("#queue tbody tr").count() == 5
    shot(page, "queue")


def test_ranking_by_keyboard_with_a_tie(page, app_server):
    url, db, tokens = app_server
    login(page, url, tokens["ann"])
    page.goto(f"{url}/task/{task_id(db, 'ann', 'ranking', 'Which')}")
    # the prompt and a response hold a script tag: shown as text, never run
    assert XSS in page.inner_text("#prompt-text")
    assert page.locator("#ranking script").count() == 0
    before = shown_order(page)
    assert sorted(before) == sorted(["alpha: a short reply", "bravo: a longer, careful reply " + XSS,
                                     "charlie: off topic", "delta: wrong"])
    # move bravo to the top with ArrowUp, then charlie to the bottom with ArrowDown, then tie the
    # second item with the first ("t")
    bravo = page.locator("#ranking li.response", has_text="bravo")
    for _ in range(before.index(next(b for b in before if b.startswith("bravo")))):
        bravo.press("ArrowUp")
    charlie = page.locator("#ranking li.response", has_text="charlie")
    for _ in range(3 - shown_order(page).index("charlie: off topic")):
        charlie.press("ArrowDown")
    order = shown_order(page)
    assert order[0].startswith("bravo") and order[3] == "charlie: off topic"
    page.locator("#ranking li.response").nth(1).press("t")
    shot(page, "ranking")
    submit(page)
    row = stored(db, "ann", "ranking", "Which")
    rank_of = dict(zip(row["responses"], row["value"]["ranks"]))
    # shown: bravo, (tied) order[1], order[2], charlie -> dense ranks 0, 0, 1, 2
    assert rank_of[order[0]] == 0 and rank_of[order[1]] == 0
    assert rank_of[order[2]] == 1 and rank_of["charlie: off topic"] == 2
    assert page.dialogs == []


def test_ranking_by_drag_and_drop(page, app_server):
    url, db, tokens = app_server
    login(page, url, tokens["other"])
    page.goto(f"{url}/task/{task_id(db, 'other', 'ranking', 'Rank these')}")
    want = ["three", "one", "two"]
    # drag each wanted response onto the top of the list, last first
    for text in reversed(want):
        first = page.locator("#ranking li.response").first
        item = page.locator("#ranking li.response", has_text=text)
        if shown_order(page)[0] != text:
            item.drag_to(first, target_position={"x": 20, "y": 2})
    assert shown_order(page) == want
    submit(page)
    row = stored(db, "other", "ranking", "Rank these")
    assert dict(zip(row["responses"], row["value"]["ranks"])) == {"three": 0, "one": 1, "two": 2}


def test_rating_with_a_comment(page, app_server):
    url, db, tokens = app_server
    login(page, url, tokens["ann"])
    page.goto(f"{url}/task/{task_id(db, 'ann', 'rating')}")
    # submitting with a criterion unrated is refused by the browser (required radios): nothing stored
    page.check("input[name='score-helpfulness'][value='4']")
    page.click("#submit")
    assert "/task/" in page.url
    page.check("input[name='score-honesty'][value='5']")
    page.check("input[name='score-harmlessness'][value='2']")
    page.fill("#comment", "Too short, but true. " + XSS)
    shot(page, "rating")
    submit(page)
    row = stored(db, "ann", "rating")
    assert row["value"]["scores"] == {"helpfulness": 4, "honesty": 5, "harmlessness": 2}
    assert row["value"]["comment"] == "Too short, but true. " + XSS


def select_text(page, needle: str) -> None:
    """Select `needle` inside #response-text with a DOM Range, as a mouse selection would."""
    page.evaluate("""(needle) => {
        const node = document.getElementById('response-text').firstChild;
        const at = node.textContent.indexOf(needle);
        const r = document.createRange();
        r.setStart(node, at); r.setEnd(node, at + needle.length);
        const s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
    }""", needle)


def test_span_marking_by_selection(page, app_server):
    url, db, tokens = app_server
    login(page, url, tokens["ann"])
    page.goto(f"{url}/task/{task_id(db, 'ann', 'spans')}")
    page.click("#add-span")  # nothing selected: an error, no span
    assert "select some text" in page.inner_text("#error")
    select_text(page, "Italy")
    page.select_option("#category", "factual")
    page.click("#add-span")
    select_text(page, "2 million people")
    page.select_option("#category", "irrelevant")
    page.click("#add-span")
    select_text(page, "million")  # overlaps the second span: refused
    page.click("#add-span")
    assert "overlaps" in page.inner_text("#error")
    assert page.locator("#spans li.span").count() == 2
    shot(page, "spans")
    submit(page)
    row = stored(db, "ann", "spans")
    spans = row["value"]["spans"]
    # offsets are Python's (code points), so the emoji before the spans counts as one character
    assert [(SPAN_TEXT[s["start"]:s["end"]], s["category"]) for s in spans] == [
        ("Italy", "factual"), ("2 million people", "irrelevant")]


def test_demonstration_then_the_queue_is_done(page, app_server):
    url, db, tokens = app_server
    login(page, url, tokens["ann"])
    page.goto(f"{url}/task/{task_id(db, 'ann', 'sft')}")
    page.fill("#completion", "Arrays flow through jit\ncompiled once, run many times\nthe cores hum softly")
    shot(page, "sft")
    submit(page)
    row = stored(db, "ann", "sft")
    assert row["value"]["completion"].startswith("Arrays flow through jit\ncompiled once")



def test_report_page_for_admins_only(page, app_server):
    url, db, tokens = app_server
    login(page, url, tokens["ann"])
    page.goto(url + "/report")
    assert "for admins" in page.inner_text("#error")
    page.context.clear_cookies()
    login(page, url, tokens["boss"])
    page.goto(url + "/report")
    assert page.locator("#quality-missing").count() == 0
    for table in ("#agreement", "#gold", "#bias"):
        assert page.locator(table).is_visible()
    assert page.locator("#agreement tbody tr").count() > 0
    shot(page, "report")

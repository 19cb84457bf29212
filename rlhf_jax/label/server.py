"""The labelling app: a FastAPI application over a `Store`, with a JSON API (what simulated annotators
and the page scripts use) and server-rendered pages (Jinja2, autoescaped; forms work without JS).

    app = create_app("labels.sqlite")      # uvicorn.run(app, host="127.0.0.1", port=8000)

Security: an access token arrives as `Authorization: Bearer TOKEN` or the HttpOnly, SameSite=Strict
cookie `label_token`; it is looked up by its sha256 and compared in constant time. An annotator sees
only its own tasks (another's task id is a 404). Request bodies over MAX_BODY bytes are refused
with 413 before anything parses them. Every value is validated (422 "<field>: <message>").
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from rlhf_jax.label import values as V
from rlhf_jax.label.store import Store, open_store

MAX_BODY = 64 * 1024
COOKIE = "label_token"
HERE = Path(__file__).parent


class BodyLimit:
    """ASGI middleware: 413 for a request whose Content-Length, or whose streamed body, passes `limit`.
    The body is read (at most limit + 1 bytes) before the app sees it, then replayed."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _too_large(send, self.limit)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                return await _too_large(send, self.limit)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"body: larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.cookies.get(COOKIE)


def task_view(task: dict) -> dict:
    """The API's view of a task: responses in display order, the criteria/categories it needs."""
    out = {"id": task["id"], "kind": task["kind"], "prompt": task["prompt"],
           "responses": [task["responses"][i] for i in task["display"]], "position": task["position"]}
    if task["kind"] == "rating":
        out["criteria"] = list(task["meta"].get("criteria") or V.DEFAULT_CRITERIA)
    if task["kind"] == "spans":
        out["categories"] = list(task["meta"].get("categories") or V.DEFAULT_CATEGORIES)
    if "remaining" in task:
        out["remaining"] = task["remaining"]
    return out


def report_rows(report: Any) -> dict[str, list[tuple[str, str]]]:
    """The report's scalar leaves as (path, value) rows of three tables: gold accuracy, bias audit,
    and agreement (everything else), whatever the nesting quality.report chose."""
    tables: dict[str, list[tuple[str, str]]] = {"agreement": [], "gold": [], "bias": []}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [str(k)])
        elif isinstance(node, (list, tuple)) and not all(isinstance(x, (str, int, float)) for x in node):
            for i, v in enumerate(node):
                walk(v, path + [str(i)])
        else:
            key = ".".join(path[1:] if path[:1] == ["kinds"] else path)
            shown = f"{node:.3f}" if isinstance(node, float) else ("-" if node is None else str(node))
            table = "gold" if ("gold" in key or "excluded" in key) else "bias" if "bias" in key else "agreement"
            tables[table].append((key, shown))
    walk(report, [])
    return tables


def quality_report(store: Store, gold_threshold: float = 0.7) -> dict | None:
    """quality.report over every label, or None when rlhf_jax.label.quality is not installed."""
    try:
        from rlhf_jax.label import quality
    except ImportError:
        return None
    return quality.report(store.label_rows(), gold_threshold=gold_threshold)


def create_app(db_url: str | Store) -> FastAPI:
    store = db_url if isinstance(db_url, Store) else open_store(db_url)
    app = FastAPI(title="rlhf_jax labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.add_middleware(BodyLimit)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    pages = Jinja2Templates(directory=HERE / "templates")  # autoescape on for .html

    def who(request: Request) -> dict | None:
        return store.annotator_by_token(_token(request))

    def unauthorized() -> JSONResponse:
        return JSONResponse({"detail": "token: missing or invalid"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"] if p not in ("body", "path", "query"))
        return JSONResponse({"detail": f"{field}: {e['msg']}"}, status_code=422)

    @app.get("/healthz")
    async def healthz():
        ok = await run_in_threadpool(store.ping)
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    @app.get("/api/next")
    async def api_next(request: Request):
        me = await run_in_threadpool(who, request)
        if me is None:
            return unauthorized()
        task = await run_in_threadpool(store.next_task, me["id"])
        if task is None:
            return Response(status_code=204)
        return {"task": task_view(task)}

    async def _submit(me: dict, task_id: int, value: Any, client_id: Any, seconds: Any) -> tuple[int, dict]:
        """(status, body) of a submit: value in DISPLAY order, mapped to item order before storing."""
        if not isinstance(client_id, str) or not 1 <= len(client_id) <= 64:
            return 422, {"detail": "client_id: expected a string of 1..64 characters"}
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 <= seconds < 1e7):
            return 422, {"detail": "seconds: expected a number of seconds >= 0"}
        task = await run_in_threadpool(store.get_task, task_id, me["id"])
        if task is None:
            return 404, {"detail": f"task {task_id}: not in your queue"}
        shown = [task["responses"][i] for i in task["display"]]
        try:
            clean = V.validate(task["kind"], value, shown, task["meta"])
        except V.LabelValueError as e:
            return 422, {"detail": str(e)}
        stored = V.to_item_order(task["kind"], clean, task["display"])
        status, label_id = await run_in_threadpool(store.submit_label, task_id, me["id"], stored, client_id,
                                                   None if seconds is None else float(seconds))
        if status == "conflict":
            return 409, {"detail": f"task {task_id}: already labelled (by another submission)",
                         "label_id": label_id}
        return (201 if status == "created" else 200), {"label_id": label_id}

    @app.post("/api/tasks/{task_id}/label")
    async def api_label(task_id: int, request: Request):
        me = await run_in_threadpool(who, request)
        if me is None:
            return unauthorized()
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"detail": "body: not valid JSON"}, status_code=422)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "body: expected an object {value, client_id, seconds?}"}, status_code=422)
        if "value" not in body:
            return JSONResponse({"detail": "value: missing"}, status_code=422)
        status, out = await _submit(me, task_id, body["value"], body.get("client_id"), body.get("seconds"))
        return JSONResponse(out, status_code=status)

    @app.get("/api/report")
    async def api_report(request: Request, gold_threshold: float = 0.7):
        me = await run_in_threadpool(who, request)
        if me is None:
            return unauthorized()
        if me["role"] != "admin":
            return JSONResponse({"detail": "token: the report is for admins"}, status_code=403)
        rep = await run_in_threadpool(quality_report, store, gold_threshold)
        if rep is None:
            return JSONResponse({"detail": "quality module missing"}, status_code=501)
        return rep

    # -- pages ------------------------------------------------------------------------------------------
    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        return pages.TemplateResponse(request, name, ctx, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request):
        if await run_in_threadpool(who, request) is not None:
            return RedirectResponse("/queue", status_code=303)
        return page(request, "login.html")

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        token = str(form.get("token", "")).strip()
        me = await run_in_threadpool(store.annotator_by_token, token)
        if me is None:
            return page(request, "login.html", 401, error="token: not valid")
        resp = RedirectResponse("/queue", status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return resp

    @app.post("/logout")
    async def logout():
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/queue", response_class=HTMLResponse)
    async def queue(request: Request):
        me = await run_in_threadpool(who, request)
        if me is None:
            return RedirectResponse("/", status_code=303)
        rows = await run_in_threadpool(store.queue, me["id"])
        return page(request, "queue.html", me=me, rows=rows, open=sum(not r["done"] for r in rows))

    @app.get("/next")
    async def next_page(request: Request):
        me = await run_in_threadpool(who, request)
        if me is None:
            return RedirectResponse("/", status_code=303)
        task = await run_in_threadpool(store.next_task, me["id"])
        if task is None:
            return page(request, "done.html", me=me)
        return RedirectResponse(f"/task/{task['id']}", status_code=303)

    async def render_task(request: Request, me: dict, task: dict, status: int = 200, error: str | None = None):
        view = task_view(task)
        shown = None
        if task.get("label"):
            shown = V.to_display_order(task["kind"], task["label"]["value"], task["display"])
        return page(request, f"task_{task['kind']}.html", status, me=me, task=view, label=shown, error=error,
                    client_id=uuid.uuid4().hex, ranks_json=json.dumps(list(range(len(view["responses"])))))

    async def my_task(request: Request, task_id: int):
        """(me, task, None) for a signed-in annotator's own task, else (.., .., the page to answer)."""
        me = await run_in_threadpool(who, request)
        if me is None:
            return None, None, RedirectResponse("/", status_code=303)
        task = await run_in_threadpool(store.get_task, task_id, me["id"])
        if task is None:
            return me, None, page(request, "done.html", 404, me=me, error=f"task {task_id}: not in your queue")
        return me, task, None

    @app.get("/task/{task_id}", response_class=HTMLResponse)
    async def task_page(task_id: int, request: Request):
        me, task, answer = await my_task(request, task_id)
        if answer is not None:
            return answer
        return await render_task(request, me, task)

    @app.post("/task/{task_id}")
    async def task_submit(task_id: int, request: Request):
        """The pages' form post: the same checks as the API; success goes on to the next task."""
        me, task, answer = await my_task(request, task_id)
        if answer is not None:
            return answer
        form = await request.form()
        try:
            value = form_value(task, form)
        except V.LabelValueError as e:
            return await render_task(request, me, task, 422, str(e))
        seconds = form.get("seconds")
        try:
            seconds = float(seconds) if seconds not in (None, "") else None
        except ValueError:
            seconds = None
        status, out = await _submit(me, task_id, value, str(form.get("client_id", "")), seconds)
        if status >= 400:
            return await render_task(request, me, task, status, out["detail"])
        return RedirectResponse("/next", status_code=303)

    @app.get("/report", response_class=HTMLResponse)
    async def report_page(request: Request):
        me = await run_in_threadpool(who, request)
        if me is None:
            return RedirectResponse("/", status_code=303)
        if me["role"] != "admin":
            return page(request, "done.html", 403, me=me, error="the report is for admins")
        counts = await run_in_threadpool(store.counts)
        rep = await run_in_threadpool(quality_report, store)
        tables = report_rows(rep) if rep is not None else {"agreement": [], "gold": [], "bias": []}
        return page(request, "report.html", me=me, counts=counts, missing=rep is None, tables=tables,
                    report_json=json.dumps(rep, indent=1, default=str) if rep is not None else "")

    return app


def _text_field(form, name: str) -> str:
    """A textarea's text as typed: browsers post its line breaks as CRLF (the HTML form encoding)."""
    return str(form.get(name, "")).replace("\r\n", "\n")


def form_value(task: dict, form) -> dict:
    """The label value (display order) a task page's form posted."""
    kind = task["kind"]
    if kind == "sft":
        return {"completion": _text_field(form, "completion")}
    if kind == "rating":
        scores = {}
        for c in task["meta"].get("criteria") or V.DEFAULT_CRITERIA:
            raw = form.get(f"score-{c}")
            if raw in (None, ""):
                raise V.LabelValueError(f"value.scores.{c}", "missing: every criterion needs a score 1..5")
            try:
                scores[c] = int(raw)
            except ValueError:
                raise V.LabelValueError(f"value.scores.{c}", f"{raw!r} is not an integer 1..5") from None
        return {"scores": scores, "comment": _text_field(form, "comment")}
    field = "ranks-json" if kind == "ranking" else "spans-json"
    try:
        parsed = json.loads(str(form.get(field, "")))
    except ValueError:
        raise V.LabelValueError(field, "not valid JSON") from None
    return {"ranks": parsed} if kind == "ranking" else {"spans": parsed}

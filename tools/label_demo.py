"""A labelling app to look at: a database of task-world batches of every kind, three simulated
annotators and a careless one who answer their queues through the app's HTTP API, and a queue
left for you; then the app served, and optionally a screenshot of each page taken in Chromium.

    python tools/label_demo.py --db runs/label_demo.sqlite            # builds it, serves, prints tokens
    python tools/label_demo.py --db runs/label_demo.sqlite --screenshots docs/images --no-serve

The README's screenshots come from the second command. Nothing is downloaded; Chromium is the
system's (Debian's `chromium` package).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_jax.data import synthetic  # noqa: E402
from rlhf_jax.label import quality, simulate  # noqa: E402
from rlhf_jax.label.store import open_store  # noqa: E402

CRITERIA = ["helpfulness", "honesty", "harmlessness"]
CATEGORIES = ["wrong", "extra"]
SIMULATED = [("ann_a", "bt"), ("ann_b", "bt"), ("ann_c", "flip"), ("careless", "bad")]


def build(db: str, seed: int) -> dict[str, str]:
    """The demo database; returns the tokens by annotator name."""
    world = synthetic.WorldConfig(seed=seed)
    store = open_store(db)
    tokens = {name: store.add_annotator(name) for name, _ in SIMULATED}
    tokens["you"] = store.add_annotator("you")
    tokens["admin"] = store.add_annotator("admin", admin=True)
    sims = [n for n, _ in SIMULATED]
    rank = synthetic.ranking_records(world, 40, k=4, split="demo")
    items = [{"prompt": r["prompt"], "responses": r["responses"]} for r in rank[:32]]
    gold = [{"prompt": r["prompt"], "responses": r["responses"],
             "gold": {"ranks": quality.dense_ranks([synthetic.gold_reward(r["prompt"], x) for x in r["responses"]])}}
            for r in rank[32:]]
    store.create_batch("rankings", "ranking", items, sims, overlap=3, seed=seed, gold=gold, gold_rate=0.2)
    store.create_batch("rankings-you", "ranking", items[:4], ["you"], seed=seed)
    answers = synthetic.sft_records(world, 16, split="demo")
    rng = np.random.default_rng(seed)
    rated = [{"prompt": r["prompt"], "responses": [synthetic.perturb(r["completion"], rng)],
              "meta": {"criteria": CRITERIA}} for r in answers[:12]]
    store.create_batch("ratings", "rating", rated, sims[:3] + ["you"], overlap=3, seed=seed)
    spans = [{"prompt": r["prompt"], "responses": [r["response"]], "meta": {"categories": CATEGORIES}}
             for r in synthetic.finegrained_records(world, 8, split="demo")]
    store.create_batch("spans", "spans", spans, sims[:3] + ["you"], overlap=2, seed=seed)
    store.create_batch("demonstrations", "sft", [{"prompt": r["prompt"]} for r in answers[12:14]], ["you"], seed=seed)
    store.close()
    return tokens


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(db: str, port: int):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_jax.label", "serve", "--db", db, "--port", str(port)],
                            env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        simulate.wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def screenshots(url: str, tokens: dict[str, str], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium on PATH: install Debian's `chromium` package")
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1000, "height": 720})

        def shot(name: str, full: bool = False):
            path = out / f"label_{name}.png"
            page.screenshot(path=str(path), full_page=full)
            saved.append(path)

        def login(who: str):
            page.context.clear_cookies()
            page.goto(url + "/")
            page.fill("#token", tokens[who])
            page.click("#login")
            page.wait_for_url(url + "/queue")

        login("you")
        shot("queue")
        queue = page.locator("#queue tbody tr")
        kinds, hrefs = {}, {}
        for i in range(queue.count()):
            cells = queue.nth(i).locator("td")
            kind, href = cells.nth(1).inner_text().strip(), cells.nth(0).locator("a").get_attribute("href")
            kinds.setdefault(kind, href)
            hrefs.setdefault(kind, []).append(href)
        page.goto(url + kinds["ranking"])
        page.locator("#ranking li.response").nth(2).press("ArrowUp")
        page.locator("#ranking li.response").nth(2).press("t")
        shot("ranking")
        page.goto(url + kinds["rating"])
        for c, s in zip(CRITERIA, (4, 5, 3)):
            page.check(f"input[name='score-{c}'][value='{s}']")
        page.fill("#comment", "Right items, one of them out of order.")
        shot("rating")
        # a response with errors, and the first span the task world's oracle marks in it
        for href in hrefs["spans"]:
            page.goto(url + href)
            prompt, text = page.inner_text("#prompt-text").strip(), page.inner_text("#response-text").strip()
            marked = synthetic.error_spans(prompt, text)
            if marked:
                break
        else:
            marked = [{"start": 0, "end": len(text), "category": CATEGORIES[0]}]
        page.select_option("#category", marked[0]["category"])
        page.evaluate("""([start, end]) => {
            const node = document.getElementById('response-text').firstChild;
            const r = document.createRange();
            r.setStart(node, start); r.setEnd(node, end);
            const s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
        }""", [marked[0]["start"], marked[0]["end"]])
        page.click("#add-span")
        shot("spans")
        page.goto(url + kinds["sft"])
        page.fill("#completion", "the answer, written by hand")
        shot("sft")
        login("admin")
        page.goto(url + "/report")
        shot("report", full=True)
        browser.close()
    return saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="runs/label_demo.sqlite")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screenshots", type=Path, default=None, help="save a PNG of each page here")
    ap.add_argument("--no-serve", action="store_true", help="exit after building (and the screenshots)")
    args = ap.parse_args(argv)
    db = Path(args.db)
    if db.exists():
        raise SystemExit(f"--db {db}: exists; remove it or name another file")
    db.parent.mkdir(parents=True, exist_ok=True)
    tokens = build(str(db), args.seed)
    with served(str(db), args.port or free_port()) as url:
        world = synthetic.WorldConfig(seed=args.seed)
        sims = [simulate.Annotator(name, tokens[name], index=i, model=m, seed=args.seed)
                for i, (name, m) in enumerate(SIMULATED)]
        for s in simulate.run_all(url, sims, world):
            print(f"simulated {s.name}: {s.labels} labels", file=sys.stderr)
        if args.screenshots is not None:
            for path in screenshots(url, tokens, args.screenshots):
                print(f"wrote {path}", file=sys.stderr)
        if not args.no_serve:
            print(f"\nthe app: {url}/  (Ctrl-C stops it)\n" +
                  "\n".join(f"  {name:9s} {tok}" for name, tok in tokens.items()), flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

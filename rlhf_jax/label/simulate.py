"""Simulated annotators that answer their queues through the labelling app's HTTP API, as a
person would: GET /api/next, answer, POST /api/tasks/{id}/label, until the queue is empty.

Answers come from the task world (rlhf_jax.data.synthetic) on task-world prompts:
- ranking: synthetic.annotate as this annotator (model "bt" | "flip" | "argmax", its own length
  weight through `disagreement`), on the responses in the order they were shown;
- rating: the gold reward binned to 1..5 (correctness 1 -> 5, 0 -> 1, minus the length penalty)
  plus Gaussian noise of `rating_noise` points, per criterion;
- spans: synthetic.error_spans (the span oracle), each span missed with probability `span_miss`,
  kept only in the task's configured categories;
- sft: the reference answer.
Model "bad" answers at random (a permutation, uniform scores, one random span), which gold
screening should catch. Off-world prompts get the "bad" answer too (there is no gold to follow).

Every annotator owns a seeded generator, so a run is reproducible whatever the interleaving of
concurrent annotators (each sees only its own queue). `resend` re-sends a share of submissions
with the same client_id (a double click): the server must answer 200 and store one label.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from typing import Callable

import numpy as np

from rlhf_jax.data import synthetic

MODELS = ("bt", "flip", "argmax", "bad")
RETRIES = 5  # transport errors and 5xx re-sent with the same client_id (idempotent), then give up


@dataclasses.dataclass
class Annotator:
    name: str
    token: str
    index: int = 0  # which task-world annotator (its length weight under `disagreement`)
    model: str = "bt"
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"annotator {self.name}: model {self.model!r} is not one of {MODELS}")


@dataclasses.dataclass
class Stats:
    name: str
    labels: int = 0  # submissions acknowledged (201, or 200 for an already-stored client_id)
    resent: int = 0
    resent_ok: int = 0  # double clicks answered 200 with the first label's id
    conflicts: int = 0  # 409s
    rejected: int = 0  # 4xx other than 409 (a bad value: a bug in the simulator or the server)
    retries: int = 0
    failures: int = 0  # gave up after RETRIES
    acknowledged: dict = dataclasses.field(default_factory=dict)  # task id -> label id

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("acknowledged")
        return out


def _world_prompt(prompt: str) -> bool:
    try:
        synthetic.parse_prompt(prompt)
        return True
    except ValueError:
        return False


def _random_value(task: dict, rng: np.random.Generator) -> dict:
    kind, responses = task["kind"], task["responses"]
    if kind == "ranking":
        return {"ranks": rng.permutation(len(responses)).tolist()}
    if kind == "rating":
        return {"scores": {c: int(rng.integers(1, 6)) for c in task["criteria"]}, "comment": ""}
    if kind == "spans":
        text, cats = responses[0], task["categories"]
        if not text or not cats:
            return {"spans": []}
        start = int(rng.integers(len(text)))
        end = int(rng.integers(start + 1, len(text) + 1))
        return {"spans": [{"start": start, "end": end, "category": cats[int(rng.integers(len(cats)))]}]}
    return {"completion": "I do not know."}


def rating_score(prompt: str, response: str, length_coef: float, noise: float,
                 rng: np.random.Generator | None) -> int:
    """The gold reward binned to 1..5 (1 + 4 * reward, clipped), plus N(0, noise) points (no draw
    at noise 0, so rng may be None)."""
    g = synthetic.gold_reward(prompt, response, length_coef)
    jitter = noise * rng.standard_normal() if noise else 0.0
    return int(np.clip(np.rint(1 + 4 * np.clip(g, 0.0, 1.0) + jitter), 1, 5))


def answer(task: dict, annotator: Annotator, world: synthetic.WorldConfig, rng: np.random.Generator,
           rating_noise: float = 0.5, span_miss: float = 0.1) -> dict:
    """This annotator's label value for an /api/next task, in DISPLAY order."""
    if annotator.model == "bad" or not _world_prompt(task["prompt"]):
        return _random_value(task, rng)
    prompt, responses, kind = task["prompt"], task["responses"], task["kind"]
    if kind == "ranking":
        cfg = dataclasses.replace(world, annotator_model=annotator.model, consensus=False)
        return {"ranks": synthetic.annotate(prompt, responses, cfg, rng, who=annotator.index)}
    coef = world.length_coef * (1 + world.disagreement * synthetic._annotator_bias(world, annotator.index))
    if kind == "rating":
        return {"scores": {c: rating_score(prompt, responses[0], coef, rating_noise, rng) for c in task["criteria"]},
                "comment": ""}
    if kind == "spans":
        cats = set(task.get("categories") or ())
        return {"spans": [s for s in synthetic.error_spans(prompt, responses[0])
                          if s["category"] in cats and rng.random() >= span_miss]}
    return {"completion": " ".join(synthetic.solve(*synthetic.parse_prompt(prompt)))}


def wait_ready(url: str, proc=None, timeout: float = 60.0) -> None:
    """Return once the app at `url` answers GET /healthz with 200; raise if `proc` (its server
    process, when started here) exits first or `timeout` seconds pass."""
    import httpx
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before /healthz answered")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout:.0f} s")


Recorder = Callable[[str, float, int], None]  # (endpoint, seconds, status)


def _request(client, method: str, url: str, stats: Stats, record: Recorder | None, endpoint: str, **kw):
    """One request, re-sent on a transport error or 5xx (the body, client_id included, unchanged)."""
    import httpx
    for attempt in range(RETRIES):
        t0 = time.perf_counter()
        try:
            r = client.request(method, url, **kw)
        except httpx.TransportError:
            status = -1
            if record:
                record(endpoint, time.perf_counter() - t0, status)
        else:
            status = r.status_code
            if record:
                record(endpoint, time.perf_counter() - t0, status)
            if status < 500:
                return r
        stats.retries += 1
        time.sleep(0.05 * 2 ** attempt)
    stats.failures += 1
    return None


def run_annotator(client, annotator: Annotator, world: synthetic.WorldConfig, *, resend: float = 0.0,
                  deadline: float | None = None, max_tasks: int | None = None, rating_noise: float = 0.5,
                  span_miss: float = 0.1, record: Recorder | None = None, stop: threading.Event | None = None) -> Stats:
    """Answer `annotator`'s queue through `client` (an httpx.Client on the app's base URL) until it
    is empty, `max_tasks` are done, time.monotonic() passes `deadline` or `stop` is set."""
    rng = np.random.default_rng([annotator.seed, annotator.index, 0x5EED])
    stats = Stats(annotator.name)
    auth = {"Authorization": f"Bearer {annotator.token}"}
    while (max_tasks is None or stats.labels < max_tasks) and not (stop and stop.is_set()) \
            and (deadline is None or time.monotonic() < deadline):
        r = _request(client, "GET", "/api/next", stats, record, "GET /api/next", headers=auth)
        if r is None:
            break
        if r.status_code == 204:
            break
        r.raise_for_status()
        task = r.json()["task"]
        t0 = time.perf_counter()
        body = {"value": answer(task, annotator, world, rng, rating_noise, span_miss),
                "client_id": f"{annotator.name[:40]}-{rng.integers(2 ** 63):x}"}
        body["seconds"] = time.perf_counter() - t0
        url = f"/api/tasks/{task['id']}/label"
        r = _request(client, "POST", url, stats, record, "POST /api/tasks/{id}/label", headers=auth, json=body)
        if r is None:
            break
        if r.status_code in (200, 201):
            stats.labels += 1
            stats.acknowledged[task["id"]] = r.json()["label_id"]
        elif r.status_code == 409:
            stats.conflicts += 1
        else:
            stats.rejected += 1
            raise RuntimeError(f"{annotator.name}: task {task['id']} label refused {r.status_code}: {r.text[:300]}")
        if rng.random() < resend:  # a double click: same body, same client_id
            stats.resent += 1
            again = _request(client, "POST", url, stats, record, "POST /api/tasks/{id}/label (resend)",
                             headers=auth, json=body)
            if again is not None and again.status_code == 200 and \
                    again.json().get("label_id") == stats.acknowledged.get(task["id"]):
                stats.resent_ok += 1
    return stats


def run_all(url: str, annotators: list[Annotator], world: synthetic.WorldConfig, *, concurrent: bool = True,
            timeout: float = 30.0, **kw) -> list[Stats]:
    """Every annotator on its own httpx.Client (and thread, when `concurrent`); Stats in input order."""
    import httpx
    out: list[Stats | None] = [None] * len(annotators)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=timeout) as client:
                out[i] = run_annotator(client, annotators[i], world, **kw)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    if concurrent:
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(annotators))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(annotators)):
            one(i)
    if errors:
        raise errors[0]
    return out


def parse_tokens(text: str) -> list[tuple[str, str]]:
    """"name:TOKEN,name:TOKEN" -> [(name, token)]."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, token = part.partition(":")
        if not sep or not name or not token:
            raise SystemExit(f"--tokens: {part!r} is not name:TOKEN")
        pairs.append((name, token))
    if not pairs:
        raise SystemExit("--tokens: no name:TOKEN given")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlhf_jax.label simulate",
                                description="Answer annotators' queues with the task world's simulated annotators.")
    p.add_argument("--url", required=True, help="the app's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--tokens", required=True, help="name:TOKEN,name:TOKEN (one per annotator; order = world index)")
    p.add_argument("--world-seed", type=int, default=0, help="the task world's seed (annotator length weights)")
    p.add_argument("--annotator-model", choices=MODELS[:3], default="bt")
    p.add_argument("--bt-temperature", type=float, default=0.1)
    p.add_argument("--flip-rate", type=float, default=0.0)
    p.add_argument("--disagreement", type=float, default=0.0)
    p.add_argument("--bad", default="", help="names (comma-separated) that answer at random")
    p.add_argument("--rating-noise", type=float, default=0.5, help="std of the rating noise, in scale points")
    p.add_argument("--span-miss", type=float, default=0.1, help="chance to miss each error span")
    p.add_argument("--resend", type=float, default=0.0, help="share of submissions sent twice (double clicks)")
    p.add_argument("--max-tasks", type=int, default=None, help="stop each annotator after this many labels")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequential", action="store_true", help="one annotator after another instead of threads")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, value in (("--flip-rate", args.flip_rate), ("--span-miss", args.span_miss), ("--resend", args.resend)):
        if not 0.0 <= value <= 1.0:
            raise SystemExit(f"{name}={value} must be in [0, 1]")
    pairs = parse_tokens(args.tokens)
    bad = set(filter(None, args.bad.split(",")))
    unknown = bad - {n for n, _ in pairs}
    if unknown:
        raise SystemExit(f"--bad: {sorted(unknown)} not among the --tokens names {[n for n, _ in pairs]}")
    world = synthetic.WorldConfig(seed=args.world_seed, annotator_model=args.annotator_model,
                                  bt_temperature=args.bt_temperature, flip_rate=args.flip_rate,
                                  n_annotators=len(pairs), disagreement=args.disagreement)
    annotators = [Annotator(n, t, i, "bad" if n in bad else args.annotator_model, args.seed)
                  for i, (n, t) in enumerate(pairs)]
    deadline = time.monotonic() + args.seconds if args.seconds else None
    stats = run_all(args.url.rstrip("/"), annotators, world, concurrent=not args.sequential, resend=args.resend,
                    deadline=deadline, max_tasks=args.max_tasks, rating_noise=args.rating_noise,
                    span_miss=args.span_miss)
    json.dump({"annotators": [s.as_dict() for s in stats]}, sys.stdout, indent=1)
    print()
    return 0 if all(s.failures == 0 for s in stats) else 1


if __name__ == "__main__":
    sys.exit(main())

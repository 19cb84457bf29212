"""Simulated annotators: their answers on task-world prompts (the world's oracles, in display
order) and their HTTP loop against an in-process fake of the label API (httpx.MockTransport):
queue until 204, double clicks answered 200 with one stored label, 5xx re-sent with the same
client_id. The real server is exercised in tests/label/test_e2e.py."""
import json

import httpx
import numpy as np
import pytest

from rlhf_jax.data import synthetic
from rlhf_jax.label import simulate as S

WORLD = synthetic.WorldConfig(seed=0)
PROMPT = "sort 3 1 2 =>"


def task(kind, responses, **extra):
    return {"id": 1, "kind": kind, "prompt": PROMPT, "responses": responses, "position": 0, "remaining": 1, **extra}


def test_ranking_answer_follows_the_gold_reward_in_display_order():
    responses = ["1 2", "1 2 3", "sure 1 2 3", "3 2 1"]  # gold: exact > filler > truncated, reversed
    ann = S.Annotator("a", "t", model="argmax")
    ranks = S.answer(task("ranking", responses), ann, WORLD, np.random.default_rng(0))["ranks"]
    g = [synthetic.gold_reward(PROMPT, r) for r in responses]
    assert ranks[1] == 0 and sorted(range(4), key=lambda i: ranks[i]) == sorted(range(4), key=lambda i: -g[i])
    shown = [responses[i] for i in (3, 1, 0, 2)]  # another display order: the ranks follow the responses
    again = S.answer(task("ranking", shown), ann, WORLD, np.random.default_rng(0))["ranks"]
    assert again == [ranks[i] for i in (3, 1, 0, 2)]


def test_rating_spans_sft_and_bad_answers():
    ann = S.Annotator("a", "t")
    rng = np.random.default_rng(0)
    rating = S.answer(task("rating", ["1 2 3"], criteria=["helpful", "honest"]), ann, WORLD, rng, rating_noise=0.0)
    assert rating == {"scores": {"helpful": 5, "honest": 5}, "comment": ""}
    # correctness 2/3, no extra tokens: 1 + 4 * 2/3 = 3.67 -> 4
    assert S.answer(task("rating", ["1 2 2"], criteria=["h"]), ann, WORLD, rng, rating_noise=0.0)["scores"] == {"h": 4}
    spans = S.answer(task("spans", ["sure 1 3 2"], categories=["wrong", "extra"]), ann, WORLD, rng, span_miss=0.0)
    assert spans == {"spans": synthetic.error_spans(PROMPT, "sure 1 3 2")} and len(spans["spans"]) == 3
    only_wrong = S.answer(task("spans", ["sure 1 3 2"], categories=["wrong"]), ann, WORLD, rng, span_miss=0.0)
    assert [s["category"] for s in only_wrong["spans"]] == ["wrong", "wrong"]
    assert S.answer(task("sft", []), ann, WORLD, rng) == {"completion": "1 2 3"}
    bad = S.Annotator("b", "t", model="bad")
    ranks = S.answer(task("ranking", ["a", "b", "c"]), bad, WORLD, rng)["ranks"]
    assert sorted(ranks) == [0, 1, 2]
    span = S.answer(task("spans", ["1 2 3"], categories=["x"]), bad, WORLD, rng)["spans"][0]
    assert 0 <= span["start"] < span["end"] <= 5 and span["category"] == "x"
    with pytest.raises(ValueError, match="bt"):
        S.Annotator("c", "t", model="random")


class FakeAPI:
    """The label API's contract in memory: one queue per token, labels unique per task, a label
    re-sent with its client_id answers 200, `fail_first` POSTs answer 503 before storing."""

    def __init__(self, queues: dict[str, list[dict]], fail_first: int = 0):
        self.queues, self.fail_first = queues, fail_first
        self.labels: dict[int, dict] = {}
        self.posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.queues:
            return httpx.Response(401)
        queue = self.queues[token]
        if request.method == "GET" and request.url.path == "/api/next":
            todo = [t for t in queue if t["id"] not in self.labels]
            return httpx.Response(204) if not todo else httpx.Response(200, json={"task": todo[0]})
        task_id = int(request.url.path.split("/")[3])
        body = json.loads(request.content)
        self.posts += 1
        if self.posts <= self.fail_first:
            return httpx.Response(503)
        if task_id in self.labels:
            stored = self.labels[task_id]
            if stored["client_id"] == body["client_id"]:
                return httpx.Response(200, json={"label_id": stored["label_id"]})
            return httpx.Response(409)
        self.labels[task_id] = {"client_id": body["client_id"], "label_id": 100 + task_id, "value": body["value"]}
        return httpx.Response(201, json={"label_id": 100 + task_id})


def test_loop_answers_the_queue_double_clicks_and_retries(monkeypatch):
    monkeypatch.setattr(S.time, "sleep", lambda s: None)
    queue = [dict(task("ranking", ["1 2 3", "1 2"]), id=i) for i in range(1, 6)]
    api = FakeAPI({"tok": queue}, fail_first=2)
    seen = []
    with httpx.Client(base_url="http://fake", transport=httpx.MockTransport(api)) as client:
        stats = S.run_annotator(client, S.Annotator("a", "tok", model="argmax"), WORLD, resend=1.0,
                                record=lambda e, s, status: seen.append((e, status)))
    assert stats.labels == 5 and sorted(stats.acknowledged) == [1, 2, 3, 4, 5]
    assert stats.resent == 5 and stats.resent_ok == 5 and stats.retries == 2 and stats.failures == 0
    assert len(api.labels) == 5
    assert all(v["value"]["ranks"] == [0, 1] for v in api.labels.values())  # argmax: the exact answer wins
    assert ("POST /api/tasks/{id}/label", 503) in seen and seen[-1] == ("GET /api/next", 204)
    # max_tasks stops early; a wrong token is an HTTP error, not a silent empty queue
    api2 = FakeAPI({"tok": [dict(t) for t in queue]})
    with httpx.Client(base_url="http://fake", transport=httpx.MockTransport(api2)) as client:
        assert S.run_annotator(client, S.Annotator("a", "tok"), WORLD, max_tasks=2).labels == 2
        with pytest.raises(httpx.HTTPStatusError):
            S.run_annotator(client, S.Annotator("a", "nope"), WORLD)


def test_cli_argument_errors():
    assert S.parse_tokens("a:x, b:y") == [("a", "x"), ("b", "y")]
    with pytest.raises(SystemExit, match="name:TOKEN"):
        S.parse_tokens("a")
    with pytest.raises(SystemExit, match="not among"):
        S.main(["--url", "http://x", "--tokens", "a:x", "--bad", "zed"])
    with pytest.raises(SystemExit, match="--flip-rate"):
        S.main(["--url", "http://x", "--tokens", "a:x", "--flip-rate", "2"])

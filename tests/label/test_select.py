"""`batch --select STRATEGY --rm WORKDIR --budget N`: the comparisons an active-selection strategy picks
from K responses per prompt, sent as pairs; picks by hand and through a saved reward model."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from rlhf_jax.data import active
from rlhf_jax.errors import UserError
from rlhf_jax.label import select as S
from rlhf_jax.label.store import open_store
from tests.label.test_cli import run, write

ITEMS = [{"prompt": "p0", "responses": ["a", "b", "c"]}, {"prompt": "p1", "responses": ["d", "e", "f"]}]


def test_uncertainty_and_disagreement_picks_by_hand():
    # two members; candidates per prompt: (0,1), (0,2), (1,2)
    scores = np.array([[[0.0, 0.1, 3.0], [1.0, -1.0, 0.0]],
                       [[0.0, 0.1, 1.0], [1.0, 1.0, 0.0]]])
    # mean differences: p0 (0,1) -0.1, (0,2) -2.0, (1,2) -1.9; p1 (0,1) 1.0, (0,2) 1.0, (1,2) 0.0
    picked, info = S.select_pairs(ITEMS, scores, "uncertainty", 2)
    assert [p["responses"] for p in picked] == [["e", "f"], ["a", "b"]]  # |mean d| = 0.0, then 0.1
    assert [p["meta"]["selection"]["order"] for p in picked] == [0, 1] and info["candidates"] == 6
    # member differences: p0 (0,2): -3 and -1 (variance 1); p1 (0,1): 2 and 0 (variance 1); (1,2): -1, 1 (1)
    # p0 (1,2): -2.9, -0.9 (variance 1) -> four tie at 1; the others have variance 0
    picked, _ = S.select_pairs(ITEMS, scores, "disagreement", 4)
    assert sorted(tuple(p["responses"]) for p in picked) == [("a", "c"), ("b", "c"), ("d", "e"), ("e", "f")]
    capped, _ = S.select_pairs(ITEMS, scores, "diverse_disagreement", 4, per_cluster=1)
    assert sorted(p["prompt"] for p in capped) == ["p0", "p1"]


def test_strategy_errors_are_user_errors():
    with pytest.raises(UserError, match="--select best: unknown; valid: random, uncertainty, disagreement"):
        S.select_pairs(ITEMS, np.zeros((1, 2, 3)), "best", 1)
    with pytest.raises(UserError, match="disagreement needs an ensemble of k >= 2"):
        S.select_pairs(ITEMS, np.zeros((1, 2, 3)), "disagreement", 1)
    with pytest.raises(UserError, match="no finished reward model"):
        S.reward_scorer("/nonexistent")


@pytest.fixture
def rm_run(tmp_path):
    """A run directory whose stage rm 'finished': the micro config's scalar-head model, two members
    at different seeds, saved as the rm stage saves them (stacked on axis 0)."""
    from rlhf_jax import checkpoint
    from rlhf_jax import sharding as shd
    from rlhf_jax.context import base_model
    from rlhf_jax.models import init_model
    from rlhf_jax.workdir import fingerprint, flatten
    from tests.micro import micro
    c = micro(**{"rm.members": 2})
    flat = flatten(c)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"fingerprint": fingerprint(flat), "config": flat}, default=str))
    mesh = shd.make_mesh(shd.MeshConfig())
    base, _ = base_model(c, mesh)
    members = [init_model(base.cfg, head="scalar", seed=s, mesh=mesh).params for s in (1, 2)]
    checkpoint.save_final(run_dir, "rm", jax.tree.map(lambda *x: np.stack(x), *members), {"members": 2})
    return run_dir


def test_batch_sends_the_pairs_the_strategy_picks_under_a_saved_rm(rm_run, tmp_path, capsys):
    from rlhf_jax.data import synthetic
    rows = [{"prompt": r["prompt"], "responses": r["responses"]}
            for r in synthetic.ranking_records(synthetic.WorldConfig(seed=0), 6, k=4)]
    f = write(tmp_path / "items.jsonl", rows)
    db = tmp_path / "labels.sqlite"
    run(capsys, "annotators", "add", "--db", db, "--name", "a")
    code, out, err = run(capsys, "batch", "--db", db, "--name", "s", "--kind", "ranking", "--responses", f,
                         "--select", "disagreement", "--rm", rm_run, "--budget", "5", "--seed", "3")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["items"] == 5 and summary["selection"]["candidates"] == 36 and summary["selection"]["members"] == 2
    # the same picks from the scores computed directly
    scores = S.reward_scorer(rm_run)(rows)
    assert scores.shape == (2, 6, 4) and np.all(np.isfinite(scores))
    want = active.select("disagreement", active.candidate_pairs(6, 4), scores, 5, np.random.default_rng(3))
    cands = active.candidate_pairs(6, 4)[want.chosen]
    store = open_store(str(db))
    import sqlalchemy as sa
    from rlhf_jax.label.store import items
    with store.engine.connect() as conn:
        got = conn.execute(sa.select(items.c.prompt, items.c.responses, items.c.meta).order_by(items.c.id)).all()
    assert [(g.prompt, g.responses) for g in got] == [
        (rows[p]["prompt"], [rows[p]["responses"][i], rows[p]["responses"][j]]) for p, i, j in cands]
    assert [g.meta["selection"]["order"] for g in got] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([g.meta["selection"]["score"] for g in got], want.scores, rtol=1e-12)
    # the mistakes
    code, _, err = run(capsys, "batch", "--db", db, "--name", "t", "--kind", "ranking", "--responses", f,
                       "--select", "uncertainty", "--budget", "5")
    assert code == 2 and "--select STRATEGY, --budget N and (except for random) --rm WORKDIR go together" in err
    code, out, err = run(capsys, "batch", "--db", db, "--name", "u", "--kind", "ranking", "--responses", f,
                         "--select", "random", "--budget", "4")
    assert code == 0 and json.loads(out)["items"] == 4

"""`python -m rlhf_jax.label ...`: the commands in-process, user mistakes as one-line errors (exit 2),
and a batch sampled from a WORKDIR:STAGE checkpoint with the project's sampler."""
from __future__ import annotations

import json

import pytest

from rlhf_jax.label.cli import main
from rlhf_jax.label.store import open_store


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def db(tmp_path, capsys):
    db = tmp_path / "labels.sqlite"
    tokens = {}
    for name in ("a", "b", "c"):
        code, out, err = run(capsys, "annotators", "add", "--db", db, "--name", name)
        assert code == 0 and "shown once" in err
        tokens[name] = out.strip()
    return db, tokens


def test_annotators_and_batch(db, tmp_path, capsys):
    db, tokens = db
    assert len(set(tokens.values())) == 3 and all(len(t) >= 30 for t in tokens.values())
    f = write(tmp_path / "r.jsonl", [{"prompt": f"p{i}", "responses": ["x", "y", "z"]} for i in range(6)])
    g = write(tmp_path / "g.jsonl", [{"prompt": "g", "responses": ["good", "bad"], "gold": {"ranks": [0, 1]}}])
    code, out, _ = run(capsys, "batch", "--db", db, "--name", "b1", "--kind", "ranking", "--responses", f,
                       "--overlap", "2", "--annotators", "a,b,c", "--gold", g, "--gold-rate", "0.2", "--seed", "1")
    assert code == 0
    # 12 regular tasks (4 each) + one gold task each (round(0.2 * 4 / 0.8) = 1, at most the 1 gold item)
    assert json.loads(out) == {"batch_id": 1, "items": 6, "gold_items": 1, "tasks": 15}
    code, out, _ = run(capsys, "annotators", "list", "--db", db)
    assert code == 0 and [line.split("\t")[3] for line in out.splitlines()] == ["tasks=5"] * 3


@pytest.mark.parametrize("argv,message", [
    (["batch", "--kind", "rank", "--responses", "{f}"], "error: --kind rank: unknown; valid: sft, ranking, rating, spans"),
    (["batch", "--kind", "ranking", "--responses", "{bad}"], "error: {bad}:2: field 'responses': contains the same "
                                                             "response twice"),
    (["batch", "--kind", "ranking", "--responses", "{f}", "--overlap", "4"], "error: --overlap 4: must be 1..3"),
    (["batch", "--kind", "ranking", "--responses", "{f}", "--annotators", "a,zed"], "error: --annotators: unknown zed"),
    (["batch", "--kind", "ranking", "--prompts", "{f}"], "error: --prompts alone makes sft items"),
    (["batch", "--kind", "ranking", "--model", "/nonexistent", "--prompts", "{f}"], "error: --model /nonexistent: no "
                                                                                     "such HF directory"),
    (["export", "--kind", "ranking", "--consensus", "mean", "--out", "{tmp}/o.jsonl"],
     "error: --consensus mean: not a rule for --kind ranking; valid: borda"),
])
def test_user_mistakes_are_one_line_errors_with_exit_2(db, tmp_path, capsys, argv, message):
    db, _ = db
    f = write(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["x", "y"]}])
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["x", "y"]}, {"prompt": "q", "responses": ["x", "x"]}])
    argv = [a.format(f=f, bad=bad, tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, argv[0], "--db", db, *argv[1:], *(["--name", "b"] if argv[0] == "batch" else []))
    assert code == 2
    assert err.startswith(message.format(bad=bad)) and err.count("\n") == 1


def test_commands_that_read_refuse_a_missing_database(tmp_path, capsys):
    for argv in (["annotators", "list"], ["report"], ["export", "--kind", "ranking", "--out", tmp_path / "o"]):
        code, _, err = run(capsys, argv[0], "--db", tmp_path / "typo.sqlite", *argv[1:])
        assert code == 2 and "typo.sqlite: no such database file" in err
    assert not (tmp_path / "typo.sqlite").exists()


def test_export_and_report_commands(db, tmp_path, capsys):
    pytest.importorskip("rlhf_jax.label.quality")
    db, tokens = db
    f = write(tmp_path / "r.jsonl", [{"prompt": f"p{i}", "responses": ["x", "y", "z"]} for i in range(2)])
    assert run(capsys, "batch", "--db", db, "--name", "b", "--kind", "ranking", "--responses", f, "--overlap", "3")[0] == 0
    store = open_store(str(db))
    for name, token in tokens.items():
        me = store.annotator_by_token(token)
        for q in store.queue(me["id"]):
            store.submit_label(q["id"], me["id"], {"ranks": [0, 1, 2]}, "c")
    out_file = tmp_path / "out" / "ranking.jsonl"
    code, out, _ = run(capsys, "export", "--db", db, "--kind", "ranking", "--consensus", "borda", "--out", out_file)
    assert code == 0 and json.loads(out)["records"] == 2
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["ranks"] for r in rows] == [[0, 1, 2]] * 2
    assert rows[0]["provenance"]["annotators"] == ["a", "b", "c"] and rows[0]["provenance"]["agreement"] == 1.0
    code, out, _ = run(capsys, "report", "--db", db, "--out", tmp_path / "rep.json")
    assert code == 0 and json.loads((tmp_path / "rep.json").read_text()) == json.loads(out)


def test_batch_samples_k_distinct_responses_from_a_workdir_stage(db, tmp_path, capsys):
    """`batch --model WORKDIR:sft`: K responses per prompt from a stage's parameters (the micro
    config's model with its initial weights), each item with K distinct responses."""
    from rlhf_jax import checkpoint
    from rlhf_jax import sharding as shd
    from rlhf_jax.context import base_model
    from rlhf_jax.workdir import fingerprint, flatten
    from tests.micro import micro
    db, _ = db
    c = micro()
    flat = flatten(c)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"fingerprint": fingerprint(flat), "config": flat}, default=str))
    base, _ = base_model(c, shd.make_mesh(shd.MeshConfig()))
    checkpoint.save_final(run_dir, "sft", base.params, {"done": True})
    prompts = write(tmp_path / "p.jsonl", [{"prompt": "what is good"}, {"prompt": "say something"}])
    code, out, err = run(capsys, "batch", "--db", db, "--name", "s", "--kind", "ranking", "--model", f"{run_dir}:sft",
                         "--prompts", prompts, "--k", "3", "--max-new-tokens", "6", "--batch-size", "4",
                         "--temperature", "1.0", "--overlap", "1")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["items"] == 2 and summary["tasks"] == 2 and summary["sampling"]["dropped"] == 0
    store = open_store(str(db))
    with store.engine.connect() as conn:
        import sqlalchemy as sa
        from rlhf_jax.label.store import items
        rows = conn.execute(sa.select(items.c.responses, items.c.meta)).all()
    assert all(len(set(r.responses)) == 3 for r in rows)
    assert rows[0].meta["model"] == f"{run_dir}:sft" and rows[0].meta["source"].endswith("p.jsonl:1")
    # the task world's tokenizer has no chat template: the policy sees its prompts as it was trained
    assert rows[0].meta["prompt_format"] == "plain"

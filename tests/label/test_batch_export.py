"""Batches (items from files, K distinct samples per prompt) and the consensus export, with
consensus values worked by hand."""
from __future__ import annotations

import json
import sys

import pytest

from rlhf_jax.data.records import DataError, validate_fine_grained, validate_pair, validate_ranking, validate_sft
from rlhf_jax.errors import UserError
from rlhf_jax.label import batch as B
from rlhf_jax.label.export import export, item_agreement, majority_spans
from rlhf_jax.label.store import open_store


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_items_from_file_keep_extra_keys_as_provenance(tmp_path):
    f = write(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["a", "b"], "id": 7}, "",
                                     {"prompt": "q", "responses": ["c", "d", "e"]}])
    items = B.items_from_file(f, "ranking", {"x": 1})
    assert [i["responses"] for i in items] == [["a", "b"], ["c", "d", "e"]]
    assert items[0]["meta"] == {"id": 7, "x": 1, "source": f"{f}:1"}
    assert items[1]["meta"]["source"] == f"{f}:3"  # blank lines keep the numbering
    rated = B.items_from_file(write(tmp_path / "t.jsonl", [{"prompt": "p", "response": "r"}]), "rating")
    assert rated[0]["responses"] == ["r"]
    assert B.items_from_file(write(tmp_path / "s.jsonl", [{"prompt": "p"}]), "sft")[0]["responses"] == []


@pytest.mark.parametrize("row,kind,message", [
    ('{"prompt": "p", ', "ranking", "r.jsonl:2: field '(line)': not valid JSON"),
    ({"responses": ["a", "b"]}, "ranking", "r.jsonl:2: field 'prompt': missing"),
    ({"prompt": "p", "responses": ["a"]}, "ranking", "r.jsonl:2: field 'responses': expected a list of 2..9"),
    ({"prompt": "p", "responses": ["a", "a"]}, "ranking", "r.jsonl:2: field 'responses': contains the same"),
    ({"prompt": "p", "responses": ["a", 3]}, "ranking", "r.jsonl:2: field 'r': expected a string, got int"),
    ({"prompt": "p"}, "rating", "r.jsonl:2: field 'response': missing"),
    ({"prompt": "p", "responses": ["a", "b"], "ended": [True]}, "ranking",
     "r.jsonl:2: field 'ended': expected a list of 2 booleans"),
    ({"prompt": "  "}, "sft", "r.jsonl:2: field 'prompt': is empty"),
    ([1], "sft", "r.jsonl:2: field '(line)': expected a JSON object"),
])
def test_bad_item_rows_name_file_line_and_field(tmp_path, row, kind, message):
    good = {"prompt": "ok", "responses": ["x", "y"], "response": "x"}
    f = write(tmp_path / "r.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        B.items_from_file(f, kind)
    assert str(e.value).startswith(str(f) + message.split("r.jsonl", 1)[1])


def test_gold_rows_are_validated_as_label_values(tmp_path):
    f = write(tmp_path / "g.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "gold": {"ranks": [0, 2, 1]}}])
    assert B.gold_from_file(f, "ranking")[0]["gold"] == {"ranks": [0, 2, 1]}
    f = write(tmp_path / "g.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "gold": {"ranks": [0, 3, 1]}}])
    with pytest.raises(DataError, match=r"g.jsonl:1: field 'gold.ranks': \[0, 3, 1\] are not dense ranks"):
        B.gold_from_file(f, "ranking")
    f = write(tmp_path / "g.jsonl", [{"prompt": "p", "responses": ["a", "b"]}])
    with pytest.raises(DataError, match="g.jsonl:1: field 'gold': missing"):
        B.gold_from_file(f, "ranking")
    with pytest.raises(UserError, match="no such file"):
        B.items_from_file(tmp_path / "none.jsonl", "ranking")
    with pytest.raises(UserError, match="unknown; valid: sft, ranking, rating, spans"):
        B.items_from_file(f, "pairs")


def test_duplicate_samples_are_resampled_and_hopeless_prompts_dropped():
    calls = []
    answers = {"p0": iter(["x", "x ", "y", "z", "w"]), "p1": iter(["same"] * 20)}

    def complete(batch):
        calls.append(len(batch))
        return [next(answers[m[0]["content"]]) for m, _ in batch]
    out, stats = B.sample_responses(complete, ["p0", "p1"], k=3, tries=2)
    # p0: x, "x " (a duplicate once stripped), y -> resample 1: z
    assert out == [["x", "y", "z"], []]
    assert calls == [6, 3, 2] and stats == {"sampled": 6, "resampled": 5, "dropped": 1}


def test_a_sample_cut_at_the_limit_comes_back_unfinished():
    """`synth.generator` gives a completion that hit max_new_tokens before an EOS as `Unfinished`;
    the batch keeps the mark through its stripping, so the export can say which responses a reward
    model reads without an EOS."""
    from rlhf_jax.data.tokenize import Unfinished

    answers = iter(["done ", Unfinished("cut off ")])
    out, _ = B.sample_responses(lambda batch: [next(answers) for _ in batch], ["p"], k=2)
    assert out == [["done", "cut off"]] and [isinstance(t, Unfinished) for t in out[0]] == [False, True]


def test_export_carries_which_responses_were_cut(tmp_path):
    """An item whose meta says which responses ended (what `batch --model` records, or a file row's
    "ended") exports rankings and pairs with the same "ended" field, read back as `Unfinished`."""
    pytest.importorskip("rlhf_jax.label.quality")
    from rlhf_jax.data.tokenize import Unfinished
    item = [{**ITEM[0], "meta": {"model": "m", "ended": [True, False, True]}}]
    store = labelled_store(tmp_path, "ranking", item, RANKS)
    records, _ = export(store, "ranking", "borda")
    assert records[0]["ended"] == [True, False, True]
    back = validate_ranking(records[0])
    assert [isinstance(r, Unfinished) for r in back["responses"]] == [False, True, False]
    pairs, _ = export(store, "pairs", "borda")
    assert {(r["chosen"], r["rejected"]): r["ended"] for r in pairs} == {
        ("r0", "r1"): [True, False], ("r0", "r2"): [True, True], ("r1", "r2"): [False, True]}
    assert isinstance(validate_pair(pairs[0])["rejected"], Unfinished)
    plain, _ = export(labelled_store(tmp_path / "plain", "ranking", ITEM, RANKS), "ranking", "borda")
    assert "ended" not in plain[0]  # not known: no field, every response read as ended


def labelled_store(tmp_path, kind, rows, values, gold=None, gold_values=None):
    """A store where annotators a, b, c each label every item of `rows` with values[annotator][i]
    (item order), and the gold items (if any) with gold_values[annotator][j]."""
    tmp_path.mkdir(exist_ok=True)
    store = open_store(str(tmp_path / "l.sqlite"))
    ids = {n: store.annotator_by_token(store.add_annotator(n))["id"] for n in ("a", "b", "c")}
    store.create_batch("b", kind, rows, None, overlap=3, seed=0, gold=gold or [], gold_rate=0.5 if gold else 0)
    for name, aid in ids.items():
        for q in store.queue(aid):
            task = store.get_task(q["id"], aid)
            if task["gold"] is not None:
                value = gold_values[name][[g["prompt"] for g in gold].index(task["prompt"])]
            else:
                value = values[name][[r["prompt"] for r in rows].index(task["prompt"])]
            assert store.submit_label(q["id"], aid, value, f"{name}{q['id']}")[0] == "created"
    return store


RANKS = {"a": [{"ranks": [0, 1, 2]}], "b": [{"ranks": [0, 2, 1]}], "c": [{"ranks": [1, 0, 2]}]}
ITEM = [{"prompt": "p", "responses": ["r0", "r1", "r2"], "meta": {"model": "m"}}]


def test_item_agreement_by_hand():
    # pairs (0,1): a, b prefer 0, c prefers 1 -> 1 of 3 annotator pairs agree; (0,2): 3 of 3; (1,2): 1 of 3
    assert item_agreement("ranking", [v[0] for v in RANKS.values()]) == pytest.approx(5 / 9)
    assert item_agreement("rating", [{"scores": {"h": 3}}, {"scores": {"h": 3}}, {"scores": {"h": 4}}]) == 1 / 3
    assert item_agreement("ranking", [{"ranks": [0, 1]}]) is None


def test_majority_spans_by_hand():
    v = [{"spans": [{"start": 0, "end": 4, "category": "f"}]}, {"spans": [{"start": 2, "end": 6, "category": "f"}]},
         {"spans": [{"start": 3, "end": 5, "category": "s"}]}]
    # characters 2, 3 are marked "f" by 2 of 3 labels; no character has 2 "s" votes
    assert majority_spans(v, 10) == [{"start": 2, "end": 4, "category": "f"}]


def test_export_ranking_by_borda_with_provenance(tmp_path):
    pytest.importorskip("rlhf_jax.label.quality")
    store = labelled_store(tmp_path, "ranking", ITEM, RANKS)
    records, summary = export(store, "ranking", "borda")
    # Borda points: a [2,1,0], b [2,0,1], c [1,2,0] -> totals [5,3,1] -> ranks [0,1,2]
    assert len(records) == 1 and records[0]["ranks"] == [0, 1, 2]
    prov = records[0]["provenance"]
    assert prov["annotators"] == ["a", "b", "c"] and prov["agreement"] == pytest.approx(5 / 9)
    assert prov["model"] == "m" and prov["consensus"] == "borda"
    assert validate_ranking(records[0]) == {k: records[0][k] for k in ("prompt", "responses", "ranks")}
    assert summary["records"] == 1 and summary["excluded"] == []


def test_export_excludes_annotators_below_the_gold_threshold(tmp_path):
    pytest.importorskip("rlhf_jax.label.quality")
    gold = [{"prompt": "g", "responses": ["good", "mid", "bad"], "gold": {"ranks": [0, 1, 2]}}]
    wrong = {"ranks": [2, 1, 0]}
    store = labelled_store(tmp_path, "ranking", ITEM, RANKS, gold,
                           {"a": [{"ranks": [0, 1, 2]}], "b": [{"ranks": [0, 1, 2]}], "c": [wrong]})
    records, summary = export(store, "ranking", "borda", exclude_below=0.7)
    assert summary["excluded"] == ["c"] and summary["gold_accuracy"]["c"]["accuracy"] == 0.0
    # a + b only: [2,1,0] + [2,0,1] = [4,1,1] -> ranks [0,1,1]; the gold item is not exported
    assert [r["ranks"] for r in records] == [[0, 1, 1]]
    assert records[0]["provenance"]["annotators"] == ["a", "b"]


def test_export_pairs_by_majority(tmp_path):
    pytest.importorskip("rlhf_jax.label.quality")
    store = labelled_store(tmp_path, "ranking", ITEM, RANKS)
    records, _ = export(store, "pairs", "majority")
    got = {(r["chosen"], r["rejected"]): r["provenance"]["votes"] for r in records}
    assert got == {("r0", "r1"): [2, 1], ("r0", "r2"): [3, 0], ("r1", "r2"): [2, 1]}
    for r in records:
        validate_pair(r)
    # the pairs of the Borda ranking [0, 1, 2] instead
    records, _ = export(store, "pairs", "borda")
    assert [(r["chosen"], r["rejected"]) for r in records] == [("r0", "r1"), ("r0", "r2"), ("r1", "r2")]


def test_export_rating_spans_and_sft(tmp_path):
    pytest.importorskip("rlhf_jax.label.quality")
    rows = [{"prompt": "p", "responses": ["resp"], "meta": {"criteria": ["h", "t"]}}]
    scores = {n: [{"scores": {"h": h, "t": 5}, "comment": ""}] for n, h in (("a", 1), ("b", 2), ("c", 4))}
    records, _ = export(labelled_store(tmp_path / "t", "rating", rows, scores), "rating", "mean")
    assert records[0]["scores"] == {"h": pytest.approx(7 / 3), "t": 5.0} and records[0]["response"] == "resp"

    assert "ended" not in records[0]
    rows[0]["meta"]["ended"] = [False]  # a sample cut at the length limit (batch --model records it)
    records, _ = export(labelled_store(tmp_path / "t_cut", "rating", rows, scores), "rating", "mean")
    assert records[0]["ended"] == [False]

    rows = [{"prompt": "p", "responses": ["0123456789"], "meta": {"categories": ["f", "s"], "ended": [False]}}]
    spans = {"a": [{"spans": [{"start": 0, "end": 4, "category": "f"}]}],
             "b": [{"spans": [{"start": 2, "end": 6, "category": "f"}]}], "c": [{"spans": []}]}
    records, _ = export(labelled_store(tmp_path / "s", "spans", rows, spans), "fine_grained")
    assert records[0]["spans"] == [{"start": 2, "end": 4, "category": "f"}] and records[0]["ended"] == [False]
    from rlhf_jax.data.tokenize import Unfinished
    assert isinstance(validate_fine_grained(records[0])["response"], Unfinished)

    demos = {n: [{"completion": f"demo by {n}"}] for n in "abc"}
    records, _ = export(labelled_store(tmp_path / "f", "sft", [{"prompt": "p", "responses": []}], demos), "sft")
    assert sorted(r["completion"] for r in records) == ["demo by a", "demo by b", "demo by c"]
    assert [validate_sft(r)["prompt"] for r in records] == ["p"] * 3


def test_export_names_bad_rules_and_a_missing_quality_module(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "l.sqlite"))
    with pytest.raises(UserError, match="--consensus mean: not a rule for --kind ranking; valid: borda"):
        export(store, "ranking", "mean")
    with pytest.raises(UserError, match="--kind spans: unknown; valid: ranking, pairs, rating, fine_grained, sft"):
        export(store, "spans")
    import rlhf_jax.label
    monkeypatch.setitem(sys.modules, "rlhf_jax.label.quality", None)
    monkeypatch.delattr(rlhf_jax.label, "quality", raising=False)
    with pytest.raises(UserError, match="export needs rlhf_jax.label.quality"):
        export(store, "ranking")

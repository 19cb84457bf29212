"""Binary feedback (KTO's data): validation names file, line and field, skips are counted by reason,
and rankings, pairs and HH-RLHF convert to desirable / undesirable examples by the stated rule."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_jax.data import corpora, synthetic
from rlhf_jax.data.records import DataError, FieldError, binary_from_preferences, validate_binary
from rlhf_jax.data.sources import read_records

GOOD = json.dumps({"prompt": "Hi?", "response": "Hello!", "label": True})


@pytest.mark.parametrize("bad, field, words", [
    ({"prompt": "Hi?", "label": True}, "response", "missing"),
    ({"prompt": "Hi?", "response": "Hello!"}, "label", "missing"),
    ({"prompt": "Hi?", "response": "Hello!", "label": "maybe"}, "label", "is not true/false"),
    ({"prompt": "Hi?", "response": "Hello!", "label": 2}, "label", "is not true/false"),
    ({"prompt": "Hi?", "response": "Hello!", "label": 1.0}, "label", "is not true/false"),
    ({"prompt": "Hi?", "response": "Hello!", "label": [True]}, "label", "is not true/false"),
    ({"prompt": "  ", "response": "Hello!", "label": False}, "prompt", "is empty"),
    ({"prompt": "Hi?", "response": 3, "label": False}, "response", "expected a string"),
])
def test_binary_errors_name_file_line_field(tmp_path, bad, field, words):
    path = tmp_path / "feedback.jsonl"
    path.write_text("\n".join([GOOD, GOOD, json.dumps(bad), GOOD]))
    with pytest.raises(DataError) as e:
        read_records(path, "binary")
    assert e.value.line == 3 and e.value.field == field and words in e.value.message
    assert str(e.value).startswith(f"{path}:3: field '{field}'")
    records, report = read_records(path, "binary", policy="skip")
    assert len(records) == 3 and report.kept == 3 and sum(report.skipped.values()) == 1
    assert list(report.examples.values()) == ["line 3"]


def test_the_labels_a_user_writes_and_the_csv_form(tmp_path):
    for label, want in ((True, True), (False, False), (1, True), (0, False), ("desirable", True),
                        ("Undesirable", False), ("true", True), ("0", False)):
        assert validate_binary({"prompt": "p", "response": "r", "label": label})["label"] is want, label
    # TRL's unpaired format names the response "completion"
    assert validate_binary({"prompt": "p", "completion": "c", "label": False}) == {"prompt": "p", "response": "c",
                                                                                   "label": False}
    chat = [{"role": "user", "content": "hi"}]
    assert validate_binary({"prompt": chat, "response": "r", "label": 1})["prompt"] == chat
    path = tmp_path / "feedback.csv"
    path.write_text("prompt,response,label\nHi?,Hello!,true\nHi?,Go away.,false\nHi?,Eh,perhaps\n")
    with pytest.raises(DataError, match=r"feedback.csv:4: field 'label'"):
        read_records(path, "binary")
    records, _ = read_records(path, "binary", policy="skip")
    assert [r["label"] for r in records] == [True, False]
    with pytest.raises(FieldError):
        validate_binary({"prompt": "p", "response": "r", "label": None})


def test_rankings_and_pairs_convert_top_to_desirable_and_bottom_to_undesirable():
    rankings = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [2, 0, 3, 1]},
                {"prompt": "q", "responses": ["e", "f", "g"], "ranks": [0, 0, 1]},  # a tie at the top
                {"prompt": "s", "chosen": "h", "rejected": "i"}]
    got = binary_from_preferences(rankings)
    assert got == [{"prompt": "p", "response": "b", "label": True}, {"prompt": "p", "response": "c", "label": False},
                   {"prompt": "q", "response": "e", "label": True}, {"prompt": "q", "response": "f", "label": True},
                   {"prompt": "q", "response": "g", "label": False},
                   {"prompt": "s", "response": "h", "label": True}, {"prompt": "s", "response": "i", "label": False}]
    # unpair="one": one side per prompt (seeded), never both
    many = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(200)]
    one = binary_from_preferences(many, "one", seed=1)
    assert [r["prompt"] for r in one] == [f"p{i}" for i in range(200)]
    assert all(r["response"] == ("good" if r["label"] else "bad") for r in one)
    assert 70 < sum(r["label"] for r in one) < 130 and one == binary_from_preferences(many, "one", seed=1)
    with pytest.raises(ValueError, match="unpair"):
        binary_from_preferences(many, "neither")


def test_the_task_world_and_hh_rlhf_convert(shared_data):
    world = synthetic.WorldConfig(seed=0, max_items=4)
    rankings = synthetic.ranking_records(world, 20, k=4, split="train")
    got = binary_from_preferences(rankings)
    assert len(got) == 40 and sum(r["label"] for r in got) == 20  # strict rankings: one top, one bottom each
    for r, (good, bad) in zip(rankings, zip(got[::2], got[1::2])):
        assert good["response"] == r["responses"][r["ranks"].index(0)] and good["label"]
        assert bad["response"] == r["responses"][r["ranks"].index(3)] and not bad["label"]
    pairs, _ = corpora.READERS["hh_rlhf"](policy="skip")
    hh = binary_from_preferences(pairs[:50])
    assert len(hh) == 100
    for p, (good, bad) in zip(pairs[:50], zip(hh[::2], hh[1::2])):
        assert (good["prompt"], good["response"], good["label"]) == (p["prompt"], p["chosen"], True)
        assert (bad["prompt"], bad["response"], bad["label"]) == (p["prompt"], p["rejected"], False)
        validate_binary(good), validate_binary(bad)  # each converted example is a valid binary record


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=8)
rows = st.dictionaries(st.sampled_from(["prompt", "response", "completion", "label"]), json_values, max_size=4)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(payload=st.one_of(rows.map(json.dumps), st.binary(max_size=40)))
def test_random_binary_rows_fail_only_with_a_named_error(tmp_path, payload):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(payload if isinstance(payload, bytes) else payload.encode())
    try:
        for r in read_records(path, "binary")[0]:
            assert isinstance(r["label"], bool) and isinstance(r["response"], str)
    except DataError as e:
        assert str(e).startswith(f"{path}:") and e.field
    try:  # skipping counts every bad row; a whole-file fault (a corrupt gzip stream) is still an error
        _, report = read_records(path, "binary", policy="skip")
    except DataError as e:
        assert e.field == "<gzip>", e
        return
    assert report.kept + sum(report.skipped.values()) == report.read

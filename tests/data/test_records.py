"""Validation names file, line and field; the skip policy counts by reason; random junk never crashes."""
import gzip
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_jax.data.records import DataError, ranking_pairs
from rlhf_jax.data.sources import read_records


def write_lines(path, lines):
    data = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


GOOD_PAIR = json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."})


@pytest.mark.parametrize("bad_line, field, words", [
    ('{"prompt": "Hi?", "chosen": "a", ', "<json>", "malformed JSON"),
    (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "<bytes>", "not valid UTF-8"),
    ('{"prompt": "Hi?", "rejected": "b"}', "chosen", "missing"),
    ('{"prompt": "Hi?", "chosen": 3, "rejected": "b"}', "chosen", "expected a string, got int"),
    ('{"prompt": "   ", "chosen": "a", "rejected": "b"}', "prompt", "is empty"),
    ('{"prompt": "Hi?", "chosen": "same", "rejected": "same"}', "rejected", "identical to chosen"),
    ('[1, 2]', "<row>", "expected an object"),
])
def test_pair_errors_name_file_line_field(tmp_path, bad_line, field, words):
    path = write_lines(tmp_path / "prefs.jsonl.gz", [GOOD_PAIR, "", bad_line, GOOD_PAIR])
    with pytest.raises(DataError) as e:
        read_records(path, "pair")
    assert e.value.line == 3 and e.value.field == field and words in e.value.message
    assert str(e.value).startswith(f"{path}:3: field '{field}'")


def test_ranking_errors():
    cases = [({"responses": ["a", "b", "c"], "ranks": [0, 2, 2]}, "ranks", "not a permutation"),
             ({"responses": ["a", "b"], "ranks": [0, 1, 2]}, "ranks", "expected a list of 2"),
             ({"responses": ["a"], "ranks": [0]}, "responses", "K must be 2..9"),
             ({"responses": ["a", ""], "ranks": [0, 1]}, "responses[1]", "is empty"),
             ({"responses": ["a", "b"], "ranks": [0, 0]}, "ranks", "all responses are tied"),
             ({"responses": ["a", "b"], "ranks": [0, 1.0]}, "ranks", "not all integers"),
             ({"responses": ["a", "b"], "ranks": [0, 1], "ended": [True]}, "ended", "not a list of 2 booleans"),
             ({"responses": ["a", "b"], "ranks": [0, 1], "ended": [1, 0]}, "ended", "not a list of 2 booleans")]
    for row, field, words in cases:
        from rlhf_jax.data.records import FieldError, validate_ranking
        with pytest.raises(FieldError) as e:
            validate_ranking({"prompt": "p", **row})
        assert e.value.field == field and words in e.value.message, row
    from rlhf_jax.data.records import validate_pair
    with pytest.raises(FieldError) as e:
        validate_pair({"prompt": "p", "chosen": "a", "rejected": "b", "ended": [True, "no"]})
    assert e.value.field == "ended" and "not a list of 2 booleans" in e.value.message


def test_every_kind_with_responses_reads_the_ended_field():
    """"ended" (one boolean per response, in the record's order) gives back `Unfinished` for the
    responses cut at the length limit, in every kind a reward model, DPO or KTO trains on."""
    from rlhf_jax.data.records import (FieldError, validate_binary, validate_fine_grained, validate_pair,
                                       validate_rating)
    from rlhf_jax.data.tokenize import Unfinished
    cut = lambda x: isinstance(x, Unfinished)
    pair = validate_pair({"prompt": "p", "chosen": "a", "rejected": "b", "ended": [True, False]})
    assert (cut(pair["chosen"]), cut(pair["rejected"])) == (False, True)
    single = {"prompt": "p", "response": "r", "ended": [False]}
    assert cut(validate_rating({**single, "scores": {"helpful": 3}})["response"])
    assert cut(validate_fine_grained({**single, "spans": []})["response"])
    assert cut(validate_binary({**single, "label": True})["response"])
    assert not cut(validate_binary({**single, "label": True, "ended": [True]})["response"])
    assert not cut(validate_binary({"prompt": "p", "response": "r", "label": True})["response"])
    with pytest.raises(FieldError, match="not a list of 1 booleans"):
        validate_rating({**single, "scores": {"helpful": 3}, "ended": False})
    from rlhf_jax.data.records import validate_sft
    assert cut(validate_sft({"prompt": "p", "completion": "c", "ended": [False]})["completion"])
    with pytest.raises(FieldError, match="not to messages"):
        validate_sft({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                      "ended": [False]})


def test_ties_are_dropped_from_pairs():
    assert ranking_pairs([0, 1, 2]) == [(0, 1), (0, 2), (1, 2)]
    assert ranking_pairs([1, 0, 1]) == [(1, 0), (1, 2)]  # the tie between 0 and 2 is dropped
    assert len(ranking_pairs(list(range(9)))) == 36


def test_chat_errors_name_the_message(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    path = write_lines(tmp_path / "chat.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=r"chat.jsonl:1: field 'messages\[1\].role': 'bot' is not one of"):
        read_records(path, "sft")
    row = {"messages": [{"role": "user", "content": "hi"}]}
    path = write_lines(tmp_path / "chat2.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match="no assistant turn"):
        read_records(path, "sft")


def test_over_long_and_csv_rows(tmp_path):
    path = tmp_path / "sft.csv"
    path.write_text('prompt,completion\n"Say hi","hi"\n"Say ""more""","' + "x" * 50 + '"\n')
    with pytest.raises(DataError, match=r"sft.csv:3: field 'completion': has 50 characters, more than max_chars=10"):
        read_records(path, "sft", max_chars=10)
    records, report = read_records(path, "sft", max_chars=10, policy="skip")
    assert records == [{"prompt": "Say hi", "completion": "hi"}] and report.skipped == {"too_long": 1}


def test_skip_policy_counts_by_reason(tmp_path):
    lines = [GOOD_PAIR, "{oops", '{"prompt": "p", "chosen": "a", "rejected": "a"}',
             '{"prompt": "p", "chosen": "a", "rejected": "a"}', b"\xff\xfe", GOOD_PAIR]
    records, report = read_records(write_lines(tmp_path / "p.jsonl", lines), "pair", policy="skip")
    assert len(records) == 2 and report.read == 6 and report.kept == 2
    assert report.skipped == {"malformed_json": 1, "chosen_equals_rejected": 2, "malformed_bytes": 1}
    assert "chosen_equals_rejected=2 (first: line 3)" in report.summary()


def test_json_array_rows_are_named(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a"}]))
    with pytest.raises(DataError, match=r"d.json:row 1: field 'completion': missing"):
        read_records(path, "sft")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=8)
field_names = st.sampled_from(["prompt", "chosen", "rejected", "completion", "messages", "responses", "ranks",
                               "text", "response", "spans", "role", "content"])
rows = st.dictionaries(field_names, json_values, max_size=6)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(kind=st.sampled_from(["sft", "pair", "ranking", "prompt", "text", "fine_grained"]),
       payload=st.one_of(rows.map(json.dumps), st.binary(max_size=40), json_values.map(json.dumps)))
def test_random_input_fails_only_with_a_named_error(tmp_path, kind, payload):
    path = write_lines(tmp_path / "fuzz.jsonl", [payload if isinstance(payload, bytes) else payload.encode()])
    try:
        read_records(path, kind)
    except DataError as e:
        assert str(e).startswith(f"{path}:") and e.field
    try:
        _, report = read_records(path, kind, policy="skip")
    except DataError as e:  # whole-file faults (a corrupt gzip stream) cannot be skipped row by row
        assert e.field == "<gzip>"
        return
    assert report.kept + sum(report.skipped.values()) == report.read


# --- the reliability issue: inputs that crashed the readers or were wrongly accepted / rejected ---

PAIR = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}
DEEP = "[" * 50_000 + "]" * 50_000  # past Python's recursion limit


def read_both(path, kind="pair"):
    """(the DataError under policy='error', (records, report) under policy='skip')."""
    with pytest.raises(DataError) as e:
        read_records(path, kind)
    return e.value, read_records(path, kind, policy="skip")


@pytest.mark.parametrize("name, bad, field, words, reason", [
    ("deep.jsonl", '{"prompt": %s, "chosen": "a", "rejected": "b"}' % DEEP, "<json>", "nested too deeply", "too_deep"),
    ("huge.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b", "n": %s}' % ("7" * 5000), "<json>",
     "4300 digits", "huge_number"),
    ("dup.jsonl", '{"prompt": "p", "chosen": "a", "chosen": "c", "rejected": "b"}', "chosen", "appears twice",
     "duplicate_key"),
    ("nan.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b", "score": NaN}', "<json>", "NaN is not valid JSON",
     "malformed_json"),
    ("sur.jsonl", '{"prompt": "p", "chosen": "caf\\ud800", "rejected": "b"}', "chosen", "lone surrogate U+D800",
     "lone_surrogate"),
])
def test_pathological_json_lines_are_named_or_counted(tmp_path, name, bad, field, words, reason):
    path = write_lines(tmp_path / name, [json.dumps(PAIR), bad, json.dumps(PAIR)])
    error, (records, report) = read_both(path)
    assert (error.line, error.field) == (2, field) and words in error.message
    assert len(records) == 2 and (report.read, report.kept) == (3, 2) and report.skipped == {reason: 1}


def test_faults_inside_a_json_array_name_their_row_and_skip_goes_on(tmp_path):
    rows = [json.dumps(PAIR), DEEP, '{"a": 1, "a": 2}', "7" * 5000, "Infinity", json.dumps(PAIR)]
    path = tmp_path / "rows.json"
    path.write_text("[" + ",\n".join(rows) + "]")
    error, (records, report) = read_both(path)
    assert (error.line, error.field) == ("row 1", "<json>") and "nested too deeply" in error.message
    assert records == [PAIR, PAIR] and report.read == 6
    assert report.skipped == {"too_deep": 1, "duplicate_key": 1, "huge_number": 1, "malformed_json": 1}
    path.write_text("[" + json.dumps(PAIR) + ",\n" + json.dumps(PAIR) + "\n oops]")
    with pytest.raises(DataError, match=r"rows.json:3: field '<json>': malformed JSON"):
        read_records(path, "pair", policy="skip")  # broken array syntax: no later row can be found


@pytest.mark.parametrize("row, field", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\udfff"}]},
     "messages[1].content"),
    ({"prompt": "\ud83d", "completion": "x"}, "prompt"),
])
def test_lone_surrogates_are_rejected_at_validation(tmp_path, row, field):
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(row)])  # json.dumps writes \\udfff escapes
    with pytest.raises(DataError) as e:
        read_records(path, "sft")
    assert e.value.field == field and "lone surrogate" in e.value.message
    ok = write_lines(tmp_path / "ok.jsonl", ['{"prompt": "smile \\ud83d\\ude00", "completion": "x"}'])
    assert read_records(ok, "sft")[0][0]["prompt"] == "smile \U0001F600"  # a surrogate *pair* is one character
    with pytest.raises(DataError, match=r"field 'responses\[1\]': contains a lone surrogate"):
        read_records(write_lines(tmp_path / "r.jsonl", [json.dumps(
            {"prompt": "p", "responses": ["a", "b\udc80"], "ranks": [0, 1]})]), "ranking")


def test_csv_field_over_the_csv_limit_is_a_named_error(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text('prompt,completion\n"Say hi","hi"\n"Say more","' + "x" * 140_000 + '"\n"a","b"\n')
    for policy in ("error", "skip"):  # the CSV reader cannot resynchronise after it: a whole-file fault
        with pytest.raises(DataError) as e:
            read_records(path, "sft", policy=policy)
        assert (e.value.line, e.value.field) == (3, "<csv>") and "longer than 131072 characters" in e.value.message


def test_csv_rows_with_the_wrong_number_of_cells_are_named(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text("prompt,completion\nSay hi,hi,extra\nSay,\nSolo\n")
    error, (records, report) = read_both(path, "sft")
    assert (error.line, error.field) == (2, "<csv>") and "has 3 cells; the header has 2" in error.message
    assert report.skipped == {"malformed_csv": 2, "empty_completion": 1} and report.read == 3 and not records


def test_a_directory_is_a_named_error(tmp_path):
    (tmp_path / "prefs.jsonl").mkdir()
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match=r"prefs.jsonl:0: field '<file>': is a directory"):
            read_records(tmp_path / "prefs.jsonl", "pair", policy=policy)


@pytest.mark.parametrize("name, text", [
    ("bom.jsonl", json.dumps(PAIR) + "\n"), ("bom.json", json.dumps([PAIR])),
    ("bom.csv", "prompt,chosen,rejected\nHi?,Hello!,Go away.\n"), ("bom.jsonl.gz", json.dumps(PAIR))])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, name, text):
    data = "\ufeff".encode() + text.encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert read_records(path, "pair") == ([PAIR], read_records(path, "pair")[1])
    assert read_records(path, "pair")[1].kept == 1


def test_spans_need_integer_offsets_and_a_text_category():
    from rlhf_jax.data.records import FieldError, validate_fine_grained
    row = {"prompt": "p", "response": "hello world", "spans": [{"start": False, "end": 5, "category": "x"}]}
    with pytest.raises(FieldError, match=r"field 'spans\[0\]': \[False, 5\) is not inside"):
        validate_fine_grained(row)
    row["spans"] = [{"start": 0, "end": 5, "category": [[["deep"]]]}]
    with pytest.raises(FieldError, match=r"field 'spans\[0\].category': expected a string, got list"):
        validate_fine_grained(row)


def test_messages_from_deep_or_huge_values_never_raise():
    from rlhf_jax.data.records import FieldError, validate_ranking, validate_sft
    deep = json.loads("[" * 900 + "]" * 900)
    with pytest.raises(FieldError, match=r"field 'ranks': \[\[\[\.\.\.\]\], \[\]\] are not all integers"):
        validate_ranking({"prompt": "p", "responses": ["a", "b"], "ranks": [deep, []]})
    with pytest.raises(FieldError, match=r"field 'messages\[0\].role': <int> is not one of"):
        validate_sft({"messages": [{"role": 10 ** 5000, "content": "x"}]})  # repr() refuses > 4300 digits


# --- the "preference" kind: a pair or a ranking, so ranking files can train the RM and DPO ---

RANKING = {"prompt": [{"role": "user", "content": "Best fruit?"}], "responses": ["Mango.", "Apple.", "Mud."],
           "ranks": [0, 1, 2]}


def test_preference_kind_reads_rankings_pairs_and_both(tmp_path):
    rankings = write_lines(tmp_path / "ranks.jsonl", [json.dumps(RANKING), json.dumps(
        {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [1, 0, 1, 2]})])
    with pytest.raises(DataError, match=r"ranks.jsonl:1: field 'chosen': missing"):
        read_records(rankings, "pair")  # what the RM stage used to ask for
    records, report = read_records(rankings, "preference")
    assert records[0] == RANKING and records[1]["ranks"] == [1, 0, 1, 2] and report.kept == 2
    pairs = write_lines(tmp_path / "pairs.jsonl", [json.dumps(PAIR)])
    assert read_records(pairs, "preference")[0] == [PAIR]
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([PAIR, RANKING]))
    assert read_records(mixed, "preference")[0] == [PAIR, RANKING]


@pytest.mark.parametrize("row, field, words", [
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 0]}, "ranks", "all responses are tied"),
    ({"prompt": "p", "responses": ["a", "b"]}, "ranks", "expected a list of 2"),
    ({"prompt": "p", "ranks": [0, 1]}, "responses", "expected a list of strings"),
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected", "identical to chosen"),
    ({"prompt": "p", "completion": "a"}, "chosen", "chosen/rejected (a pair) or responses/ranks (a ranking)"),
])
def test_preference_errors_name_the_field(tmp_path, row, field, words):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(PAIR), json.dumps(row)])
    with pytest.raises(DataError) as e:
        read_records(path, "preference")
    assert (e.value.line, e.value.field) == (2, field) and words in e.value.message


def test_rating_rows_hold_scores_in_the_scale(tmp_path):
    from rlhf_jax.data.records import FieldError, validate_rating
    row = {"prompt": "p", "response": "r", "scores": {"helpfulness": 4, "honesty": 2.5}}
    assert validate_rating(row) == row
    for scores, field in [({}, "scores"), ({"honesty": 6}, "scores.honesty"), ({"honesty": True}, "scores.honesty"),
                          ({"honesty": "5"}, "scores.honesty"), ({"": 3}, "scores"), ([3], "scores")]:
        with pytest.raises(FieldError, match=rf"field '{re.escape(field)}'"):
            validate_rating(dict(row, scores=scores))
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(dict(row, scores={"honesty": 0})) + "\n")
    with pytest.raises(DataError, match=r"r\.jsonl:2: field 'scores\.honesty': 0 is not a number in \[1, 5\]"):
        read_records(path, "rating")

"""The reader fuzzer: a CI-sized run finds no failure, and the classifier catches each kind of one."""
import time

import pytest

from rlhf_jax.data import fuzz
from rlhf_jax.data.records import DataError, LoadReport


def test_ci_sized_run_has_no_uncaught_hang_drop_or_poison():
    result = fuzz.run(300, seed=0, timeout=10.0)
    assert {o: result["totals"][o] for o in fuzz.BAD} == {o: 0 for o in fuzz.BAD}, result["failures"]
    assert sum(result["totals"].values()) == 600  # 300 files, each read under both policies
    for kind in fuzz.KINDS:
        for policy in fuzz.POLICIES:
            assert sum(result["by_kind"][kind][policy].values()) > 10, (kind, policy)
    assert set(result["by_mutation"]) == set(fuzz.ROW_MUTATIONS) | set(fuzz.FILE_MUTATIONS)
    assert result["by_mutation"]["directory"] == {"clean_error": sum(result["by_mutation"]["directory"].values())}
    for outcome in fuzz.GOOD:
        assert result["totals"][outcome] > 50, outcome  # the cases exercise all three good outcomes


def test_cases_are_deterministic_and_cover_every_format():
    a, b = list(fuzz.generate(200, seed=3)), list(fuzz.generate(200, seed=3))
    assert [c.content for c in a] == [c.content for c in b]
    assert {(c.fmt, c.gz) for c in a} == {(f, g) for f in fuzz.FORMATS for g in (False, True)}


def _case(tmp_path, mutation="wrong_type", fmt="jsonl"):
    case = fuzz.Case(0, "pair", fmt, False, mutation, b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n', 1)
    return case, fuzz.write_case(case, tmp_path)


def _report(read, kept, skipped=0):
    r = LoadReport("x", read=read, kept=kept)
    if skipped:
        r.skipped["x"] = skipped
    return r


@pytest.mark.parametrize("fake, outcome", [
    (lambda p: (_ for _ in ()).throw(RecursionError("deep")), "uncaught"),
    (lambda p: (_ for _ in ()).throw(DataError("elsewhere.jsonl", 1, "f", "m")), "uncaught"),
    (lambda p: time.sleep(5), "hang"),
    (lambda p: ([], _report(1, 0)), "silent_drop"),  # read 1, kept 0, skipped 0
    (lambda p: ([], _report(0, 0)), "silent_drop"),  # the file has a row, none was read
    (lambda p: ([{"prompt": "p", "chosen": "a\ud800", "rejected": "b"}], _report(1, 1)), "poisoned"),
    (lambda p: ([{"prompt": "p", "chosen": "a", "rejected": "b"}], _report(1, 1)), "accepted"),
    (lambda p: ([], _report(1, 0, skipped=1)), "skipped"),
    (lambda p: (_ for _ in ()).throw(DataError(str(p), 1, "chosen", "bad")), "clean_error"),
])
def test_classifier_flags_each_outcome(tmp_path, monkeypatch, fake, outcome):
    case, path = _case(tmp_path)
    monkeypatch.setattr(fuzz, "read_records", lambda p, kind, policy: fake(p))
    assert fuzz.classify(case, path, "error", timeout=0.3)[0] == outcome


def test_rejecting_a_valid_or_harmlessly_changed_file_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(fuzz, "read_records", lambda p, kind, policy: (_ for _ in ()).throw(
        DataError(str(p), 1, "<json>", "Unexpected UTF-8 BOM")))
    for mutation, fmt, outcome in [("bom", "jsonl", "wrongly_rejected"), ("valid", "json", "wrongly_rejected"),
                                   ("bom", "csv", "clean_error"), ("nan", "jsonl", "clean_error")]:
        case, path = _case(tmp_path, mutation, fmt)
        assert fuzz.classify(case, path, "skip")[0] == outcome, (mutation, fmt)

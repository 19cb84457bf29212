"""A structured fuzzer for the record readers (`sources.read_records` and the validators).

`generate(n, seed)` makes `n` deterministic malformed files: valid rows of every record kind,
written as .jsonl, .json, .csv or .tsv (gzipped or not), with one structured mutation each
(a wrong type, a missing field, deep nesting, a huge integer, a lone surrogate, NaN, a BOM,
a truncated gzip stream, binary junk, an empty file, a huge field, a duplicate key, a
directory, ...). `run_case` reads one under a policy and `classify`s what happened:

- accepted / skipped: no exception; `report.read == kept + skipped`, every row written was
  read, and every kept record is clean text (UTF-8 encodable, no NaN) that validates again;
- clean_error: a `DataError` whose message starts with "file:line: field '...'";
- uncaught: any other exception; hang: over the per-case timeout;
- silent_drop: rows read != kept + skipped, or fewer rows read than written;
- poisoned: a kept record that is not clean (what lone surrogates used to be);
- wrongly_rejected: a valid JSON (Lines) file, or one changed only harmlessly (a BOM, CRLF line
  ends, no final newline, an unknown extra field), not accepted whole.

The tests run a few hundred cases; `tools/fuzz_readers.py` runs thousands and prints counts.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import logging
import random
import tempfile
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

from rlhf_jax.data.records import VALIDATORS, DataError
from rlhf_jax.data.sources import read_records

KINDS = ("sft", "pair", "ranking", "prompt", "text", "fine_grained", "preference")
POLICIES = ("error", "skip")
FORMATS = ("jsonl", "json", "csv", "tsv")
GOOD = ("accepted", "skipped", "clean_error")
BAD = ("uncaught", "hang", "silent_drop", "poisoned", "wrongly_rejected")
HARMLESS = ("valid", "bom", "crlf", "no_final_newline", "extra_field")

_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}]
_PAIR = {"prompt": "Best fruit?", "chosen": "Mango.", "rejected": "Mud."}
_RANKING = {"prompt": [{"role": "user", "content": "Best fruit?"}], "responses": ["Mango.", "Apple.", "Mud."],
            "ranks": [0, 1, 1]}
SEEDS: dict[str, list[dict]] = {
    "sft": [{"prompt": "Say hi.", "completion": "Hi!"}, {"messages": _CHAT},
            {"prompt": _CHAT[:2], "completion": "Hello."}],
    "pair": [_PAIR, {"prompt": _CHAT[:2], "chosen": "Hello.", "rejected": "Go away."}],
    "ranking": [_RANKING, {"prompt": "Q?", "responses": ["a", "b", "c", "d"], "ranks": [3, 0, 2, 1]}],
    "prompt": [{"prompt": "Tell a story."}, {"prompt": "2+2?", "reference": "4"}, {"prompt": _CHAT[:2]}],
    "text": [{"text": "Once upon a time."}],
    "fine_grained": [{"prompt": "Sky colour?", "response": "The sky is green.",
                      "spans": [{"start": 11, "end": 16, "category": "Wrong"}]}],
    "preference": [_PAIR, _RANKING],
}

JUNK_VALUES = [1, -1, 1.5, True, None, [], {}, ["x"], {"a": "b"}, "", "   ", "\x00", 10 ** 30]
ROW_MUTATIONS = ("valid", "missing_field", "wrong_type", "nested_wrong_type", "nested_missing", "deep_nesting",
                 "huge_int", "surrogate", "nan", "empty_string", "huge_field", "duplicate_key", "extra_field",
                 "control_chars", "null_row", "non_object_row")
FILE_MUTATIONS = ("bom", "utf16", "crlf", "truncate", "binary_junk", "invalid_utf8_line", "empty_file",
                  "whitespace_only", "nul_bytes", "truncated_gzip", "directory", "deep_file", "no_final_newline")
_RAW = "\u0001RAW{}\u0001"  # a placeholder string replaced by raw JSON text after serialisation


@dataclasses.dataclass
class Case:
    """One generated input: what it is (kind, format, gzip, mutation) and its bytes."""

    index: int
    kind: str
    fmt: str
    gz: bool
    mutation: str
    content: bytes | None  # None: a directory
    expected_rows: int | None  # rows written, when the mutation keeps that number defined

    @property
    def name(self) -> str:
        return f"case{self.index}.{self.fmt}" + (".gz" if self.gz else "")


# --- rows ---------------------------------------------------------------------------------------

def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every nested position (dict key or list index) below a row."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _parent(row: Any, path: tuple) -> Any:
    for k in path[:-1]:
        row = row[k]
    return row


def _mutate_row(row: dict, mutation: str, rng: random.Random, raws: list[str]) -> Any:
    """The row with one structured fault; raw JSON text to splice in goes to `raws`."""
    keys = list(row)
    key = rng.choice(keys)

    def raw(text: str) -> str:
        raws.append(text)
        return _RAW.format(len(raws) - 1)

    if mutation == "missing_field":
        del row[key]
    elif mutation == "wrong_type":
        row[key] = rng.choice(JUNK_VALUES)
    elif mutation in ("nested_wrong_type", "nested_missing"):
        paths = list(_paths(row)) or [(key,)]
        path = rng.choice(paths)
        parent = _parent(row, path)
        if mutation == "nested_missing" and isinstance(parent, dict):
            del parent[path[-1]]
        elif mutation == "nested_missing":
            parent.pop(path[-1])
        else:
            parent[path[-1]] = rng.choice(JUNK_VALUES)
    elif mutation == "deep_nesting":
        depth = rng.choice([30, 500, 990, 3000, 100_000])
        row[key] = raw("[" * depth + "]" * depth if rng.random() < 0.7 else '{"a":' * depth + "1" + "}" * depth)
    elif mutation == "huge_int":
        row[key] = raw(rng.choice("123456789") + "0" * rng.choice([4000, 4299, 4300, 4301, 6000, 20_000]))
    elif mutation == "surrogate":
        strings = [p for p in _paths(row) if isinstance(_parent(row, p)[p[-1]], str)]
        path = rng.choice(strings)
        surrogate = chr(rng.choice([0xD800, 0xDBFF, 0xDC00, 0xDFFF]))
        _parent(row, path)[path[-1]] += surrogate
    elif mutation == "nan":
        row[key] = raw(rng.choice(["NaN", "Infinity", "-Infinity"]))
    elif mutation == "empty_string":
        row[key] = rng.choice(["", " ", "\n\t"])
    elif mutation == "huge_field":
        row[key] = "x" * rng.choice([131_073, 150_000, 200_001, 300_000])
    elif mutation == "duplicate_key":
        row[key + _RAW.format("dup")] = rng.choice(["other", 1, None])
    elif mutation == "extra_field":
        row["unexpected_" + key] = rng.choice(JUNK_VALUES)
    elif mutation == "control_chars":
        row[key] = str(row[key]) + rng.choice(["\x00", "\x1b[31m", "\u2028", "\ufeff", "\r"])
    elif mutation == "null_row":
        return None
    elif mutation == "non_object_row":
        return rng.choice([[1, 2], "a string", 3, True])
    return row


def _splice(text: str, raws: list[str]) -> str:
    """Replace the placeholders (as JSON strings) by raw JSON text; 'dup' repeats a key."""
    for i, r in enumerate(raws):
        text = text.replace(json.dumps(_RAW.format(i)), r)
    return text.replace(json.dumps(_RAW.format("dup"))[1:-1], "")


def _plain(text: str, raws: list[str]) -> str:
    """The same for a CSV cell or column name (raw text is just text there)."""
    for i, r in enumerate(raws):
        text = text.replace(_RAW.format(i), r)
    return text.replace(_RAW.format("dup"), "")


def _serialise(rows: list[Any], fmt: str, raws: list[str]) -> bytes:
    if fmt in ("jsonl", "json"):
        lines = [_splice(json.dumps(r), raws) for r in rows]
        text = "\n".join(lines) + "\n" if fmt == "jsonl" else "[" + ",\n".join(lines) + "]\n"
        return text.encode("utf-8", "surrogatepass")
    rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter="\t" if fmt == "tsv" else ",")
    writer.writerow([_plain(k, raws) for k in keys])
    for r in rows:
        writer.writerow([_plain(v if isinstance(v, str) else json.dumps(v), raws) if k in r else ""
                         for k, v in ((k, r.get(k)) for k in keys)])
    return out.getvalue().encode("utf-8", "surrogatepass")


# --- files --------------------------------------------------------------------------------------

def _mutate_file(data: bytes, mutation: str, rng: random.Random) -> bytes | None:
    """The serialised file with one whole-file fault; None for a directory."""
    if mutation == "bom":
        return b"\xef\xbb\xbf" + data
    if mutation == "utf16":
        return data.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    if mutation == "crlf":
        return data.replace(b"\n", b"\r\n")
    if mutation == "truncate":
        return data[:rng.randrange(len(data))]
    if mutation == "binary_junk":
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        at = rng.randrange(len(data) + 1)
        return data[:at] + junk + data[at:]
    if mutation == "invalid_utf8_line":
        return data + rng.choice([b"\xff\xfe\n", b'{"prompt": "caf\xe9"}\n', b"\xc3\n"])
    if mutation == "empty_file":
        return b""
    if mutation == "whitespace_only":
        return b" \n\t\n\r\n"
    if mutation == "nul_bytes":
        at = rng.randrange(len(data) + 1)
        return data[:at] + b"\x00" * rng.randrange(1, 5) + data[at:]
    if mutation == "deep_file":
        depth = rng.choice([1000, 100_000])
        return b"[" * depth + b"]" * depth
    if mutation == "no_final_newline":
        return data.rstrip(b"\n")
    if mutation == "directory":
        return None
    return data


_KEEPS_ROWS = {"bom", "crlf", "no_final_newline"}  # file mutations after which the row count is still known


def make_case(index: int, seed: int) -> Case:
    """The index-th case of a run: deterministic in (seed, index)."""
    rng = random.Random(seed * 1_000_003 + index)
    kind, fmt, gz = rng.choice(KINDS), rng.choice(FORMATS), rng.random() < 0.3
    rows = [json.loads(json.dumps(rng.choice(SEEDS[kind]))) for _ in range(rng.randrange(1, 5))]
    raws: list[str] = []
    whole_file = rng.random() < 0.3
    mutation = rng.choice(FILE_MUTATIONS if whole_file else ROW_MUTATIONS)
    if not whole_file:
        at = rng.randrange(len(rows))
        rows[at] = _mutate_row(rows[at], mutation, rng, raws)
    data = _serialise(rows, fmt, raws)
    expected = len(rows) if not whole_file or mutation in _KEEPS_ROWS else None
    if whole_file:
        data = _mutate_file(data, mutation, rng)
    if data is not None and (gz or mutation == "truncated_gzip"):
        gz = True
        data = gzip.compress(data, mtime=0)
        if mutation == "truncated_gzip":
            data = data[:rng.randrange(2, len(data))]
    return Case(index, kind, fmt, gz, mutation, data, expected)


def generate(n: int, seed: int = 0) -> Iterator[Case]:
    for index in range(n):
        yield make_case(index, seed)


# --- running and classifying ---------------------------------------------------------------------

class _Hang(BaseException):  # not an Exception: no handler in the readers can swallow it
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise _Hang after `seconds` (SIGALRM: only in the main thread; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(*_):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def write_case(case: Case, directory: Path) -> Path:
    path = directory / case.name
    if case.content is None:
        path.mkdir(exist_ok=True)
    else:
        path.write_bytes(case.content)
    return path


def _clean(record: dict, kind: str) -> bool:
    """A kept record is clean text (UTF-8, no NaN) and passes its validator again."""
    try:
        json.dumps(record, allow_nan=False, ensure_ascii=False).encode("utf-8")
        VALIDATORS[kind](record, max_chars=None)
    except (ValueError, TypeError):
        return False
    return True


def classify(case: Case, path: Path, policy: str, timeout: float = 10.0) -> tuple[str, str]:
    """(outcome, detail) of reading the case's file under `policy`; see the module docstring."""
    try:
        with _deadline(timeout):
            records, report = read_records(path, case.kind, policy=policy)
    except _Hang:
        return "hang", f"over {timeout}s"
    except DataError as e:
        prefix = f"{path}:{e.line}: field '{e.field}': "
        if str(e).startswith(prefix) and e.field and e.message:
            return _rejected(case, "clean_error"), getattr(e, "reason", None) or e.field
        return "uncaught", f"DataError without file:line:field: {e}"[:300]
    except Exception as e:  # noqa: BLE001 - the point is to catch what the readers let escape
        return "uncaught", f"{type(e).__name__}: {e}"[:300]
    skipped = sum(report.skipped.values())
    if report.read != report.kept + skipped or report.kept != len(records):
        return "silent_drop", f"read {report.read}, kept {report.kept}, skipped {skipped}, returned {len(records)}"
    if case.expected_rows is not None and report.read != case.expected_rows:
        return "silent_drop", f"wrote {case.expected_rows} rows, read {report.read}"
    if not all(_clean(r, case.kind) for r in records):
        return "poisoned", "a kept record is not clean text or fails its validator"
    return (_rejected(case, "skipped"), ",".join(sorted(report.skipped))) if skipped else ("accepted", "")


def _rejected(case: Case, outcome: str) -> str:
    """A rejection is wrong for a valid JSON file (CSV cells cannot hold the nested seed rows)."""
    harmless = case.mutation in HARMLESS and case.fmt in ("jsonl", "json")
    return "wrongly_rejected" if harmless else outcome


def run(n: int, seed: int = 0, timeout: float = 10.0, keep_failures: int = 20) -> dict[str, Any]:
    """Generate `n` cases, read each under both policies; counts by kind, policy and outcome."""
    counts = {k: {p: {o: 0 for o in GOOD + BAD} for p in POLICIES} for k in KINDS}
    by_mutation: dict[str, dict[str, int]] = {}
    failures: list[dict] = []
    quiet = logging.getLogger("rlhf_jax.data.sources")
    level, quiet.level = quiet.level, logging.ERROR  # no skip summary per case
    with tempfile.TemporaryDirectory(prefix="rlhf_jax_fuzz_") as tmp:
        for case in generate(n, seed):
            path = write_case(case, Path(tmp))
            for policy in POLICIES:
                outcome, detail = classify(case, path, policy, timeout)
                counts[case.kind][policy][outcome] += 1
                row = by_mutation.setdefault(case.mutation, {})
                row[outcome] = row.get(outcome, 0) + 1
                if outcome in BAD and len(failures) < keep_failures:
                    failures.append({"index": case.index, "kind": case.kind, "file": case.name, "policy": policy,
                                     "mutation": case.mutation, "outcome": outcome, "detail": detail})
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
    quiet.setLevel(level)
    totals = {o: sum(counts[k][p][o] for k in KINDS for p in POLICIES) for o in GOOD + BAD}
    return {"cases": n, "seed": seed, "reads": 2 * n, "totals": totals, "by_kind": counts,
            "by_mutation": dict(sorted(by_mutation.items())), "failures": failures}

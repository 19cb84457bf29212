"""Reading records from local files (JSON Lines, JSON arrays, CSV/TSV; gzip or plain) or the hub.

    records, report = read_records("prefs.jsonl", "pair", policy="skip")
    dataset = to_dataset(records)          # a datasets.Dataset

Every row is decoded, parsed and validated one at a time so a bad one is named by file, line
(JSON Lines and CSV) or row (JSON arrays) and field. Under policy="error" (the default) the
first bad row raises `DataError`; under policy="skip" it is counted by reason in the
returned `LoadReport`, which the caller prints at the end of loading.

No input ends in a bare exception: JSON nested past the recursion limit, integers over
Python's 4,300-digit limit, duplicated keys and NaN/Infinity are row faults with their own
reasons; a UTF-8 byte-order mark is dropped; a fault after which no later row can be found
(a corrupt gzip stream, broken JSON array syntax, a CSV reader error such as a field over
csv.field_size_limit(), a directory) raises `DataError` under either policy.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import logging
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from rlhf_jax.data.records import VALIDATORS, DataError, FieldError, LoadReport

log = logging.getLogger(__name__)
POLICIES = ("error", "skip")


def _open_bytes(path: Path) -> bytes:
    """The file's bytes, un-gzipped, without a UTF-8 byte-order mark."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DataError(str(path), 0, "<file>", f"cannot be read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # a whole-file fault: no policy can skip it
            raise DataError(str(path), 1, "<gzip>", f"corrupt gzip stream: {e}") from None
    return raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw


def _format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext in (".csv", ".tsv"):
        return ext[1:]
    raise DataError(str(path), 0, "<format>", f"unknown format {ext!r}; expected .jsonl, .json, .csv or .tsv "
                                              "(optionally .gz)")


# --- JSON: strict about what the standard leaves ambiguous, and never a bare exception ----------

class _JSONFault(Exception):
    """JSON that cannot become a row: the field ('<json>' or a duplicated key), a message, the line."""

    def __init__(self, field: str, message: str, line: int = 1, reason: str | None = None):
        super().__init__(message)
        self.field, self.message, self.line, self.reason = field, message, line, reason


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _JSONFault(key, "appears twice in one object; which value is meant is ambiguous",
                                 reason="duplicate_key")
            seen.add(key)
    return obj


def _no_constant(name: str):
    raise _JSONFault("<json>", f"{name} is not valid JSON (JSON has no NaN or Infinity)", reason="malformed_json")


_STRICT = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constant)
_LENIENT = json.JSONDecoder(parse_int=len, parse_constant=len)  # only to find where a faulty value ends
_SPACE = re.compile(r"[ \t\n\r]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _decode_at(text: str, pos: int) -> tuple[Any, int]:
    """One JSON value starting at text[pos] and where it ends; any fault becomes a _JSONFault."""
    try:
        return _STRICT.raw_decode(text, pos)
    except _JSONFault as e:
        e.line = _line_of(text, pos)
        raise
    except json.JSONDecodeError as e:
        raise _JSONFault("<json>", f"malformed JSON: {e.msg} at column {e.colno}", e.lineno) from None
    except RecursionError:
        raise _JSONFault("<json>", "nested too deeply to parse (beyond Python's recursion limit)",
                         _line_of(text, pos), reason="too_deep") from None
    except ValueError as e:  # an integer literal longer than sys.get_int_max_str_digits()
        raise _JSONFault("<json>", f"unparseable number: {str(e).split(';')[0]}", _line_of(text, pos),
                         reason="huge_number") from None


def _parse_json(text: str) -> Any:
    """A whole JSON text (one JSON Lines line, or a .json document)."""
    value, end = _decode_at(text, _SPACE.match(text).end())
    end = _SPACE.match(text, end).end()
    if end != len(text):
        raise _JSONFault("<json>", f"malformed JSON: Extra data at column {end + 1}", _line_of(text, end))
    return value


def _end_of_value(text: str, pos: int) -> int:
    """Where the array or object at text[pos] ends, by bracket counting (it is too deep to parse)."""
    depth = 0
    for m in _TOKEN.finditer(text, pos):
        if m.group() in "[{":
            depth += 1
        elif m.group() in "]}":
            depth -= 1
        if depth == 0:
            return m.end()
    raise _JSONFault("<json>", "malformed JSON: an unclosed array or object", _line_of(text, pos))


def _json_items(text: str) -> Iterator[Any]:
    """The elements of a JSON array document, one at a time: a fault inside one element (a
    duplicated key, NaN, an oversized integer, nesting too deep) is yielded in its place; broken
    array syntax is raised. A document that is an object holding one list is parsed whole."""
    pos = _SPACE.match(text).end()
    if not text.startswith("[", pos):
        doc = _parse_json(text)
        lists = [v for v in doc.values() if isinstance(v, list)] if isinstance(doc, Mapping) else [doc]
        if len(lists) != 1 or not isinstance(lists[0], list):
            raise _JSONFault("<json>", "expected a list of records (or an object holding one), got "
                                       f"{type(doc).__name__}")
        yield from lists[0]
        return
    pos = _SPACE.match(text, pos + 1).end()
    while not text.startswith("]", pos):
        try:
            row, pos = _decode_at(text, pos)
        except _JSONFault as fault:
            if fault.reason is None:  # broken syntax: nothing after it can be trusted
                raise
            end = _end_of_value(text, pos) if fault.reason == "too_deep" else _LENIENT.raw_decode(text, pos)[1]
            row, pos = fault, end
        yield row
        pos = _SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _SPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise _JSONFault("<json>", "malformed JSON: expected ',' or ']' after an array element",
                             _line_of(text, pos))
    if _SPACE.match(text, pos + 1).end() != len(text):
        raise _JSONFault("<json>", "malformed JSON: extra data after the array", _line_of(text, pos + 1))


# --- files -----------------------------------------------------------------------------------

def _utf8_fault(data: bytes, e: UnicodeDecodeError) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "not valid UTF-8: the file starts with a UTF-16 byte-order mark; save it as UTF-8"
    return f"not valid UTF-8 at byte {e.start}"


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(str(path), line, "<bytes>", _utf8_fault(data, e)) from None


def _jsonl_rows(path: Path, data: bytes) -> Iterator[tuple[int, Any]]:
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield lineno, _parse_json(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield lineno, DataError(str(path), lineno, "<bytes>", _utf8_fault(raw, e))
        except _JSONFault as e:
            yield lineno, DataError(str(path), lineno, e.field, e.message, reason=e.reason)


def _json_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    try:
        for i, row in enumerate(_json_items(text)):
            if isinstance(row, _JSONFault):
                row = DataError(str(path), f"row {i}", row.field, row.message, reason=row.reason)
            yield f"row {i}", row
    except _JSONFault as e:  # the document itself is broken: no row after it can be found
        raise DataError(str(path), e.line, e.field, e.message) from None


class _CountedLines:
    """The lines of a text, counting how many the CSV reader has taken (its own count can lag)."""

    def __init__(self, text: str):
        self._lines, self.n = iter(io.StringIO(text, newline="")), 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.n += 1
        return line


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, Any]]:
    lines = _CountedLines(text)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        if not header:
            raise DataError(str(path), 1, "<csv>", "the header line is empty: no column names")
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise DataError(str(path), 1, name, "column appears twice in the header")
            seen.add(name)
        for cells in reader:
            if not cells:  # a blank line is not a row
                continue
            if len(cells) != len(header):
                yield lines.n, DataError(str(path), lines.n, "<csv>",
                                         f"has {len(cells)} cells; the header has {len(header)}")
            else:
                yield lines.n, dict(zip(header, cells))
    except csv.Error as e:  # the reader cannot resynchronise after a fault: the file stops here
        message = f"malformed CSV: {e}"
        if "field limit" in str(e):
            message = (f"a field is longer than {csv.field_size_limit()} characters, the CSV reader's limit "
                       "(csv.field_size_limit); use JSON Lines for fields this long")
        raise DataError(str(path), lines.n, "<csv>", message) from None


def iter_rows(path: str | Path) -> Iterator[tuple[int | str, Any]]:
    """(line or 'row N', parsed row or a DataError) for every row of a local file.

    A fault in one row is yielded as a DataError (skippable); a fault that leaves no way to find
    the next row (a corrupt gzip stream, broken JSON array syntax, a CSV reader error, a directory)
    is raised. Whole-file faults with no line of their own are reported at line 0.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(str(path), 0, "<file>", "is a directory, not a data file")
    fmt = _format(path)
    data = _open_bytes(path)
    if fmt == "jsonl":
        yield from _jsonl_rows(path, data)
    elif fmt == "json":
        yield from _json_rows(path, _decode(data, path))
    else:
        yield from _csv_rows(path, _decode(data, path), "\t" if fmt == "tsv" else ",")


def read_records(path: str | Path, kind: str, *, policy: str = "error", field_map: Mapping[str, str] | None = None,
                 max_chars: int | None = 200_000, transform: Callable[[Mapping], Mapping] | None = None,
                 ) -> tuple[list[dict], LoadReport]:
    """Validated records of `kind` from a local file; see the module docstring for the policy."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {POLICIES}")
    if kind not in VALIDATORS:
        raise ValueError(f"kind={kind!r} must be one of {sorted(VALIDATORS)}")
    return validate_rows(iter_rows(path), kind, str(path), policy=policy, field_map=field_map,
                         max_chars=max_chars, transform=transform)


def validate_rows(rows, kind: str, source: str, *, policy: str = "error", field_map=None,
                  max_chars: int | None = 200_000, transform=None) -> tuple[list[dict], LoadReport]:
    """Validate (line, row) pairs; shared by file readers and the dataset-specific readers."""
    validator = VALIDATORS[kind]
    report = LoadReport(source)
    out = []
    for line, row in rows:
        report.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, Mapping):
                raise DataError(source, line, "<row>", f"expected an object, got {type(row).__name__}")
            if field_map:
                row = {field_map.get(k, k): v for k, v in row.items()}
            if transform is not None:
                row = transform(row)
            out.append(validator(row, max_chars=max_chars))
        except FieldError as e:
            if policy == "error":
                raise DataError(source, line, e.field, e.message) from None
            report.skip(e.reason, f"line {line}" if isinstance(line, int) else str(line))
        except DataError as e:
            if policy == "error":
                raise
            report.skip(e.reason or "malformed_" + e.field.strip("<>"),
                        f"line {e.line}" if isinstance(e.line, int) else str(e.line))
    report.kept = len(out)
    if report.skipped:
        log.warning(report.summary())
        report.logged = True
    return out, report


def read_hub(name: str, kind: str, *, split: str = "train", policy: str = "error", field_map=None,
             max_chars: int | None = 200_000, **load_kwargs) -> tuple[list[dict], LoadReport]:
    """Records from a hub dataset (needs network; an explicit choice, never a fallback)."""
    import datasets
    ds = datasets.load_dataset(name, split=split, **load_kwargs)
    return validate_rows(((f"row {i}", row) for i, row in enumerate(ds)), kind, f"{name}:{split}", policy=policy,
                         field_map=field_map, max_chars=max_chars)


def to_dataset(records: list[dict]):
    """A datasets.Dataset of validated records (chat prompts kept as lists of messages)."""
    import datasets
    return datasets.Dataset.from_list(records)

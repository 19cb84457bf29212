"""Inputs and outputs of a generation run: seed tasks, instructions to evolve, JSONL records.

Seed tasks (Self-Instruct's format, `self_instruct_seed_tasks.jsonl`): one JSON object a line with
`instruction` (a non-empty string), `instances` (a non-empty list of {input, output} strings) and
`is_classification` (a boolean); `id` is optional (default `seed_<line>`). A bad line raises a
`DataError` naming file:line:field.

Instructions to evolve: a seed-task file, a Self-Instruct output (records.jsonl), or any JSONL whose
lines hold a string `prompt` or `instruction` (with an optional `input`, or the seed format's first
instance input).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from rlhf_jax.data.records import DataError, show
from rlhf_jax.synth.parse import prompt_of


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), n, "<line>", f"not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(str(path), n, "<line>", f"expected a JSON object, got {type(row).__name__}")
            yield n, row


def _string(path: Path, n: int, row: dict, field: str, allow_empty: bool = False) -> str:
    value = row.get(field)
    if not isinstance(value, str):
        raise DataError(str(path), n, field, "missing" if value is None else f"expected a string, got {show(value)}")
    if not allow_empty and not value.strip():
        raise DataError(str(path), n, field, "is empty")
    return value


def load_seed_tasks(path: str | Path) -> list[dict]:
    """[{id, instruction, instances: [{input, output}], is_classification}] of a seed-task file."""
    path, out = Path(path), []
    for n, row in _lines(path):
        instruction = _string(path, n, row, "instruction")
        instances = row.get("instances")
        if not isinstance(instances, list) or not instances:
            raise DataError(str(path), n, "instances", f"expected a non-empty list of {{input, output}}, got "
                                                       f"{show(instances)}")
        clean = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise DataError(str(path), n, f"instances[{i}]", f"expected an object, got {show(inst)}")
            clean.append({"input": _string(path, n, inst, "input", allow_empty=True) if "input" in inst else "",
                          "output": _string(path, n, inst, "output")})
        is_cls = row.get("is_classification", False)
        if not isinstance(is_cls, bool):
            raise DataError(str(path), n, "is_classification", f"expected true or false, got {show(is_cls)}")
        out.append({"id": str(row.get("id", f"seed_{n}")), "instruction": " ".join(instruction.split()),
                    "instances": clean, "is_classification": is_cls})
    if not out:
        raise DataError(str(path), 0, "<file>", "holds no seed tasks")
    return out


def load_instructions(path: str | Path) -> list[dict]:
    """[{id, prompt}] of the instructions to evolve (see the module docstring for the formats)."""
    path, out = Path(path), []
    for n, row in _lines(path):
        if isinstance(row.get("prompt"), str):
            prompt = _string(path, n, row, "prompt")
        elif "instruction" in row:
            instruction = _string(path, n, row, "instruction")
            given = row.get("input")
            if given is None and isinstance(row.get("instances"), list) and row["instances"]:
                first = row["instances"][0]
                given = first.get("input", "") if isinstance(first, dict) else ""
            if given is not None and not isinstance(given, str):
                raise DataError(str(path), n, "input", f"expected a string, got {show(given)}")
            prompt = prompt_of(instruction, given or "")
        else:
            raise DataError(str(path), n, "prompt", "missing: a line needs a string 'prompt' or 'instruction'")
        out.append({"id": str(row.get("id", f"line_{n}")), "prompt": prompt.strip()})
    if not out:
        raise DataError(str(path), 0, "<file>", "holds no instructions")
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    return [row for _, row in _lines(Path(path))]

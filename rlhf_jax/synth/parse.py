"""Reading the generator's text: new task lists, instances (input/output, or class label first), a
yes/no answer, a rewritten prompt. A parser returns None (or an empty list) for text it cannot read;
the caller counts that as `malformed`, so no output is dropped silently."""
from __future__ import annotations

import re

_TASK = re.compile(r"^\s*(?:\**\s*task\s*)?(\d+)\s*\**\s*[:.)]\s*\**\s*(.*\S)\s*$", re.IGNORECASE)
_FIELD = re.compile(r"^\s*(input|output|class label)\s*:\s*(.*)$", re.IGNORECASE)
NO_INPUT = ("<noinput>", "<no input>", "none", "n/a", "no input", "")


def parse_tasks(text: str, first: int) -> list[str]:
    """The instructions of lines 'Task N: ...' (or 'N. ...') with N >= first, in order; the text is the
    generation with its prefix ('Task {first}:') put back. A line without a number continues the task
    above it when that task has not ended (no final '.', '?' or '!': a sentence broken over lines), and
    ends the list otherwise (the model went on to other text), as does a number that does not follow."""
    out: list[str] = []
    last = first - 1
    for line in text.splitlines():
        m = _TASK.match(line)
        if m:
            n = int(m.group(1))
            if n <= last or n > last + 2:
                break
            last = n
            out.append(m.group(2).strip())
        elif out and line.strip():
            if _FIELD.match(line) or out[-1].rstrip("\"')*").endswith((".", "?", "!")):
                break  # an example instance, or other text after a finished task: not part of a task
            out[-1] = f"{out[-1]} {line.strip()}"
    return [t for t in (" ".join(t.split()) for t in out) if t]


def _fields(text: str) -> dict[str, str]:
    """{'input': ..., 'output': ..., 'class label': ...} of 'Field: value' blocks (values may span
    lines); the first occurrence of each field wins, a repeated field ends the example."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m:
            key = m.group(1).lower()
            if key in found:
                break
            current = key
            found[key] = [m.group(2)]
        elif current is not None:
            if line.strip().lower().startswith("task:"):
                break
            found[current].append(line)
    return {k: "\n".join(v).strip() for k, v in found.items()}


def parse_instance(text: str, classification: bool) -> dict | None:
    """{'input', 'output'} of one generated instance, None when malformed. The text starts with the
    prefix ('Input:' or, output-first for classification, 'Class label:'). A classification label is
    its first line; '<noinput>' (and 'none', empty) means the task has no input."""
    f = _fields(text)
    if classification:
        label = f.get("class label", "").strip().splitlines()
        if not label or not label[0].strip() or "input" not in f or not f["input"].strip():
            return None
        return {"input": f["input"].strip(), "output": label[0].strip()}
    if "input" not in f or not f.get("output", "").strip():
        return None
    given = f["input"].strip()
    return {"input": "" if given.lower() in NO_INPUT else given, "output": f["output"].strip()}


def parse_yes_no(text: str) -> bool | None:
    """True for an answer starting with 'yes', False for 'no', None otherwise."""
    first = re.findall(r"[a-z]+", text.lower())[:1]
    return {"yes": True, "no": False}.get(first[0]) if first else None


def parse_rewrite(text: str) -> str | None:
    """The rewritten prompt: the generation up to the first blank line after some text (the model often
    goes on to answer it), quotes and surrounding spaces removed; None when empty. Template words are
    kept: copying them is elimination rule 3, which must see them."""
    t = text.strip()
    t = re.split(r"\n\s*\n", t, maxsplit=1)[0].strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1].strip()
    return " ".join(t.split()) or None


def prompt_of(instruction: str, input_text: str) -> str:
    """The user turn of an instruction with an optional input (the SFT record's prompt)."""
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction

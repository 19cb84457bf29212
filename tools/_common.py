"""What the command-line tools share: a flag parser whose help is the tool's docstring, and the
JSON result printed on stdout and, with --out, written to a file.

Each tool puts the repository root on sys.path before `from tools._common import ...`, so this
works when the tool is run as a script and when a test loads it by path.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def parser(doc: str | None, out: bool = False) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help shows `doc` (the tool's module docstring) as written; with
    `out`, the flag --out PATH (default "": print only)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out:
        ap.add_argument("--out", default="", help="also write the JSON here")
    return ap


def report(result, out: str | Path = "", indent: int = 2, **dumps) -> str:
    """Print `result` as JSON (json.dumps with `indent` and `dumps`) and, when `out` is set, write
    the same text, newline-terminated, to that file (its folder made if missing). Returns the text."""
    text = json.dumps(result, indent=indent, **dumps)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    return text

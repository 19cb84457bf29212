"""Each evaluation suite's results on disk as soon as it finishes, reused by a rerun.

WORKDIR/eval/suites/NAME.json holds one suite's results and per-example rows beside the
provenance they were computed under (the config fields the evaluation reads and the identity of
the checkpoints it loads; `stages.evaluation.provenance` builds it) and its fingerprint. Every
file is written under a temporary name and renamed, so a crash leaves a suite whole or absent.
A rerun whose provenance has the same fingerprint reuses a suite's file instead of recomputing
the suite; any difference recomputes it (and says which fields differ).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rlhf_jax import distributed
from rlhf_jax.workdir import flatten


def write_text_atomic(path: Path, text: str) -> None:
    """`text` to `path` through a temporary name and a rename: a reader sees the old file or the new one.
    On several processes only process 0 writes."""
    if not distributed.primary():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_rows(path: Path, rows: dict[str, list[dict]]) -> None:
    """samples.jsonl: one line per example row, {"suite": NAME, **row}, suites in order."""
    write_text_atomic(path, "".join(json.dumps({"suite": suite, **row}) + "\n"
                                    for suite, suite_rows in rows.items() for row in suite_rows))


class SuiteStore:
    """The suites' files under `directory`/suites for one provenance (a JSON-able dict)."""

    def __init__(self, directory: Path, provenance: dict[str, Any]):
        self.directory = Path(directory) / "suites"
        self.provenance = json.loads(json.dumps(provenance, default=str))  # as it reads back from disk
        self.fingerprint = hashlib.sha256(json.dumps(self.provenance, sort_keys=True).encode()).hexdigest()[:16]

    def path(self, suite: str) -> Path:
        return self.directory / f"{suite}.json"

    def load(self, suite: str) -> tuple[dict, list[dict]] | None:
        """(results, rows) stored for `suite` under this provenance; None (and why, on the
        console) when there are none, they are unreadable or another provenance made them."""
        path = self.path(suite)
        if not path.exists():
            return None
        try:
            stored = json.loads(path.read_text())
            fingerprint, results, rows = stored["fingerprint"], stored["results"], stored["rows"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            print(f"[eval] suite {suite}: {path} is unreadable ({type(e).__name__}: {e}); recomputing", flush=True)
            return None
        if fingerprint != self.fingerprint:
            changed = self.changes(stored.get("provenance"))
            print(f"[eval] suite {suite}: {path} was computed under another config "
                  f"({', '.join(changed[:6]) or 'fingerprint'}{', ...' if len(changed) > 6 else ''}); recomputing",
                  flush=True)
            return None
        print(f"[eval] suite {suite}: reused from {path}", flush=True)
        return results, rows

    def save(self, suite: str, results: dict, rows: list[dict]) -> tuple[dict, list[dict]]:
        """Write `suite`'s file; returns (results, rows) as they read back, so a fresh run and a
        resumed one hand the same values on (tuples as lists, numpy floats as floats)."""
        text = json.dumps({"suite": suite, "fingerprint": self.fingerprint, "provenance": self.provenance,
                           "results": results, "rows": rows}, indent=1)
        write_text_atomic(self.path(suite), text)
        back = json.loads(text)
        return back["results"], back["rows"]

    def changes(self, stored: Any) -> list[str]:
        """The dotted provenance fields that differ between `stored` and this store's."""
        if not isinstance(stored, dict):
            return []
        old, new = flatten(stored), flatten(self.provenance)
        return sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))

"""Strict variant parsing for `--config configs/FILE.py:VARIANT[,VARIANT...]`.

Each config file declares the variants it accepts (a name -> one-line description map, plus
numeric families such as `beta<x>`); an unknown or mistyped name fails with the valid ones
listed instead of silently running another ablation.
"""
from __future__ import annotations

import re


class Variants:
    def __init__(self, config_file: str, names: dict[str, str], numeric: dict[str, str] | None = None):
        self.config_file, self.names, self.numeric = config_file, dict(names), dict(numeric or {})

    def __contains__(self, name: str) -> bool:
        return name in self.names or self._numeric_prefix(name) is not None

    def _numeric_prefix(self, name: str) -> str | None:
        for prefix in self.numeric:
            if name.startswith(prefix) and re.fullmatch(r"[0-9]*\.?[0-9]+(e-?[0-9]+)?", name[len(prefix):]):
                return prefix
        return None

    def parse(self, arg: str | None, default: str) -> list[str]:
        """The comma-separated variants of `arg` (or `default`), each checked."""
        chosen = [v.strip() for v in (arg or default).split(",") if v.strip()]
        unknown = [v for v in chosen if v not in self]
        if unknown:
            raise ValueError(f"{self.config_file}: unknown variant(s) {unknown}; valid: {self.describe()}")
        return chosen

    def number(self, chosen: list[str], prefix: str) -> float | None:
        """The value of a numeric variant `prefix<x>` among `chosen` (None if absent)."""
        values = [float(v[len(prefix):]) for v in chosen if self._numeric_prefix(v) == prefix]
        return values[-1] if values else None

    def describe(self) -> str:
        parts = [f"{n} ({d})" for n, d in self.names.items()] + [f"{p}<x> ({d})" for p, d in self.numeric.items()]
        return "; ".join(parts)

    def __or__(self, other: "Variants") -> "Variants":
        return Variants(other.config_file, {**self.names, **other.names}, {**self.numeric, **other.numeric})

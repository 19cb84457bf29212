"""Registries: the ablation menu, one per family of interchangeable functions.

Each family is a `Registry` filled in the module that implements it (the list, with the
config field each one checks, is in docs/extending.md): stages, preference losses, KL and
advantage estimators, policy losses, reward aggregators, InfoRM KL forms, segmenters, reward
heads, samplers, evaluation judges and suites, comparison-selection strategies.

    KL_ESTIMATORS = Registry("KL estimator")

    @KL_ESTIMATORS.register("k3")
    def k3(log_ratio): ...

Config validation and the docs read the registry's keys, so a new entry is one function
plus one registration, and an unknown name fails with the valid ones listed.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from rlhf_jax.errors import UserError


class UnknownNameError(UserError, ValueError):
    """A name that is not registered; the message lists the registered ones."""


class Registry:
    """An ordered map from names to entries (functions, classes or specs)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any = None) -> Callable:
        """`@registry.register("name")` on a definition, or `registry.register("name", entry)`."""
        def add(value):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise UnknownNameError(f"{self.kind} {name!r} is not one of {self.names()}")
        return self._entries[name]

    def get(self, name: str) -> Any:
        return self[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return self._entries.items()

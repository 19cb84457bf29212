"""Deterministic, resumable batching of NumPy arrays (the data position is part of a checkpoint)."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from rlhf_jax import signals


@dataclasses.dataclass
class BatchIterator:
    """Shuffled minibatches of dict-of-arrays, one permutation per epoch from (seed, epoch).

    `position` (epoch, index within epoch) is all the state there is: save it with the
    model, restore it with `set_position`, and the same batches follow.
    """

    arrays: dict[str, np.ndarray]
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    index: int = 0

    def __post_init__(self):
        sizes = {k: len(v) for k, v in self.arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"arrays have different lengths: {sizes}")
        self.n = next(iter(sizes.values()))
        if self.n < self.batch_size:
            raise ValueError(f"{self.n} examples cannot fill one batch of {self.batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def set_position(self, position: dict[str, int]) -> None:
        self.epoch, self.index = int(position["epoch"]), int(position["index"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        rows = self._order(self.epoch)[self.index * self.batch_size:(self.index + 1) * self.batch_size]
        self.index += 1
        return {k: v[rows] for k, v in self.arrays.items()}


LENGTH_BUCKET = 32  # a batch cut to its own length is rounded up to this many columns (one compile per width)


def cut_width(ends_of_rows, T: int, bucket: int = LENGTH_BUCKET) -> int:
    """The columns a batch of rows ending at `ends_of_rows` needs: its longest row, rounded up to
    `bucket`, at most T (at least one bucket, so an empty batch keeps a shape)."""
    return min(T, -(-max(int(np.max(ends_of_rows)), 1) // bucket) * bucket)


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, ends: np.ndarray | None = None,
                 bucket: int = LENGTH_BUCKET) -> Iterator[dict[str, np.ndarray]]:
    """Every row, in batches of exactly `batch_size` (so one compilation serves all): the last
    batch is filled with all-zero rows, which carry no weight in any held-out metric (zero masks,
    no valid responses, no segment ends).

    With `ends` (one past each row's last real column; arrays [N, T], right-padded), the rows are
    taken in order of length and each batch is cut after its longest row, rounded up to `bucket`
    columns: short rows do not pay for the longest row's padding (one compilation per width). Only
    for sums over rows of an evaluation that reads a row's columns before its end (causal models).
    """
    n = len(next(iter(arrays.values())))
    order = np.arange(n) if ends is None else np.argsort(np.asarray(ends), kind="stable")
    for i in range(0, n, batch_size):
        rows = order[i:i + batch_size]
        batch = {k: v[rows] for k, v in arrays.items()}
        if ends is not None:
            width = cut_width(ends[rows], next(iter(arrays.values())).shape[1], bucket)
            batch = {k: v[:, :width] for k, v in batch.items()}
        short = batch_size - len(rows)
        if short:
            batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        yield batch


def evaluate_all(evaluate, params, arrays: dict[str, np.ndarray], batch_size: int,
                 ends: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`evaluate(params, batch) -> dict of numbers` over every held-out row (`eval_batches`, cut
    to each batch's length with `ends`); returns each quantity stacked over batches (axis 0), for
    the caller to weigh and reduce."""
    out: dict[str, list] = {}
    for batch in eval_batches(arrays, batch_size, ends):
        signals.check("evaluation")
        for k, v in evaluate(params, batch).items():
            out.setdefault(k, []).append(np.asarray(v, np.float64))
    return {k: np.stack(v) for k, v in out.items()}

"""Encoded rows as the training loop reads them: a sequence of chunks of (ids, labels).

Two implementations share this interface, so `training.fit` / `evaluate` never know where rows live:
    ArrayRows   in memory (the default path: the whole table was read and encoded at once); one chunk
    ShardRows   memory-mapped encoded shards on disk (lightfmp.shards, the streaming path); a chunk per shard

Row selection that must not load everything (phase-1 subset vs "the rest", train/valid/test in streaming mode,
the gate hold-out) is a deterministic function of the row's global number and the seed: `row_uniform`.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np

# salts keep the uses of the row hash independent of each other
SALT_SPLIT = 1      # train / valid / test (streaming mode)
SALT_SUBSET = 2     # phase-1 subset vs the rest
SALT_HOLDOUT = 3    # gate hold-out inside the phase-1 subset

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def row_uniform(rows: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A float64 in [0, 1) per global row number, from splitmix64(row, seed, salt): the same row always lands on
    the same side of any threshold, whichever process or chunk reads it."""
    with np.errstate(over="ignore"):
        x = np.asarray(rows, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64((seed * 0x632BE59BD9B4E019 + salt * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Rows(Protocol):
    """What fit / evaluate need from a set of encoded rows."""

    def __len__(self) -> int: ...

    @property
    def num_slots(self) -> int: ...

    def select(self, cols: np.ndarray) -> "Rows":
        """The same rows, only these id columns (slots), in this order."""

    def split(self, fraction: float, seed: int, salt: int) -> tuple["Rows", "Rows"]:
        """(rows whose hash >= fraction, rows whose hash < fraction): e.g. (weight rows, gate hold-out)."""

    def chunks(self, seed: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int32 [c, slots] C-contiguous, labels float32 [c]) per chunk. seed None: stored order (evaluation);
        otherwise chunk order and rows within each chunk shuffled by that seed (an epoch's order)."""


class ArrayRows:
    """Rows held in memory as one array."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, row_numbers: np.ndarray | None = None):
        if len(ids) != len(labels):
            raise ValueError(f"ids has {len(ids)} rows, labels {len(labels)}")
        self.ids = ids
        self.labels = np.asarray(labels, dtype=np.float32)
        # global row numbers, for hash-based splits; positions when none are given
        self.row_numbers = np.arange(len(ids)) if row_numbers is None else np.asarray(row_numbers)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_slots(self) -> int:
        return int(self.ids.shape[1])

    def select(self, cols) -> "ArrayRows":
        return ArrayRows(np.ascontiguousarray(self.ids[:, cols]), self.labels, self.row_numbers)

    def take(self, idx: np.ndarray) -> "ArrayRows":
        return ArrayRows(np.ascontiguousarray(self.ids[idx]), self.labels[idx], self.row_numbers[idx])

    def split(self, fraction: float, seed: int, salt: int) -> tuple["ArrayRows", "ArrayRows"]:
        u = row_uniform(self.row_numbers, seed, salt)
        return self.take(np.flatnonzero(u >= fraction)), self.take(np.flatnonzero(u < fraction))

    def chunks(self, seed: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(self) == 0:
            return
        if seed is None:
            yield np.ascontiguousarray(self.ids), self.labels
            return
        perm = np.random.default_rng(seed).permutation(len(self))
        yield np.ascontiguousarray(self.ids[perm]), self.labels[perm]


def as_rows(ids, labels=None) -> Rows:
    """Accept Rows, a pair of arrays, or an (ids, labels) tuple (the API before streaming took arrays)."""
    if labels is None:
        if isinstance(ids, tuple) and len(ids) == 2:
            return ArrayRows(*ids)
        return ids
    return ArrayRows(ids, labels)


def in_memory(rows, budget_bytes: int):
    """`rows` as ArrayRows when its encoded ids fit in `budget_bytes` (a sharded view is read once, keeping its
    global row numbers so hash-based splits of it are unchanged); otherwise `rows` as it is. Phase 1 reads a small
    subset of every shard: streaming it from disk each epoch (and the gate hold-out each cycle) would read the
    whole data set many times over for a few percent of its rows."""
    if isinstance(rows, ArrayRows) or len(rows) * max(rows.num_slots, 1) * 4 > budget_bytes:
        return rows
    parts = list(rows.chunks(None))
    ids = np.concatenate([c[0] for c in parts]) if parts else np.zeros((0, rows.num_slots), dtype=np.int32)
    labels = np.concatenate([c[1] for c in parts]) if parts else np.zeros(0, dtype=np.float32)
    return ArrayRows(ids, labels, rows.row_numbers())

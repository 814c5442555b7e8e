"""Encoded rows as the training loop, the selectors and export read them.

    ArrayRows    one in-memory array (a materialised view, or arrays built by hand)
    StoredRows   a view of a chunked store: the encoded batches of a data file, held in memory (`MemoryStore`) or
                 memory-mapped from shards on disk (`lightfmp.shards.ShardStore`). One class for both stores, so
                 the same rows come out in the same order wherever they live.

Both know their fields: `rows.slots` maps each field name to its id columns (a multi-hot field has several), and
`rows.select(names)` keeps those fields' columns. Rows are selected by the split rule (`lightfmp.splits`): a view
filters a store's rows by split code and by row-hash thresholds, lazily, chunk by chunk.
"""
from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np

from .errors import LightFMPError
from .splits import row_uniform

Slots = dict[str, tuple[int, int]]


class Rows(Protocol):
    """What fit / evaluate / the selectors / export need from a set of encoded rows."""
    slots: Slots                     # field name -> (start, stop) id columns, in column order

    def __len__(self) -> int: ...

    @property
    def num_slots(self) -> int: ...

    @property
    def fields(self) -> list[str]: ...

    def select(self, names: Sequence[str]) -> "Rows":
        """The same rows, only these fields' columns, in the given order."""

    def split(self, fraction: float, seed: int, salt: int) -> tuple["Rows", "Rows"]:
        """(rows whose hash >= fraction, rows whose hash < fraction): e.g. (weight rows, gate hold-out)."""

    def chunks(self, seed: int | None = None, window_bytes: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int32 [c, slots] C-contiguous, labels float32 [c]) per chunk. seed None: stored order (evaluation);
        otherwise an epoch's order by that seed: the chunks in shuffled order, and the rows shuffled together within
        each window of consecutive chunks (of that order) whose ids take at most `window_bytes` (at least one chunk;
        0: each chunk alone). Rows in memory are one chunk."""

    def row_numbers(self) -> np.ndarray:
        """Global row numbers (int64), stored order."""

    def labels(self) -> np.ndarray:
        """All labels (float32), stored order."""

    def take(self, positions: np.ndarray) -> "ArrayRows":
        """These positions (0 .. len-1, stored order) of the view, in memory."""

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of the whole view, read into memory."""


def default_slots(n: int) -> Slots:
    return {f"c{i}": (i, i + 1) for i in range(n)}


def selected(slots: Slots, names: Sequence[str]) -> tuple[np.ndarray, Slots]:
    """(columns to keep, the slots of the result) for fields `names`, in that order."""
    missing = [n for n in names if n not in slots]
    if missing:
        raise LightFMPError(f"rows have no field(s) {', '.join(map(repr, missing))} (fields: {', '.join(slots)})")
    cols, out, s = [], {}, 0
    for n in names:
        a, b = slots[n]
        cols.extend(range(a, b))
        out[n] = (s, s + b - a)
        s += b - a
    return np.asarray(cols, dtype=np.int64), out


def _shuffled(ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    perm = rng.permutation(len(labels))
    return ids[perm], labels[perm]


class ArrayRows:
    """Rows held in memory as one array."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, row_numbers: np.ndarray | None = None,
                 slots: Slots | None = None):
        if len(ids) != len(labels):
            raise ValueError(f"ids has {len(ids)} rows, labels {len(labels)}")
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        self._labels = np.asarray(labels, dtype=np.float32)
        # global row numbers, for hash-based splits; positions when none are given
        self._rows = np.arange(len(ids), dtype=np.int64) if row_numbers is None else np.asarray(row_numbers,
                                                                                                 dtype=np.int64)
        self.slots = default_slots(self.ids.shape[1]) if slots is None else dict(slots)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def num_slots(self) -> int:
        return int(self.ids.shape[1])

    @property
    def fields(self) -> list[str]:
        return list(self.slots)

    def select(self, names: Sequence[str]) -> "ArrayRows":
        cols, slots = selected(self.slots, names)
        return ArrayRows(self.ids[:, cols], self._labels, self._rows, slots)

    def take(self, positions) -> "ArrayRows":
        return ArrayRows(self.ids[positions], self._labels[positions], self._rows[positions], self.slots)

    def split(self, fraction: float, seed: int, salt: int) -> tuple["ArrayRows", "ArrayRows"]:
        u = row_uniform(self._rows, seed, salt)
        return self.take(np.flatnonzero(u >= fraction)), self.take(np.flatnonzero(u < fraction))

    def chunks(self, seed: int | None = None, window_bytes: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(self) == 0:
            return
        if seed is None:
            yield self.ids, self._labels
            return
        yield _shuffled(self.ids, self._labels, np.random.default_rng(seed))

    def row_numbers(self) -> np.ndarray:
        return self._rows

    def labels(self) -> np.ndarray:
        return self._labels

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids, self._labels


class Store(Protocol):
    """Encoded batches of a data file: per chunk the arrays ids [n, slots], labels [n], rows [n] (global row
    numbers) and split [n] (0 train, 1 valid, 2 test)."""
    num_slots: int

    def __len__(self) -> int: ...

    def array(self, i: int, name: str) -> np.ndarray: ...


class MemoryStore:
    """The encoded batches held in memory."""

    def __init__(self, num_slots: int):
        self.num_slots = int(num_slots)
        self._chunks: list[dict[str, np.ndarray]] = []

    def append(self, **arrays: np.ndarray) -> None:
        self._chunks.append(arrays)

    def __len__(self) -> int:
        return len(self._chunks)

    def array(self, i: int, name: str) -> np.ndarray:
        return self._chunks[i][name]


class StoredRows:
    """Rows of some splits of a store, optionally hash-filtered and column-selected. Filters and column selections
    are applied per chunk as it is read, so a view costs nothing until it is iterated."""

    def __init__(self, store: Store, slots: Slots, splits: tuple[int, ...], filters: tuple = (),
                 cols: np.ndarray | None = None):
        self._store = store
        self.slots = dict(slots)
        self._splits = tuple(splits)
        self._filters = tuple(filters)   # (fraction, seed, salt, below): keep u < fraction if below else u >= it
        self._cols = cols                # store columns of this view (None: all, in store order)
        self._index: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(sum(len(i) for i in self._indices()))

    @property
    def num_slots(self) -> int:
        return self._store.num_slots if self._cols is None else len(self._cols)

    @property
    def fields(self) -> list[str]:
        return list(self.slots)

    def select(self, names: Sequence[str]) -> "StoredRows":
        cols, slots = selected(self.slots, names)
        base = np.arange(self._store.num_slots) if self._cols is None else self._cols
        view = StoredRows(self._store, slots, self._splits, self._filters, base[cols])
        view._index = self._index
        return view

    def split(self, fraction: float, seed: int, salt: int) -> tuple["StoredRows", "StoredRows"]:
        return tuple(StoredRows(self._store, self.slots, self._splits,
                                self._filters + ((fraction, seed, salt, below),), self._cols)
                     for below in (False, True))

    def chunks(self, seed: int | None = None, window_bytes: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self._store)
        if seed is None:
            for i in range(n):
                idx = self._indices()[i]
                if len(idx):
                    ids, labels = self._read(i, idx)
                    yield np.ascontiguousarray(ids, dtype=np.int32), np.ascontiguousarray(labels, dtype=np.float32)
            return
        # a file sorted by time or by group keeps its order inside a chunk: rows shuffled within one chunk only
        # would make each run of batches one window of the file; a window of several chunks mixes them
        rng, row_bytes = np.random.default_rng(seed), max(self.num_slots, 1) * 4
        window, size = [], 0
        for i in rng.permutation(n):
            idx = self._indices()[int(i)]
            if not len(idx):
                continue
            if window and (size + len(idx)) * row_bytes > window_bytes:
                yield self._mixed(window, size, rng)
                window, size = [], 0
            window.append((int(i), idx))
            size += len(idx)
        if window:
            yield self._mixed(window, size, rng)

    def row_numbers(self) -> np.ndarray:
        return self._gather("rows", np.int64)

    def labels(self) -> np.ndarray:
        return self._gather("labels", np.float32)

    def take(self, positions) -> ArrayRows:
        positions = np.asarray(positions, dtype=np.int64)
        counts = np.array([len(i) for i in self._indices()], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        if len(positions) and (positions.min() < 0 or positions.max() >= starts[-1]):
            raise IndexError(f"positions out of range for {int(starts[-1])} rows")
        chunk_of = np.searchsorted(starts, positions, side="right") - 1
        ids = np.zeros((len(positions), self.num_slots), dtype=np.int32)
        labels = np.zeros(len(positions), dtype=np.float32)
        rows = np.zeros(len(positions), dtype=np.int64)
        for c in np.unique(chunk_of):
            at = np.flatnonzero(chunk_of == c)
            local = self._indices()[c][positions[at] - starts[c]]
            ids[at], labels[at] = self._read(int(c), local)
            rows[at] = self._store.array(int(c), "rows")[local]
        return ArrayRows(ids, labels, rows, self.slots)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        parts = list(self.chunks(None))
        if not parts:
            return np.zeros((0, self.num_slots), dtype=np.int32), np.zeros(0, dtype=np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # -- internals --
    def _indices(self) -> list[np.ndarray]:
        """Per chunk, the positions of this view's rows (computed once from the small split / rows arrays)."""
        if self._index is None:
            out = []
            for i in range(len(self._store)):
                keep = np.isin(np.asarray(self._store.array(i, "split")), self._splits)
                if self._filters:
                    rows = np.asarray(self._store.array(i, "rows"))
                    for fraction, seed, salt, below in self._filters:
                        u = row_uniform(rows, seed, salt)
                        keep &= (u < fraction) if below else (u >= fraction)
                out.append(np.flatnonzero(keep))
            self._index = out
        return self._index

    def _gather(self, name: str, dtype) -> np.ndarray:
        parts = [np.asarray(self._store.array(i, name)[idx], dtype=dtype) for i, idx in enumerate(self._indices())]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def _mixed(self, window: list[tuple[int, np.ndarray]], size: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The rows of `window`'s chunks (chunk number, positions), shuffled together: row j of the chunks read in
        turn (each in stored order, sequential on disk) lands where a shuffle of their concatenation puts it, written
        there as each chunk is read, so the window is held once (plus its permutation and one chunk). A window of
        one chunk comes out as `_shuffled` would put it (the same permutation)."""
        where = np.empty(size, dtype=np.int64)
        where[rng.permutation(size)] = np.arange(size)  # row j of the concatenation goes to where[j]
        ids, labels = np.empty((size, self.num_slots), dtype=np.int32), np.empty(size, dtype=np.float32)
        at = 0
        for i, idx in window:
            to = where[at:at + len(idx)]
            ids[to], labels[to] = self._read(i, idx)
            at += len(idx)
        return ids, labels

    def _read(self, i: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = self._store.array(i, "ids")
        full = len(idx) == ids.shape[0]
        if self._cols is None:
            out = np.array(ids) if full else ids[idx]
        else:
            out = ids[:, self._cols] if full else ids[np.ix_(idx, self._cols)]
        labels = self._store.array(i, "labels")
        return out, np.array(labels) if full else labels[idx]


def in_memory(rows: Rows, budget_bytes: int) -> Rows:
    """`rows` as ArrayRows when its encoded ids fit in `budget_bytes` (global row numbers kept, so hash-based splits
    of it are unchanged); otherwise `rows` as it is. Phase 1 reads a small subset of every chunk: streaming it from
    disk each epoch (and the gate hold-out each epoch) would read the whole data set many times over."""
    if isinstance(rows, ArrayRows) or len(rows) * max(rows.num_slots, 1) * 4 > budget_bytes:
        return rows
    ids, labels = rows.arrays()
    return ArrayRows(ids, labels, rows.row_numbers(), rows.slots)


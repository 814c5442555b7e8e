"""How fields group the rows a keep rule reads: which fields are copies of each other, which a function of another.

Two fields are copies when their encoded values split the rows into the same groups: each value of one goes with
exactly one value of the other, and back (a column under other value names, a number bucketed the same way as
another). The model reads the same information from either, only under other ids, so once one is open the other
adds nothing a retrained model could not take from the first. A masked evaluation of the phase-1 model cannot see
that: the model learnt to read both copies (its weight is split between them), so opening the second still lowers
its loss. Field b is a function of field a when each group of a holds one value of b (the zip code of a user id):
a carries everything b does, and more.

Only whole equalities count, with no tolerance to tune. A field constant on the rows, or distinct on every row,
shows no grouping to compare. A function is also checked against chance: a field that repeats few of its values
could hold one value of an unrelated field in each of its few groups by luck. `stands_for` adds the density check
the `--keep K` search needs: a finer field stands for its coarser function only where the final model will see
each of its values about as often as the phase-1 model saw each value of the coarser one.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .schema import PAD_ID


def row_groups(ids: np.ndarray, slot_field: np.ndarray, field: int) -> tuple[np.ndarray, int]:
    """Per row, the index of its value of `field` among the field's distinct values on these rows, and the number
    of distinct values. A multi-hot field's value is what its mean pooling reads (`pooled_values`)."""
    block = ids[:, slot_field == field]
    if block.shape[1] == 1:
        _, inverse = np.unique(block[:, 0], return_inverse=True)
    else:
        inverse = pooled_values(block)
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse, int(inverse.max()) + 1 if len(inverse) else 0


def pooled_values(block: np.ndarray) -> np.ndarray:
    """Per row of a multi-hot field's slots ([rows, slots] ids), an index of what the model's mean pooling reads of
    them: the shares of the ids other than padding, in any order. So "p|q" and "q|p" are one value, and so are "p"
    and "p|p", and two lists whose tags all map to the OOV id; an empty list is a value of its own. Vectorised:
    each row's ids sorted, padding last; its runs of one id are the (id, count) pairs, the counts divided by the
    row's greatest common divisor; rows with the same pairs are one value."""
    n, s = block.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pad = np.iinfo(np.int64).max
    b = np.where(block == PAD_ID, pad, block.astype(np.int64))
    b.sort(axis=1)
    start = np.ones((n, s), dtype=bool)
    start[:, 1:] = b[:, 1:] != b[:, :-1]  # a row's first slot always starts a run: runs never cross rows
    starts = np.flatnonzero(start.ravel())
    counts, ids, rows = np.diff(np.r_[starts, n * s]), b.ravel()[starts], starts // s
    real = ids != pad
    counts, ids, rows = counts[real], ids[real], rows[real]
    keys = np.full((n, 2 * s), -1, dtype=np.int64)  # (id, count) pairs per row, then -1
    if len(rows):
        firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        runs = np.diff(np.r_[firsts, len(rows)])
        counts = counts // np.repeat(np.gcd.reduceat(counts, firsts), runs)
        pos = np.arange(len(rows)) - np.repeat(firsts, runs)
        keys[rows, 2 * pos], keys[rows, 2 * pos + 1] = ids, counts
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


class Groupings:
    """Each field's grouping of the rows (`ids`: [rows, slots]; `slot_field`: the field of each slot), sorted once.
    `field_ids` (each field's number of ids) and `rows_ratio` (rows the final model reads / rows the phase-1 model
    read) set the density check of `stands_for`; without them it is not applied."""

    def __init__(self, ids: np.ndarray, slot_field, alpha: float = 0.05, field_ids: list[int] | None = None,
                 rows_ratio: float | None = None):
        slot_field = np.asarray(slot_field)
        self.n = len(ids)
        self.fields = int(slot_field.max()) + 1 if len(slot_field) else 0
        self.codes, self.order, self.distinct, self.same = [], [], [], []
        for f in range(self.fields):
            codes, distinct = row_groups(ids, slot_field, f)
            codes = codes.astype(np.int32 if distinct < 2**31 else np.int64)
            order = np.argsort(codes, kind="stable").astype(np.int32 if self.n < 2**31 else np.int64)
            ranked = codes[order]
            self.codes.append(codes)
            self.order.append(order)
            self.distinct.append(distinct)
            self.same.append(ranked[1:] == ranked[:-1])  # sorted neighbours in one group of f
        self.log_alpha = np.log(alpha / max(self.fields, 1))  # Bonferroni over the fields a step compares
        self._copies: dict[int, list[int]] | None = None
        self.field_ids, self.rows_ratio = field_ids, rows_ratio

    def _grouped(self, f: int) -> bool:
        return 1 < self.distinct[f] < self.n

    def _constant_within(self, b: int, a: int) -> bool:
        """Every group of a holds a single value of b."""
        b_sorted = self.codes[b][self.order[a]]
        return not np.any((b_sorted[1:] != b_sorted[:-1]) & self.same[a])

    def copies(self) -> dict[int, list[int]]:
        """Per field, the other fields that are its copies; fields with no copy are left out. Fields are classed by
        their labelling of the rows (`_first_seen`), so a wide table of few-valued fields costs no pairwise pass."""
        if self._copies is None:
            self._copies = self._find_copies()
        return self._copies

    def _find_copies(self) -> dict[int, list[int]]:
        buckets: dict[bytes, list[list[int]]] = {}  # by a digest of the labelling (not the rows: bounded memory)
        for f in range(self.fields):
            if not self._grouped(f):
                continue
            seen = self._first_seen(f)  # copies share one labelling of the rows by first appearance: no pairs
            classes = buckets.setdefault(hashlib.blake2b(seen.tobytes(), digest_size=16).digest(), [])
            same = next((c for c in classes if np.array_equal(self._first_seen(c[0]), seen)), None)  # exact
            if same is None:
                classes.append([f])
            else:
                same.append(f)
        return dict(sorted((f, [g for g in fs if g != f]) for classes in buckets.values() for fs in classes
                           if len(fs) > 1 for f in fs))

    def _first_seen(self, f: int) -> np.ndarray:
        """Field f's codes relabelled in order of first appearance (int64): equal for two fields exactly when they
        group the rows alike."""
        order, codes = self.order[f], self.codes[f]
        first = order[np.flatnonzero(np.r_[True, ~self.same[f]])]  # each code's first row (a stable sort)
        rank = np.empty(self.distinct[f], dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(self.distinct[f])
        return rank[codes]

    def is_function_of(self, b: int, a: int) -> bool:
        """Field b is a function of field a on these rows (every group of a holds one value of b), a groups the rows
        more finely than b, and that is not chance: a field independent of a with b's value frequencies would be
        constant on all of a's groups with probability below alpha / fields."""
        da, db = self.distinct[a], self.distinct[b]
        if not (1 < db < da < self.n) or not self._constant_within(b, a):
            return False
        p = np.bincount(self.codes[b], minlength=db) / self.n
        sizes = np.bincount(np.bincount(self.codes[a], minlength=da))  # how many groups of a have each size
        with np.errstate(divide="ignore"):  # a chance too small for a float is log 0 = -inf: not chance
            log_p = sum(int(sizes[s]) * np.log(np.sum(p ** s)) for s in np.flatnonzero(sizes[2:]) + 2)
        return log_p < self.log_alpha

    def stands_for(self, b: int, a: int) -> bool:
        """Field b is a function of field a (`is_function_of`) and a is dense enough to carry it: field_ids[a] <=
        rows_ratio * field_ids[b]. A finer field split thinner than that (a site id under its category, a few rows
        per site) does not stand for its coarser function: there the coarser field pools what the finer spreads."""
        if not self.is_function_of(b, a):
            return False
        if self.field_ids is None or self.rows_ratio is None:
            return True
        return self.field_ids[a] <= self.rows_ratio * self.field_ids[b]

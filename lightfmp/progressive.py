"""The closing test's evidence from the rows phase 3's first epoch reads (progressive validation).

The default rule decides after phase 3's first epoch, which reads each training row phase 1 did not use once: each
batch is out of sample for the model just before its step, as the validation rows are for the finished epoch's.
`SweepCosts` walks the closing test's sweep on every batch before its step (lightfmp.keep_rule.backward_sweep: the
fields in the order fixed before the epoch, least open gate first, each closed in turn as the test closes them,
`ClosedFields`) and keeps, per position i of that order, the sum over rows of the step cost d_i (the per-row logloss
with the first i fields closed minus that with the first i - 1 closed, each batch's labels weighing the same in total
as the test weighs them: `by_label`) and the sums of the products d_i d_j, over clusters of the rows whose closed
fields read the same donor row (one row each under a permutation; a few where donors are drawn by weight). From
them follow the mean and standard error, over the epoch's measured rows, of the per-row sum of the steps of any set
of positions: the sweep's own question for a field (its step) and its set question (the steps of the fields the
sweep closed, and its). `pooled` joins such an estimate with the validation rows' estimate of the same question into
one, so the test stays one test at two standard errors per question.

Not every row of a batch is measured: every row of the epoch's rarer label is, and as many of the other label's,
drawn at random (`measured_rows`). A closed field moves a row's logit, and the row's logloss moves by about
(p - y) times that, p staying near the positive rate: by about 1 - pi on a row of the rarer label and pi on the
other's (pi the rarer label's share), so the rarer label's rows have the larger spread of costs. Each label's rows
weigh half of an estimate (`by_label`), and the error of a half falls as its spread over the square root of its
rows, so rows of the commoner label beyond the rarer's count buy little (Neyman's allocation gives them fewer
still): on KDD's first epoch (0.9% positives) the standard errors from 1.8% of the rows are those of every row to
0.1% (median; 2.6% at most), on MovieLens (45% / 55%) 4% larger from 89% of the rows. The test's bound on its rows
(`epoch_share`) then counts the rows measured, not the rows read.

Under torchrun one rank measures a batch's sampled rows (the ranks take turns by batch; with every row measured,
each rank its slice) and `combine` sums the ranks' numbers at the end of the epoch into what `evidence` reads; a
checkpoint of the epoch keeps them (`arrays` / `load`). A closed field's donor is another of the measured rows
(`weighted_other_rows` never draws a row itself), so where a batch has few of them a donor of the other label is
drawn somewhat more often than the batch's mix says (m / (m - 1) times for m sampled rows of a label).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from . import distributed as dist
from .closed_fields import ClosedFields
from .models import CTRModel


class SweepCosts:
    """The per-position step costs of the closing test's sweep, summed over the batches of one epoch."""

    def __init__(self, order: list[int], device: str = "cpu", share: float = 1.0, rare: float | None = None):
        """`order`: the field indices (of the model the epoch trains) in the gates' order, most open first, as the
        closing test will be given them; the sweep closes them from the last. `share`: the share of the epoch's
        batches measured, whole and spread evenly (batch b where floor((b + 1) x share) > floor(b x share); the
        batches are shuffled, so a sample of the epoch's rows: a batch's passes cost about the same at 2 rows as
        at 512, so a thin share is taken in whole batches, not in rows of every batch). `rare`: the label rarest
        among the epoch's rows; in each batch measured, its rows and as many of each other label's
        (`measured_rows`). None: every row."""
        self.order, self.device, self.share, self.rare = list(order), device, float(share), rare
        self.batch = 0  # batches seen since the last `combine`
        self.sums, self.products, self.rows, self.seconds = self._empty()[0], self._empty()[1], 0, 0.0
        # rows reading the same donor row (a closed field's values) are one cluster of the standard error: sum over
        # clusters of (size x the cluster's step sums), sum of squared sizes, number of clusters
        self.weighted, self.sizes, self.clusters = self._empty()[0], 0.0, 0
        self.local = self._empty()  # this rank's, since the last `combine`

    def _empty(self) -> list:
        """[sums, products of cluster sums, rows, size-weighted cluster sums, squared sizes, clusters], all zero."""
        k = len(self.order)
        return [np.zeros(k), np.zeros((k, k)), 0, np.zeros(k), 0.0, 0]

    def measure(self, model: CTRModel, ids: np.ndarray, labels: np.ndarray) -> None:
        """Before the step on a global batch: the sweep's steps on this rank's slice of it, or with `rare` given, on
        the rows `measured_rows` takes of it, all on one rank (rank b mod world for batch b: a batch's measured rows
        are few, and a closed field reads one of them); at least 2 rows; every state of the walk in stacked passes
        where the backbone allows, `ClosedFields.sweep`; the model is back in training mode after."""
        b, self.batch = self.batch, self.batch + 1
        if math.floor((b + 1) * self.share) <= math.floor(b * self.share):
            return
        t0 = time.perf_counter()
        w, r = (dist.world(), dist.rank()) if dist.active() else (1, 0)
        batch, drawn = np.asarray(labels), None
        if self.rare is not None:  # a few rows: one rank measures them all (the ranks take turns by batch), so
            if b % w != r:        # their closed fields draw from every one of them
                return
            rows = measured_rows(batch, self.rare, np.random.default_rng(b))
            values, counts = np.unique(batch, return_inverse=True, return_counts=True)[1:]
            drawn = (counts / np.bincount(values[rows], minlength=len(counts)).clip(1))[values[rows]]
            batch, ids, w, r = batch[rows], np.asarray(ids)[rows], 1, 0  # drawn: the rows each measured one stands for
        ids, labels = np.asarray(ids)[r::w], batch[r::w]  # each rank's rows weighed by label as the whole batch's are
        if len(labels) < 2:
            return
        was = model.training
        z = model.gate_values().cpu()
        sweep = list(reversed(self.order))
        walked = [i for i, f in enumerate(sweep) if float(z[f]) != 0.0]  # a shut gate's field: read as 0, step 0
        passes = ClosedFields(model, ids, labels, self.order, self.device, balanced=batch,  # as the test weighs rows
                              drawn=drawn)  # a closed field's values drawn as from every row of the batch
        losses = passes.sweep([sweep[i] for i in walked])
        steps = np.zeros((len(losses), len(self.order)))
        steps[:, walked] = np.diff(losses, axis=1)
        donor = passes.perm.cpu().numpy()  # the row each row's closed fields read: a cluster per donor
        clusters, size = np.unique(donor, return_inverse=True, return_counts=True)[1:]
        summed = np.zeros((len(size), len(self.order)))
        np.add.at(summed, clusters, steps)
        self.local[0] += steps.sum(0)
        self.local[1] += summed.T @ summed
        self.local[2] += len(losses)
        self.local[3] += size @ summed
        self.local[4] += float(size @ size)
        self.local[5] += len(size)
        model.train(was)
        self.seconds += time.perf_counter() - t0

    def combine(self) -> None:
        """Every rank's numbers measured since the last call into the totals `evidence` reads (the end of an epoch;
        on every rank under torchrun)."""
        k, (sums, products, rows, weighted, sizes, clusters) = len(self.order), self.local
        flat = torch.from_numpy(np.concatenate([sums, products.ravel(), weighted, [rows, sizes, clusters]]))
        flat = dist.all_reduce_sum(flat.to(self.device)).cpu().numpy()
        self.sums = self.sums + flat[:k]
        self.products = self.products + flat[k:k + k * k].reshape(k, k)
        self.weighted = self.weighted + flat[k + k * k:2 * k + k * k]
        self.rows += int(round(flat[-3]))
        self.sizes += float(flat[-2])
        self.clusters += int(round(flat[-1]))
        self.local, self.batch = self._empty(), 0

    def arrays(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps (float64)."""
        return {"order": np.asarray(self.order, dtype=np.float64), "sums": self.sums, "products": self.products,
                "rows": np.asarray([self.rows], dtype=np.float64), "seconds": np.asarray([self.seconds]),
                "weighted": self.weighted, "clusters": np.asarray([self.sizes, self.clusters], dtype=np.float64)}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """The sums a checkpoint kept; a ValueError if they are of another order."""
        order = [int(i) for i in np.asarray(arrays["order"]).ravel()]
        k = len(self.order)
        if order != self.order or np.shape(arrays["sums"]) != (k,) or np.shape(arrays["products"]) != (k, k):
            raise ValueError("its first epoch's closing costs are of another field order")
        self.sums = np.array(arrays["sums"], dtype=np.float64)
        self.products = np.array(arrays["products"], dtype=np.float64)
        self.rows = int(np.asarray(arrays["rows"]).ravel()[0])
        self.weighted = np.array(arrays["weighted"], dtype=np.float64).reshape(k)
        sizes, clusters = np.asarray(arrays["clusters"], dtype=np.float64).ravel()[:2]
        self.sizes, self.clusters = float(sizes), int(round(clusters))
        self.seconds = float(np.asarray(arrays.get("seconds", [0.0])).ravel()[0])

    def evidence(self, positions: list[int]) -> tuple[float, float] | None:
        """(mean, standard error) over the measured rows of the per-row sum of the steps at `positions` (indices
        into the sweep: 0 is the first field it tests); None with fewer than 2 rows. The error counts the rows that
        read one donor row as one cluster (their steps share its values): sum over clusters of (cluster sum - size x
        mean)^2 / rows^2 x C / (C - 1); where every row reads its own donor (a permutation) it is the rows' own
        standard error."""
        if self.rows < 2 or self.clusters < 2:
            return None
        a = np.zeros(len(self.order))
        a[list(positions)] = 1.0
        mean = float(a @ self.sums) / self.rows
        spread = float(a @ self.products @ a) - 2.0 * mean * float(a @ self.weighted) + mean * mean * self.sizes
        var = max(spread, 0.0) / self.rows ** 2 * self.clusters / (self.clusters - 1)
        return mean, float(np.sqrt(var))


def measured_rows(labels: np.ndarray, rare: float, rng: np.random.Generator) -> np.ndarray:
    """The positions of a batch's rows the sweep measures, ascending: every row of label `rare` (the epoch's rarest)
    and, of each other label, as many rows drawn at random without replacement (all of them where it has fewer).
    None of the rarest label in the batch: none."""
    labels = np.asarray(labels)
    m = int(np.sum(labels == rare))
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    picked = [np.flatnonzero(labels == rare)]
    for value in np.unique(labels[labels != rare]):
        at = np.flatnonzero(labels == value)
        picked.append(at if len(at) <= m else rng.choice(at, size=m, replace=False))
    return np.sort(np.concatenate(picked))


def rarest_label(labels: np.ndarray) -> tuple[float, float]:
    """(the label rarest among `labels`, the share of the rows `measured_rows` takes: each label's rows up to the
    rarest's count, over all rows). Ties: the smaller label."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    if len(values) == 0:
        return 0.0, 1.0
    return float(values[np.argmin(counts)]), float(np.minimum(counts, counts.min()).sum() / counts.sum())


def epoch_share(budget: int, valid_rows: int, epoch_rows: float) -> float:
    """The share of the batches of an epoch to measure so that the validation rows the test reads (`valid_rows`)
    and the epoch's rows measured (`epoch_rows` in all its batches) are about `budget` rows together (the test's
    own bound on its rows)."""
    return min(1.0, max(0, budget - valid_rows) / max(epoch_rows, 1))


def pooled(first: tuple[float, float], second: tuple[float, float] | None) -> tuple[float, float]:
    """Two estimates of one cost, (mean, standard error) each, as one: weighted by inverse variance (the estimate
    with the smaller error counts more). An estimate with no spread (every row's difference the same, as where a
    field is constant on those rows) says nothing about the error and is left out: the other one stands; both
    without spread, or `second` None: `first`."""
    if second is None or second[1] <= 0.0:
        return first
    (m1, s1), (m2, s2) = first, second
    if s1 <= 0.0:
        return second
    w1, w2 = 1.0 / (s1 * s1), 1.0 / (s2 * s2)
    return (w1 * m1 + w2 * m2) / (w1 + w2), float(1.0 / np.sqrt(w1 + w2))

"""The closing test's evidence from the rows phase 3's first epoch reads (progressive validation).

The default rule decides after phase 3's first epoch, which reads each training row phase 1 did not use once: each
batch is out of sample for the model just before its step, as the validation rows are for the finished epoch's.
`SweepCosts` walks the closing test's sweep on every batch before its step (lightfmp.keep_rule.backward_sweep: the
fields in the order fixed before the epoch, least open gate first, each closed in turn as the test closes them,
`ClosedFields`) and keeps, per position i of that order, the sum over rows of the step cost d_i (the per-row logloss
with the first i fields closed minus that with the first i - 1 closed, each batch's labels weighing the same in total
as the test weighs them: `by_label`) and the sums of the products d_i d_j. From them follow the mean and standard
error, over the epoch's measured rows, of the per-row sum of the steps of any set of positions: the sweep's own
question for a field (its step) and its set question (the steps of the fields the sweep closed, and its). `pooled`
joins such an estimate with the validation rows' estimate of the same question into one, so the test stays one test
at two standard errors per question.

Not every row of a batch is measured: every row of the epoch's rarer label is, and as many of the other label's,
drawn at random (`lightfmp.closed_fields.measured_rows`, the rule the validation rows follow too: why, there). A
closed field of a measured row reads a row drawn from the whole batch (`donor_rows`: the batch's label mix, not the
sample's), a different one for each, so the rows' differences are independent as under a permutation and the
standard error is the rows'. The test's bound on its rows (`epoch_share`) counts the rows measured, not the rows
read.

Under torchrun one rank measures a batch's sampled rows (the ranks take turns by batch; with every row measured,
each rank its slice) and `combine` sums the ranks' numbers at the end of the epoch into what `evidence` reads; a
checkpoint of the epoch keeps them (`arrays` / `load`).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from . import distributed as dist
from .closed_fields import ClosedFields, measured
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
        k = len(self.order)
        self.sums, self.products, self.rows, self.seconds = np.zeros(k), np.zeros((k, k)), 0, 0.0
        self.local = [np.zeros(k), np.zeros((k, k)), 0]  # this rank's, since the last `combine`

    def measure(self, model: CTRModel, ids: np.ndarray, labels: np.ndarray) -> None:
        """Before the step on a global batch: the sweep's steps on this rank's slice of it, or with `rare` given, on
        the rows `measured` takes of it (their closed fields reading other rows of the whole batch), all on
        one rank (rank b mod world for batch b: a batch's measured rows are few); at least 2 rows; every state of
        the walk in stacked passes where the backbone allows, `ClosedFields.sweep`; the model is back in training
        mode after."""
        b, self.batch = self.batch, self.batch + 1
        if math.floor((b + 1) * self.share) <= math.floor(b * self.share):
            return
        t0 = time.perf_counter()
        w, r = (dist.world(), dist.rank()) if dist.active() else (1, 0)
        ids, batch, donors = np.asarray(ids), np.asarray(labels), None
        if self.rare is not None:  # a few rows: one rank measures them all (the ranks take turns by batch)
            if b % w != r:
                return
            ids, batch, donors = measured(ids, batch, self.rare, seed=b)
            w, r = 1, 0
        ids, labels = ids[r::w], batch[r::w]  # each rank's rows weighed by label as the whole batch's are
        if len(labels) < 2:
            return
        was = model.training
        z = model.gate_values().cpu()
        sweep = list(reversed(self.order))
        walked = [i for i, f in enumerate(sweep) if float(z[f]) != 0.0]  # a shut gate's field: read as 0, step 0
        passes = ClosedFields(model, ids, labels, self.order, self.device, balanced=batch,  # as the test weighs rows
                              donors=donors)
        losses = passes.sweep([sweep[i] for i in walked])
        steps = np.zeros((len(losses), len(self.order)))
        steps[:, walked] = np.diff(losses, axis=1)
        self.local[0] += steps.sum(0)
        self.local[1] += steps.T @ steps
        self.local[2] += len(losses)
        model.train(was)
        self.seconds += time.perf_counter() - t0

    def combine(self) -> None:
        """Every rank's numbers measured since the last call into the totals `evidence` reads (the end of an epoch;
        on every rank under torchrun)."""
        k = len(self.order)
        flat = torch.from_numpy(np.concatenate([self.local[0], self.local[1].ravel(), [float(self.local[2])]]))
        flat = dist.all_reduce_sum(flat.to(self.device)).cpu().numpy()
        self.sums = self.sums + flat[:k]
        self.products = self.products + flat[k:k + k * k].reshape(k, k)
        self.rows += int(round(flat[-1]))
        self.local, self.batch = [np.zeros(k), np.zeros((k, k)), 0], 0

    def arrays(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps (float64)."""
        return {"order": np.asarray(self.order, dtype=np.float64), "sums": self.sums, "products": self.products,
                "rows": np.asarray([self.rows], dtype=np.float64), "seconds": np.asarray([self.seconds])}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """The sums a checkpoint kept; a ValueError if they are of another order."""
        order = [int(i) for i in np.asarray(arrays["order"]).ravel()]
        k = len(self.order)
        if order != self.order or np.shape(arrays["sums"]) != (k,) or np.shape(arrays["products"]) != (k, k):
            raise ValueError("its first epoch's closing costs are of another field order")
        self.sums = np.array(arrays["sums"], dtype=np.float64)
        self.products = np.array(arrays["products"], dtype=np.float64)
        self.rows = int(np.asarray(arrays["rows"]).ravel()[0])
        self.seconds = float(np.asarray(arrays.get("seconds", [0.0])).ravel()[0])

    def evidence(self, positions: list[int]) -> tuple[float, float] | None:
        """(mean, standard error) over the measured rows of the per-row sum of the steps at `positions` (indices
        into the sweep: 0 is the first field it tests); None with fewer than 2 rows."""
        if self.rows < 2:
            return None
        a = np.zeros(len(self.order))
        a[list(positions)] = 1.0
        mean = float(a @ self.sums) / self.rows
        second = float(a @ self.products @ a) / self.rows
        var = max(second - mean * mean, 0.0) * self.rows / (self.rows - 1)
        return mean, float(np.sqrt(var / self.rows))


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

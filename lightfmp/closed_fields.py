"""Passes of a gated model over fixed rows with some fields closed, for the keep rules of lightfmp.keep_rule.

A closed field reads another row's values (row i reads row perm[i], `other_rows`, a seeded shuffle in which no row
reads itself): it carries nothing about the row but keeps its values' distribution, so a field the model does not
use costs nothing to close, whatever its embedding's scale (a gate set to 0 would shift the model's input). The
rules measure a sample of their rows (`measured_sample`: every row of the rarest label, as many of each other's;
`keep_rule.search_rows` alike, bounded) whose closed fields read rows of the whole set given (`donors`,
`donor_rows`), each a different row, so that the values keep the whole set's distribution, not the sample's.

The rules compare many closed sets that differ by one field, so `ClosedFields` looks the rows' field embeddings up
once (a lookup is row-wise: the embeddings of the shuffled rows are the rows' embeddings shuffled) and keeps the
current set as its state; a trial changes one field's block. Each linear layer that reads the flattened embeddings
themselves (the tower's first layer; DCNv2's first cross layer too: `readers`) keeps its pre-activation for the
state, and a trial updates it by the changed field's columns alone: D x H multiply-adds a row instead of F x D x H;
and DeepFM's FM term, a function of two sums over fields, comes from the state's sums changed by the one field's
terms (D instead of F x D). Memory: the state, rows x fields x embed_dim floats (250 MB for 100,000 rows of 39
fields at 16), plus those layers' pre-activations (at most STATE_BYTES more: the narrowest first) and the two sums
(rows x embed_dim float64 each); beyond STATE_BYTES the state is the rows' ids and every pass looks them up again
(the same losses, ~25x slower on a wide table: `state_rows`). A walk that closes fields one by one and keeps them
closed (`sweep`: the closing test's order on each batch of phase 3's first epoch, lightfmp.progressive) is answered
for all its states at once where the model reads the embeddings through those layers and sums alone.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import LightFMPError
from .models import CTRModel

CHUNK_FLOATS = 1 << 20  # embedding floats per forward call (4 MB): a chunk's temporaries stay in the processor's cache
STATE_BYTES = 1 << 30   # the rows' embeddings are kept while they take at most this (1 GiB); beyond, their ids
STACK_FLOATS = 1 << 22  # a stacked pass's widest activation in floats (16 MB; whole runs measured faster than at 4 MB)


def state_rows(model: CTRModel) -> int:
    """The most rows whose field embeddings a `ClosedFields` state holds within STATE_BYTES: beyond them it keeps
    ids and each pass looks every field up again and recomputes what the kept pre-activation and sums would answer
    (25x slower a pass at 300 fields)."""
    return STATE_BYTES // (model.embedding.num_fields * model.embedding.embed_dim * 4)


def other_rows(n: int) -> np.ndarray:
    """The fixed shuffle a closed field reads: row i reads row perm[i], a seeded permutation in which no row reads
    itself (each row the draw left in place swaps partners with the next row; n >= 2)."""
    perm = np.random.default_rng(0).permutation(n)
    for i in np.flatnonzero(perm == np.arange(n)):
        if n > 1 and perm[i] == i:
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


def measured_rows(labels: np.ndarray, rare: float, rng: np.random.Generator) -> np.ndarray:
    """The positions of the rows the default rule measures, ascending: every row of label `rare` (the rarest) and, of
    each other label, as many rows drawn at random without replacement (all of them where it has fewer). None of the
    rarest label among them: none.

    A closed field moves a row's logit, and the row's logloss moves by about (p - y) times that, p staying near the
    positive rate: by about 1 - pi on a row of the rarer label and pi on the other's (pi the rarer label's share), so
    the rarer label's rows have the larger spread of costs. Each label's rows weigh half of the rule's estimate
    (`by_label`), and the error of a half falls as its spread over the square root of its rows, so the commoner
    label's rows beyond the rarer's count buy little (Neyman's allocation gives them fewer still): on KDD (0.9%
    positives) the standard errors from 1.8% of the rows are those of every row to 0.1% (median), on MovieLens
    (45% / 55%) 4% larger from 89% of the rows."""
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


def donor_rows(n: int, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each of `rows` (distinct positions among n rows, fewer than n), a row of all n whose values its closed
    fields read: drawn at random, every row a different one, none its own. The closed fields then follow the
    distribution of all n rows, not the sample's (a sample that holds each label alike would leak its label mix into
    them), and no two measured rows share a donor, so their differences stay independent as under a permutation."""
    rows = np.asarray(rows)
    k = len(rows)
    if k >= n:
        raise ValueError(f"donor_rows: {k} row(s) of {n}: a sample needs fewer rows than it is drawn from")
    donor = rng.permutation(n)
    for i in np.flatnonzero(donor[:k] == rows):  # one drew itself: it takes the first row no one drew (never itself:
        donor[i], donor[k] = donor[k], donor[i]  # that row was undrawn, and rows are distinct)
    return donor[:k]


def measured_sample(labels: np.ndarray, rare: float | None = None, seed: int = 0) \
        -> tuple[np.ndarray, np.ndarray | None]:
    """The rows the default rule measures of these (`measured_rows`, of the rarest label here unless `rare` is
    given) and the rows their closed fields read (`donor_rows`), seeded; donors None where every row is measured
    (a closed field then reads another of them, `other_rows`)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rows = measured_rows(labels, rarest_label(labels)[0] if rare is None else rare, rng)
    if len(rows) == len(labels):
        return rows, None
    return rows, donor_rows(len(labels), rows, rng)


def measured(ids: np.ndarray, labels: np.ndarray, rare: float | None = None, seed: int = 0) \
        -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`measured_sample` taken: the measured rows' ids and labels, and the ids their closed fields read (the
    `donors` of `ClosedFields`; None where every row is measured)."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    rows, donors = measured_sample(labels, rare, seed)
    return ids[rows], labels[rows], None if donors is None else ids[donors]


def by_label(labels: np.ndarray, weights: np.ndarray | None = None, of: np.ndarray | None = None) -> np.ndarray:
    """Per-row weights (mean 1) under which each label's rows weigh the same in total, `weights` (a sample's) times
    a factor per label. AUC counts every pair of one row of each label, so each label's rows count alike in it
    whatever their numbers; the mean logloss of the rows counts the rare label's few rows little (0.9% of KDD's
    rows, where they hold ~80% of a closing cost's variance). `of`: the labels of the rows these stand for, which
    set the factors (a rank's slice of a batch weighs its rows as the whole batch does; default: these rows, by
    `weights`). One label only (or a label of no weight): `weights`, or 1."""
    labels = np.asarray(labels)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    ref, ref_w = (labels, w) if of is None else (np.asarray(of), np.ones(len(of)))
    values, label = np.unique(ref, return_inverse=True)
    total = np.bincount(label.ravel(), weights=ref_w, minlength=len(values))
    if len(values) < 2 or not np.all(total > 0):
        return w
    factor = ref_w.sum() / (len(values) * total)
    return w * factor[np.searchsorted(values, labels)]


class _ReaderUpdate(nn.Module):
    """Stands in for a reader of the flattened embeddings (`readers`) during a trial: its pre-activation for the
    state plus the change of one field's columns (the input differs from the state's only there)."""

    def __init__(self, layer: nn.Linear, pre: torch.Tensor, cols: slice, old: torch.Tensor):
        super().__init__()
        self.layer, self.pre, self.cols, self.old = layer, pre, cols, old

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre + (x[:, self.cols] - self.old) @ self.layer.weight[:, self.cols].t()


class _FactorizationFromSums(nn.Module):
    """Stands in for DeepFM's FM term during a trial: its value from the state's two sums over fields (float64),
    changed by one field's terms where the input differs from the state's in that field alone."""

    def __init__(self, fm: nn.Module, total: torch.Tensor, squares: torch.Tensor):
        super().__init__()
        self.fm, self.total, self.squares = fm, total, squares

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.fm.from_sums(self.total, self.squares).to(emb.dtype)


class _GivenPreActivation(nn.Module):
    """Stands in for a reader of the flattened embeddings in a stacked pass (`ClosedFields.sweep`): its
    pre-activation, computed beforehand for every row of the call; the input is not read."""

    def __init__(self, pre: torch.Tensor):
        super().__init__()
        self.pre = pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre


class _KeptPreActivation(torch.autograd.Function):
    """A reader's output where its pre-activation is known already: forward returns it, backward passes the
    gradient to the layer's input as the Linear would (grad @ weight)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return pre.clone()  # the caller's tensor stays as it is, whatever the layers after it do in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None


class _KeptReader(nn.Module):
    """Stands in for a reader of the flattened embeddings during the screen: the state's pre-activation,
    differentiable in the input."""

    def __init__(self, layer: nn.Linear, pre: torch.Tensor):
        super().__init__()
        self.layer, self.pre = layer, pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _KeptPreActivation.apply(x, self.pre, self.layer.weight.detach())


@contextmanager
def _swapped(swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]]):
    """Each (owner, name, module, stand_in): owner.name is stand_in inside, module again afterwards."""
    try:
        for owner, name, _, stand_in in swaps:
            setattr(owner, name, stand_in)
        yield
    finally:
        for owner, name, module, _ in swaps:
            setattr(owner, name, module)


def _running_sum(x: torch.Tensor) -> torch.Tensor:
    """x[j] <- x[0] + ... + x[j] along the first dimension, in place, one add a slice in the walk's order
    (torch.cumsum along a leading dimension runs several times slower on the CPU)."""
    for j in range(1, x.shape[0]):
        x[j].add_(x[j - 1])
    return x


def readers(model: CTRModel) -> list[tuple[nn.Module, str]]:
    """The linear layers that read the flattened field embeddings themselves (the tower's first layer; DCNv2's first
    cross layer too), as (parent module, name): found by one probe pass of `interact` over two rows of seeded random
    embeddings, as the layers whose input is exactly those embeddings. None where a linear layer runs more than once
    a pass (its input would not be one tensor)."""
    fields, dim = model.embedding.num_fields, model.embedding.embed_dim
    device = model.embedding.weight.device
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, fields, dim, generator=g).to(device)
    lin = torch.randn(2, fields, generator=g).to(device) if model.uses_linear else None
    where = {m: (parent, name) for parent in model.modules() for name, m in parent.named_children()
             if isinstance(m, nn.Linear)}
    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append((m, args[0] if args else None))) for m in where]
    try:
        with torch.no_grad():
            model.interact(emb, lin)
    finally:
        for h in hooks:
            h.remove()
    if len({id(m) for m, _ in calls}) < len(calls):
        return []
    x0 = emb.flatten(1)
    return [where[m] for m, x in calls if isinstance(x, torch.Tensor) and x.shape == x0.shape and torch.equal(x, x0)]


class ClosedFields:
    """The rows' per-row losses with the fields not in `open_fields` closed, and with one field toggled.

    `losses()` is the state's; `losses(f)` the state's with field f toggled (closed if open, opened if closed);
    `toggle(f)` makes that change the state. The state is the rows' field embeddings when they fit in STATE_BYTES,
    else their ids (looked up again on every pass: the same losses, slower, without the readers' updates or the
    FM sums)."""

    @torch.no_grad()
    def __init__(self, model: CTRModel, ids: np.ndarray, labels: np.ndarray, open_fields, device: str = "cpu",
                 weights: np.ndarray | None = None, balanced: bool | np.ndarray = False,
                 donors: np.ndarray | None = None):
        """`weights`: per-row weights (mean 1) that `losses` and `screen` apply (`lightfmp.keep_rule.keep_order`'s:
        each label's rows the same in total on its sample). `balanced`: the losses count each label's rows the same
        in total (`by_label`; given as labels, those of the rows these stand for). `donors`: the ids of the rows a
        closed field reads instead of another of these rows, one per row (`donor_rows`: rows of the whole set these
        were sampled from, so that a sample's label mix does not leak into the closed fields)."""
        if len(labels) < 2:
            raise LightFMPError(f"{len(labels)} validation row(s): a closed field reads another row's values, so the "
                                f"keep rules need at least 2; give the validation split a larger share (--split)")
        model.eval().to(device)
        self.model, self.n = model, len(labels)
        fields, dim = model.embedding.num_fields, model.embedding.embed_dim
        self.z = model.gate_values().to(device)
        self.perm = None if donors is not None else torch.from_numpy(other_rows(self.n)).to(device)
        self.inverse = torch.argsort(self.perm) if donors is None else None
        self.chunk = max(1, CHUNK_FLOATS // (fields * dim))  # rows per forward call of the whole model
        self.ids = torch.from_numpy(np.ascontiguousarray(ids)).to(device)
        self.cached = self.n <= state_rows(model)
        if self.cached:
            self.emb, self.lin = self._looked_up()  # [N, F, D] and [N, F] (or None)
        else:
            self.ids = self.ids.clone()  # the state: closed fields' id columns read other rows
            slot_field = model.embedding.slot_field.cpu()
            self.slots = [slice(int(i[0]), int(i[-1]) + 1) for i in (torch.nonzero(slot_field == f).flatten()
                                                                      for f in range(fields))]
        # the rows' own values beside the state, where closed fields' values cannot be un-shuffled (read from donors)
        self.own = None if self.inverse is not None else (self.emb.clone(), None if self.lin is None
                                                          else self.lin.clone()) if self.cached else self.ids.clone()
        given = None if donors is None else torch.from_numpy(np.ascontiguousarray(donors)).to(device)
        self.donor = given if given is None or not self.cached else self._looked_up(given)  # what closed fields read
        self.labels = torch.from_numpy(labels.astype(np.float32)).to(device)
        if balanced is not False:
            weights = by_label(labels, weights, None if balanced is True else balanced)
        self.weights = torch.from_numpy(np.asarray(weights, dtype=np.float32)).to(device) \
            if weights is not None else None
        self.open = torch.ones(fields, dtype=torch.bool)
        self.readers, self.pres, self.sums = [], [], None
        for f in set(range(fields)) - set(open_fields):
            self.toggle(f)
        self.diffs = None  # screen's own - shuffled values, built on its first call
        self.readers = self._kept_readers() if self.cached else []  # [(parent, name, layer)]
        self.pres = [self._pre_activation(layer) for _, _, layer in self.readers]
        fm = getattr(model, "fm", None)  # a term read through sums over fields (models.deepfm.FactorizationMachine)
        self.fm = fm if self.cached and hasattr(fm, "field_terms") and hasattr(fm, "from_sums") else None
        self.sums = self._sums() if self.fm is not None else None
        # rows per pass of `losses`: where the readers are answered from their pre-activations, a pass computes
        # nothing F x D wide per row but what the model's other layers do (and the F first-order terms)
        widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] if self.readers else []
        self.pass_chunk = max(1, CHUNK_FLOATS // max(widths + [fields, dim])) if widths else self.chunk
        self._stacks: bool | None = None  # whether `sweep` stacks its passes: probed on its first call

    def _lookup(self, rows: slice, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Field embeddings and first-order terms of the state's ids (or `ids`) at `rows`."""
        return self.model.embedding((self.ids if ids is None else ids)[rows], self.z)

    def _looked_up(self, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`_lookup` of every row, chunk by chunk."""
        parts = [self._lookup(slice(i, i + self.chunk), ids) for i in range(0, self.n, self.chunk)]
        return torch.cat([e for e, _ in parts]), torch.cat([l for _, l in parts]) if parts[0][1] is not None else None

    def _kept_readers(self) -> list[tuple[nn.Module, str, nn.Linear]]:
        """The `readers` whose pre-activations the passes keep: the narrowest first, while together they take at
        most STATE_BYTES."""
        found = sorted(((p, n, getattr(p, n)) for p, n in readers(self.model)), key=lambda r: r[2].out_features)
        kept, size = [], 0
        for r in found:
            size += self.n * r[2].out_features * 4
            if size > STATE_BYTES:
                break
            kept.append(r)
        return kept

    def _pre_activation(self, layer: nn.Linear) -> torch.Tensor:
        return torch.cat([F.linear(self.emb[i:i + self.chunk].flatten(1), layer.weight, layer.bias)
                          for i in range(0, self.n, self.chunk)])

    def _sums(self) -> list[torch.Tensor]:
        """The FM term's two sums over fields for every row of the state, in float64 (toggles update them)."""
        parts = [[t.sum(1) for t in self.fm.field_terms(self.emb[i:i + self.chunk].double())]
                 for i in range(0, self.n, self.chunk)]
        return [torch.cat([p[k] for p in parts]) for k in range(2)]

    def _changed_sums(self, rows: slice, old: torch.Tensor, new: torch.Tensor) -> list[torch.Tensor]:
        """The state's sums at `rows` with one field's block changed from `old` to `new`."""
        return [s[rows] + (b - a) for s, a, b in zip(self.sums, self.fm.field_terms(old.double()),
                                                      self.fm.field_terms(new.double()))]

    def _field(self, f: int) -> list[torch.Tensor]:
        """Field f's part of the state, copied: its embedding block (and first-order terms), or its id columns."""
        if not self.cached:
            return [self.ids[:, self.slots[f]].clone()]
        return [self.emb[:, f].clone()] + ([self.lin[:, f].clone()] if self.lin is not None else [])

    def _set(self, f: int, values: list[torch.Tensor]) -> None:
        if not self.cached:
            self.ids[:, self.slots[f]] = values[0]
            return
        self.emb[:, f] = values[0]
        if self.lin is not None:
            self.lin[:, f] = values[1]

    def _toggled(self, f: int) -> list[torch.Tensor]:
        """Field f's part after a toggle: an open field reads row perm[i]; a closed one its own row again (gathered
        from a contiguous copy: rows far apart in the state are far apart in memory)."""
        if self.cached:
            return [block[:, 0] for block in self._toggled_blocks([f])]
        if self.open[f]:
            return [v[self.perm] for v in self._field(f)] if self.donor is None \
                else [self.donor[:, self.slots[f]].clone()]
        if self.own is None:
            return [v[self.inverse] for v in self._field(f)]
        return [self.own[:, self.slots[f]].clone()]

    def _toggled_blocks(self, fields: list[int]) -> list[torch.Tensor]:
        """`_toggled` of several fields at once where the state holds embeddings: their blocks [N, k, D] (and
        first-order terms [N, k]) after each one's toggle."""
        cols = torch.tensor(fields, device=self.ids.device)
        shut = torch.nonzero(~self.open[fields]).flatten().to(self.ids.device)
        out = []
        for i, t in enumerate(v for v in (self.emb, self.lin) if v is not None):
            block = t[:, cols]  # a contiguous copy: the gathers below read rows far apart in the state
            # an open field reads row perm[i] (or its donor's values)
            new = block[self.perm] if self.donor is None else self.donor[i][:, cols]
            if len(shut):  # a closed one its own row again
                new[:, shut] = (block[self.inverse] if self.own is None else self.own[i][:, cols])[:, shut]
            out.append(new)
        return out

    @contextmanager
    def _trial(self, f: int | None):
        """The state with field f toggled, restored afterwards; yields f's embedding block before the toggle."""
        if f is None:
            yield None
            return
        old = self._field(f)
        self._set(f, self._toggled(f))
        try:
            yield old[0] if self.cached else None
        finally:
            self._set(f, old)

    @torch.no_grad()
    def losses(self, f: int | None = None) -> np.ndarray:
        """Per-row BCE (float64; times the row's weight, given weights) of the state, or of the state with field f
        toggled."""
        out = np.empty(self.n)
        with self._trial(f) as old:
            for i in range(0, self.n, self.pass_chunk):
                rows = slice(i, i + self.pass_chunk)
                logits = self._logits(rows, f, old)
                out[i:i + self.pass_chunk] = F.binary_cross_entropy_with_logits(
                    logits, self.labels[rows], self.weights[rows] if self.weights is not None else None,
                    reduction="none").double().cpu().numpy()
        return out

    def _logits(self, rows: slice, f: int | None, old: torch.Tensor | None) -> torch.Tensor:
        if not self.cached:
            return self.model.interact(*self._lookup(rows))
        emb, lin = self.emb[rows], self.lin[rows] if self.lin is not None else None
        with self._stand_ins(rows, f, emb, old):
            return self.model.interact(emb, lin)

    @contextmanager
    def _stand_ins(self, rows: slice, f: int | None, emb: torch.Tensor, old: torch.Tensor | None):
        """The model with its readers and its FM term (where it has them) answered from the state's kept
        pre-activations and sums, changed by field f's block (`old` before the trial, `emb`'s now)."""
        swaps = []
        if self.readers:
            d = emb.shape[2]
            cols = slice(f * d, (f + 1) * d) if f is not None else slice(0, 0)
            before = old[rows] if old is not None else emb[:, :0].flatten(1)
            swaps += [(parent, name, layer, _ReaderUpdate(layer, pre[rows], cols, before))
                      for (parent, name, layer), pre in zip(self.readers, self.pres)]
        if self.fm is not None:
            sums = self._changed_sums(rows, old[rows], emb[:, f]) if f is not None else [s[rows] for s in self.sums]
            swaps.append((self.model, "fm", self.fm, _FactorizationFromSums(self.fm, *sums)))
        with _swapped(swaps):
            yield

    @torch.no_grad()
    def sweep(self, fields: list[int]) -> np.ndarray:
        """Per-row BCE (float64, [N, len(fields) + 1]; times the row's weight, given weights): column 0 the state's,
        column j the state's with the first j of `fields` toggled (each stays toggled for the columns after it: the
        closing test's walk). The state is as it was afterwards.

        Where the model reads the field embeddings only through its readers, its FM sums and the first-order terms
        (`stacks`), the columns' passes go through the layers after them together: a reader's pre-activation of
        column j is the state's plus a running sum of the toggled fields' changes of it (one batched product for
        all of them), the FM sums likewise, so a call computes what `losses` would per column with far fewer, larger
        products (much of one column's pass of a small model is the fixed cost of its calls), the rows split so that
        a call's widest activation (all columns' rows) stays within STACK_FLOATS. Else column by column (`losses`,
        `toggle`)."""
        if len(set(fields)) < len(fields):
            raise ValueError(f"sweep: a field toggled twice in {fields}")
        if not fields or not self.stacks():
            kept = [pre.clone() for pre in self.pres], self.sums  # toggled back, they would differ in rounding
            out = [self.losses()]
            for f in fields:
                out.append(self.losses(f))
                self.toggle(f)
            for f in reversed(fields):
                self.toggle(f)
            for pre, before in zip(self.pres, kept[0]):
                pre.copy_(before)
            self.sums = kept[1]
            return np.stack(out, 1)
        k, widths = len(fields), [layer.out_features for _, _, layer in self.readers] + list(self.emb.shape[1:])
        calls = -(-(k + 1) * self.n * max(widths) // STACK_FLOATS)  # the rows split evenly into this many calls
        rows = -(-self.n // calls)
        new = self._toggled_blocks(fields)  # the toggled fields' whole blocks, once
        cols, d = torch.tensor(fields, device=self.ids.device), self.emb.shape[2]
        blocks = [layer.weight.view(layer.out_features, -1, d)[:, cols].permute(1, 2, 0).contiguous()
                  for _, _, layer in self.readers]  # each reader's columns of the walk's fields, [k, D, H]
        return np.concatenate([self._stacked(slice(i, i + rows), cols, new, blocks) for i in range(0, self.n, rows)])

    def stacks(self) -> bool:
        """Whether `sweep` can stack its columns: the state holds the embeddings and the model reads them only
        through the readers and the FM sums (a pass with the embeddings set to NaN and those answered from the
        state's own numbers is finite; DCNv2's cross layers read them elementwise, so it is not). Probed once."""
        if self._stacks is None:
            self._stacks = False
            if self.cached and (self.readers or self.fm is not None):
                rows = slice(0, 2)
                emb = torch.full_like(self.emb[rows], float("nan"))
                with self._given([pre[rows] for pre in self.pres],
                                 [s[rows] for s in self.sums] if self.fm is not None else None):
                    self._stacks = bool(torch.isfinite(self.model.interact(
                        emb, self.lin[rows] if self.lin is not None else None)).all())
        return self._stacks

    def _stacked(self, rows: slice, cols: torch.Tensor, new: list[torch.Tensor], blocks: list[torch.Tensor]) \
            -> np.ndarray:
        """`sweep` on `rows` of the state, every column in one pass: `cols` the walk's fields, `new` their toggled
        blocks, `blocks` the readers' weights for them."""
        k = len(cols)
        emb = self.emb[rows]
        n = emb.shape[0]
        old, new_emb = emb[:, cols], new[0][rows]  # [n, k, D]
        change = (new_emb - old).transpose(0, 1)  # [k, n, D]
        pres = []
        for weight, pre in zip(blocks, self.pres):
            out = torch.empty((k + 1,) + pre[rows].shape, dtype=pre.dtype, device=pre.device)
            out[0] = pre[rows]
            torch.bmm(change, weight, out=out[1:])  # each field's change of the pre-activation
            pres.append(_running_sum(out).flatten(0, 1))
        sums = None
        if self.fm is not None:
            terms = [(b - a).transpose(0, 1) for a, b in zip(self.fm.field_terms(old.double()),
                                                              self.fm.field_terms(new_emb.double()))]
            sums = [_running_sum(torch.cat([s[rows][None], t])).flatten(0, 1) for s, t in zip(self.sums, terms)]
        lin = None
        if self.lin is not None:
            state = self.lin[rows]
            after = state.clone()
            after[:, cols] = new[1][rows]  # every field of the walk toggled
            toggled = torch.zeros(k + 1, state.shape[1], dtype=torch.bool, device=cols.device)
            toggled[:, cols] = torch.arange(k + 1, device=cols.device)[:, None] > torch.arange(k, device=cols.device)
            lin = torch.where(toggled[:, None, :], after[None], state[None]).flatten(0, 1)  # column j: the first j
        unread = emb[:1].expand(n * (k + 1), -1, -1)  # the model reads the embeddings through the stand-ins only
        with self._given(pres, sums):
            logits = self.model.interact(unread, lin)
        labels = self.labels[rows].repeat(k + 1)
        weights = self.weights[rows].repeat(k + 1) if self.weights is not None else None
        loss = F.binary_cross_entropy_with_logits(logits, labels, weights, reduction="none")
        return loss.double().view(k + 1, n).t().cpu().numpy()

    @contextmanager
    def _given(self, pres: list[torch.Tensor], sums: list[torch.Tensor] | None):
        """The model with its readers answering `pres` and its FM term `sums` (where it has them)."""
        swaps = [(parent, name, layer, _GivenPreActivation(pre))
                 for (parent, name, layer), pre in zip(self.readers, pres)]
        if self.fm is not None:
            swaps.append((self.model, "fm", self.fm, _FactorizationFromSums(self.fm, *sums)))
        with _swapped(swaps):
            yield

    @torch.no_grad()
    def toggle(self, f: int) -> None:
        """Close field f if it is open, open it if closed, for good."""
        new = self._toggled(f)
        sums = self._changed_sums(slice(None), self.emb[:, f], new[0]) if self.sums is not None else None
        if self.pres:
            change = new[0] - self.emb[:, f]
            if bool(change.any()):  # a shut gate's block is 0 on every row
                d = self.emb.shape[2]
                for (_, _, layer), pre in zip(self.readers, self.pres):
                    pre.addmm_(change, layer.weight[:, f * d:(f + 1) * d].t())
        self.sums = sums
        self._set(f, new)
        self.open[f] = ~self.open[f]

    def screen(self) -> torch.Tensor:
        """Per field, the first-order change of the mean BCE (weighted, given weights) when the field's share of its
        own values grows from the state's: field f reads s_f of its own and 1 - s_f of the shuffled rows' embedding
        (the substitution gate of ShuffleGate, Huang et al. 2025), s = 1 for open fields and 0 for closed ones. The
        state is that mix at its corners, so the derivative is the loss's gradient at the state's embeddings times
        (own - shuffled): one backward pass (chunk by chunk), and none of the readers' forward (their
        pre-activations are kept). Negative: opening the field (closed) promises to lower the loss."""
        if self.diffs is None:  # own - shuffled per field, built on the first call (the own values do not change)
            with torch.no_grad():
                if self.own is not None:  # the rows' own values, kept
                    values = [t for t in (self.own if self.cached else self._looked_up(self.own)) if t is not None]
                else:
                    is_open = self.open.to(self.ids.device)
                    state = (self.emb, self.lin) if self.cached else self._looked_up()
                    values = [torch.where(is_open.view((1, -1) + (1,) * (t.dim() - 2)), t, t[self.inverse])
                              for t in state if t is not None]
                read = [x[self.perm] for x in values] if self.donor is None else \
                    [t for t in (self.donor if self.cached else self._looked_up(self.donor)) if t is not None]
                self.diffs = [x - r for x, r in zip(values, read)]
        out = torch.zeros(self.model.embedding.num_fields, device=self.ids.device)
        for i in range(0, self.n, self.chunk):  # chunk by chunk: the gradients' temporaries stay in cache
            rows = slice(i, i + self.chunk)
            with torch.no_grad():
                state = (self.emb[rows], self.lin[rows] if self.lin is not None else None) if self.cached \
                    else self._lookup(rows)
            at = [t.detach().requires_grad_(True) for t in state if t is not None]
            for (parent, name, layer), pre in zip(self.readers, self.pres):
                setattr(parent, name, _KeptReader(layer, pre[rows]))
            try:
                with torch.enable_grad():
                    logits = self.model.interact(at[0], at[1] if len(at) > 1 else None)
                    loss = F.binary_cross_entropy_with_logits(
                        logits, self.labels[rows], self.weights[rows] if self.weights is not None else None,
                        reduction="sum")
                    grads = torch.autograd.grad(loss, at)
            finally:
                for parent, name, layer in self.readers:
                    setattr(parent, name, layer)
            for g, d in zip(grads, self.diffs):
                out += (g * d[rows]).flatten(2).sum((0, 2)) if g.dim() > 2 else (g * d[rows]).sum(0)
        return out / self.n


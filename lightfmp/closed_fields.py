"""Passes of a gated model over fixed rows with some fields closed, for the keep rules of lightfmp.keep_rule.

A closed field reads another row's values (row i reads row perm[i], `other_rows`, a seeded shuffle in which no row
reads itself): it carries nothing about the row but keeps its values' distribution, so a field the model does not
use costs nothing to close, whatever its embedding's scale (a gate set to 0 would shift the model's input).

The rules compare many closed sets that differ by one field, so `ClosedFields` looks the rows' field embeddings up
once (a lookup is row-wise: the embeddings of the shuffled rows are the rows' embeddings shuffled) and keeps the
current set as its state; a trial changes one field's block. Where only the tower's first layer reads the flattened
embeddings (the backbones that keep `CTRModel.prune_inputs`), a trial also updates that layer's pre-activation by
the changed field's columns alone: D x H multiply-adds a row instead of F x D x H. Memory: the state, rows x fields
x embed_dim floats (250 MB for 100,000 rows of 39 fields at 16), plus that layer's pre-activation.
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


def other_rows(n: int) -> np.ndarray:
    """The fixed shuffle a closed field reads: row i reads row perm[i], a seeded permutation in which no row reads
    itself (each row the draw left in place swaps partners with the next row; n >= 2)."""
    perm = np.random.default_rng(0).permutation(n)
    for i in np.flatnonzero(perm == np.arange(n)):
        if n > 1 and perm[i] == i:
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


class _FirstLayerUpdate(nn.Module):
    """Stands in for the tower's first Linear during a trial: its pre-activation for the state plus the change of
    one field's columns (the input differs from the state's only there)."""

    def __init__(self, layer: nn.Linear, pre: torch.Tensor, cols: slice, old: torch.Tensor):
        super().__init__()
        self.layer, self.pre, self.cols, self.old = layer, pre, cols, old

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre + (x[:, self.cols] - self.old) @ self.layer.weight[:, self.cols].t()


class ClosedFields:
    """The rows' per-row losses with the fields not in `open_fields` closed, and with one field toggled.

    `losses()` is the state's; `losses(f)` the state's with field f toggled (closed if open, opened if closed);
    `toggle(f)` makes that change the state."""

    @torch.no_grad()
    def __init__(self, model: CTRModel, ids: np.ndarray, labels: np.ndarray, open_fields, device: str = "cpu"):
        if len(labels) < 2:
            raise LightFMPError(f"{len(labels)} validation row(s): a closed field reads another row's values, so the "
                                f"keep rules need at least 2; give the validation split a larger share (--split)")
        model.eval().to(device)
        self.model, self.n = model, len(labels)
        z = model.gate.deterministic().detach().to(device)
        self.perm = torch.from_numpy(other_rows(self.n)).to(device)
        self.inverse = torch.argsort(self.perm)
        self.chunk = max(1, CHUNK_FLOATS // (model.embedding.num_fields * model.embedding.embed_dim))  # rows
        parts = [model.embedding(torch.from_numpy(ids[i:i + self.chunk]).to(device), z)
                 for i in range(0, self.n, self.chunk)]
        self.emb = torch.cat([e for e, _ in parts])                                      # [N, F, D]
        self.lin = torch.cat([l for _, l in parts]) if parts[0][1] is not None else None  # [N, F] or None
        self.labels = torch.from_numpy(labels.astype(np.float32)).to(device)
        self.open = torch.ones(self.emb.shape[1], dtype=torch.bool)
        for f in set(range(self.emb.shape[1])) - set(open_fields):
            self.toggle(f)
        self.ends = None  # mixed_loss's (own, shuffled) embeddings, built on its first call
        self.first = self._first_layer(model)
        self.pre = self._pre_activation() if self.first is not None else None

    @staticmethod
    def _first_layer(model: CTRModel) -> int | None:
        """The index in `model.deep` of the only layer that reads the flattened embeddings, where there is one."""
        deep = getattr(model, "deep", None)
        if type(model).prune_inputs is not CTRModel.prune_inputs or deep is None:
            return None
        return next((i for i, m in enumerate(deep) if isinstance(m, nn.Linear)), None)

    def _pre_activation(self) -> torch.Tensor:
        layer = self.model.deep[self.first]
        return torch.cat([F.linear(self.emb[i:i + self.chunk].flatten(1), layer.weight, layer.bias)
                          for i in range(0, self.n, self.chunk)])

    def _toggled(self, f: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Field f's block after a toggle: an open field reads row perm[i]; a closed one its own row again."""
        rows = self.perm if self.open[f] else self.inverse
        # gather from a contiguous copy of the column: rows far apart in the state are far apart in memory
        return self.emb[:, f].contiguous()[rows], self.lin[:, f].contiguous()[rows] if self.lin is not None else None

    @contextmanager
    def _trial(self, f: int | None):
        """The state with field f toggled, restored afterwards."""
        if f is None:
            yield None
            return
        old = (self.emb[:, f].clone(), self.lin[:, f].clone() if self.lin is not None else None)
        new = self._toggled(f)
        self.emb[:, f] = new[0]
        if self.lin is not None:
            self.lin[:, f] = new[1]
        try:
            yield old[0]
        finally:
            self.emb[:, f] = old[0]
            if self.lin is not None:
                self.lin[:, f] = old[1]

    @torch.no_grad()
    def losses(self, f: int | None = None) -> np.ndarray:
        """Per-row BCE (float64) of the state, or of the state with field f toggled."""
        out = np.empty(self.n)
        d = self.emb.shape[2]
        with self._trial(f) as old:
            for i in range(0, self.n, self.chunk):
                rows = slice(i, i + self.chunk)
                logits = self._logits(rows, f, old, d)
                out[i:i + self.chunk] = F.binary_cross_entropy_with_logits(logits, self.labels[rows],
                                                                      reduction="none").double().cpu().numpy()
        return out

    def _logits(self, rows: slice, f: int | None, old: torch.Tensor | None, d: int) -> torch.Tensor:
        emb, lin = self.emb[rows], self.lin[rows] if self.lin is not None else None
        if self.first is None:
            return self.model.interact(emb, lin)
        cols = slice(f * d, (f + 1) * d) if f is not None else slice(0, 0)
        layer = self.model.deep[self.first]
        self.model.deep[self.first] = _FirstLayerUpdate(layer, self.pre[rows], cols,
                                                         old[rows] if old is not None else emb[:, :0].flatten(1))
        try:
            return self.model.interact(emb, lin)
        finally:
            self.model.deep[self.first] = layer

    @torch.no_grad()
    def toggle(self, f: int) -> None:
        """Close field f if it is open, open it if closed, for good."""
        new = self._toggled(f)
        change = new[0] - self.emb[:, f]
        if getattr(self, "pre", None) is not None and bool(change.any()):  # a shut gate's block is 0 on every row
            d = self.emb.shape[2]
            self.pre.addmm_(change, self.model.deep[self.first].weight[:, f * d:(f + 1) * d].t())
        self.emb[:, f] = new[0]
        if self.lin is not None:
            self.lin[:, f] = new[1]
        self.open[f] = ~self.open[f]

    def mixed_loss(self, open_share: torch.Tensor) -> torch.Tensor:
        """The mean BCE when field f reads open_share[f] of its own and the rest of the shuffled rows' embedding
        (differentiable in open_share: the substitution gate of ShuffleGate, Huang et al. 2025)."""
        if self.ends is None:  # every field's own and shuffled values, built on the first call: the state is not needed
            with torch.no_grad():
                is_open = self.open.to(self.emb.device)
                values = [torch.where(is_open.view((1, -1) + (1,) * (t.dim() - 2)), t, t[self.inverse])
                          for t in (self.emb, self.lin) if t is not None]
                self.ends = [(x, x[self.perm]) for x in values]
        mixed = [shuf + open_share.view((1, -1) + (1,) * (own.dim() - 2)) * (own - shuf) for own, shuf in self.ends]
        lin = mixed[1] if self.lin is not None else None
        return F.binary_cross_entropy_with_logits(self.model.interact(mixed[0], lin), self.labels)

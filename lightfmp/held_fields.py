"""Dropped fields held at their average: the model a cut leaves, as the keep rules measured it.

Slicing a field out of a trained model (lightfmp.pruning) removes everything it added to the layers that read it,
its average too, so the pruned model's outputs shift; the keep rules measured the model with the field's values
shuffled, which keeps that average (lightfmp.closed_fields). Where the model reads the field embeddings linearly
(the tower's first layer; the first-order terms; DeepFM's FM term, through two sums over fields), a field held at
its mean embedding and first-order term adds constants to those layers and, through the FM term, a linear term in
each other field's embedding. `hold_at_means` folds them into the layers' biases and the kept fields' first-order
rows, so that after the cut the pruned model equals the model with the dropped fields held at their means. It is
checked on the rows the means come from; where the fold does not reproduce the held model (DCNv2's cross layers
read the embeddings multiplicatively; a backbone of one's own may read them in other ways) nothing is folded.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .closed_fields import readers
from .models import CTRModel

MEAN_ROWS = 20_000  # rows the means are taken over: their standard error is then under 1% of a dimension's spread
CHECK_ROWS = 512    # rows the folded model is checked on against the held one
TOLERANCE = 1e-4    # largest logit difference (absolute, and relative to the logit) the check allows: float32 sums


@torch.no_grad()
def field_means(model: CTRModel, ids: np.ndarray, fields: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The mean embedding [C, D] and first-order term [C] (None without them) of `fields` over the rows `ids`
    (float64 sums, returned in the model's dtype)."""
    emb_sum, lin_sum = 0.0, 0.0
    device = model.embedding.weight.device
    for i in range(0, len(ids), 4096):
        emb, lin = model.embedding(torch.from_numpy(np.ascontiguousarray(ids[i:i + 4096])).to(device), None)
        emb_sum = emb_sum + emb[:, fields].double().sum(0)
        lin_sum = lin_sum + lin[:, fields].double().sum(0) if lin is not None else None
    dtype = model.embedding.weight.dtype
    return (emb_sum / len(ids)).to(dtype), (lin_sum / len(ids)).to(dtype) if lin_sum is not None else None


@torch.no_grad()
def hold_at_means(model: CTRModel, ids: np.ndarray, dropped: list[int]) -> CTRModel | None:
    """A copy of the gate-free `model` in which the `dropped` fields (indices), held at their means over the rows
    `ids` (the first MEAN_ROWS), are folded into the layers that read them, ready for `prune_model` to slice them
    out; None where the model cannot be folded so (see the module's notes; `model` is never changed)."""
    if not dropped or model.gate is not None or len(ids) == 0:
        return None
    ids = ids[:MEAN_ROWS]
    means, lin_means = field_means(model, ids, dropped)
    held = copy.deepcopy(model)
    d = held.embedding.embed_dim
    cols = torch.cat([torch.arange(f * d, (f + 1) * d) for f in dropped]).to(means.device)
    layers = [getattr(parent, name) for parent, name in readers(held)]
    if any(layer.bias is None for layer in layers):
        return None
    for layer in layers:
        layer.bias += layer.weight[:, cols] @ means.reshape(-1)
    bias = getattr(held, "bias", None)
    if lin_means is not None or getattr(held, "fm", None) is not None:
        if not isinstance(bias, torch.nn.Parameter) or bias.numel() != 1:
            return None
    if lin_means is not None:
        bias += lin_means.sum()
    if getattr(held, "fm", None) is not None:  # 0.5 (|S + M|^2 - sum |e|^2 - sum |m|^2): S.M and a constant
        emb = held.embedding
        if emb.linear is None:
            return None
        total = means.sum(0)
        bias += 0.5 * (total @ total - (means * means).sum())
        gone = set(dropped)
        kept = [f for f in range(emb.num_fields) if f not in gone]
        rows = torch.cat([torch.arange(int(emb.field_offsets[f]), int(emb.field_offsets[f] + emb.vocab_sizes[f]))
                          for f in kept] or [torch.zeros(0, dtype=torch.long)]).to(emb.weight.device)
        emb.linear[rows] += (emb.weight[rows] @ total)[:, None]
    return held if _reproduces(model, held, ids[:CHECK_ROWS], dropped, means, lin_means) else None


def _reproduces(model: CTRModel, held: CTRModel, ids: np.ndarray, dropped: list[int], means: torch.Tensor,
                lin_means: torch.Tensor | None) -> bool:
    """Whether `held` with the dropped fields read as zeros (what the pruned model computes: pruned == gated with
    their gates at 0) gives `model`'s logits with the dropped fields at their means, on these rows."""
    x = torch.from_numpy(np.ascontiguousarray(ids)).to(model.embedding.weight.device)
    was = model.training, held.training
    model.eval()
    held.eval()
    try:
        emb, lin = model.embedding(x, None)
        emb[:, dropped] = means
        if lin is not None:
            lin[:, dropped] = lin_means
        want = model.interact(emb, lin)
        emb_h, lin_h = held.embedding(x, None)  # the held model's own rows (the FM fold changed first-order rows)
        emb_h[:, dropped] = 0.0
        if lin_h is not None:
            lin_h[:, dropped] = 0.0
        got = held.interact(emb_h, lin_h)
    finally:
        model.train(was[0])
        held.train(was[1])
    return bool(torch.allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE))

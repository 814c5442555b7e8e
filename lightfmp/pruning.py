"""Phase 2: the pruning rule (which fields go) and the structural surgery (slice them out of the model).

The rule ranks fields by log_alpha (the order of the deterministic gate, its saturated ties broken) and keeps
    --keep K          the top K;
    --threshold T     every field whose deterministic gate is >= T;
    neither (default) the fewest top-ranked fields whose validation logloss is within one standard error of the
                      best prefix's (the one-standard-error rule): the phase-1 model is evaluated with only the top
                      k gates open, k = 1..F, on the same validation rows (`keep_curve`).
The kept fields' deterministic gate values are folded into their embedding and first-order rows, so the pruned
model computes exactly what the gated model computes with the dropped fields' gates at zero.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .embedding import FieldEmbedding
from .config import check_range
from .errors import LightFMPError
from .models import CTRModel
from .schema import FeatureSchema


def check_keep(keep: int | None, n_fields: int, flag: str = "--keep") -> None:
    """The one check of a field count K against the data's fields (the config checks K >= 1 before any data)."""
    if keep is not None and not 1 <= keep <= n_fields:
        raise LightFMPError(f"{flag} {keep}: must be between 1 and the number of fields ({n_fields})")


CURVE_ROWS = 100_000  # validation rows the keep curve reads at most: its standard errors shrink as 1 / sqrt(rows)


def ranking(log_alpha: torch.Tensor) -> list[int]:
    """Field indices, most useful first: by log_alpha (the deterministic gate's order), ties in schema order."""
    return sorted(range(len(log_alpha)), key=lambda i: (-float(log_alpha[i]), i))


@torch.no_grad()
def keep_curve(model: CTRModel, names: list[str], ids: np.ndarray, labels: np.ndarray, device: str = "cpu",
               batch_size: int = 8192) -> dict:
    """The gated model's validation logloss with only the top k fields' gates open (the rest at 0), k = 1..F.

    Returns {"order": field names by rank, "logloss": mean per k, "se": standard error of each k's per-row
    difference to the best k} (paired on the same rows, so the noise shared by all k cancels)."""
    model.eval().to(device)
    order = ranking(model.gate.log_alpha.detach().cpu())
    z_all = model.gate.deterministic().detach()
    ids, labels = ids[:CURVE_ROWS], labels[:CURVE_ROWS]
    per_row = np.zeros((len(order), len(labels)))
    for k in range(1, len(order) + 1):
        z = torch.zeros_like(z_all)
        z[order[:k]] = z_all[order[:k]]
        for i in range(0, len(labels), batch_size):
            x = torch.from_numpy(ids[i:i + batch_size]).to(device)
            t = torch.from_numpy(labels[i:i + batch_size].astype(np.float32)).to(device)
            loss = F.binary_cross_entropy_with_logits(model(x, z), t, reduction="none")
            per_row[k - 1, i:i + batch_size] = loss.double().cpu().numpy()
    mean = per_row.mean(axis=1)
    diff = per_row - per_row[int(np.argmin(mean))]
    se = diff.std(axis=1, ddof=1) / np.sqrt(len(labels)) if len(labels) > 1 else np.zeros(len(order))
    return {"order": [names[i] for i in order], "logloss": mean.tolist(), "se": se.tolist(), "rows": len(labels)}


def curve_cut(curve: dict) -> int:
    """The one-standard-error rule: the smallest k whose mean loss is within its standard error of the best."""
    mean, se = np.asarray(curve["logloss"]), np.asarray(curve["se"])
    best = float(mean.min())
    return 1 + next(k for k in range(len(mean)) if mean[k] - best <= se[k])


def select_fields(names: list[str], log_alpha: torch.Tensor, gate_values: torch.Tensor, keep: int | None = None,
                  threshold: float | None = None, curve: dict | None = None) -> list[str]:
    """Top `keep` fields by log_alpha, or every field whose deterministic gate is >= threshold, or (neither given)
    the one-standard-error cut of `curve` (`keep_curve`). Returned in schema order."""
    n = len(names)
    check_keep(keep, n)
    if keep is not None:
        chosen = set(ranking(log_alpha)[:keep])
    elif threshold is None:
        if curve is None:
            raise LightFMPError("the default keep rule needs the validation curve (keep_curve); or give --keep K / "
                                "--threshold T")
        chosen = {names.index(f) for f in curve["order"][:curve_cut(curve)]}
    else:
        check_range("--threshold", threshold, 0.0, 1.0)  # the Python API bypasses the config's check
        chosen = {i for i in range(n) if float(gate_values[i]) >= threshold}
        if not chosen:
            raise LightFMPError(f"no field's gate reached --threshold {threshold} (max gate "
                                f"{float(gate_values.max()):.3f}); lower it or use --keep K")
    return [names[i] for i in range(n) if i in chosen]


def selection_rule(kept: list[str], gate_values: dict[str, float], keep: int | None, threshold: float | None,
                   curve: dict | None = None) -> dict:
    """What `select_fields` compared and where it cut, as metrics.json and `lightfmp inspect` show it."""
    if keep is not None:
        return {"rule": f"top {keep} by deterministic gate (ties by log_alpha)", "score": "gate",
                "cut": min(gate_values[n] for n in kept)}
    if threshold is None:
        out = {"rule": "fewest top fields within one standard error of the best validation logloss", "score": "gate",
               "cut": min(gate_values[n] for n in kept) if kept else None}
        return {**out, "curve": curve} if curve is not None else out
    return {"rule": f"deterministic gate >= {threshold}", "score": "gate", "cut": float(threshold)}


@torch.no_grad()
def prune_model(model: CTRModel, schema: FeatureSchema, kept: list[str],
                gate_values: torch.Tensor | None = None) -> tuple[CTRModel, FeatureSchema]:
    """A new, smaller, gate-free model over `kept` fields, and the schema it reads."""
    if gate_values is None:
        gate_values = model.gate.deterministic() if model.gate is not None else torch.ones(len(schema.fields))
    keep_idx = torch.tensor([schema.names.index(n) for n in kept], dtype=torch.long)
    new_schema = schema.subset(kept)
    old = model.embedding
    new_emb = FieldEmbedding(new_schema, old.embed_dim, linear=old.linear is not None).to(
        device=old.weight.device, dtype=old.weight.dtype)
    # rows of each kept field, scaled by that field's gate
    rows = torch.cat([torch.arange(int(old.field_offsets[i]), int(old.field_offsets[i] + old.vocab_sizes[i]))
                      for i in keep_idx.tolist()])
    row_gate = torch.repeat_interleave(gate_values[keep_idx].to(old.weight.dtype), old.vocab_sizes[keep_idx])
    new_emb.weight.copy_(old.weight[rows] * row_gate[:, None])
    if old.linear is not None:
        new_emb.linear.copy_(old.linear[rows] * row_gate[:, None])

    pruned = copy.deepcopy(model)
    pruned.embedding = new_emb
    pruned.gate = None
    pruned.field_names = list(new_schema.names)
    d = old.embed_dim
    keep_dims = (keep_idx[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
    pruned.prune_inputs(keep_dims)
    return pruned, new_schema

"""Phase 2: the pruning rule (which fields go) and the structural surgery (slice them out of the model).

The kept fields' deterministic gate values are folded into their embedding and first-order rows, so the pruned
model computes exactly what the gated model computes with the dropped fields' gates at zero.
"""
from __future__ import annotations

import copy

import torch

from .embedding import FieldEmbedding
from .config import check_range
from .errors import LightFMPError
from .models import CTRModel
from .schema import FeatureSchema


def check_keep(keep: int | None, n_fields: int, flag: str = "--keep") -> None:
    """The one check of a field count K against the data's fields (the config checks K >= 1 before any data)."""
    if keep is not None and not 1 <= keep <= n_fields:
        raise LightFMPError(f"{flag} {keep}: must be between 1 and the number of fields ({n_fields})")


def select_fields(names: list[str], log_alpha: torch.Tensor, gate_values: torch.Tensor, keep: int | None = None,
                  threshold: float = 0.5) -> list[str]:
    """Top `keep` fields by gate (ties broken by log_alpha, i.e. the gate before clamping), or every field whose
    deterministic gate is >= threshold. Returned in schema order."""
    n = len(names)
    check_keep(keep, n)
    if keep is not None:
        order = sorted(range(n), key=lambda i: (-float(gate_values[i]), -float(log_alpha[i]), i))
        chosen = set(order[:keep])
    else:
        check_range("--threshold", threshold, 0.0, 1.0)  # the Python API bypasses the config's check
        chosen = {i for i in range(n) if float(gate_values[i]) >= threshold}
        if not chosen:
            raise LightFMPError(f"no field's gate reached --threshold {threshold} (max gate "
                                f"{float(gate_values.max()):.3f}); lower it or use --keep K")
    return [names[i] for i in range(n) if i in chosen]


def selection_rule(kept: list[str], gate_values: dict[str, float], keep: int | None, threshold: float) -> dict:
    """What `select_fields` compared and where it cut, as metrics.json and `lightfmp inspect` show it."""
    if keep is not None:
        return {"rule": f"top {keep} by deterministic gate (ties by log_alpha)", "score": "gate",
                "cut": min(gate_values[n] for n in kept)}
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

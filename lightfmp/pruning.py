"""Phase 2, the surgery: slice the dropped fields out of the model (which fields: lightfmp.keep_rule).

The kept fields' deterministic gate values are folded into their embedding and first-order rows, so the pruned
model computes exactly what the gated model computes with the dropped fields' gates at zero.
"""
from __future__ import annotations

import copy

import torch

from .embedding import FieldEmbedding
from .errors import LightFMPError
from .models import CTRModel
from .schema import FeatureSchema


@torch.no_grad()
def prune_model(model: CTRModel, schema: FeatureSchema, kept: list[str],
                gate_values: torch.Tensor | None = None) -> tuple[CTRModel, FeatureSchema]:
    """A new, smaller, gate-free model over `kept` fields, and the schema it reads."""
    if gate_values is None:
        gate_values = model.gate_values()
    unknown = sorted(set(kept) - set(schema.names))
    if unknown or not kept:
        raise LightFMPError(f"pruning: {'no field to keep' if not kept else 'no field named ' + ', '.join(unknown)} "
                            f"(the model's fields: {', '.join(schema.names)})")
    names, wanted = schema.names, set(kept)
    kept = [n for n in names if n in wanted]  # schema order, as schema.subset keeps it
    keep_idx = torch.tensor([i for i, n in enumerate(names) if n in wanted], dtype=torch.long)
    new_schema = schema.subset(kept)
    old = model.embedding
    new_emb = FieldEmbedding(new_schema, old.embed_dim, linear=old.linear is not None).to(
        device=old.weight.device, dtype=old.weight.dtype)
    new_emb.train(old.training)  # a fresh module trains; the copy of the model keeps the model's mode
    new_emb.sparse = old.sparse
    # rows of each kept field, scaled by that field's gate
    rows = torch.cat([torch.arange(int(old.field_offsets[i]), int(old.field_offsets[i] + old.vocab_sizes[i]))
                      for i in keep_idx.tolist()])
    row_gate = torch.repeat_interleave(gate_values.detach().cpu()[keep_idx],
                                       old.vocab_sizes.cpu()[keep_idx]).to(old.weight)  # the weights' device
    new_emb.weight.copy_(old.weight[rows] * row_gate[:, None])
    if old.linear is not None:
        new_emb.linear.copy_(old.linear[rows] * row_gate[:, None])

    pruned = copy.deepcopy(model)
    pruned.embedding = new_emb
    pruned.gate = None
    d = old.embed_dim
    keep_dims = (keep_idx[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
    pruned.prune_inputs(keep_dims)
    return pruned, new_schema

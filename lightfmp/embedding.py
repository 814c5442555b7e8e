"""The shared front end of every backbone: one flat embedding table (pytorch-fm style, per-field row offsets)
plus an optional flat first-order table, looked up through the gated-embedding op.

Encoded rows have one id column ("slot") per categorical / numeric field and `max_len` slots per multi-hot field.
A multi-hot field is mean-pooled: the op's per-sample gate carries gate / count at real ids and 0 at padding,
and a fixed 0/1 pooling matrix sums each field's slots.
"""
from __future__ import annotations

import torch
from torch import nn

from lightfmp.kernels import gated_embedding
from lightfmp.kernels.op import tracing

from .schema import PAD_ID, FeatureSchema


class FieldEmbedding(nn.Module):
    def __init__(self, schema: FeatureSchema, embed_dim: int, linear: bool = False):
        super().__init__()
        sizes = torch.tensor([f.vocab_size for f in schema.fields], dtype=torch.long)
        offsets = torch.cumsum(sizes, 0) - sizes
        slot_field = torch.tensor(schema.slot_field_index(), dtype=torch.long)
        self.num_fields, self.embed_dim = len(schema.fields), embed_dim
        self.register_buffer("vocab_sizes", sizes)
        self.register_buffer("field_offsets", offsets)
        self.register_buffer("slot_field", slot_field)
        self.register_buffer("slot_offsets", offsets[slot_field].clone())
        # each slot's field size, for the OOV read of ids given from outside (not saved: derived from the schema)
        self.register_buffer("slot_vocab", sizes[slot_field].clone(), persistent=False)
        self.multi_hot = any(f.kind == "multi_hot" for f in schema.fields)
        is_multi = torch.tensor([schema.fields[i].kind == "multi_hot" for i in slot_field.tolist()])
        self.register_buffer("slot_is_multi", is_multi)
        pool = torch.zeros(self.num_fields, len(slot_field))
        pool[slot_field, torch.arange(len(slot_field))] = 1.0
        self.register_buffer("pool", pool)
        total = int(sizes.sum())
        self.weight = nn.Parameter(torch.empty(total, embed_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.linear = nn.Parameter(torch.zeros(total, 1)) if linear else None
        self.sparse = False  # set by the training loop (--sparse-embeddings): sparse COO weight gradients

    def table_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.weight, self.linear) if p is not None]

    def slot_scale(self, ids: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor | None:
        """Per-slot multiplier: [S] without multi-hot fields, else [B, S] (gate / count, 0 at padding); None when
        there is nothing to scale (no gates, no multi-hot fields): the lookup is then a plain gather."""
        if gates is None and not self.multi_hot:
            return None
        g = (gates if gates is not None else torch.ones(self.num_fields, device=ids.device)).to(self.weight.dtype)
        g_slot = g[self.slot_field]
        if not self.multi_hot:
            return g_slot
        valid = ((ids != PAD_ID) | ~self.slot_is_multi).to(g.dtype)      # [B, S]
        count = (valid @ self.pool.t()).clamp_min(1.0)                     # [B, F]
        return valid / count[:, self.slot_field] * g_slot

    def forward(self, ids: torch.Tensor, gates: torch.Tensor | None = None):
        """ids [B, S] -> field embeddings [B, F, D] and first-order terms [B, F] (or None)."""
        scale = self.slot_scale(ids, gates)
        # scoring ids given from outside (an eval-mode model): one outside a field's range reads its OOV row, as
        # the exported graph does, not a neighbouring field's rows. Training reads encoded rows, always in range
        vocab = self.slot_vocab if not self.training and not tracing() else None
        emb = gated_embedding(ids, self.weight, self.slot_offsets, scale, vocab_sizes=vocab, sparse_grad=self.sparse)
        lin = gated_embedding(ids, self.linear, self.slot_offsets, scale, vocab_sizes=vocab,
                              sparse_grad=self.sparse).squeeze(-1) if self.linear is not None else None
        if self.multi_hot:
            emb = torch.einsum("bsd,fs->bfd", emb, self.pool)
            lin = lin @ self.pool.t() if lin is not None else None
        return emb, lin

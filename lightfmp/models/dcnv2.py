"""DCNv2 (Wang et al. 2021), parallel form: full-rank cross layers x_{l+1} = x0 * (W_l x_l + b_l) + x_l beside an
MLP, both reading x0 = concatenated embeddings, then one output layer over [cross, deep]."""
import torch
from torch import nn

from .base import CTRModel, check_fits, first_linear, mlp, slice_linear
from .dense import Linear


class DCNv2(CTRModel):
    name = "dcnv2"

    def build(self, num_fields, embed_dim, cfg):
        dim = num_fields * embed_dim
        check_fits(cfg.cross_layers * (dim + 1) * dim, f"--cross-layers {cfg.cross_layers} over {num_fields} fields "
                                                       f"x {embed_dim} dims")
        self.cross = nn.ModuleList(Linear(dim, dim) for _ in range(cfg.cross_layers))
        self.deep = mlp(dim, cfg.hidden, cfg.dropout)
        self.out = Linear(dim + (cfg.hidden[-1] if cfg.hidden else 0), 1)  # over [cross output, deep output]

    def interact(self, emb, lin):
        x0 = emb.flatten(1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        parts = [x, self.deep(x0)] if len(self.deep) else [x]
        return self.out(torch.cat(parts, 1)).squeeze(-1)

    def prune_inputs(self, keep_dims: torch.Tensor) -> None:
        # A dropped field's dims of x0 are zero, so they stay zero through every cross layer: their rows and
        # columns of each W_l, and their columns of the output layer, never change the result.
        dim = self.out.in_features - (self.cfg.hidden[-1] if self.cfg.hidden else 0)
        for i, layer in enumerate(self.cross):
            self.cross[i] = slice_linear(layer, cols=keep_dims, rows=keep_dims)
        if len(self.deep):
            i = first_linear(self.deep)
            self.deep[i] = slice_linear(self.deep[i], cols=keep_dims)
        deep_cols = torch.arange(dim, self.out.in_features)
        self.out = slice_linear(self.out, cols=torch.cat([keep_dims, deep_cols]))

"""Wide & Deep (Cheng et al. 2016): a wide first-order part plus a deep MLP over the embeddings."""
import torch
from torch import nn

from .base import CTRModel


class WideDeep(CTRModel):
    name = "widedeep"
    uses_linear = True

    def build(self, num_fields, embed_dim, cfg):
        self.bias = nn.Parameter(torch.zeros(1))
        self.build_tower(num_fields * embed_dim, cfg)

    def interact(self, emb, lin):
        return lin.sum(1) + self.bias + self.out(self.deep(emb.flatten(1))).squeeze(-1)

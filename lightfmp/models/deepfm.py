"""DeepFM (Guo et al. 2017): first-order terms + FM pairwise interactions + an MLP, sharing one embedding."""
import torch
from torch import nn

from .base import CTRModel


class DeepFM(CTRModel):
    name = "deepfm"
    uses_linear = True

    def build(self, num_fields, embed_dim, cfg):
        self.bias = nn.Parameter(torch.zeros(1))
        self.build_tower(num_fields * embed_dim, cfg)

    def interact(self, emb, lin):
        # FM: 0.5 * sum_d ((sum_f e_fd)^2 - sum_f e_fd^2); pruned fields contribute nothing to either sum
        fm = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1)
        return lin.sum(1) + self.bias + fm + self.out(self.deep(emb.flatten(1))).squeeze(-1)

"""DeepFM (Guo et al. 2017): first-order terms + FM pairwise interactions + an MLP, sharing one embedding."""
import torch
from torch import nn

from .base import CTRModel


class FactorizationMachine(nn.Module):
    """FM's pairwise term (Rendle 2010), 0.5 * sum_d ((sum_f e_fd)^2 - sum_f e_fd^2), from field embeddings
    [B, F, D]. It reads them only through two sums over fields, so a change of one field's block changes it through
    that block's terms of the sums alone (`field_terms`, `from_sums`: lightfmp.closed_fields). Pruned fields
    contribute nothing to either sum."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.from_sums(emb.sum(1), emb.pow(2).sum(1))

    @staticmethod
    def field_terms(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One field's [B, D] block's terms of the two sums."""
        return block, block.pow(2)

    @staticmethod
    def from_sums(total: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
        return 0.5 * (total.pow(2) - squares).sum(1)


class DeepFM(CTRModel):
    name = "deepfm"
    uses_linear = True

    def build(self, num_fields, embed_dim, cfg):
        self.bias = nn.Parameter(torch.zeros(1))
        self.fm = FactorizationMachine()
        self.build_tower(num_fields * embed_dim, cfg)

    def interact(self, emb, lin):
        return lin.sum(1) + self.bias + self.fm(emb) + self.out(self.deep(emb.flatten(1))).squeeze(-1)

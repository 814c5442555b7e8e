"""MLP: concatenated field embeddings through a feed-forward tower."""
from .base import CTRModel


class MLP(CTRModel):
    name = "mlp"

    def build(self, num_fields, embed_dim, cfg):
        self.build_tower(num_fields * embed_dim, cfg)

    def interact(self, emb, lin):
        return self.out(self.deep(emb.flatten(1))).squeeze(-1)

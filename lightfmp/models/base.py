"""What every backbone shares: the gated field-embedding front end and the pruning hook.

A backbone subclass defines `uses_linear`, `build(F, D, cfg)` (its own layers), `interact(emb, lin)` (logit from
field embeddings [B, F, D] and first-order terms [B, F]) and `prune_inputs(keep_dims)` (slice the layers that read
the flattened embeddings). Everything about gates and embedding rows is handled here and in `pruning.py`.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch
from torch import nn

from ..embedding import FieldEmbedding
from ..config import ModelConfig
from ..errors import LightFMPError
from ..gates import GATE_INIT, Gate, HardConcreteGate
from ..schema import FeatureSchema
from .dense import Linear, Tower


class CTRModel(nn.Module):
    name = "base"
    uses_linear = False

    def __init__(self, schema: FeatureSchema, cfg: ModelConfig, gated: bool = False, gate: Gate | None = None):
        """`gate`: the per-field gate module the model trains through (kept as `model.gate`); `gated=True` is short
        for a HardConcreteGate starting at GATE_INIT. Neither: no gate."""
        super().__init__()
        n = len(schema.fields)
        if gated and gate is not None:
            raise LightFMPError("build_model: pass gated=True or a gate module, not both")
        if gate is not None and gate.num_fields != n:
            raise LightFMPError(f"build_model: the gate has {gate.num_fields} fields, the schema {n}")
        self.cfg = cfg
        rows = sum(f.vocab_size for f in schema.fields)
        check_fits(rows * (cfg.embed_dim + self.uses_linear), f"--embed-dim {cfg.embed_dim} over {rows:,} table rows")
        self.embedding = FieldEmbedding(schema, cfg.embed_dim, linear=self.uses_linear)
        self.gate = HardConcreteGate(n, GATE_INIT) if gated else gate
        self.build(n, cfg.embed_dim, cfg)

    # backbone hooks -----------------------------------------------------------------------------------------------
    def build(self, num_fields: int, embed_dim: int, cfg: ModelConfig) -> None:
        raise NotImplementedError

    def interact(self, emb: torch.Tensor, lin: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def build_tower(self, in_dim: int, cfg: ModelConfig) -> None:
        """The MLP tower most backbones end with: `deep` (hidden layers) then `out` (one logit)."""
        self.deep = mlp(in_dim, cfg.hidden, cfg.dropout)
        self.out = Linear(cfg.hidden[-1] if cfg.hidden else in_dim, 1)

    def prune_inputs(self, keep_dims: torch.Tensor) -> None:
        """Keep only input features `keep_dims` of the flattened [F * D] embedding vector. The default serves
        backbones whose only reader of that vector is the tower's first layer."""
        if len(self.deep):
            i = first_linear(self.deep)
            self.deep[i] = slice_linear(self.deep[i], cols=keep_dims)
        else:
            self.out = slice_linear(self.out, cols=keep_dims)

    # shared -------------------------------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B]. `gates` overrides the model's own gate (used to compare pruned vs gated models)."""
        if gates is None and self.gate is not None:
            gates = self.gate()
        emb, lin = self.embedding(ids, gates)
        return self.interact(emb, lin)

    @torch.no_grad()
    def gate_values(self) -> torch.Tensor:
        """The deterministic gate of each field (what pruning folds in and the keep rules read): 1 without a gate."""
        if self.gate is None:
            return torch.ones(self.embedding.num_fields, device=self.embedding.weight.device)
        return self.gate.deterministic().detach()

    def num_params(self) -> int:
        """Parameters that serving needs (the gate is a training-time device)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("gate."))

    def backbone_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("gate.")]


# bytes of this machine's memory a float32 parameter of a new model needs, by the device it trains on: on the CPU its
# weight, gradient and Adam's two moments; on a GPU only the weight, built here before it moves
HOST_BYTES = {"cpu": 16, "cuda": 4}
_trains_on: contextvars.ContextVar[str | None] = contextvars.ContextVar("trains_on", default=None)


@contextlib.contextmanager
def training_on(device: str | None):
    """Within it, `check_fits` holds a new model's parts to what training on `device` needs (None: no check, for a
    model loaded from a run, whose size its files already bound)."""
    token = _trains_on.set(device)
    try:
        yield
    finally:
        _trains_on.reset(token)


def check_fits(params: int, what: str) -> None:
    """Refuse a model part whose `params` parameters need more than this machine's memory to train, before a loop
    builds its layers one by one (many small layers allocate for minutes before memory runs out)."""
    device = _trains_on.get()
    if device is None:
        return
    per = HOST_BYTES["cpu" if device == "cpu" else "cuda"]
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf here: leave it to the allocator
        return
    if params * per > memory:
        held = "weights, gradients, Adam's moments" if per == HOST_BYTES["cpu"] else "the weights, before the GPU"
        raise LightFMPError(f"{what}: {params:,} parameters, {params * per / 2**30:,.1f} GiB to train ({held}), more "
                            f"than this machine's {memory / 2**30:,.1f} GiB of memory")


def mlp(in_dim: int, hidden: list[int], dropout: float) -> Tower:
    sizes = [in_dim] + list(hidden)
    shown = ",".join(map(str, hidden[:8])) + (f",... ({len(hidden)} layers)" if len(hidden) > 8 else "")
    check_fits(sum((a + 1) * b for a, b in zip(sizes, sizes[1:])), f"--hidden {shown} over {in_dim:,} inputs")
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [Linear(in_dim, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = h
    return Tower(*layers)


def slice_linear(layer: nn.Linear, cols: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Linear:
    """A smaller copy of `layer` reading only input columns `cols` and producing only outputs `rows`."""
    w = layer.weight.data
    b = layer.bias.data if layer.bias is not None else None
    if cols is not None:
        w = w[:, cols]
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    new = Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)  # where the model is
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def first_linear(seq: nn.Sequential) -> int:
    for i, m in enumerate(seq):
        if isinstance(m, nn.Linear):
            return i
    raise ValueError("no Linear layer")

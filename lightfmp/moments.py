"""The weight optimizers' state (Adam's moments), carried from phase 1 through phase 3 as one optimisation.

A `--no-select` run trains with one Adam from start to end. Light-FMP's phases are separate fits; were each to start
a fresh Adam, its first steps would move every weight by about the learning rate whatever its gradient (the bias
correction of empty moments), twice in phase 3 (docs/selection.md, variants 29 and 32). So a fit given a `Carry`
starts its weight optimizers from the carried state and leaves its own final state there; phase 1's is stored in
the run (`pretrain_optimizer.safetensors`), so `lightfmp prune` continues a run exactly as `lightfmp run` does; and
where pruning slices the weights, `prune_moments` slices the moments the same way (the same surgery on copies of
the model holding them; a kept field's rows scaled by 1 / gate, squared for the second moment, since the pruned
weight is the gated one times its gate).

The state is kept by parameter name: {name: {"step": scalar, "exp_avg": tensor, "exp_avg_sq": tensor}}.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .models import CTRModel
from .pruning import prune_model
from .schema import FeatureSchema

FILE = "pretrain_optimizer.safetensors"
MOMENTS = {"exp_avg": 1, "exp_avg_sq": 2}  # per moment, the power of the gate its rows are divided by
SEP = "|"  # parameter name | state key, in the stored file (parameter names hold dots)


@dataclass
class Carry:
    """What one fit hands the next: its weight optimizers' final state by parameter name (None: none yet)."""
    state: dict[str, dict[str, torch.Tensor]] | None = None


def _names(model: CTRModel) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def named_state(model: CTRModel, optimizers: list[torch.optim.Optimizer]) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizers' per-parameter state by the parameter's name in `model` (step as a float64 scalar)."""
    names, out = _names(model), {}
    for opt in optimizers:
        for p in opt.param_groups[0]["params"]:
            st = opt.state.get(p)
            if st:
                out[names[id(p)]] = {"step": torch.as_tensor(float(st["step"]), dtype=torch.float64),
                                     **{k: st[k].detach().clone() for k in MOMENTS}}
    return out


def load_named_state(model: CTRModel, optimizers: list[torch.optim.Optimizer],
                     state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Start the optimizers from `state` (parameters it does not name start fresh)."""
    names = _names(model)
    for opt in optimizers:
        sd = opt.state_dict()
        sparse = isinstance(opt, torch.optim.SparseAdam)  # its step is an int, Adam's a float32 scalar tensor
        for i, p in enumerate(opt.param_groups[0]["params"]):
            st = state.get(names[id(p)])
            if st is not None:
                step = int(st["step"]) if sparse else st["step"].to(torch.float32)
                sd["state"][i] = {"step": step, **{k: st[k].to(p.device, p.dtype) for k in MOMENTS}}
        opt.load_state_dict(sd)


@torch.no_grad()
def prune_moments(model: CTRModel, schema: FeatureSchema, kept: list[str], gate_values: torch.Tensor | None,
                  state: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """`state` (of `model`'s parameters) cut as `prune_model(model, schema, kept, gate_values)` cuts the weights."""
    z = (model.gate_values() if gate_values is None else gate_values).cpu()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, power in MOMENTS.items():
        holder = copy.deepcopy(model)
        for n, p in holder.named_parameters():
            p.copy_(state[n][key] if n in state else torch.zeros_like(p))
        scale = torch.where(z > 0, 1.0 / z.clamp_min(1e-12), torch.ones_like(z)) ** power
        pruned, _ = prune_model(holder, schema, kept, scale)
        for n, p in pruned.named_parameters():
            if n in state:
                out.setdefault(n, {"step": state[n]["step"].clone()})[key] = p.detach().clone()
    return out


def flatten(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """For a safetensors file."""
    return {f"{n}{SEP}{k}": v.detach().cpu().contiguous() for n, st in state.items() for k, v in st.items()}


def unflatten(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        n, k = key.rsplit(SEP, 1)
        out.setdefault(n, {})[k] = v
    return out

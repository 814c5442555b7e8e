"""The final model of a model-selecting fit without gates: the mean of the weights of its tied epochs.

An epoch is tied when its per-row validation logloss is not worse than the lowest epoch's beyond noise (more than
two standard errors of the per-row difference, `metrics.worse_beyond_noise`, the test early stopping uses): the
validation rows cannot tell those epochs apart, so the single best of them by AUC is partly chosen by noise. Their
mean, one trajectory's stochastic weight average (Izmailov et al. 2018), averages the noise of the last steps out of
the weights instead. `fit` uses it where it is not itself measurably worse than the lowest epoch, else the best
epoch, and says which in its history (`averaged`).

    tie            after an epoch is validated: the tied set, updated
    copies_allowed how many epochs' weights the memory budget holds
    mean_weights   the element-wise mean of the tied epochs' weights
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import distributed as dist
from .metrics import worse_beyond_noise

# the tied set, as the training state keeps it: epoch (0-based; -1 the model a fit was given) -> (weights, per-row
# validation losses)
Tied = dict[int, tuple[dict, np.ndarray]]


def tie(tied: Tied, epoch: int, losses: np.ndarray, least: np.ndarray, limit: int,
        snapshot: Callable[[], dict]) -> Tied:
    """The tied set after epoch `epoch` (its per-row validation `losses`; `snapshot()` copies its weights, called
    only where it joins), against `least`, the per-row losses of the lowest-logloss epoch so far: the epochs not
    measurably worse than it, this one included where it is, at most `limit` of them (the highest mean logloss
    dropped first). An epoch once measurably worse than the lowest never returns. Every rank takes rank 0's
    decisions (their arrays are identical; the last bits of their logs and means need not be)."""
    kept = {e: entry for e, entry in sorted(tied.items())
            if dist.broadcast_int(not worse_beyond_noise(entry[1], least))}
    if dist.broadcast_int(_finite(losses) and not worse_beyond_noise(losses, least)):
        kept[epoch] = (None, losses)  # its weights are copied below, only if it stays
    while len(kept) > max(int(limit), 1):
        del kept[dist.broadcast_int(max(kept, key=lambda e: (float(np.mean(kept[e][1])), e)))]
    if epoch in kept:
        kept[epoch] = (snapshot(), losses)
    return kept


def _finite(losses: np.ndarray) -> bool:
    return len(losses) > 0 and bool(np.isfinite(np.mean(losses)))


def copies_allowed(model: torch.nn.Module, budget_bytes: int) -> int:
    """Epochs' weights a budget of `budget_bytes` of host memory holds (a fit averages only where it holds two)."""
    size = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    return int(budget_bytes) // max(size, 1)


def mean_weights(tied: Tied) -> dict:
    """The element-wise mean of the tied epochs' weights, summed in float64 in epoch order in host memory (where the
    fit keeps them, and where a checkpoint's are read); a tensor that is not floating point (a counter) is the last
    tied epoch's."""
    states = [tied[e][0] for e in sorted(tied)]
    out = {}
    for name, last in states[-1].items():
        if torch.is_floating_point(last):
            total = torch.zeros(last.shape, dtype=torch.float64)
            for s in states:
                total += s[name].to("cpu", torch.float64)
            out[name] = (total / len(states)).to(last.dtype)
        else:
            out[name] = last.clone()
    return out

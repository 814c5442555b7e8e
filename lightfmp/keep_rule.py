"""Phase 2, the rule: which fields a run keeps.

The fields are ordered by greedy forward selection on the phase-1 model (`forward_order`: starting from no open
field, open the field that lowers the validation logloss most; a closed field reads another row's values), and the
run keeps
    --keep K          the first K;
    neither (default) the fewest first fields whose validation logloss is within one standard error of the best
                      k's (the one-standard-error rule; `keep_curve` measures the loss along the order), then of
                      those, each whose closing raises the loss by at least two standard errors (`backward_sweep`);
    --threshold T     (instead) every field whose deterministic gate is >= T.
`selection_rule` is what metrics.json and `lightfmp inspect` show of it. The surgery: lightfmp.pruning.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import check_range
from .errors import LightFMPError
from .models import CTRModel
from .schema import FeatureSchema


def check_keep(keep: int | None, n_fields: int, flag: str = "--keep") -> None:
    """The one check of a field count K against the data's fields (the config checks K >= 1 before any data)."""
    if keep is not None and not 1 <= keep <= n_fields:
        raise LightFMPError(f"{flag} {keep}: must be between 1 and the number of fields ({n_fields})")


SEARCH_ROWS = 4096    # validation rows the forward search compares candidates on (the same rows for every candidate)
EXACT_CANDIDATES = 12  # up to this many closed fields, a search step evaluates every one of them exactly ...
SCREENED = 4           # ... beyond it, only the 4 whose first-order (gradient) estimate promises the most
CURVE_ROWS = 100_000  # validation rows the keep curve reads at most: its standard errors shrink as 1 / sqrt(rows)


def ranking(log_alpha: torch.Tensor) -> list[int]:
    """Field indices by log_alpha (the deterministic gate's order), ties in schema order."""
    return sorted(range(len(log_alpha)), key=lambda i: (-float(log_alpha[i]), i))


@torch.no_grad()
def row_losses(model: CTRModel, ids: np.ndarray, labels: np.ndarray, open_fields: list[int],
               slots: list[tuple[int, int]], device: str = "cpu", batch_size: int = 8192) -> np.ndarray:
    """Per-row BCE of the gated model (deterministic gates) when every field not in `open_fields` reads another
    row's values (one fixed permutation of the rows; `slots`: each field's id columns). A field closed this way
    carries no information about the row but keeps its values' distribution, so a field the model does not use
    costs nothing to close, whatever its embedding's scale (setting its gate to 0 would shift the model's input)."""
    model.eval().to(device)
    z = model.gate.deterministic().detach()
    is_open = set(open_fields)
    closed = [c for f in range(len(slots)) if f not in is_open for c in range(*slots[f])]
    x_all = ids.copy()
    if closed:
        perm = np.random.default_rng(0).permutation(len(labels))
        x_all[:, closed] = ids[perm][:, closed]
    out = np.zeros(len(labels))
    for i in range(0, len(labels), batch_size):
        x = torch.from_numpy(x_all[i:i + batch_size]).to(device)
        t = torch.from_numpy(labels[i:i + batch_size].astype(np.float32)).to(device)
        out[i:i + batch_size] = F.binary_cross_entropy_with_logits(model(x, z), t, reduction="none").double().cpu()
    return out


def forward_order(model: CTRModel, ids: np.ndarray, labels: np.ndarray, slots: list[tuple[int, int]],
                  device: str = "cpu", steps: int | None = None) -> list[int]:
    """Greedy forward selection on the phase-1 model: starting with every field closed (`row_losses`), each step
    opens the field that lowers the mean logloss on these rows most (ties in schema order). A redundant copy of an
    open field lowers it little, so it comes late. After `steps` steps the rest follow by log_alpha.

    The field embeddings of the rows and of the permuted rows are looked up once; each candidate only mixes them
    and runs the backbone's interaction (what `row_losses` computes, without a lookup per candidate). With more
    than EXACT_CANDIDATES closed fields a step first screens them by the gradient of the loss with respect to each
    field's share of real vs shuffled embedding (one backward pass; the substitution gate of ShuffleGate, Huang et
    al. 2025) and evaluates only the SCREENED most promising exactly: O(F) passes instead of O(F^2)."""
    model.eval().to(device)
    n = model.gate.num_fields
    z = model.gate.deterministic().detach()
    perm = np.random.default_rng(0).permutation(len(labels))
    with torch.no_grad():
        real = model.embedding(torch.from_numpy(ids).to(device), z)
        shuffled = model.embedding(torch.from_numpy(ids[perm]).to(device), z)
    t = torch.from_numpy(labels.astype(np.float32)).to(device)

    def mixed(open_share: torch.Tensor) -> torch.Tensor:
        """The mean BCE when field f reads open_share[f] of its real and the rest of its shuffled embedding."""
        emb = shuffled[0] + open_share[None, :, None] * (real[0] - shuffled[0])
        lin = shuffled[1] + open_share[None, :] * (real[1] - shuffled[1]) if real[1] is not None else None
        return F.binary_cross_entropy_with_logits(model.interact(emb, lin), t)

    @torch.no_grad()
    def loss(open_fields: list[int]) -> float:
        m = torch.zeros(n, dtype=torch.bool, device=device)
        m[open_fields] = True
        emb = torch.where(m[None, :, None], real[0], shuffled[0])
        lin = torch.where(m[None, :], real[1], shuffled[1]) if real[1] is not None else None
        return float(F.binary_cross_entropy_with_logits(model.interact(emb, lin), t))

    chosen: list[int] = []
    rest = list(range(n))
    while rest and (steps is None or len(chosen) < steps):
        candidates = rest
        if len(rest) > EXACT_CANDIDATES:
            # screen: the first-order loss change of opening each closed field (one backward through the mix),
            # then the SCREENED most promising are evaluated exactly
            m = torch.zeros(n, device=device)
            m[chosen] = 1.0
            m.requires_grad_(True)
            (grad,) = torch.autograd.grad(mixed(m), m)
            candidates = sorted(rest, key=lambda f: (float(grad[f]), f))[:SCREENED]
        losses = {f: loss(chosen + [f]) for f in candidates}
        best = min(candidates, key=lambda f: (losses[f], f))
        chosen.append(best)
        rest.remove(best)
    la = model.gate.log_alpha.detach().cpu()
    return chosen + [i for i in ranking(la) if i in rest]


def keep_curve(model: CTRModel, schema: FeatureSchema, ids: np.ndarray, labels: np.ndarray, device: str = "cpu",
               steps: int | None = None) -> dict:
    """The forward order (`forward_order` on the first SEARCH_ROWS rows), and along it the validation logloss of
    the phase-1 model with the first k fields' gates open, k = 1..F, on up to CURVE_ROWS rows.

    Returns {"order": field names, "logloss": mean per k, "se": standard error of each k's per-row difference to
    the best k} (paired on the same rows, so the noise shared by all k cancels). With `steps` (a --keep K run)
    only the order's first `steps` are searched and no curve is measured."""
    names, ranges = schema.names, schema.field_slot_ranges()
    slots = [ranges[n] for n in names]
    order = forward_order(model, ids[:SEARCH_ROWS], labels[:SEARCH_ROWS], slots, device, steps)
    out = {"order": [names[i] for i in order]}
    if steps is not None:
        return out
    ids, labels = ids[:CURVE_ROWS], labels[:CURVE_ROWS]
    per_row = np.stack([row_losses(model, ids, labels, order[:k], slots, device) for k in range(1, len(order) + 1)])
    mean = per_row.mean(axis=1)
    diff = per_row - per_row[int(np.argmin(mean))]
    se = diff.std(axis=1, ddof=1) / np.sqrt(len(labels)) if len(labels) > 1 else np.zeros(len(order))
    curve = {**out, "logloss": mean.tolist(), "se": se.tolist(), "rows": len(labels)}
    k = curve_cut(curve)
    kept = backward_sweep(model, ids, labels, order[:k], slots, device, per_row[k - 1])
    return {**curve, "cut": k, "kept": [names[i] for i in kept]}


def backward_sweep(model: CTRModel, ids: np.ndarray, labels: np.ndarray, kept: list[int],
                   slots: list[tuple[int, int]], device: str = "cpu", losses: np.ndarray | None = None) -> list[int]:
    """Each kept field in turn, the last opened first, is closed for good unless closing it raises the mean
    logloss by at least two standard errors of the per-row difference (a one-sided test at about 2.5%). A field
    that only looked useful by the order it was opened in (a noise field opened among redundant copies) goes; a
    redundant copy the model reads stays."""
    kept = list(kept)
    base = row_losses(model, ids, labels, kept, slots, device) if losses is None else losses
    for f in reversed(list(kept)):
        if len(kept) == 1:
            break
        trial = [g for g in kept if g != f]
        loss = row_losses(model, ids, labels, trial, slots, device)
        d = loss - base
        if len(d) < 2 or d.mean() < 2 * d.std(ddof=1) / np.sqrt(len(d)):
            kept, base = trial, loss
    return kept


def curve_cut(curve: dict) -> int:
    """The one-standard-error rule: the smallest k whose mean loss is within its standard error of the best."""
    mean, se = np.asarray(curve["logloss"]), np.asarray(curve["se"])
    best = float(mean.min())
    return 1 + next(k for k in range(len(mean)) if mean[k] - best <= se[k])


def select_fields(names: list[str], log_alpha: torch.Tensor, gate_values: torch.Tensor, keep: int | None = None,
                  threshold: float | None = None, curve: dict | None = None) -> list[str]:
    """The first `keep` fields of `curve["order"]` (the forward order; by log_alpha without a curve), or every
    field whose deterministic gate is >= threshold, or (neither given) the one-standard-error cut of `curve`
    (`keep_curve`). Returned in schema order."""
    n = len(names)
    check_keep(keep, n)
    if keep is not None:
        chosen = {names.index(f) for f in curve["order"][:keep]} if curve is not None \
            else set(ranking(log_alpha)[:keep])
    elif threshold is None:
        if curve is None:
            raise LightFMPError("the default keep rule needs the validation curve (keep_curve); or give --keep K / "
                                "--threshold T")
        chosen = {names.index(f) for f in curve.get("kept", curve["order"][:curve_cut(curve)])}
    else:
        check_range("--threshold", threshold, 0.0, 1.0)  # the Python API bypasses the config's check
        chosen = {i for i in range(n) if float(gate_values[i]) >= threshold}
        if not chosen:
            raise LightFMPError(f"no field's gate reached --threshold {threshold} (max gate "
                                f"{float(gate_values.max()):.3f}); lower it or use --keep K")
    return [names[i] for i in range(n) if i in chosen]


def selection_rule(kept: list[str], gate_values: dict[str, float], keep: int | None, threshold: float | None,
                   curve: dict | None = None) -> dict:
    """What `select_fields` compared and where it cut, as metrics.json and `lightfmp inspect` show it. Rules that
    do not cut on the gate axis have `cut` None."""
    if keep is not None and curve is not None:
        return {"rule": f"first {keep} of the forward order on the validation rows", "score": "forward order",
                "cut": None, "curve": curve}
    if keep is not None:
        return {"rule": f"top {keep} by deterministic gate (ties by log_alpha)", "score": "gate",
                "cut": min(gate_values[n] for n in kept)}
    if threshold is None:
        out = {"rule": "fewest fields of the forward order within one standard error of the best validation logloss, "
                       "then those whose closing costs at least two standard errors", "score": "forward order",
               "cut": None}
        return {**out, "curve": curve} if curve is not None else out
    return {"rule": f"deterministic gate >= {threshold}", "score": "gate", "cut": float(threshold)}

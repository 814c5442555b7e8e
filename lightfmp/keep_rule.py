"""Phase 2, the rule: which fields a run keeps.

    --keep K          the first K of the forward order: greedy forward selection on the phase-1 model
                      (`forward_order`: starting from no open field, open the field that lowers the validation
                      logloss most, each label's rows weighing the same, on `search_rows`: every row of the rarer
                      label and as many of the other's, up to SEARCH_ROWS; a closed field reads another row's
                      values), or, where it is
                      measurably better on held-out validation rows (`held_out_rows`), the K fields whose closing
                      from every field open costs most (`costliest_set`: it sees fields that matter only together);
    neither (default) the closing test: every field open, then in the gates' order, least open first, each field
                      is closed for good unless closing it raises the validation logloss (measured on every row of
                      the rarer label and as many of the other's, each label's rows weighing the same:
                      `lightfmp.closed_fields.measured_sample`, `by_label`) by more than two standard errors, on its
                      own or with the fields closed before it (`closing_test`);
    --threshold T     (instead) every field whose deterministic gate is >= T.
The first two decide on the model after phase 3's first epoch (lightfmp.pipeline): the fields whose gate phase 1
shut go first, that epoch reads every other field on every row phase 1 did not use, and the rule runs on it (on
the phase-1 model where phase 3 has fewer than two epochs); the subset's model cannot tell weak fields from noise.
Under --keep K the search never opens two fields that are copies of each other on the validation rows, nor a field
and a coarser function it is dense enough to stand for, and opens such a finer field in place of its coarser
function (lightfmp.groupings); only where K exceeds the fields left to open do the last places go to such copies
and functions, by gate. The closing test has no budget and keeps both copies where the model uses both.
`selection_rule` is what metrics.json and `lightfmp inspect` show of it. The surgery: lightfmp.pruning.
"""
from __future__ import annotations

import numpy as np
import torch

from . import distributed as dist
from .closed_fields import ClosedFields, by_label, donor_rows, measured, state_rows
from .config import check_range
from .errors import LightFMPError
from .groupings import Groupings
from .metrics import SIGNIFICANT_SE, paired_difference, worse_beyond_noise
from .models import CTRModel
from .progressive import SweepCosts, pooled
from .schema import FeatureSchema


def check_keep(keep: int | None, n_fields: int, flag: str = "--keep") -> None:
    """The one check of a field count K against the data's fields (the config checks K >= 1 before any data)."""
    if keep is not None and not 1 <= keep <= n_fields:
        raise LightFMPError(f"{flag} {keep}: must be between 1 and the number of fields ({n_fields})")


SEARCH_ROWS = 4096    # validation rows the forward search compares candidates on (the same rows for every candidate;
                      # `search_rows` picks them)
EXACT_CANDIDATES = 12  # up to this many closed fields, a search step evaluates every one of them exactly ...
SCREENED = 4           # ... beyond it, only the 4 whose first-order (gradient) estimate promises the most
TEST_ROWS = 100_000    # validation rows the default rule's closing test reads at most (it measures those of them
                       # `measured_sample` takes; with the first epoch's rows it pools, rows measured in all:
                       # lightfmp.progressive): its standard errors shrink
                       # as 1 / sqrt(rows); and at most the rows whose embeddings its passes hold in memory
                       # (`closed_fields.state_rows`: 55,924 at 300 fields x 16 dims), but never fewer than
                       # SEARCH_ROWS (those, if the memory holds fewer, through the slower ids state)


def check_rule_rows(labels: np.ndarray, keep: int | None, threshold: float | None, n_fields: int,
                    keep_flag: str = "--keep", split_kind: str = "hash", model: CTRModel | None = None) -> None:
    """The default rule and --keep K compare fields by the validation rows' logloss (the first rows: for --keep K
    TEST_ROWS, for the default rule `closing_rows` of `model`, TEST_ROWS where none is given), and rows of one class
    cannot show that any field is needed (each would close, or the order would be chance): refused, naming what
    gives both classes. --threshold T reads the gates alone; a rule that keeps every field compares nothing."""
    rows = closing_rows(model) if keep is None and model is not None else TEST_ROWS
    read, labels = len(labels) > rows, labels[:rows]
    if threshold is not None or len(labels) == 0 or labels.min() != labels.max() \
            or n_fields <= (keep if keep is not None else 1):
        return
    rule = f"{keep_flag} {keep}" if keep is not None else "the default keep rule"
    raise LightFMPError(f"every validation row{f' of the first {rows:,} (those the rule reads)' if read else ''} "
                        f"has label {int(labels[0])}: {rule} compares fields on the "
                        f"validation rows and cannot tell a needed field without both classes; a larger validation "
                        f"share (--split){other_seed(split_kind)} gives both; --threshold T or --no-select needs "
                        f"neither")


def other_seed(split_kind: str) -> str:
    """The advice " or another --seed" where the seed moves rows between splits (a hash split), else nothing: a
    --time-column split is by rank whatever the seed."""
    return "" if split_kind == "time" else " or another --seed"


def ranking(log_alpha: torch.Tensor) -> list[int]:
    """Field indices by log_alpha (the deterministic gate's order), ties in schema order."""
    return sorted(range(len(log_alpha)), key=lambda i: (-float(log_alpha[i]), i))


def open_after_phase1(log_alpha: torch.Tensor, gate_values: torch.Tensor, keep: int | None = None) -> list[int]:
    """Phase 2's first step where the rule decides after phase 3's first epoch: the fields whose gate phase 1 did
    not shut (the model reads nothing of a shut one), in the gates' order, most open first; where fewer than
    `keep` (or 1) are open, the `keep` (or 1) most open."""
    order = ranking(log_alpha)
    opened = [i for i in order if float(gate_values[i]) > 0]
    return opened if len(opened) >= (keep or 1) else order[:keep or 1]


def spread(n: int, k: int) -> np.ndarray:
    """min(n, k) of the indices 0..n-1, spread evenly (ascending)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def search_rows(labels: np.ndarray, n: int = SEARCH_ROWS) -> np.ndarray:
    """The rows (indices, ascending) the forward search reads: every row where there are at most n; else of the
    rarest label every row up to n / 2 and as many of each other label's, each label's rows spread evenly over the
    rows given. The search weighs each label's rows the same in total (`closed_fields.by_label`), as the closing
    test does, so the other label's rows beyond the rarer's count would buy little (`closed_fields.measured_rows`:
    a closed field moves a row's logloss by about 1 - pi on the rarer label's rows and pi on the other's); at 1%
    positives, n rows taken in order would hold ~n / 100 of the rarer label's."""
    labels = np.asarray(labels)
    if len(labels) <= n:
        return np.arange(len(labels))
    classes = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    return _alike(classes, n // len(classes))


def _alike(classes: list[np.ndarray], most: int) -> np.ndarray:
    """Of each label's rows (`classes`: positions, ascending) as many as the fewest label has, at most `most`,
    spread evenly over that label's rows; ascending."""
    each = min(min(map(len, classes)), most)
    return np.sort(np.concatenate([rows[spread(len(rows), each)] for rows in classes]))


def forward_order(model: CTRModel, ids: np.ndarray, labels: np.ndarray, device: str = "cpu",
                  steps: int | None = None, groupings: Groupings | None = None, swaps: dict[int, int] | None = None,
                  shadowed_by: dict[int, tuple[int, str]] | None = None, order: list[int] | None = None,
                  weights: np.ndarray | None = None, donors: np.ndarray | None = None) -> list[int]:
    """Greedy forward selection on the phase-1 model: starting with every field closed (`ClosedFields`), each step
    opens the field that lowers the mean logloss on these rows most (ties in schema order). A redundant field lowers
    it less once the field it repeats is open, so it comes late. After `steps` steps, or once every field whose gate
    is open is, the rest follow by log_alpha.

    With `groupings` (`lightfmp.groupings`), the copies of an opened field and the coarser fields it stands for
    (`Groupings.stands_for`: the zip code of an opened user id) are no longer candidates, and come last: they carry
    nothing the opened field does not (the phase-1 model, which split its weight between the two, would still value
    them). A step that picks a field
    which is a function of a closed field opens that finer field instead (of several, the one lowering the loss
    most; again while that one is a function of a still finer closed field, so that no opened field is a function of
    another, whichever opens first) and records the swap in `swaps` (picked field -> opened field): the finer field
    carries everything the picked one does, and the phase-1 model undervalues it, having seen each of its values in
    a subset of the rows only (the final model reads ~10x more); the fields passed over leave the candidates as its
    functions. Both only where the finer field is dense enough to stand for the coarser (`Groupings.stands_for`).
    `shadowed_by` receives, per field that left the candidates so, (the opened field, "copy" or "function").

    With more than EXACT_CANDIDATES closed fields a step first screens them by the gradient of the loss with respect
    to each field's share of real vs shuffled embedding (one backward pass; the substitution gate of ShuffleGate,
    Huang et al. 2025) and evaluates only the SCREENED most promising exactly: O(F) passes instead of O(F^2).
    `order`: the gates' order (most open first; default `model`'s own gates) the fields after `steps` follow;
    `weights`: per-row weights of the mean logloss (`keep_order`: each label's rows the same in total, `by_label`);
    `donors`: the ids of the rows closed fields read, one per row (`ClosedFields`)."""
    passes = ClosedFields(model, ids, labels, [], device, weights, donors=donors)
    n = model.embedding.num_fields
    chosen: list[int] = []
    rest, shadowed = list(range(n)), []
    copied = groupings.copies() if groupings is not None else {}
    z = model.gate_values().cpu()
    while rest and (steps is None or len(chosen) < steps):
        # a field whose gate phase 1 shut is no candidate: the model reads nothing of it (opening it would change
        # nothing, and the tie would fall to schema order); such fields follow by log_alpha
        candidates = [f for f in rest if float(z[f]) > 0.0]
        if not candidates:
            break
        if len(candidates) > EXACT_CANDIDATES:
            # screen: the first-order loss change of opening each closed field (`ClosedFields.screen`: one
            # backward pass), then the SCREENED most promising are evaluated exactly
            grad = passes.screen().tolist()
            candidates = sorted(candidates, key=lambda f: (grad[f], f))[:SCREENED]
        losses = {f: float(passes.losses(f).mean()) for f in candidates}
        best = min(candidates, key=lambda f: (losses[f], f))
        passed_over = []  # the picked field and any finer field swapped in on the way: each is a function of the next
        while groupings is not None:  # the finer field swapped in may itself be a function of a still finer closed
            finer = [a for a in rest if groupings.stands_for(best, a)]  # field (a > b > c): swap until it is not
            if not finer:
                break
            for a in finer:
                if a not in losses:
                    losses[a] = float(passes.losses(a).mean())
            passed_over.append(best)
            best = min(finer, key=lambda f: (losses[f], f))  # strictly more distinct values each time: it ends
        if passed_over and swaps is not None:
            swaps[passed_over[0]] = best
        passes.toggle(best)
        chosen.append(best)
        rest.remove(best)
        coarser = [g for g in rest if g in passed_over or groupings.stands_for(g, best)] \
            if groupings is not None else []  # a passed-over field is a function of best (each link is one)
        for g, kind in [(g, "copy") for g in copied.get(best, [])] + [(g, "function") for g in coarser]:
            if g in rest:
                rest.remove(g)
                shadowed.append(g)
                if shadowed_by is not None:
                    shadowed_by[g] = (best, kind)
    la = ranking(model.gate.log_alpha.detach().cpu()) if order is None else order
    left, passed = set(rest), set(shadowed)
    return chosen + [i for i in la if i in left] + [i for i in la if i in passed]


def costliest_set(model: CTRModel, ids: np.ndarray, labels: np.ndarray, k: int, device: str = "cpu",
                  groupings: Groupings | None = None, weights: np.ndarray | None = None,
                  donors: np.ndarray | None = None) -> list[int]:
    """The K fields whose closing, from every field open, raises the mean logloss on these rows most (`weights`,
    `donors`: as in `forward_order`), most costly first (the places the rule below leaves are filled last)
    (ties in schema order): what the model loses without each field where every other field is there, so a field
    that matters only together with another (a pair whose values drive the label jointly, neither alone) counts,
    where `forward_order` cannot see it (opening one of the pair while the other is closed gains nothing). Under the
    same rule as the forward order's K: a copy or a coarser function of a field already in the set is passed over, and
    a coarser function in the set gives way to a finer field that comes later (`Groupings.stands_for`)."""
    passes = ClosedFields(model, ids, labels, list(range(model.embedding.num_fields)), device, weights, donors=donors)
    base = passes.losses().mean()
    cost = {f: float(passes.losses(f).mean() - base) for f in range(model.embedding.num_fields)}
    copied = groupings.copies() if groupings is not None else {}
    z = model.gate_values().cpu()
    la = ranking(model.gate.log_alpha.detach().cpu()) if model.gate is not None else list(range(len(z)))
    # a shut gate's field costs exactly 0 to close (the model reads nothing of it): after every open field, by log_alpha
    place = {f: i for i, f in enumerate(la)}
    by_cost = sorted(cost, key=lambda f: (float(z[f]) == 0.0, -cost[f] if float(z[f]) > 0.0 else place[f], f))
    chosen: list[int] = []
    for f in by_cost:
        if len(chosen) == k:
            break
        if groupings is not None and any(f in copied.get(c, []) or groupings.stands_for(f, c) for c in chosen):
            continue
        chosen = [c for c in chosen if groupings is None or not groupings.stands_for(c, f)] + [f]
    # where the rule leaves fewer than K, the last places go to the fields it passed over, by cost (as the forward
    # order's last places go to copies and functions)
    return chosen + [f for f in by_cost if f not in chosen][:k - len(chosen)]


def held_out_rows(labels: np.ndarray, searched: np.ndarray) -> np.ndarray:
    """The rows (indices, ascending) the K-sets are compared on: of each label, the given rows the search did not
    read, or every row of that label where the search read more of its rows than it left (a rare label read whole
    or nearly: its few rows left would carry that label's whole weight); of those, as many of each label as the
    fewest label has, spread (as `search_rows` takes them: under `by_label` weights the other label's rows beyond
    the rarer's count buy little); every given row where that leaves fewer than 2."""
    labels = np.asarray(labels)
    pools = []
    for v in np.unique(labels):
        rows = np.flatnonzero(labels == v)
        left = np.setdiff1d(rows, searched)
        pools.append(left if len(left) >= len(rows) - len(left) else rows)
    held = _alike(pools, len(labels)) if pools else np.zeros(0, dtype=np.int64)
    return held if len(held) >= 2 else np.arange(len(labels))


def compare_sets(model: CTRModel, ids: np.ndarray, labels: np.ndarray, first: list[int], second: list[int],
                 device: str = "cpu", weights: np.ndarray | None = None, donors: np.ndarray | None = None) \
        -> tuple[np.ndarray, np.ndarray]:
    """Per-row losses on these rows (times their `weights`) with only `first` open, and with only `second` open (the
    others closed; `donors`: as in `forward_order`)."""
    passes = ClosedFields(model, ids, labels, first, device, weights, donors=donors)
    one = passes.losses()
    for f in sorted(set(first) ^ set(second)):
        passes.toggle(f)
    return one, passes.losses()


def keep_order(model: CTRModel, schema: FeatureSchema, ids: np.ndarray, labels: np.ndarray, k: int,
               device: str = "cpu", rows_ratio: float | None = None, order: list[int] | None = None) -> dict:
    """A --keep K run: the first K steps of `forward_order` on `search_rows` (the rest by log_alpha), each label's
    rows weighing the same in total and, where those rows are a sample, their closed fields reading rows of all the
    rows given (`closed_fields.by_label`, `closed_fields.donor_rows`: as in the closing test), with the copies and
    functions of fields shown by SEARCH_ROWS rows spread evenly over all the rows given
    (`Groupings`: rows x fields codes, so its memory stays bounded on a wide table; spread, so that a file sorted by
    time or by group does not show relations of its first window only, such as one day to one week), and, given
    `rows_ratio` (training rows the final model reads / rows phase 1 read), the density check of
    `Groupings.stands_for`; `order`: as in `forward_order`. `model`: the model after phase 3's first epoch
    (`lightfmp.pipeline`), or the phase-1 model where phase 3 has fewer than two epochs.

    The forward order's first K are then weighed against the other greedy answer, `costliest_set` on the same rows
    (the K fields the model loses most without, every other field there): on validation rows the search did not
    read, as many of each label, weighted by label (`held_out_rows`; every row of a label the search read most of),
    their closed fields reading donors of every row given (another of them where they are every row), the per-row
    logloss with each set open and the others closed; the second set replaces the first only where the first is
    measurably worse (the closing test's two-standard-error one-sided test, `worse_beyond_noise`). Each search has
    its blind spot: the forward order cannot see fields that matter only together; the closing costs of every field
    open cannot see that two fields repeat each other (nor that a field is weak but the best of what is left).

    Returns {"order": field names, "rows": the rows searched, "copies": per field with copies, their names,
    "finer": per field a step picked, the finer field it opened instead, "shadowed": per field that left the
    candidates as a copy or a function of an opened field, [that field, "copy" | "function"], "alternative": the
    second set (most costly first), the rows compared, whether none of them was searched ("held_out"), its mean
    logloss minus the forward set's and that difference's standard error (0 where the sets are the same), and
    whether it was chosen}."""
    names = schema.names
    groupings = Groupings(ids[spread(len(labels), SEARCH_ROWS)], model.embedding.slot_field.cpu().numpy(),
                          rows_ratio=rows_ratio,
                          field_ids=[f.vocab_size for f in schema.fields] if rows_ratio is not None else None)
    swaps, shadowed_by = {}, {}
    rows = search_rows(labels)
    rng = np.random.default_rng(0)
    donors = ids[donor_rows(len(labels), rows, rng)] if len(rows) < len(labels) else None
    weights = by_label(labels[rows])
    order = forward_order(model, ids[rows], labels[rows], device, k, groupings, swaps, shadowed_by, order, weights,
                          donors)
    second = costliest_set(model, ids[rows], labels[rows], k, device, groupings, weights, donors)
    held = held_out_rows(labels, rows)  # of each label, rows the search did not read (or all: see there)
    held_out = not np.isin(held, rows).any()
    difference, se, chosen = 0.0, 0.0, False
    if set(second) != set(order[:k]):
        held_donors = ids[donor_rows(len(labels), held, rng)] if len(held) < len(labels) else None
        first_losses, second_losses = compare_sets(model, ids[held], labels[held], order[:k], second, device,
                                                   by_label(labels[held]), held_donors)
        difference, se = paired_difference(second_losses, first_losses)
        chosen = bool(np.isfinite(second_losses).all()) and worse_beyond_noise(first_losses, second_losses)
    if chosen:
        order = second + [i for i in order if i not in second]
    return {"order": [names[i] for i in order], "rows": len(rows), "copies": _named(groupings.copies(), names),
            "finer": {names[a]: names[b] for a, b in swaps.items()},
            "shadowed": {names[g]: [names[b], kind] for g, (b, kind) in shadowed_by.items()},
            "alternative": {"order": [names[i] for i in second], "rows": len(held),
                            "held_out": held_out, "difference": difference, "se": se,
                            "chosen": chosen}}


def _named(copied: dict[int, list[int]], names: list[str]) -> dict[str, list[str]]:
    return {names[f]: [names[g] for g in gs] for f, gs in copied.items()}


def closing_rows(model: CTRModel) -> int:
    """How many of the validation rows given the closing test reads (and the gates-alone cut before it): at most
    TEST_ROWS, no more than a `ClosedFields` state of `model` holds in memory (`state_rows`), never fewer than
    SEARCH_ROWS."""
    return min(TEST_ROWS, max(state_rows(model), SEARCH_ROWS))


def closing_test(model: CTRModel, schema: FeatureSchema, ids: np.ndarray, labels: np.ndarray,
                 device: str = "cpu", order: list[int] | None = None, epoch: SweepCosts | None = None) -> dict:
    """The default rule's test: every field open, then the fields in the gates' order (`order`, most open first;
    default: `model`'s own gates), least open first, each closed for good unless closing it raises the validation
    logloss of `model` (each label's rows weighing the same) by more than two standard errors, on its own or
    together with the fields closed before it (`backward_sweep` on the first TEST_ROWS rows, or as many as
    `state_rows` holds if fewer, at least SEARCH_ROWS: of those, the rows `measured_sample` takes, every row of the
    rarer label and as many of the other's, their closed fields reading other rows of all those read), each
    question's estimate pooled with the same sweep's
    measured on the rows of the epoch that trained `model` where `epoch` holds them (lightfmp.progressive). The gates
    order the test; the test decides. `model` is the model after phase 3's first epoch (`lightfmp.pipeline`), or
    the phase-1 model where phase 3 has fewer than two epochs. Copies of a field
    (lightfmp.groupings) are tested like any field: with no budget of places, a copy the phase-1 model reads stays,
    and phase 3 goes on reading both (closing the less open of two copies whatever its cost was measured: 0.003-0.005
    lower test AUC on the planted 50k / 200k sets, an extra phase-3 epoch on the 1M set; docs/selection.md).

    Returns {"order": field names by gate, most open first, "tests": per tested field its closing cost (mean
    per-row BCE difference, each label's rows weighing the same) and the cost's standard error, on its own and with
    the fields closed before it, and whether it was closed, "rows" (read), "measured" (rows), "kept": field
    names}."""
    names = schema.names
    order = ranking(model.gate.log_alpha.detach().cpu()) if order is None else list(order)
    n = closing_rows(model)
    ids, labels = ids[:n], labels[:n]
    sample, sample_labels, donors = measured(ids, labels)
    kept, tests = backward_sweep(model, sample, sample_labels, order, device, epoch, donors)
    out = {"order": [names[i] for i in order], "tests": [{**t, "field": names[t["field"]]} for t in tests],
           "rows": len(labels), "measured": len(sample_labels), "kept": [names[i] for i in kept]}
    if epoch is not None:
        out.update(epoch_rows=epoch.rows, epoch_seconds=epoch.seconds)
    return out


def gates_alone_cut(model: CTRModel, ids: np.ndarray, labels: np.ndarray, alone_log_alpha,
                    device: str = "cpu") -> dict:
    """The default rule's first step, before phase 3: the fields that phase 1's gates alone shut after its best
    epoch (`lightfmp.training._gates_alone`) while they were open at it are cut now if they are at least half of the
    fields open at it and closing them together (as the closing test closes fields: `ClosedFields`, on its rows)
    does not raise the phase-1 model's validation logloss at all against every field open at the best epoch (on
    the closing test's rows, `measured_sample`).

    The subset's model cannot tell a weak field from noise, and a field cut now is neither read by phase 3's first
    epoch nor tested after it: the cut is a bet made for time. Where it is wrong it costs a weak field the first
    epoch's model would have shown (MovieLens's age and weekday: worth nothing to the subset's model, 2.9-3.6
    standard errors to the closing test after the first epoch); what it saves is the share of the first epoch's
    reading and of its measuring (one state per open field) that those fields take. So it is taken only where that
    share is at least half, where the gates found nothing in most of a table, and even then only where the set
    asks for no estimated value at all (a cost above 0, however small, is a value the first epoch may confirm).
    A set not cut stays open and the closing test decides on each of its fields. Where cut, `model`'s gates for
    those fields are set to where the gates alone ended (shut); never every open field. Returns {"fields":
    indices, "open": how many fields were open at the best epoch, "cost", "se" (None where the set was not
    measured: fewer than half, or every open field), "cut"}."""
    gate = model.gate
    best = gate.log_alpha.detach().clone()
    alone = torch.as_tensor(alone_log_alpha, dtype=best.dtype, device=best.device)
    z = model.gate_values().cpu()
    with torch.no_grad():
        gate.log_alpha.copy_(alone)
        z_alone = model.gate_values().cpu()
        gate.log_alpha.copy_(best)
    open_fields = [f for f in range(len(z)) if float(z[f]) > 0.0]
    shut = [f for f in open_fields if float(z_alone[f]) == 0.0]
    if not shut or len(shut) == len(open_fields) or 2 * len(shut) < len(open_fields):
        return {"fields": shut, "open": len(open_fields), "cost": None, "se": None, "cut": False}
    n = closing_rows(model)
    sample, sample_labels, donors = measured(ids[:n], labels[:n])
    passes = ClosedFields(model, sample, sample_labels, open_fields, device, balanced=True, donors=donors)
    every_open = passes.losses()
    for f in shut:
        passes.toggle(f)
    cost, se = paired_difference(passes.losses(), every_open)
    cut = bool(dist.broadcast_int(cost <= 0.0))  # rank 0's answer on every rank, at the edge too
    if cut:
        with torch.no_grad():
            gate.log_alpha[shut] = alone[shut]
    return {"fields": shut, "open": len(open_fields), "cost": cost, "se": se, "cut": cut}


def backward_sweep(model: CTRModel, ids: np.ndarray, labels: np.ndarray, kept: list[int],
                   device: str = "cpu", epoch: SweepCosts | None = None, donors: np.ndarray | None = None) \
        -> tuple[list[int], list[dict]]:
    """Each field of `kept` in turn, the last first, is closed for good unless closing it raises the logloss (each
    label's rows weighing the same in total, `by_label`: the goal is AUC, which counts every pair of one row of each
    label, where the rows' plain mean counts a rare label's few rows little) by more than two standard errors of the
    per-row difference (a one-sided test at about 2.5%), measured two ways: on
    its own, against the fields still open (the model needs it given the others), and as one more of the closed
    set, against every field open (the fields closed so far and it are needed together: one at a time, each within
    two standard errors, weak fields can add up to a set the model measurably needs). Where every other field
    closes, the one kept is the field that alone (every other closed) gives the lowest logloss, whatever its gate,
    among those no worse alone than every field open beyond two standard errors (`_best_alone`: the order alone
    would keep the most open gate untested, chance where phase 1's gates learnt little), and a field whose
    deterministic gate is 0 closes without a pass (the model reads nothing of it). A
    field the model does not use costs nothing to close (its shuffled values carry what its real ones do); a
    redundant copy goes while its twin is open and the twin then stays.

    `donors`: the ids of the rows each row's closed fields read (`ClosedFields`), where these rows are a sample of
    others (`closing_test`); None: another of these rows.

    `epoch` (lightfmp.progressive): the same sweep's step costs measured on the rows of the epoch that trained
    `model`, each before its step, in the order `kept`; each question's estimate on `ids` is then pooled with the
    epoch's (the field's own: its step; the set's: the steps of the fields closed so far and its), one test per
    question on both. Where the sweep kept a field the epoch's walk closed, the later steps were measured with it
    closed: the set's estimate leaves its step out.

    Returns the fields kept and, per tested field, {"field", "cost", "se", "set_cost", "set_se", "closed"} (the
    set's: the closed set with the field, against every field open; on `ids`), with `epoch` also "epoch" and
    "pooled" ({"cost", "se", "set_cost", "set_se"}: the epoch's estimates and the pooled ones the test decided on)."""
    if epoch is not None and list(epoch.order) != list(kept):
        raise ValueError(f"the epoch's closing costs were measured in the order {epoch.order}, not {list(kept)}")
    kept, tests = list(kept), []
    z = model.gate_values().cpu()
    passes = ClosedFields(model, ids, labels, kept, device, balanced=True, donors=donors)
    base = every_open = passes.losses()
    closed_set, closed_at = (0.0, 0.0), []  # the closed set's cost against every field open, its standard error
    for i, f in enumerate(reversed(list(kept))):
        if len(kept) == 1:
            break
        trial = [g for g in kept if g != f]
        if float(z[f]) == 0.0:  # the gate is shut: the model reads nothing of the field, closing it costs exactly 0
            tests.append({"field": f, "cost": 0.0, "se": 0.0, "set_cost": closed_set[0], "set_se": closed_set[1],
                          "closed": True})
            kept = trial
            closed_at.append(i)
            passes.toggle(f)
            continue
        loss = passes.losses(f)
        own, joint = paired_difference(loss, base), paired_difference(loss, every_open)  # ClosedFields: >= 2 rows
        test = {"field": f, "cost": own[0], "se": own[1], "set_cost": joint[0], "set_se": joint[1]}
        if epoch is not None:
            measured = epoch.evidence([i]), epoch.evidence(closed_at + [i])
            own, joint = pooled(own, measured[0]), pooled(joint, measured[1])
            if measured[0] is not None:
                test["epoch"] = {"cost": measured[0][0], "se": measured[0][1], "set_cost": measured[1][0],
                                 "set_se": measured[1][1]}
                test["pooled"] = {"cost": own[0], "se": own[1], "set_cost": joint[0], "set_se": joint[1]}
        closed = bool(own[0] <= SIGNIFICANT_SE * own[1] and joint[0] <= SIGNIFICANT_SE * joint[1])
        tests.append({**test, "closed": closed})  # costing nothing closes it
        if closed:
            kept, base, closed_set = trial, loss, (test["set_cost"], test["set_se"])
            closed_at.append(i)
            passes.toggle(f)
    if len(kept) == 1 and kept[0] not in {t["field"] for t in tests} \
            and any(float(z[t["field"]]) != 0.0 for t in tests):  # the sweep never reached it, and it has rivals
        kept = _best_alone(passes, kept[0], every_open, tests, z)
    return kept, tests


def _best_alone(passes: ClosedFields, last: int, every_open: np.ndarray, tests: list[dict], z) -> list[int]:
    """`backward_sweep`'s end where it closed every field but `last` (never tested): the field that alone, every
    other closed, gives the lowest mean logloss (ties to the more open gate; a shut gate's field is no candidate:
    the model reads nothing of it), among those alone no worse than every field open beyond two standard errors
    (the sweep's set test; `last` alone passed it, as the sweep's last closing). Records the choice in `tests`:
    `last` as tested (its cost: closing it where it alone is open; the set's: every field closed against every field
    open), and for both fields `alone`, that cost and its standard error; those records are the choice's, not the
    sweep's cut (`closing_scores` gives them no score)."""
    passes.toggle(last)  # every field closed
    none = passes.losses()
    set_cost, set_se = paired_difference(none, every_open)
    candidates = [last] + [t["field"] for t in reversed(tests) if float(z[t["field"]]) != 0.0]
    alone = {f: passes.losses(f) for f in candidates}
    set_costs = {f: paired_difference(alone[f], every_open) for f in candidates}
    candidates = [f for f in candidates if f == last or set_costs[f][0] <= SIGNIFICANT_SE * set_costs[f][1]]
    best = min(candidates, key=lambda f: float(alone[f].mean()))
    passes.toggle(best)
    for f in dict.fromkeys([last, best]):
        cost, se = paired_difference(none, alone[f])
        if f == last:
            tests.append({"field": f, "cost": cost, "se": se, "set_cost": set_cost, "set_se": set_se,
                          "closed": f != best})
        next(t for t in tests if t["field"] == f).update(closed=f != best, alone={"cost": cost, "se": se})
    return [best]


def reaching(names: list[str], gate_values, threshold: float) -> list[str]:
    """--threshold T's fields: those whose deterministic gate is >= T (schema order; none is possible)."""
    return [n for i, n in enumerate(names) if float(gate_values[i]) >= threshold]


def select_fields(names: list[str], log_alpha: torch.Tensor, gate_values: torch.Tensor, keep: int | None = None,
                  threshold: float | None = None, search: dict | None = None,
                  retry: str = "lower it or use --keep K") -> list[str]:
    """The first `keep` fields of `search["order"]` (`keep_order`; by log_alpha without a search), or every field
    whose deterministic gate is >= threshold, or (neither given) the fields `closing_test` kept (`search["kept"]`).
    Returned in schema order. `retry`: what the error says to do where no gate reaches the threshold."""
    n, at = len(names), {name: i for i, name in enumerate(names)}
    check_keep(keep, n)
    if keep is not None:
        chosen = {at[f] for f in search["order"][:keep]} if search is not None \
            else set(ranking(log_alpha)[:keep])
    elif threshold is None:
        if search is None or "kept" not in search:
            raise LightFMPError("the default keep rule needs the closing test on validation rows (closing_test); or "
                                "give --keep K / --threshold T")
        chosen = {at[f] for f in search["kept"]}
    else:
        check_range("--threshold", threshold, 0.0, 1.0)  # the Python API bypasses the config's check
        chosen = {at[f] for f in reaching(names, gate_values, threshold)}
        if not chosen:
            raise LightFMPError(f"no field's gate reached --threshold {threshold} (max gate "
                                f"{float(gate_values.max()):.3f}); {retry}")
    return [names[i] for i in range(n) if i in chosen]


CLOSING_RULE = ("every field open, then, least open gate first, each closed unless closing it raises the validation "
                "logloss (on every row of the rarer label and as many of the other's, drawn at random; each label's "
                "rows weighing the same) by more than two standard errors, on its own or with the fields closed "
                "before it")
DEFERRED = ", on the model after phase 3's first epoch, which read every field whose gate phase 1 left open ({}; the " \
           "others dropped before it)"
POOLED = ("; each cost's estimate on the validation rows pooled with the same cost's on the rows that epoch read "
          "(each batch measured before its step, on rows taken as the validation rows are; at most as many as bring "
          f"the test to its {TEST_ROWS:,} rows)")


GATES_ALONE_RULE = ("the fields phase 1's gates shut in its epochs after the best one (its gates alone, on its best "
                    "epoch's weights) are cut before phase 3 if they are at least half of the fields open at its "
                    "best epoch and closing them together does not raise the phase-1 model's validation logloss "
                    "(the closing test's rows) at all (else the closing test decides on them)")


def decides_after_first_epoch(continue_epochs: int, threshold: float | None) -> bool:
    """Whether --keep K and the default rule decide on the model after phase 3's first epoch (phase 3 has two or
    more epochs) rather than on the phase-1 model; --threshold always decides on the phase-1 gates."""
    return continue_epochs >= 2 and threshold is None


def rule_site(deferred: bool, keep: int | None = None) -> str:
    """Where --keep K and the default rule decide, as `selection_rule` words it."""
    return DEFERRED.format(f"at least {keep}" if keep else "at least one") + ("" if keep else POOLED) if deferred \
        else " (on the phase-1 model)"


def forward_rule(keep: int, deferred: bool) -> str:
    return (f"first {keep} of the forward order on the validation rows, or the {keep} fields costliest to close from "
            f"every field open where measurably better on held-out validation rows{rule_site(deferred, keep)}")


def shut_but_kept(kept: list[str], gate_values: dict[str, float], threshold: float | None) -> list[str]:
    """The kept fields whose gate phase 1 shut (its model read nothing of them): --keep K and the default rule
    take the most open of those, untested by the phase-1 model, where phase 1 left fewer than K (or no field)
    open; --threshold 0 keeps them as asked."""
    return [] if threshold is not None else [n for n in kept if gate_values.get(n) == 0.0]


def alone_note(alone: dict) -> str:
    """`lightfmp inspect`'s line where the closing test closed every field it tested (`_best_alone`)."""
    return (f"no tested field's closing cost passed the cut: {alone['field']} is kept as the field that alone, every "
            f"other closed, gives the lowest validation logloss (closing it then costs {alone['cost']:+.5f} ± "
            f"{alone['se']:.5f})")


def gates_alone_note(alone: dict) -> str:
    """`lightfmp inspect`'s line on the default rule's first step (metrics.json `selection.gates_alone`, as
    `gates_alone_cut` returned it, the fields by name)."""
    fields, n = alone["fields"], alone.get("open")  # "open": absent from runs of older lightfmp
    # a set not measured is too small for the cut, or every open field
    how = (f"closing them together cost the phase-1 model {alone['cost']:+.5f} logloss" if alone["cost"] is not None
           else f"fewer than half of the {n} fields open at phase 1's best epoch"
           if isinstance(n, int) and len(fields) < n else "every open field")
    return (f"{len(fields)} field(s) shut by phase 1's gates alone after its best epoch: "
            + (f"cut ({how})" if alone["cut"] else f"left to the rule ({how})"))


def shut_note(shut: list[str], keep: int | None) -> str:
    """The warning (and `lightfmp inspect`'s line) for `shut_but_kept` fields."""
    need = f"--keep {keep} keeps {keep}" if keep else "the rule keeps at least one field"
    one = len(shut) == 1
    return (f"{', '.join(shut)}: kept by log_alpha although phase 1 shut {'its gate' if one else 'their gates'} and "
            f"its model read nothing of {'it' if one else 'them'} ({need}); a smaller --l0-lambda leaves open the "
            f"gates of the fields it needs")


def _in_se(cost: float, se: float) -> float | None:
    """A closing cost in standard errors; None for a positive cost with no spread (every row's difference the
    same: beyond any number of them); NaN where a loss was NaN (diverged weights)."""
    if np.isnan(cost) or np.isnan(se):
        return float("nan")
    return cost / se if se > 0 else 0.0 if cost <= 0 else None


def closing_scores(search: dict) -> dict[str, float | None]:
    """Per tested field of a `closing_test`: its closing cost in standard errors, the larger of its own and the
    closed set's with it (the score the rule cuts at 2; runs before the set test have their own only), pooled with
    the first epoch's rows where the test read them ("pooled"). The fields of `_best_alone`'s choice have none: the
    cut did not decide them (`kept_alone` says what did)."""
    out = {}
    for t in search.get("tests", []):
        if "alone" in t:
            continue
        t = {**t, **t.get("pooled", {})}
        own = _in_se(t["cost"], t["se"])
        both = [own] + ([_in_se(t["set_cost"], t["set_se"])] if "set_cost" in t else [])
        if any(b is not None and np.isnan(b) for b in both):  # a diverged loss shows, whatever the order
            out[t["field"]] = float("nan")
        elif None in both:  # a positive cost with no spread
            out[t["field"]] = None
        else:
            out[t["field"]] = max(both)
    return out


def selection_rule(kept: list[str], gate_values: dict[str, float], keep: int | None, threshold: float | None,
                   search: dict | None = None) -> dict:
    """What `select_fields` compared and where it cut, as metrics.json and `lightfmp inspect` show it: `score` names
    the per-field score (`scores`: per field, when it is not the gate), `cut` the value it was compared with (a
    field's forward-order position <= K; a closing cost > 2 standard errors; a gate >= the threshold); under --keep K,
    `copies` and `functions`: each dropped field that left the search as a copy / a coarser function of a kept field
    (lightfmp.groupings), with that field; `shut_but_kept`, where there are any, the kept fields whose gate phase 1
    shut."""
    shadowed = (search or {}).get("shadowed", {})
    repeats = {kind: {f: by for f, (by, k) in shadowed.items() if k == kind and f not in kept and by in kept}
               for kind in ("copy", "function")}
    deferred = bool(search is not None and search.get("model"))
    shut = shut_but_kept(kept, gate_values, threshold)
    shut = {"shut_but_kept": shut} if shut else {}
    if keep is not None and search is not None:
        second = search.get("alternative", {}).get("chosen", False)
        return {"rule": forward_rule(keep, deferred),
                "score": "costliest-to-close order position" if second else "forward order position",
                "cut": keep, "search": search, "scores": {n: i + 1 for i, n in enumerate(search["order"])},
                "copies": repeats["copy"], "functions": repeats["function"], **shut}
    if keep is not None:
        return {"rule": f"top {keep} by deterministic gate (ties by log_alpha)", "score": "gate",
                "cut": min(gate_values[n] for n in kept), **shut}
    if threshold is None:
        out = {"rule": CLOSING_RULE + rule_site(deferred), "score": "closing cost in standard errors",
               "cut": SIGNIFICANT_SE, **shut}
        if search is None:
            return out
        alone = [{"field": t["field"], **t["alone"]} for t in search.get("tests", [])
                 if "alone" in t and not t["closed"]]  # the field `_best_alone` kept, where it ran
        return {**out, "search": search, "scores": closing_scores(search),
                **({"kept_alone": alone[0]} if alone else {})}
    return {"rule": f"deterministic gate >= {threshold}", "score": "gate", "cut": float(threshold)}

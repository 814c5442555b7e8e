"""The default rule's closed set, jointly, and on later models (docs/selection.md, variant 21).

Until variant 31 the closing test closed the fields one at a time, each while its own closing cost at most two
standard errors of validation logloss; it now also tests each closing with the fields closed before it, so the
joint cost below stays within two standard errors by construction. This script asks two questions of a pretrained run (`lightfmp train`, or any finished `run`
with its pretrain.safetensors), redoing what `lightfmp prune` does up to the rule (the gates-alone cut, phase 3's first epoch on phase 1's
optimizer state):

1. How much the fields the test closed cost *together*: the model after phase 3's first epoch with every one of
   them closed at once against every field open (mean per-row logloss difference, its standard error, and the
   validation AUC with and without them). The sequential costs add up to this (each trial is measured against the
   state before it, with the same shuffle), so a closed set can cost many standard errors in all.
2. Whether a better-trained model would keep more: after the first epoch, `--more N` further epochs over every
   training row with every field open (a new optimizer per epoch: a prototype, not phase 3), with the closing test
   re-run after each.

    lightfmp run --data bio.parquet --label target --ignore EXAMPLE_ID --numeric 47,48,52,53,67,68,72,73 --seed 0 \
        --out runs/kdd0
    python benchmarks/closing_joint.py runs/kdd0 --more 3 --json joint.json

The default rule only (a run's --keep / --threshold are not read); nothing in the run directory is changed."""
from __future__ import annotations

import argparse

import numpy as np

from lightfmp.closed_fields import ClosedFields
from lightfmp.keep_rule import TEST_ROWS, closing_rows, closing_test, gates_alone_cut, open_after_phase1
from lightfmp.moments import Carry, prune_moments
from lightfmp.metrics import paired_difference, roc_auc
from lightfmp.pipeline import phase_plan, run_data
from lightfmp.pruning import prune_model
from lightfmp.rundir import open_run
from lightfmp.training import fit, validate
from lightfmp.io import write_json_atomic


def probabilities(losses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's predicted probability from its BCE and label (BCE = -log p for a positive, -log(1 - p) else)."""
    return np.where(labels == 1, np.exp(-losses), -np.expm1(-losses))


def joint_cost(model, ids: np.ndarray, labels: np.ndarray, closed: list[int]) -> dict:
    """Every field open against the `closed` fields closed at once, on the same rows and shuffle (the rows' plain
    mean, as the closing test measured before variant 73 weighed each label's rows alike)."""
    passes = ClosedFields(model, ids, labels, list(range(model.embedding.num_fields)))
    before = passes.losses()
    for f in closed:
        passes.toggle(f)
    after = passes.losses()
    cost, se = paired_difference(after, before)
    return {"closed": len(closed), "cost": cost, "se": se, "cost_in_se": cost / se if se > 0 else None,
            "auc_open": roc_auc(labels, probabilities(before, labels)),
            "auc_closed": roc_auc(labels, probabilities(after, labels))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a pretrained run directory")
    ap.add_argument("--more", type=int, default=0, help="further epochs on every training row, the test after each")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    run = open_run(args.run)
    cfg, names = run.config, run.schema.names
    gated = run.load_pretrained()
    data = run_data(run)
    _, rest = data.subset(cfg.train.subset, cfg.data.seed)
    train, valid = data.split_rows("train"), data.split_rows("valid")
    if len(rest) == 0:  # --subset 1.0: phase 1 read every training row; phase 3 reads them again, as prune does
        rest = train
    alone = run.gates_alone()  # as prune: the fields the gates alone shut go first, where closing them costs nothing
    if alone is not None:
        first = valid.take(np.arange(min(len(valid), closing_rows(gated))))
        gates_alone_cut(gated, *first.arrays(), alone, "cpu")
    z = gated.gate_values().cpu()
    order = open_after_phase1(gated.gate.log_alpha.detach().cpu(), z)
    kept = [names[i] for i in sorted(order)]
    phase1 = run.load_optimizer_state(gated)  # and phase 3's first epoch continues phase 1's optimizer
    carry = Carry(prune_moments(gated, run.schema, kept, z, phase1) if phase1 is not None else None)
    model, schema = prune_model(gated, run.schema, kept, z)
    plan = phase_plan(cfg, 2, seed_offset=1)
    fit(model, rest.select(kept), None, cfg.train, None, "continue (first epoch)", **{**plan, "epochs": 1},
        carry=carry)
    order = [kept.index(names[i]) for i in order]
    rows = valid.select(kept).take(np.arange(min(len(valid), TEST_ROWS)))
    ids, labels = rows.arrays()
    out = []
    for epoch in range(1, args.more + 2):
        test = closing_test(model, schema, ids, labels, order=order)
        closed = [kept.index(t["field"]) for t in test["tests"] if t["closed"]]
        z = np.array([t["cost"] / t["se"] for t in test["tests"] if t["closed"] and t["se"] > 0])
        rec = {"epochs": epoch, "valid": validate(model, valid.select(kept))[0], "kept": test["kept"],
               "closed_in_se": {"below 0": int(np.sum(z < 0)), "0 to 1": int(np.sum((z >= 0) & (z < 1))),
                                "1 to 2": int(np.sum(z >= 1)),
                                "no spread": sum(1 for t in test["tests"] if t["closed"] and t["se"] == 0)},
               "joint": joint_cost(model, ids, labels, closed)}
        out.append(rec)
        j = rec["joint"]
        in_se = f"{j['cost_in_se']:.1f} SE" if j["cost_in_se"] is not None else "no spread"
        print(f"after {epoch} epoch(s): kept {len(rec['kept'])} of {len(kept)}; closed set together costs "
              f"{j['cost']:.5f} ({in_se}), validation AUC {j['auc_open']:.4f} -> {j['auc_closed']:.4f}; "
              f"closed fields by own cost in SE {rec['closed_in_se']}", flush=True)
        if epoch <= args.more:
            fit(model, train.select(kept), None, cfg.train, None, "more", **{**plan, "epochs": 1,
                                                                               "seed": plan["seed"] + epoch})
    if args.json:
        write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()

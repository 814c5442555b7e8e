"""Each field's closing cost on a finished run's final model (docs/selection.md, variant 36).

The default rule tests the fields on the model after phase 3's first epoch; this asks the same question of the
model a run ended with (`lightfmp run`, `--threshold 0` to keep every field, or `--no-select`): each field's values
shuffled across the validation rows the closing test reads, every other field open, and the mean per-row logloss
difference over its standard error (`ClosedFields`, `paired_difference`: the closing test's own measure before
it weighed each label's rows alike, variant 73; the rows' plain mean here, as variant 36 measured).

    lightfmp run --data ctr.csv --label label --threshold 0 --seed 0 --out runs/ml0
    python benchmarks/final_closing_costs.py runs/ml0 [more runs] --json costs.json

Nothing in the run directories is changed."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from lightfmp.closed_fields import ClosedFields
from lightfmp.keep_rule import TEST_ROWS
from lightfmp.metrics import paired_difference
from lightfmp.pipeline import run_data
from lightfmp.rundir import open_run
from lightfmp.io import write_json_atomic


def closing_costs(path: str) -> dict[str, float | None]:
    """Field -> closing cost in standard errors on the run's final model (None: no spread to measure it by)."""
    run = open_run(path)
    model, schema = run.load_final()
    model.eval()
    valid = run_data(run).split_rows("valid").select(schema.names)  # the fields the final model reads
    ids, labels = valid.take(np.arange(min(len(valid), TEST_ROWS))).arrays()
    fields = list(range(len(schema.names)))
    with torch.no_grad():
        passes = ClosedFields(model, ids, labels, fields, "cpu")
        base = passes.losses()
        costs = {}
        for f in fields:
            cost, se = paired_difference(passes.losses(f), base)
            costs[schema.names[f]] = cost / se if se > 0 else None
    return costs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--json", help="write {run: {field: cost in SE}} here")
    args = ap.parse_args(argv)
    out = {}
    for path in args.runs:
        out[path] = closing_costs(path)
        print(path, " ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in out[path].items()), flush=True)
    if args.json:
        write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()

"""Progressive closing costs (docs/selection.md, variant 64): the evidence of the rows phase 3's first epoch reads.

Phase 3's first epoch reads every training row phase 1 did not use, once, so each batch is out of sample for the model
just before its step (progressive validation). This measures, on each batch before its step, every open field's
closing cost (the field's slots read from another row of the batch, every other field open: the closing test's
shuffle), and reports per field the mean over the epoch over its standard error (`z_progressive`) beside the closing
test's own z on the validation rows. (The default rule has since pooled the validation rows with that epoch's rows
itself, the same sweep measured on each batch: lightfmp.progressive, variant 65; the z on the validation rows shown
here is the validation rows' alone.)

    python benchmarks/progressive_costs.py --out runs/p --json p.json -- --data ctr.csv --label label --seed 0
    python benchmarks/progressive_costs.py --rule --out runs/q -- --data ctr.csv --label label --seed 0

`--rule` runs variant 64's prototype rule: a field the closing test, on the validation rows alone, would close stays
where its progressive z is above the test's two standard errors. A prototype: it replaces lightfmp's internals for the run (phase 3's `fit`, the
training step and the closing test's sweep) and costs one forward pass per open field per batch of the first epoch.
The flags after `--` are `lightfmp run`'s; the run directory is written as `lightfmp run` writes it."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from lightfmp import keep_rule, pipeline, training
from lightfmp.closed_fields import ClosedFields
from lightfmp.metrics import SIGNIFICANT_SE, paired_difference


class Progressive:
    """Per field of the first epoch's model: the sum of the per-row closing costs, of their squares, and the rows."""

    def __init__(self):
        self.on, self.stats = False, None

    def add(self, model, ids, y) -> None:
        slot_field = model.embedding.slot_field.cpu().numpy()
        n_fields = int(slot_field.max()) + 1
        if self.stats is None:
            self.stats = np.zeros((n_fields, 3))
        x = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        t = torch.as_tensor(np.asarray(y), dtype=torch.float32)
        was = model.training
        model.eval()
        with torch.no_grad():
            base = F.binary_cross_entropy_with_logits(model(x), t, reduction="none").double()
            other = torch.roll(torch.arange(len(t)), 1)  # another row of the batch (the epoch's order is shuffled)
            for f in range(n_fields):
                cols = np.flatnonzero(slot_field == f)
                closed = x.clone()
                closed[:, cols] = x[other][:, cols]
                d = (F.binary_cross_entropy_with_logits(model(closed), t, reduction="none").double() - base).numpy()
                self.stats[f] += [d.sum(), (d * d).sum(), len(d)]
        model.train(was)

    def z(self) -> np.ndarray:
        s, s2, n = self.stats.T
        mean = s / n
        se = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0) / n)
        return np.where(se > 0, mean / np.where(se > 0, se, 1.0), 0.0)


def sweep_with(progress: Progressive):
    """`keep_rule.backward_sweep` where a field also stays if its progressive z is above two standard errors (the
    rows' plain mean, as at variant 64; the package's sweep has weighed each label alike since variant 73)."""
    def sweep(model, ids, labels, kept, device="cpu", epoch=None, donors=None):  # the pooled evidence not read
        zp = progress.z()
        kept, tests = list(kept), []
        z = model.gate_values().cpu()
        passes = ClosedFields(model, ids, labels, kept, device, donors=donors)
        base = every_open = passes.losses()
        closed_set = (0.0, 0.0)
        for f in reversed(list(kept)):
            if len(kept) == 1:
                break
            trial = [g for g in kept if g != f]
            if float(z[f]) == 0.0:
                tests.append({"field": f, "cost": 0.0, "se": 0.0, "set_cost": closed_set[0],
                              "set_se": closed_set[1], "closed": True})
                kept = trial
                passes.toggle(f)
                continue
            loss = passes.losses(f)
            cost, se = paired_difference(loss, base)
            set_cost, set_se = paired_difference(loss, every_open)
            closed = bool(cost <= SIGNIFICANT_SE * se and set_cost <= SIGNIFICANT_SE * set_se
                          and zp[f] <= SIGNIFICANT_SE)
            tests.append({"field": f, "cost": cost, "se": se, "set_cost": set_cost, "set_se": set_se,
                          "closed": closed, "z_progressive": float(zp[f])})
            if closed:
                kept, base, closed_set = trial, loss, (set_cost, set_se)
                passes.toggle(f)
        if len(kept) == 1 and kept[0] not in {t["field"] for t in tests} \
                and any(float(z[t["field"]]) != 0.0 for t in tests):
            kept = keep_rule._best_alone(passes, kept[0], every_open, tests, z)
        return kept, tests
    return sweep


@contextlib.contextmanager
def measured(progress: Progressive, rule: bool):
    """lightfmp's phase-3 `fit`, training step (and with `rule` the closing test's sweep) replaced for the block."""
    real_fit, real_step, real_sweep = pipeline.fit, training.Trainer.train_step, keep_rule.backward_sweep

    def fit(model, rows, valid, cfg, reporter, label, *a, **kw):
        progress.on = "first epoch" in str(label)
        try:
            return real_fit(model, rows, valid, cfg, reporter, label, *a, **kw)
        finally:
            progress.on = False

    def step(self, ids, y, *a, **kw):
        if progress.on:
            progress.add(self.model, ids, y)
        return real_step(self, ids, y, *a, **kw)

    pipeline.fit, training.Trainer.train_step = fit, step
    if rule:
        keep_rule.backward_sweep = sweep_with(progress)
    try:
        yield
    finally:
        pipeline.fit, training.Trainer.train_step, keep_rule.backward_sweep = real_fit, real_step, real_sweep


def measure(run_flags: list[str], out: str, rule: bool = False) -> dict:
    """Run `lightfmp run <run_flags> --out out --force --quiet` with the progressive costs measured; the result."""
    from lightfmp.cli.app import main
    progress = Progressive()
    argv = sys.argv
    with measured(progress, rule):
        try:
            sys.argv = ["lightfmp", "run", *run_flags, "--out", out, "--force", "--quiet"]
            main()
        except SystemExit as e:
            if e.code:
                raise
        finally:
            sys.argv = argv
    m = json.loads(open(f"{out}/metrics.json").read())
    search = m["selection"].get("search") or {}
    if progress.stats is None or "tests" not in search:
        raise SystemExit("the run's rule did not decide after phase 3's first epoch: nothing measured")
    tests = {t["field"]: t for t in search["tests"]}
    opened = [n for n in m["fields"]["all"] if n in tests or n in search.get("kept", [])]
    zp = progress.z()
    fields = {}
    for n, z in zip(opened, zp):
        t = tests.get(n, {})
        fields[n] = {"z_progressive": float(z), "z_valid": t["cost"] / t["se"] if t.get("se") else None,
                     "closed": bool(t.get("closed", False))}
    return {"rule": "closing test + progressive" if rule else "closing test", "out": out,
            "progressive_rows": int(progress.stats[0, 2]), "valid_rows": search["rows"],
            "test_auc": m["test"]["auc"], "kept": m["fields"]["kept"],
            "first_epoch_seconds": m["phases"]["continue"].get("first_epoch_seconds"), "fields": fields}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the run directory to write")
    ap.add_argument("--rule", action="store_true", help="the prototype rule (see the docstring)")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("run_flags", nargs=argparse.REMAINDER, help="-- then `lightfmp run` flags")
    args = ap.parse_args()
    flags = args.run_flags[1:] if args.run_flags[:1] == ["--"] else args.run_flags
    res = measure(flags, args.out, args.rule)
    print(f"{res['rule']}: test AUC {res['test_auc']:.4f}, kept {len(res['kept'])} fields; "
          f"{res['progressive_rows']:,} progressive rows, {res['valid_rows']:,} validation rows")
    for n, f in sorted(res["fields"].items(), key=lambda kv: -kv[1]["z_progressive"]):
        zv = "   -  " if f["z_valid"] is None else f"{f['z_valid']:6.2f}"
        print(f"  {n:16s} z_progressive {f['z_progressive']:7.2f}  z_valid {zv}  {'closed' if f['closed'] else 'kept'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()

"""The first epoch's sweep on one batch (lightfmp.progressive.SweepCosts.measure): every state of the closing
test's walk in stacked passes (`ClosedFields.sweep`) against one pass per state (`losses`, then `toggle`, as before),
timed side by side in one process, rounds interleaved; the two give the same losses (checked every round).

    python benchmarks/sweep_passes.py --fields 74 --rows 512 --rounds 10        # KDD's shape, the default batch
    python benchmarks/sweep_passes.py --fields 10 --rows 512 --rounds 10        # MovieLens's

A seeded random model on numeric fields of 16 buckets (the values do not matter to the cost), embed 16, MLP 256-128.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lightfmp.closed_fields import ClosedFields
from lightfmp.models import ModelConfig, build_model
from lightfmp.schema import FeatureSchema, Field


def setting(fields: int, rows: int, backbone: str, embed_dim: int, hidden: list[int]):
    schema = FeatureSchema("label", [Field(f"x{i}", "numeric", boundaries=[float(b) for b in range(15)])
                                     for i in range(fields)])
    torch.manual_seed(0)
    model = build_model(backbone, schema, ModelConfig(embed_dim=embed_dim, hidden=hidden), gated=True)
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.randn(fields) * 2 + 1)  # a few gates shut, as after phase 1
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, f.vocab_size, rows) for f in schema.fields], 1)
    labels = rng.integers(0, 2, rows).astype(np.float32)
    z = model.gate_values()
    walk = [f for f in reversed(range(fields)) if float(z[f]) != 0.0]
    return model, ids, labels, walk


def one_pass_per_state(model, ids, labels, walk) -> np.ndarray:
    passes = ClosedFields(model, ids, labels, list(range(model.embedding.num_fields)))
    out = [passes.losses()]
    for f in walk:
        out.append(passes.losses(f))
        passes.toggle(f)
    return np.stack(out, 1)


def stacked(model, ids, labels, walk) -> np.ndarray:
    return ClosedFields(model, ids, labels, list(range(model.embedding.num_fields))).sweep(walk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=74)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--backbone", default="deepfm")
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--hidden", default="256,128")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, ids, labels, walk = setting(a.fields, a.rows, a.backbone, a.embed_dim, [int(h) for h in a.hidden.split(",")])
    times = {"one pass per state": [], "stacked": []}
    worst = 0.0
    for r in range(a.rounds + 1):  # round 0 warms up, untimed
        pair = [("one pass per state", one_pass_per_state), ("stacked", stacked)]
        out = {}
        for name, fn in pair if r % 2 else pair[::-1]:
            t = time.perf_counter()
            out[name] = fn(model, ids, labels, walk)
            if r:
                times[name].append(time.perf_counter() - t)
        worst = max(worst, float(np.abs(out["stacked"] - out["one pass per state"]).max()))
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = {"fields": a.fields, "rows": a.rows, "states": len(walk) + 1, "backbone": a.backbone,
              "stacks": ClosedFields(model, ids, labels, list(range(a.fields))).stacks(),
              "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
              "ratio": round(med["one pass per state"] / med["stacked"], 2), "max_abs_difference": worst}
    print(json.dumps(result, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()

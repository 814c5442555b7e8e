"""A planted table unlike `lightfmp data synth`'s, to check the selection on data it was not shaped on
(docs/selection.md, "A planted set the generator does not make"): main effects of graded strength down to ones the
validation rows can barely see, copies that are *near* (a relabelled copy with a tenth of its values replaced, a
coarser function, a number plus a little noise) where synth's are exact, a pair of fields that matters only
together, numeric signal, and a rare label (~3% positives).

    python benchmarks/planted_near_copies.py --rows 200000 --seed 0 --out runs/near.parquet
    lightfmp run --data runs/near.parquet --label label -o runs/near-default
    lightfmp bench --data runs/near.parquet --label label --k 9 --seeds 0,1,2

Columns (text categories 'v<id>', numbers as floats): i0..i5, main effects with variances 1, 0.6, 0.3, 0.15, 0.08,
0.04 on the logit over 1000, 50, 20, 200, 10, 5 Zipf-like values; c0_noisy, i0 relabelled with 10% of its rows'
values replaced at random; c1_coarse, i0 // 10; p0, p1, four values each, +-0.8 on the logit by whether their
parities agree (neither says anything alone); n0 ~ N(0, 1), 0.7 n0 on the logit, and n0_copy = n0 + N(0, 0.05^2);
n1 ~ U(0, 10), +0.8 above 7; z00..z19, categorical noise (2 to 50,000 values); u0..u5, numeric noise. The label is
Bernoulli(sigmoid(logit + b)), b set for ~3% positives. Nine informative groups: {i0, c0_noisy, c1_coarse}, i1, i2,
i3, i4, i5, {p0, p1} (both needed), {n0, n0_copy}, n1; i4 and i5 are at the edge of what 20,000 validation rows
show. Writes the table and, beside it, <out>.truth.json with the groups."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lightfmp.io import atomic_path, write_json_atomic

STRENGTHS = (1.0, 0.6, 0.3, 0.15, 0.08, 0.04)  # variance of each main effect on the logit
CARDINALITIES = (1000, 50, 20, 200, 10, 5)
NOISE_CARDINALITIES = (2, 3, 5, 10, 20, 50, 100, 300, 1000, 3000, 10000, 30000, 50000, 7, 15, 40, 80, 500, 2000, 5000)
GROUPS = {"i0": ["i0", "c0_noisy", "c1_coarse"], "i1": ["i1"], "i2": ["i2"], "i3": ["i3"], "i4": ["i4"],
          "i5": ["i5"], "pair": ["p0", "p1"], "n0": ["n0", "n0_copy"], "n1": ["n1"]}
POSITIVE_RATE = 0.03


def zipf_ids(rng: np.random.Generator, card: int, rows: int, s: float = 1.1) -> np.ndarray:
    """`rows` ids of `card` values, value k drawn with probability proportional to 1 / (k + 1)^s."""
    p = 1.0 / np.arange(1, card + 1) ** s
    return rng.choice(card, size=rows, p=p / p.sum())


def labels_at_rate(rng: np.random.Generator, logit: np.ndarray, rate: float) -> np.ndarray:
    """Bernoulli(sigmoid(logit + b)) labels, the bias b found by bisection so that the mean probability is `rate`."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if np.mean(1 / (1 + np.exp(-(logit + mid)))) > rate else (mid, hi)
    return (rng.random(len(logit)) < 1 / (1 + np.exp(-(logit + mid)))).astype(np.int64)


def planted_near_copies(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(1000 + seed)
    cols, logit = {}, np.zeros(rows)

    def zipf(card: int) -> np.ndarray:
        return zipf_ids(rng, card, rows)

    for k, (var, card) in enumerate(zip(STRENGTHS, CARDINALITIES)):
        ids = zipf(card)
        logit += rng.normal(0, np.sqrt(var), card)[ids]
        cols[f"i{k}"] = ids
    noisy = cols["i0"].copy()
    replaced = rng.random(rows) < 0.1
    noisy[replaced] = rng.integers(0, CARDINALITIES[0], int(replaced.sum()))
    cols["c0_noisy"] = (noisy * 7919) % 100003  # relabelled
    cols["c1_coarse"] = cols["i0"] // 10
    a, b = rng.integers(0, 4, rows), rng.integers(0, 4, rows)
    logit += 0.8 * np.where(a % 2 == b % 2, 1.0, -1.0)
    cols["p0"], cols["p1"] = a, b
    x0, x1 = rng.normal(0, 1, rows), rng.uniform(0, 10, rows)
    logit += 0.7 * x0 + np.where(x1 > 7, 0.8, 0.0)
    cols["n0"], cols["n0_copy"], cols["n1"] = x0, x0 + rng.normal(0, 0.05, rows), x1
    for k, card in enumerate(NOISE_CARDINALITIES):
        cols[f"z{k:02d}"] = zipf(card) if card < 5000 else rng.integers(0, card, rows)
    for k in range(6):
        cols[f"u{k}"] = rng.normal(0, 1, rows) if k % 2 else rng.exponential(1.0, rows)
    label = labels_at_rate(rng, logit, POSITIVE_RATE)
    out = {"label": label}
    for name, v in cols.items():
        out[name] = v.astype(np.float64) if v.dtype.kind == "f" else np.char.add("v", v.astype(str))
    return pa.table(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    args = ap.parse_args()
    table = planted_near_copies(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:  # renamed when whole
        pq.write_table(table, tmp)
    truth = {"groups": GROUPS, "noise": [c for c in table.column_names if c[0] in "zu"],
             "positives": float(np.mean(table.column("label").to_numpy())), "rows": args.rows, "seed": args.seed}
    write_json_atomic(f"{args.out}.truth.json", truth)
    print(json.dumps({k: truth[k] for k in ("rows", "positives")}))


if __name__ == "__main__":
    main()

"""A planted table whose signal partly lies in pairs of fields that matter only together: the case greedy forward
selection cannot see (docs/selection.md, variant 39). `lightfmp data synth` plants main effects and pairwise
interactions among fields that each carry a main effect too; here two pairs carry none alone.

    python benchmarks/planted_interactions.py --rows 200000 --seed 0 --out runs/pairs.parquet
    lightfmp bench --data runs/pairs.parquet --label label --k 8 --seeds 0,1,2 --methods lightfmp,lpfs,shark,permutation

Columns (text categories, their order shuffled): m0..m3, four main effects (50 values each, Zipf-like frequencies,
effects centred under them, standard deviation 0.5 each on the logit); x1 x x2 and y1 x y2, two pairs whose joint
table (12 x 12 uniform values) has every row and column mean 0, so neither field of a pair says anything alone
(standard deviation 0.6 each on the logit); n0..n9, noise (5 to 5,000 values); `label` ~ Bernoulli(sigmoid(effects
+ N(0, 0.5) + log(1/3))). The 8 informative fields are the 4 main effects and the two pairs."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lightfmp.io import atomic_path


def planted_interactions(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols, logit = {}, np.zeros(rows)
    for i in range(4):  # main effects
        p = 1 / np.arange(1, 51) ** 1.1
        p /= p.sum()
        x = rng.choice(50, size=rows, p=p)
        w = rng.normal(size=50)
        w -= p @ w
        w *= 0.5 / np.sqrt(p @ w ** 2)
        cols[f"m{i}"], logit = x, logit + w[x]
    for name in ("x", "y"):  # pure interactions: uniform marginals, a table with zero row and column means
        a, b = rng.integers(0, 12, rows), rng.integers(0, 12, rows)
        t = rng.normal(size=(12, 12))
        t -= t.mean(0, keepdims=True)
        t -= t.mean(1, keepdims=True)
        t *= 0.6 / t.std()
        cols[f"{name}1"], cols[f"{name}2"], logit = a, b, logit + t[a, b]
    for i in range(10):  # noise
        cols[f"n{i}"] = rng.integers(0, int(np.exp(rng.uniform(np.log(5), np.log(5000)))), rows)
    logit += rng.normal(0, 0.5, rows) + np.log(1 / 3)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    names = sorted(cols)
    order = [names[j] for j in rng.permutation(len(names))]
    return pa.table({**{n: pa.array(np.char.add("v", cols[n].astype(str))) for n in order}, "label": label})


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="Parquet file to write.")
    a = ap.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    table = planted_interactions(a.rows, a.seed)
    with atomic_path(a.out) as tmp:  # renamed when whole
        pq.write_table(table, tmp)
    print(f"wrote {a.out}: {table.num_rows:,} rows, {table.num_columns - 1} fields, "
          f"{np.mean(table['label'].to_numpy()):.3f} positive")


if __name__ == "__main__":
    main()

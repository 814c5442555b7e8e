"""Two more planted tables unlike `lightfmp data synth`'s, to check the default selection on data it was not shaped on.

`--shape click-log`: a click-log-like mix. 13 numeric columns: n00..n03 informative through smooth, non-linear
effects (n00 a heavy-tailed count read on a log scale, 0.6; n01 a Pareto count with a hump in log scale, 0.4; n02
N(0, 1) through tanh(2x), 0.3; n03 a count through sqrt(log1p), 0.25, 30% of its cells null and no effect there),
n04..n12 noise (normal, uniform, heavy-tailed, Poisson; n08..n10 30% null). 20 categorical columns of Zipf-like
values: c00..c05 informative, a per-value N(0, v) offset on the logit with (values, v) = (3, 0.3), (20, 0.2),
(300, 0.12), (1000, 0.06), (100000, 0.5), (30000, 0.3) (the last two id-like), c06..c19 noise of 3 to 100,000 values.
~12% positives (the number after each effect: its standard deviation on the logit). Integer-valued counts are
written as floats; lightfmp infers whole-valued columns with few distinct values as categorical (README, "Data and the
feature schema").

`--shape all-weak`: 15 categorical columns a00..a14 of 2 to 5,000 Zipf-like values, every one informative, a per-value
N(0, 0.15 x 0.8^k) offset for a0k (variance 0.15 down to 0.0066), no noise field, ~40% positives: the ideal keeps
(nearly) every field and dropping costs accuracy.

Writes the Parquet table and, beside it, <out>.truth.json with the informative and noise columns."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from planted_near_copies import labels_at_rate, zipf_ids  # noqa: E402
from lightfmp.io import atomic_path, write_json_atomic  # noqa: E402

INFORMATIVE_CATEGORIES = ((3, 0.3), (20, 0.2), (300, 0.12), (1000, 0.06), (100_000, 0.5), (30_000, 0.3))
NOISE_CATEGORIES = (3, 5, 10, 30, 100, 500, 2000, 10_000, 50_000, 100_000, 7, 200, 5000, 20_000)
WEAK_CATEGORIES = (2, 4, 8, 15, 30, 60, 100, 250, 500, 1000, 3, 20, 50, 2000, 5000)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def _nulls(rng: np.random.Generator, x: np.ndarray, share: float) -> np.ndarray:
    x = x.astype(np.float64)
    x[rng.random(len(x)) < share] = np.nan
    return x


def click_log(rows: int, rng: np.random.Generator) -> tuple[dict, np.ndarray, list[str]]:
    n = {"n00": np.floor(rng.lognormal(1.0, 1.5, rows)), "n01": rng.pareto(1.5, rows) * 10,
         "n02": rng.normal(0, 1, rows), "n03": np.floor(rng.lognormal(2.0, 1.2, rows))}
    effect3 = _unit(np.sqrt(np.log1p(n["n03"])))
    n["n03"] = _nulls(rng, n["n03"], 0.3)
    effect3[np.isnan(n["n03"])] = 0.0
    logit = (0.6 * _unit(np.log1p(n["n00"])) + 0.4 * _unit(np.exp(-(np.log1p(n["n01"]) - 2.0) ** 2))
             + 0.3 * _unit(np.tanh(2 * n["n02"])) + 0.25 * effect3)
    n.update({"n04": rng.normal(0, 1, rows), "n05": np.floor(rng.lognormal(1.5, 2.0, rows)),
              "n06": rng.pareto(1.1, rows) * 5, "n07": rng.uniform(0, 100, rows),
              "n08": _nulls(rng, rng.normal(0, 1, rows), 0.3),
              "n09": _nulls(rng, np.floor(rng.lognormal(2.0, 1.5, rows)), 0.3),
              "n10": _nulls(rng, rng.pareto(1.3, rows), 0.3), "n11": rng.poisson(3, rows).astype(np.float64),
              "n12": np.floor(rng.exponential(50, rows))})
    cols = {k: v.astype(np.float64) for k, v in n.items()}
    for k, (card, var) in enumerate(INFORMATIVE_CATEGORIES):
        ids = zipf_ids(rng, card, rows)
        logit += rng.normal(0, np.sqrt(var), card)[ids]
        cols[f"c{k:02d}"] = ids
    for k, card in enumerate(NOISE_CATEGORIES):
        cols[f"c{len(INFORMATIVE_CATEGORIES) + k:02d}"] = zipf_ids(rng, card, rows)
    return cols, logit, [f"n{k:02d}" for k in range(4)] + [f"c{k:02d}" for k in range(len(INFORMATIVE_CATEGORIES))]


def all_weak(rows: int, rng: np.random.Generator) -> tuple[dict, np.ndarray, list[str]]:
    cols, logit = {}, np.zeros(rows)
    for k, card in enumerate(WEAK_CATEGORIES):
        ids = zipf_ids(rng, card, rows, s=0.8)
        logit += rng.normal(0, np.sqrt(0.15 * 0.8 ** k), card)[ids]
        cols[f"a{k:02d}"] = ids
    return cols, logit, list(cols)


SHAPES = {"click-log": (click_log, 0.12), "all-weak": (all_weak, 0.40)}


def planted_shape(shape: str, rows: int, seed: int) -> tuple[pa.Table, list[str]]:
    """The table (label first) and its informative columns."""
    make, rate = SHAPES[shape]
    rng = np.random.default_rng(7000 + seed)
    cols, logit, informative = make(rows, rng)
    out = {"label": pa.array(labels_at_rate(rng, logit, rate))}
    for name, v in cols.items():
        out[name] = pa.array(v, from_pandas=True) if v.dtype.kind == "f" else pa.array(np.char.add("v", v.astype(str)))
    return pa.table(out), informative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    args = ap.parse_args()
    table, informative = planted_shape(args.shape, args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:  # renamed when whole
        pq.write_table(table, tmp)
    truth = {"shape": args.shape, "informative": informative,
             "noise": [c for c in table.column_names[1:] if c not in informative],
             "positives": float(np.mean(table.column("label").to_numpy())), "rows": args.rows, "seed": args.seed}
    write_json_atomic(f"{args.out}.truth.json", truth)
    print(json.dumps({k: truth[k] for k in ("shape", "rows", "positives")}))


if __name__ == "__main__":
    main()

"""Boruta-style repeated shadow twins, the selection study's prototype (docs/selection.md): R independent twin
draws (draw r permutes every field's values across rows with the generator seeded [seed, 1000 + r]); one phase-1
run per draw on fields and twins together. Per field: its hits (draws where its log_alpha beats the largest twin's)
and the mean over draws of log_alpha(field) - log_alpha(its twin). A field is confirmed when its hits are
significantly above R/2 (one-sided exact binomial test, p < alpha / F with the Bonferroni correction over the F
fields), rejected when significantly below, tentative otherwise; the same decisions without the correction are
printed too, and the decisions from paired hits (draws where a field beats its own twin, which has its
cardinality; the largest twin is usually a harmless low-cardinality one). The confirmed set, confirmed +
tentative, and the top K by mean difference are scored as `lightfmp bench` scores every selector: the backbone
retrained on them over the whole training split of the original data (no twins), test AUC.

    python benchmarks/selection_boruta.py movielens --seeds 0,1,2 --draws 5
    python benchmarks/selection_boruta.py planted --k 3 --seeds 0,1,2 --draws 10

With R draws the smallest attainable one-sided p is 0.5^R, so with the correction nothing can be decided until
0.5^R < alpha / F (R >= 8 for 10 fields at alpha 0.05). One JSON line per seed on stdout."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd

from lightfmp import pipeline
from lightfmp.bench.selectors import train_fields
from lightfmp.config import RunConfig
from lightfmp.dataset import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from selection_twins import TWIN, common_args, study_inputs, twin_kinds, with_twins  # noqa: E402


def binom_tail(hits: int, n: int) -> tuple[float, float]:
    """One-sided exact binomial p-values against p = 0.5: (P[X >= hits], P[X <= hits])."""
    upper = sum(comb(n, i) for i in range(hits, n + 1)) / 2 ** n
    lower = sum(comb(n, i) for i in range(0, hits + 1)) / 2 ** n
    return upper, lower


def decide(hits: dict, n: int, alpha: float) -> dict:
    out = {}
    for f, h in hits.items():
        up, low = binom_tail(h, n)
        out[f] = "confirmed" if up < alpha else "rejected" if low < alpha else "tentative"
    return out


def study(path: Path, kinds: dict, fields: list[str], ks: list[int], seeds: list[int], draws: int, alpha: float,
          extra: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="lightfmp-boruta-") as d:  # the twin tables and runs go with it
        _study(Path(d), path, kinds, fields, ks, seeds, draws, alpha, extra)


def _study(tmp: Path, path: Path, kinds: dict, fields: list[str], ks: list[int], seeds: list[int], draws: int,
           alpha: float, extra: dict) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    for seed in seeds:
        base = RunConfig.of(data=str(path), seed=seed, **kinds, **extra)
        data = load_dataset(base.data)
        hits = {f: 0 for f in fields}
        paired = {f: 0 for f in fields}  # draws where the field beats its own twin (same cardinality)
        diffs = {f: [] for f in fields}
        phase1, wall, top_twin = [], [], []
        for r in range(draws):
            t0 = time.perf_counter()
            aug = tmp / f"twins-{seed}-{r}.csv"
            with_twins(df, fields, seed, r).to_csv(aug, index=False)
            m = pipeline.train(RunConfig.of(data=str(aug), seed=seed, **twin_kinds(kinds), **extra),
                               tmp / f"r{seed}-{r}", quiet=True)
            wall.append(time.perf_counter() - t0)
            phase1.append(m["phases"]["pretrain"]["seconds"])
            la = m["log_alpha"]
            best_twin = max(la[g + TWIN] for g in fields)
            top_twin.append(max(fields, key=lambda g: la[g + TWIN]))
            for f in fields:
                hits[f] += int(la[f] > best_twin)
                paired[f] += int(la[f] > la[f + TWIN])
                diffs[f].append(la[f] - la[f + TWIN])
        mean_diff = {f: float(np.mean(diffs[f])) for f in fields}
        rules = {"bonferroni": decide(hits, draws, alpha / len(fields)), "uncorrected": decide(hits, draws, alpha),
                 "paired-bonferroni": decide(paired, draws, alpha / len(fields))}
        sets = {}
        for name, dec in rules.items():
            sets[f"{name}:confirmed"] = [f for f in fields if dec[f] == "confirmed"]
            sets[f"{name}:confirmed+tentative"] = [f for f in fields if dec[f] != "rejected"]
        ranked = sorted(fields, key=lambda f: (-mean_diff[f], fields.index(f)))
        for k in ks:
            sets[f"top{k}"] = [f for f in fields if f in ranked[:k]]
        scored, cache = {}, {}
        for name, kept in sets.items():
            key = tuple(kept)
            if key and key not in cache:
                t0 = time.perf_counter()
                _, res = train_fields(base, data, kept)
                cache[key] = {"test_auc": res["test"]["auc"], "seconds": time.perf_counter() - t0}
            scored[name] = {"kept": kept, "test_auc": cache[key]["test_auc"] if key else None}
        print(json.dumps({"seed": seed, "draws": draws, "hits": hits, "paired_hits": paired, "mean_diff": mean_diff,
                          "largest_twin": top_twin, "decisions": rules, "scored": scored,
                          "seconds": {"phase1_per_draw": phase1, "wall_per_draw": wall,
                                      "phase1_total": sum(phase1), "wall_total": sum(wall),
                                      "retrain": {",".join(k): v["seconds"] for k, v in cache.items()}}}),
              flush=True)


def main() -> None:
    ap = common_args(argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split())))
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    ks, seeds = [int(v) for v in args.k.split(",")], [int(v) for v in args.seeds.split(",")]
    path, kinds, fields, extra = study_inputs(args.dataset, args.gate_holdout)
    try:
        study(path, kinds, fields, ks, seeds, args.draws, args.alpha, extra)
    finally:
        if args.dataset == "planted":  # the table written for this invocation
            shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()

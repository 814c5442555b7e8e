"""Shadow twins, the selection study's prototype (docs/selection.md): each field gets a twin column holding the same
field's values permuted across rows (same cardinality and frequencies, no relation to the label); phase 1 trains
gates on fields and twins together; a field scores its log_alpha minus its twin's. The top K by that score are kept
and scored as `lightfmp bench` scores every selector: the backbone retrained on them over the whole training split,
test AUC. Also printed: the fields whose log_alpha beats the largest twin's (a calibrated keep rule without K).

    python benchmarks/selection_twins.py movielens --k 3,5,7 --seeds 0,1,2 --gate-holdout 0.2
    python benchmarks/selection_twins.py planted --k 3 --seeds 0,1,2

The twins live in a copy of the data file written to a temporary folder; nothing is changed in the package."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lightfmp import pipeline
from lightfmp.bench.selectors import train_fields
from lightfmp.config import RunConfig
from lightfmp.datasets import fetch_movielens_100k
from lightfmp.dataset import load_dataset
from lightfmp.demo import MOVIELENS_FIELDS

TWIN = "__twin"


def with_twins(df: pd.DataFrame, fields: list[str], seed: int, draw: int = 0) -> pd.DataFrame:
    """A copy of `df` with each field's twin: its values permuted across rows by the generator [seed, 1000 + draw]."""
    rng = np.random.default_rng([seed, 1000 + draw])
    out = df.copy()
    for f in fields:
        out[f + TWIN] = df[f].to_numpy()[rng.permutation(len(df))]
    return out


def twin_kinds(kinds: dict) -> dict:
    """The kind flags with every named column's twin named the same way."""
    out = dict(kinds)
    for key in ("categorical", "numeric"):
        if out.get(key):
            cols = out[key].split(",")
            out[key] = ",".join(cols + [c + TWIN for c in cols])
    if out.get("multi_hot"):
        items = out["multi_hot"].split(",")
        out["multi_hot"] = ",".join(items + [i.split(":")[0] + TWIN + ":" + i.split(":")[1] for i in items])
    return out


def study(path: Path, kinds: dict, fields: list[str], ks: list[int], seeds: list[int], extra: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="lightfmp-twins-") as d:  # the twin tables and runs go with it
        _study(Path(d), path, kinds, fields, ks, seeds, extra)


def _study(tmp: Path, path: Path, kinds: dict, fields: list[str], ks: list[int], seeds: list[int], extra: dict) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    for seed in seeds:
        aug = tmp / f"twins-{seed}.csv"
        with_twins(df, fields, seed).to_csv(aug, index=False)
        base = RunConfig.of(data=str(path), seed=seed, **kinds, **extra)
        data = load_dataset(base.data)
        m = pipeline.train(RunConfig.of(data=str(aug), seed=seed, **twin_kinds(kinds), **extra), tmp / f"r{seed}",
                           quiet=True)
        la = m["log_alpha"]
        score = {f: la[f] - la[f + TWIN] for f in fields}
        beats = [f for f in fields if la[f] > max(la[g + TWIN] for g in fields)]
        for k in ks:
            top = sorted(fields, key=lambda f: -score[f])[:k]
            _, res = train_fields(base, data, [f for f in fields if f in top])
            print(json.dumps({"seed": seed, "k": k, "kept": sorted(top), "test_auc": res["test"]["auc"],
                              "beats_max_twin": beats, "score": score}), flush=True)


def study_inputs(dataset: str, gate_holdout: float) -> tuple[Path, dict, list[str], dict]:
    """(data file, kind flags, fields, other config) of a study data set: MovieLens-100k or the planted 4k table."""
    if dataset == "movielens":
        kinds = dict(MOVIELENS_FIELDS)
        return (fetch_movielens_100k(quiet=True), kinds, kinds["categorical"].split(",") + ["genres"],
                {"gate_holdout": gate_holdout})
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from helpers import write_csv
    return (write_csv(Path(tempfile.mkdtemp()), n=4000),
            dict(label="label", categorical="a,b,noise", numeric="x", multi_hot="tags:|"),
            ["a", "b", "noise", "x", "tags"],
            dict(embed_dim=8, hidden="32", pretrain_epochs=5, epochs=3, batch_size=128, subset=0.5,
                 gate_holdout=gate_holdout))


def common_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("dataset", choices=["movielens", "planted"])
    ap.add_argument("--k", default="3,5,7")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--gate-holdout", type=float, default=0.2)
    return ap


def main() -> None:
    args = common_args(argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))).parse_args()
    ks, seeds = [int(v) for v in args.k.split(",")], [int(v) for v in args.seeds.split(",")]
    path, kinds, fields, extra = study_inputs(args.dataset, args.gate_holdout)
    try:
        study(path, kinds, fields, ks, seeds, extra)
    finally:
        if args.dataset == "planted":  # the table written for this invocation
            shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()

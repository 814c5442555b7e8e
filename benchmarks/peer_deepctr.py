"""Training throughput of lightfmp's DeepFM (no gates) against DeepCTR-Torch's DeepFM on the same encoded data.

Both get the same encoded ids (lightfmp's schema), embedding size, MLP, batch size, epochs, Adam lr 1e-3, no
regularisation, no dropout and the same CPU threads; the timed span is the training call alone (no validation).
The two are trained in turn `--repeats` times in one process (lightfmp, peer, lightfmp, peer, ...: both see the
same machine load), pair k with training seed `--seed` + k (the data split stays that of `--seed`); reported: each
pair's samples/s ratio and their median, each run's test AUC and each framework's mean test AUC. If deepctr-torch
is missing or fails with this torch, the peer is reported as unavailable with the reason and lightfmp runs alone.

    python benchmarks/peer_deepctr.py --data /tmp/bsyn/data.parquet --label label --epochs 2 --threads 1 --repeats 3

Install the peer without letting pip touch torch:  pip install --no-deps deepctr-torch tqdm requests
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from lightfmp.config import RunConfig
from lightfmp.metrics import roc_auc
from lightfmp.models import ModelConfig, build_model
from lightfmp.dataset import load_dataset
from lightfmp.progress import Reporter
from lightfmp.training import TrainConfig, fit, predict


def run_lightfmp(data, args, seed: int, sparse: bool = False) -> dict:
    torch.manual_seed(seed)
    cfg = ModelConfig(embed_dim=args.embed_dim, hidden=args.hidden_sizes)
    model = build_model("deepfm", data.schema, cfg)
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, sparse_embeddings=sparse)
    train = data.split_rows("train")
    t0 = time.perf_counter()
    fit(model, train, None, tc, Reporter(quiet=True), seed=seed, select_best=False)
    sec = time.perf_counter() - t0
    p = predict(model, data.split_rows("test"))
    y = train.labels()
    return {"name": "lightfmp DeepFM" + (" (sparse tables)" if sparse else ""), "seconds": sec,
            "samples_per_s": len(y) * args.epochs / sec, "test_auc": roc_auc(data.split_rows("test").labels(), p), "params": model.num_params()}


def run_deepctr(data, args, seed: int) -> dict:
    try:
        import deepctr_torch
        from deepctr_torch.inputs import SparseFeat
        from deepctr_torch.models import DeepFM
    except Exception as e:  # ImportError, or an incompatibility raised at import time
        return {"name": "DeepCTR-Torch DeepFM", "unavailable": f"{type(e).__name__}: {e}"}
    try:
        fields = [f for f in data.schema.fields if f.slots == 1]   # multi-hot fields would need VarLenSparseFeat
        cols = data.schema.field_slot_ranges()
        feats = [SparseFeat(f.name, vocabulary_size=f.vocab_size, embedding_dim=args.embed_dim) for f in fields]
        torch.manual_seed(seed)
        model = DeepFM(feats, feats, dnn_hidden_units=tuple(args.hidden_sizes), l2_reg_linear=0.0,
                       l2_reg_embedding=0.0, l2_reg_dnn=0.0, dnn_dropout=0.0, task="binary", device="cpu",
                       seed=seed)
        model.compile(torch.optim.Adam(model.parameters(), lr=1e-3), "binary_crossentropy", metrics=[])

        def inputs(split):
            ids = data.split_rows(split).arrays()[0]
            return {f.name: ids[:, cols[f.name][0]].astype(np.int64) for f in fields}

        y = data.split_rows("train").labels()
        xt = inputs("train")
        with contextlib.redirect_stdout(io.StringIO()):  # its fit prints the device and the row count
            t0 = time.perf_counter()
            model.fit(xt, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, shuffle=True)
            sec = time.perf_counter() - t0
        p = model.predict(inputs("test"), batch_size=8192).ravel()
        return {"name": f"DeepCTR-Torch {deepctr_torch.__version__} DeepFM", "seconds": sec,
                "samples_per_s": len(y) * args.epochs / sec, "test_auc": roc_auc(data.split_rows("test").labels(), p),
                "params": sum(p.numel() for p in model.parameters()),
                "skipped_fields": [f.name for f in data.schema.fields if f.slots != 1]}
    except Exception as e:
        return {"name": "DeepCTR-Torch DeepFM", "unavailable": f"{type(e).__name__}: {e}"}


def _line(r: dict) -> str:
    if "unavailable" in r:
        return f"{r['name']:<34} unavailable: {r['unavailable']}"
    return (f"{r['name']:<34} {r['samples_per_s']:>10,.0f} samples/s  test AUC {r['test_auc']:.4f}  "
            f"({r['seconds']:.1f}s, {r['params']:,} params)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--data", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--categorical")
    ap.add_argument("--numeric")
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--hidden", default="256,128")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2,
                    help="2: where both reach their best test AUC on the documented synthetic set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the data split and of the first pair's training")
    ap.add_argument("--repeats", type=int, default=3,
                    help="pairs of runs, each framework in turn; the ratio reported is the median over pairs")
    ap.add_argument("--sparse-embeddings", action="store_true",
                    help="also train lightfmp with --sparse-embeddings (SparseAdam on the tables)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    args.hidden_sizes = [int(v) for v in args.hidden.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    data = load_dataset(RunConfig.of(data=args.data, label=args.label, categorical=args.categorical or [],
                                     numeric=args.numeric or [], seed=args.seed).data)
    if any(f.slots != 1 for f in data.schema.fields):
        print("note: multi-hot fields are left out of the DeepCTR model (single-slot fields only)", file=sys.stderr)
    # the first torch.optim.Adam() of a process imports torch._dynamo (seconds); pay it before any timing
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    runs = []
    for k in range(max(1, args.repeats)):
        seed = args.seed + k
        run = {"seed": seed, "lightfmp": run_lightfmp(data, args, seed)}
        if args.sparse_embeddings:
            run["lightfmp_sparse"] = run_lightfmp(data, args, seed, sparse=True)
        run["deepctr"] = peer = run_deepctr(data, args, seed)
        if "unavailable" not in peer:
            for name in [n for n in run if n.startswith("lightfmp")]:
                run[f"ratio_{name}"] = run[name]["samples_per_s"] / peer["samples_per_s"]
        print(f"run {k + 1} (training seed {seed}):")
        for key in ("lightfmp", "lightfmp_sparse", "deepctr"):
            if key in run:
                print("  " + _line(run[key]))
        runs.append(run)
        if "unavailable" in peer:  # no pairs to compare: one run of lightfmp is all there is to report
            break
    doc = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                      f"{args.threads} thread(s)",
           "rows": data.split_sizes(), "embed_dim": args.embed_dim,
           "hidden": args.hidden_sizes, "batch_size": args.batch_size, "epochs": args.epochs, "runs": runs}
    for key in ("lightfmp", "lightfmp_sparse", "deepctr"):
        aucs = [r[key]["test_auc"] for r in runs if key in r and "test_auc" in r[key]]
        if aucs:
            doc[f"mean_test_auc_{key}"] = float(np.mean(aucs))
            print(f"{key.replace('_', ' ')} test AUC: {', '.join(f'{v:.4f}' for v in aucs)}; mean {np.mean(aucs):.4f}")
    for key in ("lightfmp", "lightfmp_sparse"):
        ratios = [r[f"ratio_{key}"] for r in runs if f"ratio_{key}" in r]
        if ratios:
            doc[f"median_ratio_{key}_over_deepctr"] = med = float(np.median(ratios))
            print(f"{key.replace('_', ' ')} over deepctr, samples/s: "
                  f"{', '.join(f'{v:.2f}x' for v in ratios)}; median {med:.2f}x")
    if args.json:
        with open(f"{args.json}.tmp", "w") as fh:  # renamed when whole
            json.dump(doc, fh, indent=2)
        os.replace(f"{args.json}.tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

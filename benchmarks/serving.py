"""Serving benchmark: pruned vs full model under ONNX Runtime, and ONNX Runtime vs PyTorch eager.

    python benchmarks/serving.py [--work DIR] [--rows 50000] [--fields 20] [--informative 5] [--rounds 5]

Generates a synthetic CTR set, trains a Light-FMP run (pruned) and a --no-select run (full) with the same
backbone, exports both, then times them side by side: each round times pruned and full (ONNX Runtime and
PyTorch eager) at every batch size, alternating, and the table quotes the median over rounds of each p50.
The machine may be shared and noisy, so compare ratios from the same round rather than absolute numbers.
Writes DIR/serving.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from lightfmp import pipeline, profiling
from lightfmp.config import RunConfig
from lightfmp.datasets import synthesize
from lightfmp.export import export_run
from lightfmp.io import write_json_atomic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--work", default="/tmp/lightfmp-serving-bench")
    ap.add_argument("--dataset", choices=["synthetic", "movielens"], default="synthetic",
                    help="movielens: MovieLens-100k from the cache (fetched on first use) instead of generated data")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--informative", type=int, default=5)
    ap.add_argument("--backbone", default="deepfm")
    ap.add_argument("--batch-sizes", default="1,512")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=1.0)
    ap.add_argument("--reuse", action="store_true", help="Reuse runs and exports already in --work.")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = profiling.parse_batch_sizes(a.batch_sizes)

    t0 = time.perf_counter()
    if a.dataset == "movielens":
        from lightfmp.datasets import fetch_movielens_100k
        from lightfmp.demo import MOVIELENS_FIELDS
        cfg = dict(data=str(fetch_movielens_100k(quiet=True)), **MOVIELENS_FIELDS, backbone=a.backbone, device="cpu")
    else:
        data = work / "syn" / "data.parquet"
        if not (a.reuse and data.exists()):
            data = Path(synthesize(rows=a.rows, fields=a.fields, informative=a.informative, out_dir=work / "syn",
                                   seed=0)["data_file"])
        cfg = dict(data=str(data), label="label", backbone=a.backbone, device="cpu")
    runs = {"pruned": (work / "run_pruned", RunConfig.of(**cfg)),
            "full": (work / "run_full", RunConfig.of(**cfg, no_select=True))}
    exports = {}
    for name, (run_dir, rc) in runs.items():
        if not (a.reuse and (run_dir / "model.safetensors").exists()):
            pipeline.run(rc, run_dir, force=True, quiet=True)
        exports[name] = work / f"export_{name}"
        if not (a.reuse and (exports[name] / "feature_schema.json").exists()):
            export_run(run_dir, exports[name], force=True)
    print(f"data, runs and exports ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    budget = profiling.Budget(max_seconds=a.max_seconds)
    rounds = []
    for r in range(a.rounds):
        order = ["pruned", "full"] if r % 2 == 0 else ["full", "pruned"]  # alternate who goes first
        timings = profiling.profile([exports[n] for n in order], sizes, threads=a.threads, budget=budget)
        rounds.append({n: mt for n, mt in zip(order, timings)})
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    def med(name, engine, batch, key="p50_ms"):
        vals = []
        for rd in rounds:
            mt = rd[name]
            rows = mt.rows if engine == "ort" else mt.eager
            vals += [x[key] for x in rows if x["batch_size"] == batch]
        return statistics.median(vals) if vals else float("nan")

    def med_ratio(f):
        return statistics.median(f(rd) for rd in rounds)

    def p50(mt, engine, batch):
        rows = mt.rows if engine == "ort" else mt.eager
        return next(x["p50_ms"] for x in rows if x["batch_size"] == batch)

    docs = {n: json.loads((exports[n] / "feature_schema.json").read_text()) for n in exports}
    metrics = {n: json.loads((runs[n][0] / "metrics.json").read_text()) for n in runs}
    res = {"command": " ".join(["python benchmarks/serving.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": profiling.machine(), "threads": a.threads, "rounds": a.rounds,
           "data": {"dataset": "movielens-100k", "backbone": a.backbone} if a.dataset == "movielens" else
                   {"dataset": "synthetic", "rows": a.rows, "fields": a.fields, "informative": a.informative,
                    "backbone": a.backbone},
           "models": {}, "latency": []}
    for n in exports:
        v = docs[n]["validation"]
        res["models"][n] = {"fields": len(docs[n]["inputs"]),
                            "model_bytes": (exports[n] / "model.onnx").stat().st_size,
                            "params": metrics[n]["params"]["after"], "test_auc_run": metrics[n]["test"]["auc"],
                            "test_auc_onnx": v.get("auc_onnx"),
                            "auc_onnx_minus_run": v.get("auc_diff_vs_run"),
                            "max_abs_diff_vs_torch": v["max_abs_diff_vs_torch"]}
    for b in sizes:
        row = {"batch_size": b}
        for n in exports:
            row[f"{n}_ort_p50_ms"] = med(n, "ort", b)
            row[f"{n}_eager_p50_ms"] = med(n, "eager", b)
        row["full_over_pruned_ort"] = med_ratio(lambda rd: p50(rd["full"], "ort", b) / p50(rd["pruned"], "ort", b))
        for n in exports:
            row[f"{n}_eager_over_ort"] = med_ratio(lambda rd, n=n: p50(rd[n], "eager", b) / p50(rd[n], "ort", b))
        res["latency"].append(row)
    write_json_atomic(work / "serving.json", res)

    m = res["models"]
    print(f"\n`{res['command']}` on {res['machine']}, {a.threads} thread(s), median of {a.rounds} rounds\n")
    print("| | pruned | full |\n|---|---:|---:|")
    print(f"| fields | {m['pruned']['fields']} | {m['full']['fields']} |")
    print(f"| model.onnx bytes | {m['pruned']['model_bytes']:,} | {m['full']['model_bytes']:,} |")
    print(f"| test AUC (run) | {m['pruned']['test_auc_run']:.5f} | {m['full']['test_auc_run']:.5f} |")
    print(f"| test AUC (exported, ORT) | {m['pruned']['test_auc_onnx']:.5f} | {m['full']['test_auc_onnx']:.5f} |")
    print(f"| AUC exported - run | {m['pruned']['auc_onnx_minus_run']:.1e} | {m['full']['auc_onnx_minus_run']:.1e} |")
    print(f"| max abs diff ORT vs torch | {m['pruned']['max_abs_diff_vs_torch']:.1e} | "
          f"{m['full']['max_abs_diff_vs_torch']:.1e} |")
    print("\n| batch | pruned ORT p50 ms | full ORT p50 ms | full / pruned | pruned eager p50 ms | "
          "eager / ORT (pruned) | eager / ORT (full) |\n|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["latency"]:
        print(f"| {r['batch_size']} | {r['pruned_ort_p50_ms']:.3f} | {r['full_ort_p50_ms']:.3f} | "
              f"{r['full_over_pruned_ort']:.2f}x | {r['pruned_eager_p50_ms']:.3f} | "
              f"{r['pruned_eager_over_ort']:.1f}x | {r['full_eager_over_ort']:.1f}x |")
    print(f"\nresults: {work / 'serving.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

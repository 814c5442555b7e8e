"""Streaming scale benchmark: peak RSS and training samples/s at growing row counts, and 1 vs N processes.

    python benchmarks/scale.py --copies 1,5,20 --workdir /tmp/scale --json scale.json
    python benchmarks/scale.py --copies 1 --procs 1,2 --workdir /tmp/scale --json scale-ddp.json

Data: the synthetic generator, Criteo-shaped (39 fields: 26 categorical, 13 numeric, 8 informative), --base-rows
rows written once; a size of N copies is a Parquet directory of N hard links to that file (N x base rows). Rows
repeat, which changes nothing for memory and throughput (the vocabularies are those of one copy) but lets
duplicates of a training row land in the test split: the AUC column is a sanity check here, not a result. Each run is `lightfmp run --stream` in a fresh process under GNU time, so the peak RSS is that process's
own (with torchrun: the largest worker's). The first run at a size builds the encoded shards (its wall time
includes both passes over the file); `--repeat` runs it again to show the shard cache being reused.

Samples/s: rows x epochs / seconds of each training phase as recorded in metrics.json (phase 1 includes its gate
steps; phase 3 is plain training of the pruned model). Compare numbers from one invocation only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _data(workdir: Path, rows: int, copies: int, seed: int) -> Path:
    base = workdir / f"data-{rows}-s{seed}" / "data.parquet"  # named by what it is made of
    if not base.exists():
        from lightfmp.datasets.synthetic import synthesize
        t0 = time.perf_counter()
        synthesize(rows, 39, 8, base.parent, seed=seed, numeric=13)
        print(f"generated {rows:,} rows in {time.perf_counter() - t0:.0f}s -> {base}", flush=True)
    out = workdir / f"data-{rows}-s{seed}-x{copies}"
    if not out.exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for i in range(copies):
            os.link(base, tmp / f"part-{i:03d}.parquet")
        tmp.rename(out)
    return out


def _run(data: Path, out: Path, procs: int, args, threads: int) -> dict:
    cmd = [sys.executable, "-m", "lightfmp", "run", "--data", str(data), "--label", "label", "--stream",
           "--out", str(out), "--force", "--quiet", "--pretrain-epochs", str(args.pretrain_epochs),
           "--continue-epochs", str(args.continue_epochs), "--subset", str(args.subset), "--patience", "0",
           "--seed", "0",
           "--shard-dir", str(args.workdir / "shards")]
    if args.keep:
        cmd += ["--keep", str(args.keep)]
    if args.hash_buckets:
        cmd += ["--hash-buckets", args.hash_buckets]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
               "--master-port", str(29500 + os.getpid() % 1000)] + cmd[1:]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // procs))}
    timing = out.with_suffix(".time")
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %e", "-o", str(timing)] + cmd, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    rss_kb = int(re.findall(r"(\d+) [\d.]+", timing.read_text())[-1])
    timing.unlink()
    m = json.loads((out / "metrics.json").read_text())
    ph = m["phases"]

    def rate(name):
        r = ph[name]
        return r["rows"] * r.get("epochs", 0) / r["seconds"] if r["seconds"] > 0 else None

    return {"procs": procs, "peak_rss_mb": rss_kb / 1024, "wall_seconds": wall,
            "pretrain_samples_per_s": rate("pretrain"), "continue_samples_per_s": rate("continue"),
            "seconds_total": m["seconds_total"], "kept": m["fields"]["kept"], "test_auc": m["test"]["auc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-rows", type=int, default=1_000_000)
    ap.add_argument("--copies", default="1,5,20", help="sizes as multiples of --base-rows")
    ap.add_argument("--procs", default="1", help="comma-separated process counts, e.g. 1,2")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lightfmp-scale"))
    ap.add_argument("--pretrain-epochs", type=int, default=1)
    ap.add_argument("--continue-epochs", type=int, default=1)
    ap.add_argument("--subset", type=float, default=0.1, help="phase-1 subset fraction")
    ap.add_argument("--keep", type=int, default=None, help="keep the first K of the forward order (default: the closing test)")
    ap.add_argument("--hash-buckets", default=None, help="passed to lightfmp run (e.g. 'f01:65536')")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads shared by all processes")
    ap.add_argument("--repeat", action="store_true", help="run each size twice (the second reuses the shards)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for copies in [int(c) for c in args.copies.split(",")]:
        rows = copies * args.base_rows
        data = _data(args.workdir, args.base_rows, copies, args.seed)
        for procs in [int(p) for p in args.procs.split(",")]:
            for rep in range(2 if args.repeat else 1):
                out = args.workdir / f"run-{rows}-p{procs}-r{rep}"
                r = {"rows": rows, "repeat": rep, **_run(data, out, procs, args, args.threads)}
                results.append(r)
                print(f"rows {rows:>11,}  procs {procs}  rep {rep}  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                      f"wall {r['wall_seconds']:7.1f}s  pretrain {r['pretrain_samples_per_s'] or 0:9,.0f}/s  "
                      f"continue {r['continue_samples_per_s'] or 0:9,.0f}/s  kept {len(r['kept'])}  "
                      f"AUC {r['test_auc']:.4f}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    if args.json:
        doc = {"command": " ".join(sys.argv), "results": results}
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()

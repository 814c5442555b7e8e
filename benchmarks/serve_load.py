"""Serving under load: the pruned and the full model of the same data behind `lightfmp serve`, with and without
dynamic batching, under N concurrent loopback clients x request batch sizes.

    python benchmarks/serve_load.py [--work DIR] [--runs PRUNED_RUN FULL_RUN] [--rows 20000] [--fields 20]
                                    [--clients 1,8,32] [--batch-sizes 1,64] [--max-requests 1000]
                                    [--max-seconds 1.5] [--rounds 3] [--reuse]

Without --runs it generates a synthetic CTR set (`lightfmp.datasets.synthesize`) and trains a Light-FMP run
(pruned, `--keep 8`) and a --no-select run (full) on it, then exports both. Four `lightfmp serve` processes are
started on free loopback ports (pruned / full x batching on / off: `--batch-wait-ms 0`); in each of --rounds rounds, for
every client count and batch size the pruned and the full server are measured one after the other (alternating
which goes first), through `lightfmp.profiling.profile_url` — the measurement `lightfmp profile --url` makes:
p50 / p99 latency, requests/s, rows/s, errors. Every cell is bounded by --max-requests and --max-seconds per
round; the table gives the median over rounds. Writes DIR/serve_load.json and prints a markdown table. The
machine may be shared and noisy: compare pruned and full within a row.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lightfmp import pipeline, profiling
from lightfmp.config import RunConfig
from lightfmp.datasets import synthesize
from lightfmp.export import export_run
from lightfmp.io import write_json_atomic


def prepare(a, work: Path) -> dict[str, Path]:
    """Export directories of the pruned and the full run (made here unless --runs names them)."""
    if a.runs:
        runs = dict(zip(("pruned", "full"), map(Path, a.runs)))
    else:
        data = work / "syn" / "data.parquet"
        if not (a.reuse and data.exists()):
            data = Path(synthesize(rows=a.rows, fields=a.fields, informative=a.informative, out_dir=work / "syn",
                                   seed=0)["data_file"])
        base = dict(data=str(data), label="label", backbone=a.backbone, epochs=a.epochs, device="cpu")
        runs = {"pruned": work / "run_pruned", "full": work / "run_full"}
        configs = {"pruned": RunConfig.of(**base, keep=a.keep), "full": RunConfig.of(**base, no_select=True)}
        for name, cfg in configs.items():
            if not (a.reuse and (runs[name] / "metrics.json").exists()):
                pipeline.run(cfg, runs[name], force=True, quiet=True)
    exports = {}
    for name, run in runs.items():
        exports[name] = work / f"export_{name}"
        if not (a.reuse and (exports[name] / "feature_schema.json").exists()):
            export_run(run, exports[name], force=True, triton_name=name)
    return exports


def start(export: Path, batching: bool, threads: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "lightfmp", "serve", str(export), "--port", "0", "--threads", str(threads)]
    if not batching:
        cmd += ["--batch-wait-ms", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r" on (http://\S+) ", line)
    if not m:
        proc.kill()
        raise SystemExit(f"lightfmp serve did not start: {line}{proc.stderr.read()}")
    return proc, m.group(1)


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def summary(rounds: list[dict]) -> dict:
    """Median over rounds of the latencies and rates; requests and errors summed."""
    def med(key):
        vals = [r[key] for r in rounds if r[key] is not None]
        return statistics.median(vals) if vals else None
    return {**{k: med(k) for k in ("p50_ms", "p99_ms", "requests_per_s", "rows_per_s")},
            "p99_ms_rounds": [r["p99_ms"] for r in rounds],
            **{k: sum(r[k] for r in rounds) for k in ("requests", "errors", "warmup_errors")},
            "first_error": next((r["first_error"] for r in rounds if r["first_error"]), None)}


def ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--work", default="/tmp/lightfmp-serve-load")
    ap.add_argument("--runs", nargs=2, metavar=("PRUNED_RUN", "FULL_RUN"),
                    help="Two finished runs of the same data (a Light-FMP run and a --no-select run) to export "
                         "and serve, instead of generating data and training here.")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--informative", type=int, default=5)
    ap.add_argument("--backbone", default="deepfm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--keep", type=int, default=8, help="Fields the Light-FMP run keeps (its --keep).")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--max-requests", type=int, default=1000, help="Requests per cell and round at most.")
    ap.add_argument("--max-seconds", type=float, default=1.5, help="Seconds per cell and round at most.")
    ap.add_argument("--rounds", type=int, default=3, help="Rounds over every cell; the table gives medians.")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of each server.")
    ap.add_argument("--reuse", action="store_true", help="Reuse data, runs and exports already in --work.")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    clients, sizes = profiling.parse_clients(a.clients), profiling.parse_batch_sizes(a.batch_sizes)
    budget = profiling.Budget(max_runs=a.max_requests, max_seconds=a.max_seconds)

    t0 = time.perf_counter()
    exports = prepare(a, work)
    print(f"runs and exports ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    grid = [(b, c, size) for b in (True, False) for c in clients for size in sizes]
    raw: dict = {cell: {"pruned": [], "full": []} for cell in grid}
    servers: dict = {}
    try:
        for b in (True, False):  # one at a time inside the try: a server that fails to start stops those before it
            for m in ("pruned", "full"):
                servers[(m, b)] = start(exports[m], b, a.threads)
        k = 0
        for rnd in range(a.rounds):
            for cell in grid:
                batching, c, size = cell
                order = ("pruned", "full") if k % 2 == 0 else ("full", "pruned")  # alternate who goes first
                k += 1
                for m in order:
                    r = profiling.profile_url(servers[(m, batching)][1], exports[m], [c], [size], budget)[0]
                    raw[cell][m].append(r)
                print(f"round {rnd + 1}, batching {'on' if batching else 'off'}, {c} clients x batch {size}: p99 "
                      f"pruned {ms(raw[cell]['pruned'][-1]['p99_ms'])} ms, full {ms(raw[cell]['full'][-1]['p99_ms'])} "
                      f"ms", file=sys.stderr)
        cells = [{"batching": b, "clients": c, "batch_size": size,
                  **{m: summary(raw[(b, c, size)][m]) for m in ("pruned", "full")}} for b, c, size in grid]
    finally:
        codes = {f"{m} batching {'on' if b else 'off'}": stop(p) for (m, b), (p, _) in servers.items()}
    schema = {m: json.loads((exports[m] / "feature_schema.json").read_text()) for m in exports}
    res = {"command": " ".join(["python benchmarks/serve_load.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": profiling.machine(), "threads": a.threads, "seconds": time.perf_counter() - t0,
           "models": {m: {"fields": len(schema[m]["inputs"]), "model_bytes": (exports[m] / "model.onnx").stat().st_size}
                      for m in exports},
           "server_exit_codes": codes, "cells": cells,
           "errors": sum(r[m]["errors"] + r[m]["warmup_errors"] for r in cells for m in ("pruned", "full"))}
    write_json_atomic(work / "serve_load.json", res)

    mp, mf = res["models"]["pruned"], res["models"]["full"]
    print(f"\n`{res['command']}` on {res['machine']}; {a.threads} ONNX Runtime thread(s) per server; "
          f"median of {a.rounds} rounds; pruned "
          f"{mp['fields']} fields ({mp['model_bytes']:,} bytes), full {mf['fields']} fields "
          f"({mf['model_bytes']:,} bytes); {res['seconds']:.0f} s in all\n")
    print("| batching | clients | batch | pruned p50 ms | pruned p99 ms | full p50 ms | full p99 ms "
          "| full / pruned p99 | pruned req/s | full req/s | pruned rows/s | full rows/s | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in cells:
        p, f = r["pruned"], r["full"]
        ratio = f"{f['p99_ms'] / p['p99_ms']:.2f}x" if p["p99_ms"] and f["p99_ms"] else "-"
        print(f"| {'on' if r['batching'] else 'off'} | {r['clients']} | {r['batch_size']} | {ms(p['p50_ms'])} | "
              f"{ms(p['p99_ms'])} | {ms(f['p50_ms'])} | {ms(f['p99_ms'])} | {ratio} | "
              f"{p['requests_per_s']:,.0f} | {f['requests_per_s']:,.0f} | {p['rows_per_s']:,.0f} | "
              f"{f['rows_per_s']:,.0f} | {p['errors'] + f['errors'] + p['warmup_errors'] + f['warmup_errors']} |")
    print(f"\nerrors: {res['errors']}; servers exited with {sorted(set(codes.values()))}; results: "
          f"{work / 'serve_load.json'}")
    return 0 if res["errors"] == 0 and set(codes.values()) == {0} else 1


if __name__ == "__main__":
    sys.exit(main())

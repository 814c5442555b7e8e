"""Core measurements: Light-FMP `run` vs `run --no-select`, side by side, per seed.

    python benchmarks/core.py movielens --seeds 0,1,2 --backbone deepfm --json out.json
    python benchmarks/core.py synthetic --rows 1000000 --seeds 0 --json out.json

MovieLens-100k is fetched into LIGHTFMP_HOME on first use. For the synthetic set the kept fields are scored
against truth.json: an informative field counts as found when it or a redundant copy of it is kept."""
from __future__ import annotations

import argparse
import atexit
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from score_selection import score  # noqa: E402

from lightfmp import RunConfig, run  # noqa: E402
from lightfmp.io import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=["movielens", "synthetic"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--backbone", default="deepfm")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lightfmp-core-"))
    if args.workdir is None:  # a folder of this invocation's: its data and runs go at the end
        atexit.register(shutil.rmtree, work, True)
    truth = None
    if args.dataset == "movielens":
        from lightfmp.datasets import fetch_movielens_100k
        from lightfmp.demo import MOVIELENS_FIELDS
        base = dict(data=str(fetch_movielens_100k(quiet=True)), **MOVIELENS_FIELDS)
    else:
        from lightfmp.datasets import synthesize
        syn = work / f"synthetic-{args.rows}"
        truth = json.loads((syn / "truth.json").read_text()) if (syn / "truth.json").exists() else \
            synthesize(rows=args.rows, fields=39, informative=8, out_dir=syn, seed=0)
        base = dict(data=str(syn / "data.parquet"), label="label")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for select in (True, False):
            cfg = RunConfig.of(**base, backbone=args.backbone, seed=seed, no_select=not select)
            t0 = time.perf_counter()
            m = run(cfg, work / f"{args.backbone}-s{seed}-{'fmp' if select else 'all'}", force=True, quiet=True)
            rec = {"seed": seed, "method": "lightfmp" if select else "no-select", "test_auc": m["test"]["auc"],
                   "test_logloss": m["test"]["logloss"], "kept": len(m["fields"]["kept"]),
                   "fields": len(m["fields"]["all"]), "params_after": m["params"]["after"],
                   "seconds_total": m["seconds_total"], "wall": time.perf_counter() - t0,
                   "continue_epochs": m["phases"]["continue"].get("epochs")}
            if truth is not None:
                rec.update(score(m, truth))
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    summary = {}
    for method in ("lightfmp", "no-select"):
        rs = [r for r in rows if r["method"] == method]
        summary[method] = {k: statistics.median(r[k] for r in rs) for k in ("test_auc", "seconds_total", "kept")}
    summary["seconds_ratio_median"] = statistics.median(
        a["seconds_total"] / b["seconds_total"] for a, b in zip(rows[0::2], rows[1::2]))
    summary["auc_delta_median"] = statistics.median(a["test_auc"] - b["test_auc"] for a, b in zip(rows[0::2], rows[1::2]))
    out = {"dataset": args.dataset, "backbone": args.backbone, "machine": platform.platform(),
           "command": " ".join(sys.argv), "runs": rows, "summary": summary}
    print(json.dumps(summary, indent=1))
    if args.json:
        write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()

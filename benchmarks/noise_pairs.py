"""The default run against `--no-select`, trained several times per split: how far the difference is from 0 beyond
training noise (docs/selection.md, variant 23).

    python benchmarks/noise_pairs.py --workdir runs/pairs --seeds 0,1,2 --inits 5 -- \
        --data bio.parquet --label target --ignore EXAMPLE_ID --numeric 47,48,52,53,67,68,72,73
    python benchmarks/noise_pairs.py --workdir runs/dcn --extra "--threshold 0" -- --data ctr.csv --label label \
        --backbone dcnv2

Each split (`--seed` s) is trained with `--init-seed` s + 1000·t, t = 0..inits-1 (t = 0: no `--init-seed`, the plain
run): the same split, subset and gate hold-out, other initialisation, batches, dropout and gate noise. Every pair is
a default run (with `--extra`: flags of the default run only, so the backbone goes among the flags after --) and a
`--no-select` run of the same seeds; with `--scratch` also a `--no-select` run on the default run's kept fields only
(the fields it dropped `--ignore`d and taken out of the column lists on the command line; not with `--config` or
`--schema`, whose lists it cannot see): what the fields cost, apart from the pipeline's path. Each run is its own
process; a finished run (a metrics.json with test metrics) is not run again if `<workdir>/runs.json` records the
same flags for it, else it is run again. Prints the mean ± standard error of the test-AUC differences over all
pairs, the per-split means, how many pairs are no more than 0.002 below all fields, and the single runs' range;
`--json` writes every pair."""
from __future__ import annotations

import argparse
import fcntl
import json
import shlex
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lightfmp.metrics import selection_stability
from lightfmp.io import write_json_atomic

LIST_FLAGS = ("--categorical", "--numeric", "--multi-hot")  # column lists a dropped field must leave


def finished(out: Path) -> dict | None:
    path = out / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    return metrics if "test" in metrics else None


@contextmanager
def ledger(workdir: Path):
    """`<workdir>/runs.json` (run name -> its flags) for reading and updating, under a lock: two invocations may
    share a workdir (e.g. one per seed)."""
    path = workdir / "runs.json"
    with open(workdir / "runs.json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(path.read_text()) if path.exists() else {}
        before = dict(runs)
        yield runs
        if runs != before:
            with tempfile.NamedTemporaryFile("w", dir=workdir, suffix=".tmp", delete=False) as tmp:
                tmp.write(json.dumps(runs, indent=1))
            Path(tmp.name).replace(path)


def lightfmp_run(flags: list[str], out: Path) -> dict:
    """The run of `flags` in `out`: made now unless `out` holds a finished run that `runs.json` beside it records
    with the same flags (a run of other flags under the same name is made again)."""
    with ledger(out.parent) as runs:
        metrics = finished(out) if runs.get(out.name) == flags else None
    if metrics is None:
        cmd = [sys.executable, "-m", "lightfmp", "run", *flags, "--out", str(out), "--force", "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
        metrics = finished(out)
        with ledger(out.parent) as runs:
            runs[out.name] = flags
    return metrics


def split_assignments(flags: list[str]) -> list[str]:
    """`--flag=value` as `--flag value`, so that the column lists are found in either form."""
    out = []
    for flag in flags:
        if flag.startswith("--") and "=" in flag:
            out += flag.split("=", 1)
        else:
            out.append(flag)
    return out


def without(flags: list[str], dropped: set[str]) -> list[str]:
    """`flags` with the dropped fields out of every column list (and of `--hash-buckets field:N,...`) and added to
    --ignore."""
    if any(f in ("--config", "--schema") or f.startswith(("--config=", "--schema=")) for f in flags):
        raise SystemExit("--scratch: give the column lists as flags, not through --config or --schema (it cannot "
                         "take the dropped fields out of them)")
    flags = split_assignments(flags)
    out, ignore, i = [], [], 0
    while i < len(flags):
        flag = flags[i]
        per_field = flag == "--hash-buckets" and i + 1 < len(flags) and ":" in flags[i + 1]
        if (flag in LIST_FLAGS + ("--ignore",) or per_field) and i + 1 < len(flags):
            items = [c for c in flags[i + 1].split(",") if c]
            if flag == "--ignore":
                ignore += items
            else:
                kept = [c for c in items if c.split(":")[0] not in dropped]
                if kept:
                    out += [flag, ",".join(kept)]
            i += 2
            continue
        out.append(flag)
        i += 1
    ignore += sorted(dropped)
    return out + (["--ignore", ",".join(ignore)] if ignore else [])


def summary(name: str, diffs: np.ndarray, per_split: list[float]) -> str:
    """The pairs' mean ± its standard error, treating the pairs as independent, and the standard error of the split
    means (the pairs of one split share its rows: where splits differ beyond training noise, that one is larger)."""
    se = diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    split_se = np.std(per_split, ddof=1) / np.sqrt(len(per_split)) if len(per_split) > 1 else float("nan")
    return (f"{name}: {diffs.mean():+.4f} ± {se:.4f} over {len(diffs)} pairs (split means "
            f"{' / '.join(f'{d:+.4f}' for d in per_split)}, their SE {split_se:.4f}); at most 0.002 below: "
            f"{int(np.sum(diffs >= -0.002))}; single runs {diffs.min():+.4f}..{diffs.max():+.4f}")


def stability_line(pairs: list[dict], n_fields: int) -> str:
    """How alike the default runs' kept sets are (lightfmp.metrics.selection_stability), over every run and over
    each split seed's first run (t = 0), and on how many of those seeds the most common set was kept."""
    first = [tuple(sorted(p["kept"])) for p in pairs if p["t"] == 0]
    common = max((first.count(s) for s in first), default=0)
    fmt = lambda v: "undefined" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"kept sets: stability {fmt(selection_stability([p['kept'] for p in pairs], n_fields))} over the "
            f"{len(pairs)} default runs, {fmt(selection_stability(first, n_fields))} over the {len(first)} seeds' "
            f"first runs (t = 0), whose most common set is kept on {common} of them")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--inits", type=int, default=5)
    ap.add_argument("--extra", default="", help="flags for the default run only, e.g. \"--keep 10\" (a single flag: "
                    "--extra=--sparse-embeddings)")
    ap.add_argument("--scratch", action="store_true", help="also train each default run's kept fields from scratch")
    ap.add_argument("--json", default=None)
    ap.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the data flags of `lightfmp run`")
    args = ap.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    if not flags:
        ap.error("give the data flags after --, e.g. -- --data FILE --label COL")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    pairs, splits, n_fields = [], {}, 0
    for seed in [int(s) for s in args.seeds.split(",")]:
        for t in range(args.inits):
            seeds = ["--seed", str(seed)] + (["--init-seed", str(seed + 1000 * t)] if t else [])
            tag = f"s{seed}_t{t}"
            default = lightfmp_run(flags + seeds + shlex.split(args.extra), work / f"default_{tag}")
            full = lightfmp_run(flags + seeds + ["--no-select"], work / f"all_{tag}")
            n_fields = len(default["fields"]["all"])
            pair = {"seed": seed, "t": t, "kept": default["fields"]["kept"], "default": default["test"]["auc"],
                    "all_fields": full["test"]["auc"]}
            if args.scratch:
                dropped = set(default["fields"]["all"]) - set(default["fields"]["kept"])
                scratch = lightfmp_run(without(flags, dropped) + seeds + ["--no-select"], work / f"scratch_{tag}")
                pair["scratch"] = scratch["test"]["auc"]
            pairs.append(pair)
            splits.setdefault(seed, []).append(pair)
            print(f"seed {seed} t {t}: {len(pair['kept'])} fields, default {pair['default']:.4f}, all fields "
                  f"{pair['all_fields']:.4f}" + (f", kept fields from scratch {pair['scratch']:.4f}"
                                                  if args.scratch else ""), flush=True)
    for key, name in [("default", "default - all fields")] + ([("scratch", "kept fields from scratch - all fields")]
                                                               if args.scratch else []):
        diffs = np.array([p[key] - p["all_fields"] for p in pairs])
        per = [float(np.mean([p[key] - p["all_fields"] for p in ps])) for ps in splits.values()]
        print(summary(name, diffs, per))
    if args.scratch:
        path = np.array([p["default"] - p["scratch"] for p in pairs])
        print(f"the path (default - kept fields from scratch): {path.mean():+.4f} ± "
              f"{path.std(ddof=1) / np.sqrt(len(path)):.4f}")
    print(stability_line(pairs, n_fields))
    if args.json:
        write_json_atomic(args.json, pairs)


if __name__ == "__main__":
    main()

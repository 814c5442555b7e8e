"""Ingestion speed: rows/s of the two streaming passes (pass 1 reads the file and fits the schema, pass 2 encodes
into shards) beside the rows/s at which pyarrow.csv merely reads the same file, in the same invocation on the same
machine.

    python benchmarks/ingest.py --rows 1000000 --workdir /tmp/ingest --synthetic --json ingest.json
    python benchmarks/ingest.py --rows 1000000 --workdir /tmp/ingest --baseline /path/to/old/copy  # holds lightfmp/
    python benchmarks/ingest.py --rows 1000000,20000000 --rounds 1 --no-read-mt --workdir /tmp/ingest  # memory

Data: a Criteo-shaped TSV written once by this script (--format criteo: label, I1-I13 integer counts, C1-C26
8-hex-digit categories; Zipf-distributed values, log-uniform cardinalities up to --max-card, 0-40% missing
cells per column). `--synthetic` adds the synthetic generator's CSV of the same size (26 categorical, 13 numeric
columns, kinds inferred) so that kind inference and numeric bucketizing are measured too.

Every measurement runs in a fresh process (its peak RSS is that process's own), `--rounds` times, interleaved (the
code and --baseline's taking turns to go first), and the medians are reported:
    read      pyarrow.csv's streaming reader over the file, every column as text, the block size and options the
              lightfmp reader uses, batches discarded: the ceiling for any pipeline that reads with pyarrow
    read_mt   pyarrow.csv.read_csv (multi-threaded, types inferred), for reference
    ingest    `load_dataset` with --stream into an empty shard directory, timed by the lines it logs: pass 1 ends
              with 'fit: read' (reading, the kinds, coding every batch once, counting, keeping the coded batches),
              pass 2 with 'encode:' (saving the fit, encoding the kept batches, writing and checksumming the
              shards). The file's sha256 is computed first and counted in neither pass.
--baseline DIR runs `ingest` again with DIR first on PYTHONPATH (an older lightfmp package), for before/after
numbers from one invocation. Compare numbers from one invocation only: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INT_COLS, CAT_COLS = 13, 26


# ---- data -----------------------------------------------------------------------------------------------------------
def criteo_tsv(path: Path, rows: int, seed: int, max_card: int, chunk: int = 200_000) -> None:
    """A Criteo-shaped TSV (no header; label, 13 integer columns, 26 hex categories), written in chunks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    rng = np.random.default_rng(seed)
    cards = np.round(np.exp(rng.uniform(np.log(3), np.log(max_card), CAT_COLS))).astype(np.int64)
    miss_cat = rng.uniform(0.0, 0.4, CAT_COLS)
    miss_int = rng.uniform(0.0, 0.4, INT_COLS)
    scale_int = np.exp(rng.uniform(0, np.log(5000), INT_COLS))
    names = ["label"] + [f"I{i}" for i in range(1, INT_COLS + 1)] + [f"C{i}" for i in range(1, CAT_COLS + 1)]
    tmp = path.with_name(path.name + ".tmp")
    with pacsv.CSVWriter(tmp, pa.schema([(n, pa.string()) for n in names]),
                         write_options=pacsv.WriteOptions(include_header=False, delimiter="\t",
                                                          quoting_style="none")) as w:
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            cols = [pa.array((rng.random(n) < 0.26).astype(np.int64).astype(str))]
            for j in range(INT_COLS):
                v = np.floor(rng.pareto(1.2, n) * scale_int[j]).astype(np.int64) - (rng.random(n) < 0.01)
                cols.append(pa.array(v.astype(str), mask=rng.random(n) < miss_int[j]))
            for j in range(CAT_COLS):
                rank = np.minimum(rng.zipf(1.15, n) - 1, cards[j] - 1)
                # a fixed per-column scramble of the rank into 32 bits, printed as 8 hex digits like Criteo's
                code = (rank * 2654435761 + j * 40503) & 0xFFFFFFFF
                text = np.char.mod("%08x", code)
                cols.append(pa.array(text, mask=rng.random(n) < miss_cat[j]))
            w.write_table(pa.table(cols, names=names))
    tmp.replace(path)


def synthetic_csv(workdir: Path, rows: int, seed: int) -> Path:
    from lightfmp.datasets.synthetic import synthesize
    out = workdir / f"synth-{rows}-s{seed}"  # named by what it is made of: another --seed is another file
    if not (out / "data.csv").exists():
        synthesize(rows, 39, 8, out, seed=seed, numeric=13, fmt="csv")
    return out / "data.csv"


# ---- measurements (each in a child process) -------------------------------------------------------------------------
def child_read(path: str, fmt: str) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from lightfmp.formats import BLOCK_BYTES
    t0 = time.perf_counter()
    tab = "\t" if fmt == "criteo" else ","
    parse = pacsv.ParseOptions(delimiter=tab, quote_char=False if fmt == "criteo" else '"')
    if fmt == "criteo":
        names = ["label"] + [f"I{i}" for i in range(1, INT_COLS + 1)] + [f"C{i}" for i in range(1, CAT_COLS + 1)]
        read = pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=names)
    else:
        names = pacsv.open_csv(path, parse_options=parse).schema.names
        read = pacsv.ReadOptions(block_size=BLOCK_BYTES)
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                   null_values=[""], quoted_strings_can_be_null=True)
    rows = 0
    for batch in pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert):
        rows += batch.num_rows
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def child_read_mt(path: str, fmt: str) -> dict:
    import pyarrow.csv as pacsv
    t0 = time.perf_counter()
    opts = {}
    if fmt == "criteo":
        opts = dict(read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                    parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
    rows = pacsv.read_csv(path, **opts).num_rows
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def child_ingest(path: str, fmt: str, shard_dir: str, chunk_rows: int) -> dict:
    from lightfmp.config import DataConfig
    from lightfmp.dataset import load_dataset
    from lightfmp.io import file_sha256
    from lightfmp.progress import Reporter

    class Lines(Reporter):
        """Keeps each logged line with the time it was logged: pass 1 ends with the 'fit: read' line, pass 2 with
        the 'encode:' line."""

        def __init__(self):
            super().__init__(quiet=True)
            self.lines = []

        def log(self, msg: str) -> None:
            self.lines.append((time.perf_counter(), msg))

        def at(self, prefix: str) -> float:
            return next(t for t, m in self.lines if m.startswith(prefix))

    rep = Lines()
    extra = {} if fmt == "criteo" else {"label": "label"}
    cfg = DataConfig(data=path, format=fmt, stream=True, shard_dir=shard_dir, chunk_rows=chunk_rows, **extra)
    t0 = time.perf_counter()
    sha = file_sha256(path)
    t1 = time.perf_counter()
    data = load_dataset(cfg, rep, sha256=sha)
    t2 = time.perf_counter()
    fit, enc = rep.at("fit: read"), rep.at("encode:")
    return {"rows": data.rows, "sha256_seconds": t1 - t0, "pass1_seconds": fit - t1, "pass2_seconds": enc - fit,
            "total_seconds": t2 - t0, "num_slots": data.schema.num_slots,
            "vocab_rows": sum(f.vocab_size for f in data.schema.fields)}


def run_child(args: list[str], pythonpath: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, __file__, "_child"] + args, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(path: Path, fmt: str, workdir: Path, chunk_rows: int, baseline: str | None, tag: str,
            rounds: int, read_mt: bool = True) -> dict:
    """Each measurement `rounds` times, interleaved (read, read_mt, ingest, ingest_baseline, read, read_mt,
    ingest_baseline, ingest, ...), so that a change in the machine's load falls on all of them; the medians are
    reported."""
    import shutil
    res = {"file": str(path), "format": fmt, "bytes": path.stat().st_size, "rounds": []}
    for k in range(rounds):
        one = {"read": run_child(["read", str(path), fmt])}
        if read_mt:
            one["read_mt"] = run_child(["read_mt", str(path), fmt])
        runs = [("ingest", None)] + ([("ingest_baseline", baseline)] if baseline else [])
        # the two codes in turn first: the run right after the read was up to ~10% slower in its first pass in an
        # A/A comparison (the same code on both sides), so a fixed order would favour the second
        for name, pp in (runs if k % 2 == 0 else runs[::-1]):
            shards = workdir / f"shards-{tag}-{name}"
            shutil.rmtree(shards, ignore_errors=True)
            one[name] = run_child(["ingest", str(path), fmt, str(shards), str(chunk_rows)], pp)
            shutil.rmtree(shards, ignore_errors=True)
        res["rounds"].append(one)
    return res


def rates(res: dict) -> dict:
    """Median rows/s over the rounds: raw reads, each pass, both passes; the ratio of both passes to the read."""
    def med(values):
        return float(statistics.median(values))

    rounds = res["rounds"]
    read = med([r["read"]["rows"] / r["read"]["seconds"] for r in rounds])
    out = {"read_rows_per_s": read, "read_peak_rss_mb": max(r["read"]["peak_rss_mb"] for r in rounds)}
    if "read_mt" in rounds[0]:
        out["read_mt_rows_per_s"] = med([r["read_mt"]["rows"] / r["read_mt"]["seconds"] for r in rounds])
    for name in ("ingest", "ingest_baseline"):
        if name in rounds[0]:
            runs = [r[name] for r in rounds]
            both = med([x["rows"] / (x["pass1_seconds"] + x["pass2_seconds"]) for x in runs])
            out[name] = {"pass1_rows_per_s": med([x["rows"] / x["pass1_seconds"] for x in runs]),
                         "pass2_rows_per_s": med([x["rows"] / x["pass2_seconds"] for x in runs]),
                         "ingest_rows_per_s": both, "ratio_to_read": both / read,
                         "ratio_to_read_per_round": [x["rows"] / (x["pass1_seconds"] + x["pass2_seconds"]) /
                                                     (r["read"]["rows"] / r["read"]["seconds"])
                                                     for x, r in zip(runs, rounds)],
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in runs)}
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        what, rest = sys.argv[2], sys.argv[3:]
        fn = {"read": child_read, "read_mt": child_read_mt, "ingest": child_ingest}[what]
        if what == "ingest":
            rest[-1] = int(rest[-1])
        out = fn(*rest)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        out["lightfmp"] = str(Path(sys.modules["lightfmp"].__file__).parent) if "lightfmp" in sys.modules else None
        print(json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000000", help="comma-separated row counts, e.g. 1000000,5000000")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lightfmp-ingest"))
    ap.add_argument("--chunk-rows", type=int, default=262144)
    ap.add_argument("--max-card", type=int, default=500_000, help="largest cardinality of a C column")
    ap.add_argument("--synthetic", action="store_true", help="also the synthetic CSV with 13 numeric columns")
    ap.add_argument("--baseline", default=None, help="directory holding an older lightfmp package to compare")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of every measurement (medians reported)")
    ap.add_argument("--no-read-mt", action="store_true",
                    help="skip read_csv (it holds the whole file in memory: leave it out for large files)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        files = [(args.workdir / f"criteo-{rows}-s{args.seed}-c{args.max_card}.tsv", "criteo")]
        if not files[0][0].exists():
            t0 = time.perf_counter()
            criteo_tsv(files[0][0], rows, args.seed, args.max_card)
            print(f"wrote {files[0][0]} in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.synthetic:
            files.append((synthetic_csv(args.workdir, rows, args.seed), "csv"))
        for path, fmt in files:
            res = measure(path, fmt, args.workdir, args.chunk_rows, args.baseline, f"{fmt}-{rows}", args.rounds,
                          not args.no_read_mt)
            res["rates"] = rates(res)
            results.append(res)
            r = res["rates"]
            mt = f" (read_csv multi-threaded {r['read_mt_rows_per_s']:,.0f})" if "read_mt_rows_per_s" in r else ""
            print(f"{fmt} {rows:,} rows ({res['bytes'] / 1e6:.0f} MB): read {r['read_rows_per_s']:,.0f} rows/s{mt}",
                  flush=True)
            for name in ("ingest", "ingest_baseline"):
                if name in r:
                    x = r[name]
                    print(f"  {name:16s} pass 1 {x['pass1_rows_per_s']:9,.0f} rows/s  pass 2 "
                          f"{x['pass2_rows_per_s']:9,.0f} rows/s  both {x['ingest_rows_per_s']:9,.0f} rows/s "
                          f"= {x['ratio_to_read']:.2f}x read  peak RSS {x['peak_rss_mb']:,.0f} MB", flush=True)
            if "ingest_baseline" in r:
                up = r["ingest"]["ingest_rows_per_s"] / r["ingest_baseline"]["ingest_rows_per_s"]
                print(f"  speed-up of both passes over the baseline: {up:.1f}x", flush=True)
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()

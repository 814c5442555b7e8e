"""`lightfmp export`, `lightfmp profile` and `lightfmp serve` (registered on the main app by cli/app.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lightfmp import profiling
from lightfmp.config import check_range
from lightfmp.export import export_run
from lightfmp.export.bundle import MAX_THREADS
from lightfmp.export.graph import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from lightfmp.errors import LightFMPError
from lightfmp.io import check_output_file, write_json_atomic
from lightfmp.serve import ServeOptions, serve

from .common import Command, err, friendly, out


def _listed(values) -> str:
    return ",".join(map(str, values))


def register(app) -> None:
    @app.command("export", cls=Command)
    @friendly
    def export_cmd(run: Path = typer.Argument(..., help="A complete run directory (after `lightfmp prune`, or a "
                                                        "--no-select run)."),
                   out_dir: Path = typer.Option(..., "--out", "-o", help="Export directory to create."),
                   opset: int = typer.Option(DEFAULT_OPSET, "--opset", help=f"ONNX opset ({MIN_OPSET}..{MAX_OPSET})."),
                   dtype: str = typer.Option("fp32", "--dtype", help="Embedding tables: fp32 or fp16."),
                   inputs: str = typer.Option("ids", "--inputs", help="ids: int64 ids per field; raw: strings, "
                                                                      "vocabulary lookup inside the graph."),
                   triton_name: Optional[str] = typer.Option(
                       None, "--triton-name", help="Triton model name (default: the --out directory name)."),
                   max_batch_size: int = typer.Option(4096, "--max-batch-size", help="Triton max_batch_size."),
                   force: bool = typer.Option(False, "--force", help="Replace an existing export directory (only "
                                              "an export lightfmp wrote; a run or anything else is refused)."),
                   quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary table.")):
        """Export a finished run to ONNX + feature schema + Triton entry, checked against PyTorch on its test rows."""
        doc = export_run(run, out_dir, opset=opset, dtype=dtype, inputs=inputs, force=force,
                         triton_name=triton_name, max_batch_size=max_batch_size)
        if quiet:
            return
        v = doc["validation"]
        t = Table(title=f"export {out_dir}")
        t.add_column("")
        t.add_column("value", justify="right")
        t.add_row("inputs", ", ".join(s["name"] for s in doc["inputs"]))
        t.add_row("dropped fields", ", ".join(doc["dropped_fields"]) or "-")
        t.add_row("input mode / tables", f"{doc['input_mode']} / {doc['table_dtype']}")
        t.add_row("model bytes", f"{(Path(out_dir) / doc['model_file']).stat().st_size:,}")
        t.add_row(f"max |ORT - torch| ({v['rows']} {v['source']} rows)", f"{v['max_abs_diff_vs_torch']:.2e}")
        t.add_row("max |batch 1 - batch N|", f"{v['batch1_vs_batch_max_abs_diff']:.2e}")
        if "auc_onnx" in v:
            t.add_row("test AUC (ONNX)", f"{v['auc_onnx']:.5f}")
        if "auc_run" in v:
            t.add_row("test AUC (run)", f"{v['auc_run']:.5f}")
        if "fp16" in v and "auc_change" in v["fp16"]:
            t.add_row("AUC change from fp16 tables", f"{v['fp16']['auc_change']:+.2e}")
        out.print(t)
        for note in (v.get("note"), v.get("auc_skipped")):
            if note:
                err.print(f"[yellow]note:[/] {note}", highlight=False)
        if v.get("numeric_bucket_mismatches"):
            moves = "" if "logloss_change_float32_buckets" not in v else (
                f", which moves the run's own model's test logloss by {v['logloss_change_float32_buckets']:+.2e} "
                f"(standard error {v['logloss_change_se']:.1e})"
                + (f", test AUC {v['auc_torch_float32_buckets'] - v['auc_torch']:+.2e}"
                   if "auc_torch_float32_buckets" in v and "auc_torch" in v else ""))
            fields = ", ".join(f"'{k}' {n:,}" for k, n in v.get("numeric_bucket_mismatches_by_field", {}).items())
            err.print(f"[yellow]note:[/] {v['numeric_bucket_mismatches']} test rows bucket differently with float32 "
                      f"numeric inputs than with the float64 training encoding"
                      f"{f' (rows by field: {fields})' if fields else ''}{moves}", highlight=False)

    @app.command("profile", cls=Command)
    @friendly
    def profile_cmd(model: Path = typer.Argument(..., help="Export directory or .onnx file."),
                    compare: Optional[Path] = typer.Option(None, "--compare", help="A second model to time "
                                                           "side by side (e.g. the full model vs a pruned one)."),
                    batch_sizes: Optional[str] = typer.Option(
                        None, "--batch-sizes",
                        help=f"Comma-separated batch sizes to time (each 1 to {profiling.MAX_BATCH_SIZE:,}; default "
                             f"{_listed(profiling.DEFAULT_BATCH_SIZES)}, with --url "
                             f"{_listed(profiling.DEFAULT_URL_BATCH_SIZES)})."),
                    threads: int = typer.Option(1, "--threads", help="ONNX Runtime intra-op threads (and "
                                                "torch threads); 0 = library default."),
                    json_file: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
                    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of latency vs batch size."),
                    trace: Optional[Path] = typer.Option(None, "--trace", help="ONNX Runtime profiling trace "
                                                         "(JSON, chrome://tracing) of the first model."),
                    max_seconds: float = typer.Option(profiling.Budget.max_seconds, "--max-seconds",
                                                      help="Timing budget per batch size."),
                    max_runs: int = typer.Option(profiling.Budget.max_runs, "--max-runs",
                                                 help="Timed runs per batch size at most."),
                    eager: bool = typer.Option(True, "--eager/--no-eager",
                                               help="Also time the run's PyTorch model (needs the run dir)."),
                    quiet: bool = typer.Option(False, "--quiet", "-q", help="No tables (use with --json)."),
                    url: Optional[str] = typer.Option(
                        None, "--url", help="Measure a running server that serves MODEL (e.g. `lightfmp serve "
                                            "MODEL`) at this http:// URL instead of ONNX Runtime in this process."),
                    clients: Optional[str] = typer.Option(
                        None, "--clients", help=f"With --url: comma-separated numbers of concurrent clients (default "
                                                f"{_listed(profiling.DEFAULT_CLIENTS)}); each cell sends at most "
                                                f"--max-runs requests for at most --max-seconds.")):
        """Latency (p50/p95/p99) and throughput per batch size under ONNX Runtime, or of a server (--url)."""
        if url is not None:
            clients = _listed(profiling.DEFAULT_CLIENTS) if clients is None else clients
            return _profile_url(url, model, clients, batch_sizes, json_file,
                                max_seconds, max_runs, quiet, compare=compare, plot=plot, trace=trace)
        if clients is not None:  # it would be ignored: the local timing has no clients
            raise LightFMPError(f"--clients {clients!r}: only with --url (concurrent clients of a running server)")
        default = _listed(profiling.DEFAULT_BATCH_SIZES)
        sizes = profiling.parse_batch_sizes(default if batch_sizes is None else batch_sizes)
        check_range("--threads", threads, 0, MAX_THREADS)
        check_range("--max-seconds", max_seconds, 0, open_low=True)
        check_range("--max-runs", max_runs, 1)
        outputs = [(p, kind, flag) for p, kind, flag in ((json_file, "json", "--json"), (plot, "png", "--plot"),
                                                          (trace, "json", "--trace")) if p is not None]
        for i, (path, kind, flag) in enumerate(outputs):
            same = next((f for q, _, f in outputs[:i] if os.path.realpath(q) == os.path.realpath(path)), None)  # links
            if same is not None:  # one would silently replace the other
                raise LightFMPError(f"{path}: given to both {same} and {flag}; each output needs its own file")
            check_output_file(path, kind, flag)  # before the timing: never replace the user's files
        if compare is not None and not Path(compare).exists():  # named as the flag, before the first model's timing
            raise LightFMPError(f"--compare {compare}: no such export or ONNX file")
        budget = profiling.Budget(max_runs=max_runs, max_seconds=max_seconds, min_runs=min(5, max_runs))
        models = [model] + ([compare] if compare is not None else [])
        res = profiling.profile(models, sizes, threads=threads or None, budget=budget, eager=eager, trace=trace)
        if json_file:
            write_json_atomic(json_file, profiling.results_json(res, threads or None), flag="--json")
        if plot:
            profiling.plot(res, plot)
        if quiet:
            return
        for mt in res:
            used = f"{threads} thread{'' if threads == 1 else 's'}" if threads else "default threads"
            t = Table(title=f"{mt.name} ({mt.bundle.model_bytes():,} model bytes, {used})")
            for c in ("engine", "batch", "p50 ms", "p95 ms", "p99 ms", "rows/s", "request bytes", "runs"):
                t.add_column(c, justify="left" if c == "engine" else "right")
            for r in mt.rows + mt.eager:
                t.add_row("ORT" if r["engine"] == "onnxruntime" else "eager", str(r["batch_size"]),
                          f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['rows_per_s']:,.0f}",
                          f"{r.get('request_bytes', 0):,}" if "request_bytes" in r else "", str(r["runs"]))
            out.print(t)
            if mt.eager:
                sp = ", ".join(f"{e['batch_size']}: {e['p50_ms'] / r['p50_ms']:.1f}x"
                               for r, e in zip(mt.rows, mt.eager))
                out.print(f"ONNX Runtime speedup over PyTorch eager (p50) by batch size: {sp}")
            elif mt.eager_note and eager:
                out.print(f"[dim]no PyTorch eager timing: {mt.eager_note}[/]")
        if len(res) == 2:
            a, b = res
            t = Table(title=f"{b.name} / {a.name}")
            for c in ("batch", "p50 ratio", "p99 ratio", "rows/s ratio", "request bytes ratio"):
                t.add_column(c, justify="right")
            for ra, rb in zip(a.rows, b.rows):
                t.add_row(str(ra["batch_size"]), f"{rb['p50_ms'] / ra['p50_ms']:.2f}",
                          f"{rb['p99_ms'] / ra['p99_ms']:.2f}", f"{rb['rows_per_s'] / ra['rows_per_s']:.2f}",
                          f"{rb['request_bytes'] / max(ra['request_bytes'], 1):.2f}")
            out.print(t)
            out.print(f"model bytes: {a.bundle.model_bytes():,} vs {b.bundle.model_bytes():,} "
                      f"({b.bundle.model_bytes() / a.bundle.model_bytes():.2f}x)")
        for p, what in ((json_file, "json"), (plot, "plot"), (trace, "trace")):
            if p:
                out.print(f"{what}: {p}")

    @app.command("serve", cls=Command)
    @friendly
    def serve_cmd(export_dir: Path = typer.Argument(..., help="Export directory (`lightfmp export --out`)."),
                  host: str = typer.Option(ServeOptions.host, "--host", help="Address to listen on."),
                  port: int = typer.Option(ServeOptions.port, "--port",
                                           help="Port to listen on (0: any free port; the URL is printed)."),
                  max_batch: int = typer.Option(ServeOptions.max_batch, "--max-batch",
                                                help="Dynamic batching: rows per model call at most (1 turns "
                                                     "batching off)."),
                  batch_wait_ms: float = typer.Option(ServeOptions.batch_wait_ms, "--batch-wait-ms",
                                                      help="Dynamic batching: how long the oldest request waits for "
                                                           "others (0 turns batching off)."),
                  threads: int = typer.Option(ServeOptions.threads, "--threads",
                                              help="ONNX Runtime intra-op threads; 0 = library default."),
                  max_body_mb: float = typer.Option(ServeOptions.max_body_mb, "--max-body-mb",
                                                    help="Largest request body accepted (MB); larger ones get HTTP "
                                                         "413 before they are read.")):
        """Serve an export over HTTP (KServe v2 REST): dynamic batching, raw records, Prometheus /metrics."""
        options = ServeOptions(host=host, port=port, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                               threads=threads, max_body_mb=max_body_mb)
        serve(export_dir, options, announce=lambda line: out.print(line, soft_wrap=True, highlight=False,
                                                                   markup=False))


def _profile_url(url: str, model: Path, clients: str, batch_sizes: Optional[str], json_file: Optional[Path],
                 max_seconds: float, max_runs: int, quiet: bool, **unused) -> None:
    """`lightfmp profile MODEL --url URL`: concurrent clients x batch sizes against a running server."""
    for flag, value in unused.items():
        if value is not None:
            raise LightFMPError(f"--{flag}: not with --url (a server serves one model and is timed from outside)")
    counts = profiling.parse_clients(clients)
    sizes = profiling.parse_batch_sizes(_listed(profiling.DEFAULT_URL_BATCH_SIZES) if batch_sizes is None
                                         else batch_sizes)
    check_range("--max-seconds", max_seconds, 0, open_low=True)
    check_range("--max-runs", max_runs, 1)
    if json_file is not None:
        check_output_file(json_file, "json", "--json")
    rows = profiling.profile_url(url, model, counts, sizes,
                                 profiling.Budget(max_runs=max_runs, max_seconds=max_seconds))
    if json_file:
        write_json_atomic(json_file, profiling.url_results_json(rows), flag="--json")
    failed = sum(r["errors"] + r["warmup_errors"] for r in rows)
    if failed:
        first = next(r["first_error"] for r in rows if r["first_error"])
        err.print(f"[yellow]note:[/] {failed} requests failed; the first: {first}", highlight=False, markup=True)
    if quiet:
        return
    t = Table(title=f"{url} model {model}")
    for c in ("clients", "batch", "p50 ms", "p99 ms", "requests/s", "rows/s", "requests", "errors"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["clients"]), str(r["batch_size"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                  f"{r['requests_per_s']:,.0f}", f"{r['rows_per_s']:,.0f}", str(r["requests"]), str(r["errors"]))
    out.print(t)
    if json_file:
        out.print(f"json: {json_file}")


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"

"""`lightfmp export` and `lightfmp profile` (registered on the main app by cli/app.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lightfmp import profiling
from lightfmp.config import check_range
from lightfmp.export import export_run
from lightfmp.io import check_output_file, write_json_atomic

from .common import Command, err, friendly, out


def register(app) -> None:
    @app.command("export", cls=Command)
    @friendly
    def export_cmd(run: Path = typer.Argument(..., help="A complete run directory (after `lightfmp prune`, or a "
                                                        "--no-select run)."),
                   out_dir: Path = typer.Option(..., "--out", "-o", help="Export directory to create."),
                   opset: int = typer.Option(17, "--opset", help="ONNX opset (13..20)."),
                   dtype: str = typer.Option("fp32", "--dtype", help="Embedding tables: fp32 or fp16."),
                   inputs: str = typer.Option("ids", "--inputs", help="ids: int64 ids per field; raw: strings, "
                                                                      "vocabulary lookup inside the graph."),
                   triton_name: Optional[str] = typer.Option(
                       None, "--triton-name", help="Triton model name (default: the --out directory name)."),
                   max_batch_size: int = typer.Option(4096, "--max-batch-size", help="Triton max_batch_size."),
                   force: bool = typer.Option(False, "--force", help="Replace an existing export directory (only "
                                              "an export lightfmp wrote; a run or anything else is refused)."),
                   quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary table.")):
        """Export a finished run to ONNX (+ feature_schema.json, vocab/, a Triton model repository entry),
        validated against PyTorch on the run's test rows."""
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
        for note in (v.get("note"),):
            if note:
                err.print(f"[yellow]note:[/] {note}", highlight=False)
        if v.get("numeric_bucket_mismatches"):
            err.print(f"[yellow]note:[/] {v['numeric_bucket_mismatches']} test rows bucket differently with float32 "
                      f"numeric inputs than with the float64 training encoding", highlight=False)

    @app.command("profile", cls=Command)
    @friendly
    def profile_cmd(model: Path = typer.Argument(..., help="Export directory or .onnx file."),
                    compare: Optional[Path] = typer.Option(None, "--compare", help="A second model to time "
                                                           "side by side (e.g. the full model vs a pruned one)."),
                    batch_sizes: str = typer.Option("1,8,64,512,4096", "--batch-sizes",
                                                    help=f"Comma-separated batch sizes to time (each 1 to "
                                                         f"{profiling.MAX_BATCH_SIZE:,})."),
                    threads: int = typer.Option(1, "--threads", help="ONNX Runtime intra-op threads (and "
                                                "torch threads); 0 = library default."),
                    json_file: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
                    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of latency vs batch size."),
                    trace: Optional[Path] = typer.Option(None, "--trace", help="ONNX Runtime profiling trace "
                                                         "(JSON, chrome://tracing) of the first model."),
                    max_seconds: float = typer.Option(1.0, "--max-seconds", help="Timing budget per batch size."),
                    max_runs: int = typer.Option(200, "--max-runs", help="Timed runs per batch size at most."),
                    eager: bool = typer.Option(True, "--eager/--no-eager",
                                               help="Also time the run's PyTorch model (needs the run dir)."),
                    quiet: bool = typer.Option(False, "--quiet", "-q", help="No tables (use with --json)."
                                               )):
        """Latency (p50/p95/p99) and throughput per batch size under ONNX Runtime, with PyTorch eager for
        reference."""
        sizes = profiling.parse_batch_sizes(batch_sizes)
        check_range("--threads", threads, 0)
        check_range("--max-seconds", max_seconds, 0, open_low=True)
        check_range("--max-runs", max_runs, 1)
        for path, kind, flag in ((json_file, "json", "--json"), (plot, "png", "--plot"), (trace, "json", "--trace")):
            if path is not None:
                check_output_file(path, kind, flag)  # before the timing: never replace the user's files
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
            t = Table(title=f"{mt.name} ({mt.bundle.model_bytes():,} model bytes, {threads or 'default'} threads)")
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

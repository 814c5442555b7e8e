"""`lightfmp profile`: ONNX Runtime latency per batch size (and PyTorch eager for reference) on inputs drawn
from the export's vocabularies.

Each (model, batch size) gets a few warm-up runs, then timed runs until `max_runs` or `max_seconds`, whichever
comes first (at least `min_runs`). Latency is wall time of one `session.run` on a prepared batch.

`profile_url` measures a running server instead (`lightfmp serve`, or any Open Inference Protocol server that
serves the export): concurrent clients x request batch sizes, through `lightfmp.serve.load.measure`, the same
measurement benchmarks/serve_load.py makes.
"""
from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import comma_ints
from .errors import LightFMPError, first_repeat
from .export.bundle import Bundle, load_bundle
from .export.contract import locate_run
from .export.feeds import sample_feeds
from .export.graph import serving_module, torch_inputs
from .io import PNG_METADATA, atomic_path, check_output_file, file_sha256, temp_prefix
from .rundir import open_run
from .serve.load import Target, get_json, infer_request, measure
from .serve.model import served_name
from .serve.protocol import model_metadata

DEFAULT_BATCH_SIZES = (1, 8, 64, 512, 4096)
DEFAULT_URL_BATCH_SIZES = (1, 64)
DEFAULT_CLIENTS = (1, 8, 32)
MAX_CLIENTS = 1024
MAX_BATCH_SIZE = 1 << 20  # 1,048,576 rows: larger batches take minutes to draw and time, and gigabytes of memory


@dataclass
class Budget:
    warmup: int = 5
    min_runs: int = 5
    max_runs: int = 200
    max_seconds: float = 1.0


@dataclass
class ModelTimings:
    name: str
    bundle: Bundle
    rows: list[dict] = field(default_factory=list)
    eager: list[dict] = field(default_factory=list)
    eager_note: str | None = None


def _counts(text: str, flag: str, example: str, high: int) -> list[int]:
    """Comma-separated integers from 1 to `high` (a repeat is dropped: timing a size twice measures nothing new)."""
    return comma_ints(text, flag, 1, high, example, repeats="drop")


def parse_batch_sizes(text: str) -> list[int]:
    return _counts(text, "--batch-sizes", "1,8,64", MAX_BATCH_SIZE)


def parse_clients(text: str) -> list[int]:
    return _counts(text, "--clients", "1,8,32", MAX_CLIENTS)


def time_calls(fn, budget: Budget) -> np.ndarray:
    """Seconds per call after warm-up."""
    t_end = time.perf_counter() + budget.max_seconds / 5
    for i in range(budget.warmup):
        fn()
        if time.perf_counter() > t_end:
            break
    times: list[float] = []
    t_end = time.perf_counter() + budget.max_seconds
    while len(times) < budget.max_runs and (len(times) < budget.min_runs or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def summarize(name: str, batch: int, times: np.ndarray, **extra) -> dict:
    p50, p95, p99 = (float(np.percentile(times, q) * 1e3) for q in (50, 95, 99))
    return {"model": name, "batch_size": batch, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
            "rows_per_s": batch / (p50 / 1e3) if p50 > 0 else float("inf"), "runs": int(len(times)), **extra}


def request_bytes(feeds: dict[str, np.ndarray]) -> int:
    """Bytes of the input tensors (UTF-8 text for string inputs)."""
    total = 0
    for v in feeds.values():
        total += sum(len(str(s).encode()) for s in v.ravel()) if v.dtype == object else v.nbytes
    return int(total)


def feeds_for(bundle: Bundle, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    vocabs = None
    if bundle.raw:
        vocabs = {s.name: tokens for s in bundle.inputs if (tokens := bundle.vocab_tokens(s)) is not None}
    return sample_feeds(bundle.inputs, batch, seed=seed, vocabs=vocabs)


def _eager_module(bundle: Bundle):
    """The run's PyTorch model behind the export's inputs, or (None, why not)."""
    if bundle.raw:
        return None, "raw-input export: PyTorch eager takes ids, not strings"
    try:
        run_dir = locate_run(bundle.dir or bundle.model_path.parent, bundle.contract.run_dir)
    except LightFMPError as e:
        return None, str(e)
    if not run_dir or not Path(run_dir).is_dir():
        return None, (f"run directory {run_dir!r} not found next to the export, beside its folder or in the working "
                      f"directory" if run_dir else "no run_dir in the schema")
    try:
        model, kept = open_run(run_dir).load_final()
    except LightFMPError as e:
        return None, f"cannot load the run's model ({e})"
    if kept.names != bundle.contract.names:
        return None, f"run {run_dir} no longer matches the export (fields differ)"
    want = bundle.contract.run_weights_sha256
    if want is not None and file_sha256(Path(run_dir) / "model.safetensors") != want:
        return None, (f"run {run_dir} does not hold the exported model (its model.safetensors differs from the one "
                      f"exported: trained again since, or another run of that name)")
    return (serving_module(model, kept), kept), None


def profile(models: list[str | Path], batch_sizes=DEFAULT_BATCH_SIZES, threads: int | None = 1,
            budget: Budget | None = None, eager: bool = True, trace: str | Path | None = None,
            log=None) -> list[ModelTimings]:
    """Time every model at every batch size. `trace`: an ONNX Runtime profiling trace (JSON) of the first model,
    from a separate session so profiling does not slow the timed runs."""
    budget = budget or Budget()
    bundles = [(str(m), load_bundle(m)) for m in models]
    # by the model file each names: an export directory and its model.onnx are one model
    twice = first_repeat(b.model_path.resolve() for _, b in bundles)
    if twice is not None:
        raise LightFMPError(f"{next(n for n, b in bundles if b.model_path.resolve() == twice)}: the same model was "
                            f"given twice ({twice})")
    out = []
    for name, bundle in bundles:
        sess = bundle.session(threads)
        mt = ModelTimings(name, bundle)
        size = bundle.model_bytes()
        eager_mod, mt.eager_note = _eager_module(bundle) if eager else (None, "disabled")
        for b in batch_sizes:
            feeds = feeds_for(bundle, b)
            times = time_calls(lambda: sess.run(None, feeds), budget)
            mt.rows.append(summarize(name, b, times, engine="onnxruntime", model_bytes=size,
                                     request_bytes=request_bytes(feeds)))
            if log:
                log(f"{name} batch {b}: p50 {mt.rows[-1]['p50_ms']:.3f} ms")
            if eager_mod is not None:
                mt.eager.append(_time_eager(eager_mod, feeds, name, b, threads, budget))
        out.append(mt)
    if trace:
        _trace(bundles[0][1], batch_sizes, threads, Path(trace))
    return out


def profile_url(url: str, model: str | Path, clients=DEFAULT_CLIENTS, batch_sizes=DEFAULT_URL_BATCH_SIZES,
                budget: Budget | None = None, log=None) -> list[dict]:
    """Load a running server that serves the export `model` (its inputs and served name come from the export):
    for every client count and batch size, `budget.max_runs` requests at most, for `budget.max_seconds` at
    most. Rows: clients, batch_size, p50_ms, p99_ms, requests_per_s, rows_per_s, errors, ..."""
    budget = budget or Budget()
    target = Target.parse(url)
    bundle = load_bundle(model)
    name = served_name(bundle.contract, bundle.dir or bundle.model_path.parent)
    check_served(target, bundle, name)
    rows = []
    for c in clients:
        for b in batch_sizes:
            body, headers = infer_request(bundle.inputs, feeds_for(bundle, b), bundle.contract.output.name)
            r = measure(target, name, body, headers, b, c, budget.max_runs, budget.max_seconds)
            rows.append({"model": str(model), "url": target.url, **r})
            if log:
                log(f"{target.url} {c} clients x batch {b}: p99 {r['p99_ms'] or float('nan'):.3f} ms, "
                    f"{r['errors']} errors")
    return rows


def check_served(target: Target, bundle: Bundle, name: str) -> None:
    """The server at `target` serves model `name` with the export's inputs (names and datatypes)."""
    status, doc = get_json(target, f"/v2/models/{name}")
    if status == 404:
        raise LightFMPError(f"--url {target.url}: the server does not serve model '{name}' (the export's "
                            f"triton_model)")
    if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise LightFMPError(f"--url {target.url}: GET /v2/models/{name} answered HTTP {status}, not model metadata")
    want = {(i["name"], i["datatype"]) for i in model_metadata(bundle.contract, name)["inputs"]}
    got = {(i.get("name"), i.get("datatype")) for i in doc["inputs"] if isinstance(i, dict)}
    if want != got:
        raise LightFMPError(f"--url {target.url}: model '{name}' there has inputs "
                            f"{', '.join(sorted(f'{n} {d}' for n, d in got))}, not the export's "
                            f"{', '.join(sorted(f'{n} {d}' for n, d in want))}")


def url_results_json(rows: list[dict]) -> dict:
    return {"results": rows, "machine": machine()}


def _time_eager(mod, feeds, name: str, batch: int, threads: int | None, budget: Budget) -> dict:
    module, kept = mod
    args = torch_inputs(feeds, kept)

    def call():
        with torch.inference_mode():
            module(*args)
    before = torch.get_num_threads()  # torch's thread count is the process's: the caller's is given back
    if threads:
        torch.set_num_threads(threads)
    try:
        return summarize(name, batch, time_calls(call, budget), engine="torch-eager")
    finally:
        torch.set_num_threads(before)


def _trace(bundle: Bundle, batch_sizes, threads, dest: Path) -> None:
    check_output_file(dest, "json", "--trace")
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = str(dest.parent / f"{temp_prefix(dest)}ort")
    sess = bundle.session(threads, profile_prefix=prefix)
    try:
        for b in batch_sizes:
            feeds = feeds_for(bundle, b)
            for _ in range(5):
                sess.run(None, feeds)
    except BaseException:  # stopped (Ctrl-C, SIGTERM) or failed: ONNX Runtime's own file goes too
        Path(sess.end_profiling()).unlink(missing_ok=True)
        raise
    with atomic_path(dest, "json", "--trace") as tmp:
        shutil.move(sess.end_profiling(), tmp)


def results_json(timings: list[ModelTimings], threads: int | None) -> dict:
    import onnxruntime
    return {"results": [r for mt in timings for r in mt.rows],
            "eager": [r for mt in timings for r in mt.eager],
            "models": [{"model": mt.name, "path": str(mt.bundle.model_path), "model_bytes": mt.bundle.model_bytes(),
                        "inputs": mt.bundle.contract.names, "eager_note": mt.eager_note}
                       for mt in timings],
            "threads": threads, "machine": machine(), "onnxruntime": onnxruntime.__version__}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} " \
           f"{platform.release()}, Python {platform.python_version()}"


def plot(timings: list[ModelTimings], path: str | Path) -> Path:
    check_output_file(path, "png", "--plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mt in timings:
        bs = [r["batch_size"] for r in mt.rows]
        line, = ax.plot(bs, [r["p50_ms"] for r in mt.rows], marker="o", label=f"{Path(mt.name).name} (ORT p50)")
        ax.fill_between(bs, [r["p50_ms"] for r in mt.rows], [r["p95_ms"] for r in mt.rows], alpha=0.15,
                        color=line.get_color())
        if mt.eager:
            ax.plot([r["batch_size"] for r in mt.eager], [r["p50_ms"] for r in mt.eager], ls="--", marker="x",
                    color=line.get_color(), label=f"{Path(mt.name).name} (PyTorch eager p50)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch (ms); band: p50-p95")
    ax.set_title("lightfmp profile")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, "png", "--plot") as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path


__all__ = ["profile", "profile_url", "Budget", "MAX_BATCH_SIZE", "parse_batch_sizes", "parse_clients",
           "results_json", "url_results_json", "plot", "request_bytes", "time_calls", "DEFAULT_CLIENTS",
           "DEFAULT_URL_BATCH_SIZES"]

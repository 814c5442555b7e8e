"""`export_run`: check the options, build the graph, validate it, and write the export directory atomically, with
the Triton Inference Server model repository entry (EXPORT/triton/<name>/config.pbtxt and 1/model.onnx)."""
from __future__ import annotations

import json
import numbers
import re
import shutil
from pathlib import Path

from google.protobuf import text_encoding

from ..config import check_switches
from ..errors import LightFMPError
from ..formats import derived
from ..io import atomic_dir, check_apart, check_out, file_sha256, path_of
from ..rundir import open_run
from ..schema import FLOAT32_MAX, beyond_float32
from ..writer_lock import holder, one_writer
from .contract import (EXPORT_VERSION, EXTERNAL_DATA_FILE, METADATA_KEY, MODEL_FILE, OUTPUT_NAME, TRITON_NAME,
                       ExternalData, InputSpec, OutputSpec, ServingContract, save_contract, vocab_text)
from .graph import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, build_graph, check_graph, save_model, serving_module
from .validate import VALIDATE_ROWS, validate, validation_rows

_TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "string": "TYPE_STRING"}


TRITON_MAX_BATCH = 2**31 - 1


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57]) + f"... ({len(text)} characters)"


def triton_model_name(text: str) -> str:
    """A Triton model name from a directory name `text`: characters outside [A-Za-z0-9_-] become '_', then '_' at
    either end go ('../x' -> 'x')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text).strip("_") or "lightfmp"


def triton_config(name: str, specs: list[InputSpec], max_batch_size: int) -> str:
    """config.pbtxt text. Triton dims leave out the batch dim; a [batch] tensor is dims [1] reshaped to [].
    Names are written as protobuf text-format strings: quotes, backslashes, newlines and other control characters
    escaped, so any field name gives a valid file that Triton reads back as the same name."""
    def q(s: str) -> str:
        return '"' + text_encoding.CEscape(s, as_utf8=True) + '"'

    def tensor(nm: str, dtype: str, shape: list) -> str:
        rest = shape[1:]
        dims = f"dims: [ {', '.join(str(d) for d in rest)} ]" if rest else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
        return f"  {{\n    name: {q(nm)}\n    data_type: {_TRITON_TYPES[dtype]}\n    {dims}\n  }}"

    ins = ",\n".join(tensor(s.name, s.dtype, s.shape) for s in specs)
    return (f"name: {q(name)}\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: {max_batch_size}\n"
            f"input [\n{ins}\n]\noutput [\n{tensor(OUTPUT_NAME, 'float32', ['batch'])}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: 100\n}}\n")


def write_triton(repo: Path, name: str, specs: list[InputSpec], max_batch_size: int, model_files: list[Path]) -> None:
    """repo/<name>/config.pbtxt and a copy of the model files (model.onnx, external data) in repo/<name>/1/."""
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(triton_config(name, specs, max_batch_size))
    for p in model_files:
        shutil.copyfile(p, version / p.name)


def check_options(out: Path, opset: int, dtype: str, inputs: str, max_batch_size: int, force: bool,
                  triton_name: str | None = None) -> None:
    if triton_name is not None and not isinstance(triton_name, str):
        raise LightFMPError(f"--triton-name {triton_name!r}: must be text")
    if triton_name is not None and not re.fullmatch(TRITON_NAME, triton_name):
        raise LightFMPError(f"--triton-name {_shown(triton_name)}: a model name takes 1 to 255 letters, digits, '_' "
                            f"and '-' (it names a folder of the Triton repository and the serving URL)")
    if dtype not in ("fp32", "fp16"):
        raise LightFMPError(f"--dtype {dtype!r}: expected fp32 or fp16")
    if inputs not in ("ids", "raw"):
        raise LightFMPError(f"--inputs {inputs!r}: expected ids or raw")
    if not MIN_OPSET <= _whole("--opset", opset) <= MAX_OPSET:
        raise LightFMPError(f"--opset {opset}: supported range is {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    if not 1 <= _whole("--max-batch-size", max_batch_size) <= TRITON_MAX_BATCH:
        raise LightFMPError(f"--max-batch-size {max_batch_size}: must be 1..{TRITON_MAX_BATCH} (Triton reads it as a "
                            f"32-bit integer)")
    check_switches(force=force)
    check_out(out, force, "export")  # before any work: never replace what is not an earlier export


def _whole(name: str, value) -> int:
    """An integer option given from Python (a numpy integer too), as an int; else a one-line error (8.5 or '8' would
    be written into the Triton config and the schema as they are)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LightFMPError(f"{name} {value!r}: must be a whole number")
    return int(value)


def export_run(run_dir: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, dtype: str = "fp32",
               inputs: str = "ids", force: bool = False, triton_name: str | None = None,
               max_batch_size: int = 4096, validate_rows: int = VALIDATE_ROWS) -> dict:
    """Export a complete run to `out`. Returns the feature schema written (with its `validation` section)."""
    out = path_of(out, "the export directory")
    check_options(out, opset, dtype, inputs, max_batch_size, force, triton_name)
    opset, max_batch_size, validate_rows = int(opset), int(max_batch_size), _whole("validate_rows", validate_rows)
    if validate_rows < 1:
        raise LightFMPError(f"validate_rows {validate_rows}: must be >= 1 (the export is checked on these test rows)")
    run = open_run(run_dir)
    check_apart(out, run.path, "the run directory")
    check_apart(out, run.config.data.data, "the run's --data")  # inside a Parquet data directory: a part of the data
    writer = holder(run.path)
    if writer is not None:  # a prune rewriting the run: its model and metrics are about to change
        raise LightFMPError(f"{run.path}: another lightfmp command is writing it ({writer}); wait for it to end")
    with one_writer(out, "export"):
        return _export(run, out, opset, dtype, inputs, force, triton_name, max_batch_size, validate_rows)


def _export(run, out: Path, opset: int, dtype: str, inputs: str, force: bool, triton_name: str | None,
            max_batch_size: int, validate_rows: int) -> dict:
    model, kept = run.load_final()
    model.eval()
    if OUTPUT_NAME in kept.names:
        raise LightFMPError(f"field '{OUTPUT_NAME}' clashes with the model's output name; rename the column")
    raw = inputs == "raw"
    for f in kept.fields:
        edge = beyond_float32(f)
        if edge is not None:
            raise LightFMPError(f"field '{f.name}': its bucket edges reach {edge:.3g}, beyond float32 (the exported "
                                f"graph's numeric inputs, up to {FLOAT32_MAX:.2g}); scale the column (a log, a unit) "
                                f"and train again")
    hashed = [f.name for f in kept.fields if f.hashed]
    if raw and hashed:
        raise LightFMPError(f"--inputs raw: field '{hashed[0]}' is hashed (--hash-buckets) and the ONNX graph cannot "
                            f"hash strings; export with --inputs ids (feature_schema.json gives the hash rule)")
    empty = next((f.name for f in kept.fields if raw and f.kind == "categorical" and "" in (f.vocab or [])), None)
    if empty is not None:  # a raw export sends a missing value as "": the two would read as one
        raise LightFMPError(f"--inputs raw: field '{empty}' has the empty string as a category of its own (a "
                            f"Parquet '' is not a missing value), which a raw-input export reads as missing; export "
                            f"with --inputs ids")
    metrics = run.metrics()
    run_auc = metrics.get("test", {}).get("auc")
    name = triton_name if triton_name is not None else triton_model_name(out.name)
    specs = [InputSpec.from_field(f, raw, derived(run.config.data.format, f.name) or f.derive) for f in kept.fields]
    contract = ServingContract(
        inputs=specs, output=OutputSpec(), model_file=MODEL_FILE,
        schema_version=EXPORT_VERSION if any(i.derive for i in specs) else 1,
        label=kept.label, input_mode=inputs, dropped_fields=list(metrics.get("fields", {}).get("dropped", [])),
        table_dtype=dtype, opset=opset, backbone=run.config.model.backbone, run_dir=run.path.resolve().name,
        run_test_auc=run_auc, run_weights_sha256=file_sha256(run.path / "model.safetensors"), triton_model=name,
        max_batch_size=max_batch_size)

    rows = validation_rows(run, kept, validate_rows)
    module = serving_module(model, kept, dtype)
    with atomic_dir(out, force=force, kind="export") as tmp:
        proto = build_graph(module, kept, rows.feeds_ids, opset, tmp / ".export", dtype, raw)
        meta = proto.metadata_props.add()
        meta.key, meta.value = METADATA_KEY, json.dumps(contract.metadata(), sort_keys=False)
        proto.producer_name, proto.doc_string = "lightfmp", f"lightfmp export of {run.path.name}"
        external = save_model(proto, tmp / MODEL_FILE)
        check_graph(tmp / MODEL_FILE, contract.inputs)
        contract.validation = validate(tmp / MODEL_FILE, module, model, kept, rows, raw, dtype, run_auc,
                                       run.path / "metrics.json")
        contract.model_sha256 = file_sha256(tmp / MODEL_FILE)
        if external:
            contract.external_data = ExternalData(EXTERNAL_DATA_FILE, file_sha256(tmp / EXTERNAL_DATA_FILE))
        save_contract(contract, tmp)
        (tmp / "vocab").mkdir()
        for f, spec in zip(kept.fields, contract.inputs):
            if spec.vocab_file is not None:
                (tmp / spec.vocab_file).write_text(vocab_text(f))
        write_triton(tmp / "triton", name, contract.inputs, max_batch_size,
                     [tmp / MODEL_FILE] + ([tmp / EXTERNAL_DATA_FILE] if external else []))
    return contract.to_dict()


__all__ = ["export_run", "check_options", "triton_config", "triton_model_name", "write_triton"]

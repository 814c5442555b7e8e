"""The Triton Inference Server model repository entry: EXPORT/triton/<name>/config.pbtxt and 1/model.onnx."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from .contract import OUTPUT_NAME, InputSpec

_TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "string": "TYPE_STRING"}


def triton_model_name(text: str) -> str:
    """A Triton model name from `text`: characters outside [A-Za-z0-9_-] become '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text).strip("_") or "lightfmp"


def triton_config(name: str, specs: list[InputSpec], max_batch_size: int) -> str:
    """config.pbtxt text. Triton dims leave out the batch dim; a [batch] tensor is dims [1] reshaped to []."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

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


__all__ = ["triton_config", "triton_model_name", "write_triton"]

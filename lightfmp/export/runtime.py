"""ONNX Runtime sessions for exported models (validation, the Predictor and profiling share this setup)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def session(path: str | Path, threads: int | None = None, profile_prefix: str | None = None,
            providers: list[str] | None = None):
    """An InferenceSession on `path` (CPU unless `providers` says otherwise). `threads`: intra-op threads, one
    inter-op thread; `profile_prefix`: write an ONNX Runtime profiling trace with this prefix."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def run_batched(sess, feeds: dict[str, np.ndarray], batch: int = 8192) -> np.ndarray:
    """The first output for all rows of `feeds`, `batch` rows per call."""
    n = len(next(iter(feeds.values())))
    outs = [sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(outs) if outs else np.zeros(0, np.float32)


__all__ = ["session", "run_batched"]

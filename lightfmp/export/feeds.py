"""Graph inputs ("feeds"): built from rows of a frame, or drawn from the contract for timing."""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from ..errors import LightFMPError, shown
from ..schema import FIRST_ID, OOV_ID, PAD_ID, FeatureSchema, as_float, cell_strings, encode_field, split_multi
from .contract import InputSpec


def feeds_from_frame(df: pd.DataFrame, schema: FeatureSchema, raw: bool = False) -> dict[str, np.ndarray]:
    """Graph inputs for the rows of `df`: ids (int64) or raw strings per field, numeric values as float32."""
    feeds = {}
    for f in schema.fields:
        col = df[f.name]
        if f.kind == "numeric":
            with np.errstate(over="ignore"):  # beyond float32's range: inf, the last bucket, as float64 buckets it
                feeds[f.name] = as_float(col, f.name).astype(np.float32)
        elif not raw:
            ids = encode_field(f, col).astype(np.int64)
            feeds[f.name] = ids if f.kind == "multi_hot" else ids[:, 0]
        elif f.kind == "categorical":
            feeds[f.name] = cell_strings(col).fillna("").to_numpy(dtype=object)
        else:
            out = np.full((len(col), f.max_len), "", dtype=object)
            for r, toks in enumerate(split_multi(col, f.separator)):
                toks = toks[:f.max_len]
                out[r, :len(toks)] = toks
            feeds[f.name] = out
    return feeds


def check_feeds(specs: list[InputSpec], feeds) -> dict[str, np.ndarray]:
    """`feeds` as the graph takes them, or a one-line error: one array per input, no other names, the rows of each
    the same, the shape (one value a row; [rows, max_len] for a multi-hot field) and the type (whole numbers for
    ids, numbers for numeric fields, text for raw fields) each input's spec names."""
    if not isinstance(feeds, dict):
        raise LightFMPError(f"feeds: a dict of input name -> array, got {type(feeds).__name__}")
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    extra = [str(n) for n in feeds if n not in names]
    if missing or extra:
        said = (["missing " + ", ".join(map(repr, missing))] if missing else []) \
            + (["unknown " + ", ".join(map(repr, extra))] if extra else [])
        raise LightFMPError(f"feeds: {'; '.join(said)} (the model's inputs: {', '.join(names)})")
    out, rows = {}, None
    for s in specs:
        a = np.asarray(feeds[s.name])
        want = 2 if s.kind == "multi_hot" else 1
        if a.ndim != want or (want == 2 and a.shape[1] != s.width):
            raise LightFMPError(f"feeds: input '{s.name}' has shape {list(a.shape)}, expected "
                                f"{['rows', s.width] if want == 2 else ['rows']}")
        if rows is not None and len(a) != rows:
            raise LightFMPError(f"feeds: input '{s.name}' has {len(a):,} rows, '{specs[0].name}' {rows:,}")
        rows = len(a)
        kind = a.dtype.kind
        if s.dtype == "string":  # text: unicode, or objects that are all str (bytes or None would read as unseen)
            # pandas' C type scan on every call (a Python loop cost 7x more per batch); the item only on error
            if kind == "O" and a.size and pd.api.types.infer_dtype(a.ravel(), skipna=False) != "string":
                other = next(v for v in a.ravel() if not isinstance(v, str))
                raise LightFMPError(f"feeds: input '{s.name}' holds {shown(other)}, not text (a raw export's "
                                    f"missing value is '')")
            ok = kind in "OU"
        elif s.dtype == "float32":
            ok = kind in "iuf"
        else:
            ok = kind in "iu"
        if not ok:
            raise LightFMPError(f"feeds: input '{s.name}' holds {a.dtype} values, expected {s.dtype}")
        out[s.name] = a.astype(object if s.dtype == "string" else s.dtype, copy=False)
    return out


def sample_feeds(specs: list[InputSpec], batch: int, seed: int = 0, vocabs: dict[str, list[str]] | None = None,
                 oov_rate: float = 0.01) -> dict[str, np.ndarray]:
    """Plausible inputs drawn from each field's vocabulary: ids are Zipf-distributed over the vocabulary (vocabs
    are stored most frequent first), a few OOV / missing values, multi-hot rows of 1..L tokens. A field's values
    depend only on its name, the batch size and the seed, so two models sharing a field get the same column."""
    feeds = {}
    for s in specs:
        rng = np.random.default_rng([seed, batch, zlib.crc32(s.name.encode())])
        n_real = max(int(s.vocab_size) - FIRST_ID, 0)
        if s.kind == "numeric":
            edges = np.asarray(s.transform.boundaries if s.transform else [], dtype=np.float64)
            lo, hi = (float(edges[0]), float(edges[-1])) if len(edges) else (0.0, 1.0)
            pad = 0.1 * (hi - lo) + 1e-3
            x = rng.uniform(lo - pad, hi + pad, batch).astype(np.float32)
            x[rng.random(batch) < oov_rate] = np.nan
            feeds[s.name] = x
            continue
        width = s.width
        ids = _zipf_ids(rng, n_real, (batch, width))
        ids[rng.random((batch, width)) < oov_rate] = OOV_ID
        if s.kind == "multi_hot":
            lengths = rng.integers(1, width + 1, batch)
            ids[np.arange(width)[None, :] >= lengths[:, None]] = PAD_ID
        else:
            ids = ids[:, 0]
        if s.raw:
            toks = np.asarray(["", "<unseen>"] + list((vocabs or {}).get(s.name, [])), dtype=object)
            feeds[s.name] = toks[np.minimum(ids, len(toks) - 1)]
        else:
            feeds[s.name] = ids.astype(np.int32 if s.dtype == "int32" else np.int64)
    return feeds


def _zipf_ids(rng, n_real: int, shape) -> np.ndarray:
    if n_real <= 0:
        return np.full(shape, OOV_ID, dtype=np.int64)
    p = 1.0 / np.arange(1, n_real + 1) ** 1.05
    return rng.choice(n_real, size=shape, p=p / p.sum()).astype(np.int64) + FIRST_ID


__all__ = ["feeds_from_frame", "sample_feeds"]

"""Reading CSV / Parquet, inferring a schema, parsing labels and splitting rows.

CSV cells are read as text so a categorical value's id is keyed by exactly what the cell says; numeric columns are
parsed from that text. Parquet keeps its types and categorical values are keyed by their `str()`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LightFMPError
from .schema import FeatureSchema, Field, cell_strings, is_integral

PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise LightFMPError(f"{p}: file not found")
    if p.is_dir() or p.suffix.lower() in PARQUET_SUFFIXES:
        try:
            import pyarrow.parquet as pq
            df = pq.read_table(p).to_pandas()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise LightFMPError(f"{p}: cannot read Parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    else:
        try:
            df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
        except pd.errors.EmptyDataError:
            raise LightFMPError(f"{p}: empty file (no header, no rows)") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise LightFMPError(f"{p}: cannot parse CSV ({str(e).splitlines()[0]})") from None
    if len(df) == 0:
        raise LightFMPError(f"{p}: no data rows")
    df.columns = [str(c) for c in df.columns]
    return df.reset_index(drop=True)  # a stored Parquet index may repeat; row positions are what we use


def file_sha256(path: str | Path) -> str:
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        with open(q, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---- labels ------------------------------------------------------------------------------------------------------
_TRUE = {"1", "1.0", "true", "True", "TRUE"}
_FALSE = {"0", "0.0", "false", "False", "FALSE"}


def parse_labels(df: pd.DataFrame, label: str, positive: str | None, source: str) -> np.ndarray:
    if label not in df.columns:
        raise LightFMPError(f"{source}: label column '{label}' not found (columns: {', '.join(df.columns)})")
    col = df[label]
    if col.isna().any():
        raise LightFMPError(f"{source}: label column '{label}' has a missing value at row {int(np.argmax(col.isna()))}")
    text = cell_strings(col)
    if positive is not None:
        return (text == str(positive)).to_numpy(dtype=np.float32)
    pos, neg = text.isin(_TRUE), text.isin(_FALSE)
    bad = ~(pos | neg)
    if bad.any():
        raise LightFMPError(f"{source}: label column '{label}' is not binary: value {text[bad].iloc[0]!r} "
                            f"(labels must be 0/1 or booleans, or pass --positive VALUE)")
    return pos.to_numpy(dtype=np.float32)


# ---- schema inference ---------------------------------------------------------------------------------------------
@dataclass
class SchemaSpec:
    """What the user said about columns; the rest is inferred."""
    label: str
    categorical: list[str]
    numeric: list[str]
    multi_hot: dict[str, str]          # field -> separator
    ignore: list[str]
    positive: str | None = None
    min_count: int = 2
    num_buckets: int = 16


def parse_multi_hot(items: list[str] | str | None) -> dict[str, str]:
    """'genres:|,tags:;' or ['genres:|'] -> {'genres': '|', ...}; the separator defaults to '|'."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [s for s in items.split(",") if s]
    out = {}
    for it in items:
        name, _, sep = it.partition(":")
        out[name.strip()] = sep or "|"
    return out


def split_names(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


def infer_schema(df: pd.DataFrame, spec: SchemaSpec, source: str, exclude: tuple[str, ...] = ()) -> tuple[FeatureSchema, dict]:
    """Kinds for every column: named ones as given, others inferred. Returns the (unfitted) schema and a
    {column: reason} dict of the inferred choices, for printing."""
    named = set(spec.categorical) | set(spec.numeric) | set(spec.multi_hot)
    for col in list(named) + spec.ignore:
        if col not in df.columns:
            raise LightFMPError(f"{source}: column '{col}' named on the command line is absent "
                                f"(columns: {', '.join(df.columns)})")
    if spec.label in named:
        raise LightFMPError(f"{source}: column '{spec.label}' is the label and cannot also be a feature")
    fields, inferred = [], {}
    for col in df.columns:
        if col == spec.label or col in spec.ignore or (col in exclude and col not in named):
            continue
        s = df[col]
        if s.isna().all():
            raise LightFMPError(f"{source}: column '{col}' is entirely empty (NaN); drop it with --ignore {col}")
        if col in spec.multi_hot:
            fields.append(Field(col, "multi_hot", separator=spec.multi_hot[col]))
        elif col in spec.categorical:
            fields.append(Field(col, "categorical"))
        elif col in spec.numeric:
            fields.append(Field(col, "numeric"))
        else:
            kind, why = _infer_kind(s, len(df))
            fields.append(Field(col, kind))
            inferred[col] = f"{kind} ({why})"
    if not fields:
        raise LightFMPError(f"{source}: no feature columns besides the label '{spec.label}'")
    return FeatureSchema(spec.label, fields, spec.positive, spec.min_count, spec.num_buckets), inferred


def _infer_kind(s: pd.Series, rows: int) -> tuple[str, str]:
    """Strings and low-cardinality integers are categorical, floats numeric."""
    if pd.api.types.is_bool_dtype(s):
        return "categorical", "boolean"
    sample = s.dropna().iloc[:1000]
    if pd.to_numeric(sample, errors="coerce").isna().any():
        return "categorical", "text"  # decided on a sample: parsing a whole text column is slow
    x = pd.to_numeric(s, errors="coerce")
    if (x.isna() & s.notna()).any():
        return "categorical", "text"
    vals = x.to_numpy(dtype=np.float64)
    nunique = int(pd.Series(vals).nunique())
    if is_integral(vals):
        limit = max(1000, rows // 20)
        if nunique <= limit:
            return "categorical", f"integers, {nunique} distinct"
        return "numeric", f"integers, {nunique} distinct > {limit}"
    return "numeric", "floats"


# ---- splits -------------------------------------------------------------------------------------------------------
def parse_split(text: str | list | tuple) -> tuple[float, float, float]:
    parts = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or parts[2] <= 0:
        raise LightFMPError(f"--split {text!r}: expected three fractions train,valid,test such as 0.8,0.1,0.1")
    total = sum(parts)
    return parts[0] / total, parts[1] / total, parts[2] / total


def split_rows(df: pd.DataFrame, fractions: tuple[float, float, float], seed: int, time_column: str | None,
               source: str) -> dict[str, np.ndarray]:
    """Row indices of train / valid / test: a seeded permutation, or ordered by `time_column` (oldest rows train)."""
    n = len(df)
    if n < 10:
        raise LightFMPError(f"{source}: {n} rows is too few to split into train/valid/test")
    if time_column:
        if time_column not in df.columns:
            raise LightFMPError(f"{source}: --time-column '{time_column}' not found")
        t = pd.to_numeric(df[time_column], errors="coerce")
        key = t.to_numpy() if not t.isna().all() else pd.to_datetime(df[time_column], errors="coerce").to_numpy()
        order = np.argsort(key, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_valid = int(round(fractions[1] * n))
    out = {"train": np.sort(order[:n_train]), "valid": np.sort(order[n_train:n_train + n_valid]),
           "test": np.sort(order[n_train + n_valid:])}
    for name, rows in out.items():
        if len(rows) == 0:
            raise LightFMPError(f"{source}: --split {fractions} leaves the {name} split empty with {n} rows")
    return out


def subset_rows(n_train: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (within the training split) of the phase-1 subset and of the rest, both seeded."""
    if not 0 < fraction <= 1:
        raise LightFMPError(f"--subset {fraction}: must be in (0, 1]")
    perm = np.random.default_rng(seed + 7919).permutation(n_train)
    k = max(1, int(round(fraction * n_train)))
    return np.sort(perm[:k]), np.sort(perm[k:])

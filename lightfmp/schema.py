"""The feature schema: the one description of the input fields that data, models, pruning and export all read.

Id convention for every field: 0 is the padding id, 1 the OOV id (unseen, rare or missing values), real values
start at 2. Numeric fields are bucketized at quantile boundaries fitted on the training rows, so every field is an
id-based lookup into the same flat embedding table; their id 1 stands for a missing (NaN) value.

A categorical or multi-hot field may be hashed instead of having a vocabulary (`Field.hash_buckets` = N): a value's
id is FIRST_ID + stable_hash(value) % N (see `stable_hash` for the exact function), a missing value is OOV_ID.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LightFMPError
from .io import read_json, write_json_atomic

SCHEMA_VERSION = 1
PAD_ID = 0
OOV_ID = 1
FIRST_ID = 2
KINDS = ("categorical", "numeric", "multi_hot")


@dataclass
class Field:
    name: str
    kind: str
    vocab: list[str] | None = None        # categorical / multi_hot: token of id FIRST_ID + i
    separator: str | None = None          # multi_hot only
    max_len: int = 0                      # multi_hot only: slots per row (longer lists are truncated)
    boundaries: list[float] | None = None  # numeric only: bucket edges
    hash_buckets: int | None = None       # categorical / multi_hot: hashed into this many ids, no vocab

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LightFMPError(f"field '{self.name}': unknown kind '{self.kind}' (expected one of {', '.join(KINDS)})")
        if self.kind == "multi_hot" and not self.separator:
            raise LightFMPError(f"field '{self.name}': a multi_hot field needs a separator")
        if self.hash_buckets is not None:
            if self.kind == "numeric":
                raise LightFMPError(f"field '{self.name}': a numeric field cannot be hashed")
            if isinstance(self.hash_buckets, bool) or int(self.hash_buckets) < 1:
                raise LightFMPError(f"field '{self.name}': hash_buckets {self.hash_buckets!r} must be an integer >= 1")
            self.hash_buckets = int(self.hash_buckets)

    @property
    def hashed(self) -> bool:
        return self.hash_buckets is not None

    @property
    def fitted(self) -> bool:
        if self.kind == "numeric":
            return self.boundaries is not None
        if self.hashed:  # no vocabulary to fit; a multi-hot field still needs its list length
            return self.kind != "multi_hot" or self.max_len > 0
        return self.vocab is not None

    @property
    def vocab_size(self) -> int:
        """Rows this field owns in the flat table: padding + OOV + real values (or hash buckets)."""
        if self.hashed:
            return FIRST_ID + self.hash_buckets
        n = len(self.boundaries) + 1 if self.kind == "numeric" else len(self.vocab)
        return FIRST_ID + n

    @property
    def slots(self) -> int:
        """Id columns this field takes in an encoded row."""
        return self.max_len if self.kind == "multi_hot" else 1

    def token_ids(self) -> dict[str, int]:
        return {tok: FIRST_ID + i for i, tok in enumerate(self.vocab or [])}

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.kind == "multi_hot":
            d.update(separator=self.separator, max_len=self.max_len)
        if self.kind == "numeric":
            d["boundaries"] = self.boundaries
        else:
            d["vocab"] = self.vocab
        if self.hashed:  # only when set, so schemas without hashing serialise as before
            d["hash_buckets"] = self.hash_buckets
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Field":
        if "name" not in d or "kind" not in d:
            raise LightFMPError(f"schema field entry {d!r} needs 'name' and 'kind'")
        return cls(name=str(d["name"]), kind=d["kind"], vocab=d.get("vocab"), separator=d.get("separator"),
                   max_len=int(d.get("max_len", 0)), boundaries=d.get("boundaries"),
                   hash_buckets=d.get("hash_buckets"))


@dataclass
class FeatureSchema:
    label: str
    fields: list[Field]
    positive: str | None = None           # label value meaning 1 (None: labels are already 0/1 or booleans)
    min_count: int = 2
    num_buckets: int = 16
    meta: dict = dc_field(default_factory=dict)
    vocab_cap: int | None = None          # at most this many values per vocabulary (most frequent first)

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise LightFMPError(f"schema has no field '{name}'")

    def subset(self, names: list[str]) -> "FeatureSchema":
        """The schema restricted to `names`, in the schema's own order (pruning keeps field order)."""
        wanted = set(names)
        missing = wanted - set(self.names)
        if missing:
            raise LightFMPError(f"schema has no field(s) {', '.join(sorted(missing))}")
        return FeatureSchema(self.label, [f for f in self.fields if f.name in wanted], self.positive,
                             self.min_count, self.num_buckets, dict(self.meta), self.vocab_cap)

    @property
    def num_slots(self) -> int:
        return sum(f.slots for f in self.fields)

    def slot_field_index(self) -> list[int]:
        return [i for i, f in enumerate(self.fields) for _ in range(f.slots)]

    def field_slot_ranges(self) -> dict[str, tuple[int, int]]:
        out, s = {}, 0
        for f in self.fields:
            out[f.name] = (s, s + f.slots)
            s += f.slots
        return out

    # ---- JSON ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"schema_version": SCHEMA_VERSION, "label": self.label, "positive": self.positive,
             "min_count": self.min_count, "num_buckets": self.num_buckets, "meta": self.meta,
             "pad_id": PAD_ID, "oov_id": OOV_ID, "fields": [f.to_dict() for f in self.fields]}
        if self.vocab_cap is not None:
            d["vocab_cap"] = self.vocab_cap
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "schema") -> "FeatureSchema":
        if not isinstance(d, dict) or "fields" not in d or "label" not in d:
            raise LightFMPError(f"{source}: not a lightfmp feature schema (needs 'label' and 'fields')")
        if int(d.get("schema_version", 1)) > SCHEMA_VERSION:
            raise LightFMPError(f"{source}: schema_version {d['schema_version']} is newer than this lightfmp "
                                f"supports ({SCHEMA_VERSION})")
        return cls(label=d["label"], fields=[Field.from_dict(f) for f in d["fields"]], positive=d.get("positive"),
                   min_count=int(d.get("min_count", 2)), num_buckets=int(d.get("num_buckets", 16)),
                   meta=dict(d.get("meta") or {}),
                   vocab_cap=int(d["vocab_cap"]) if d.get("vocab_cap") is not None else None)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSchema":
        return cls.from_dict(read_json(path, obj=False), source=str(path))

    # ---- encoding --------------------------------------------------------------------------------------------
    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Encoded ids [rows, num_slots] (int32). Unseen values map to OOV; never raises on new categories."""
        out = np.zeros((len(df), self.num_slots), dtype=np.int32)
        for f, (a, b) in zip(self.fields, self.field_slot_ranges().values()):
            if f.name not in df.columns:
                raise LightFMPError(f"column '{f.name}' of the schema is absent from the data")
            out[:, a:b] = encode_field(f, df[f.name])
        return out


def encode_field(f: Field, col: pd.Series) -> np.ndarray:
    """Ids for one field, shape [rows, f.slots]."""
    if f.kind == "numeric":
        x = as_float(col, f.name)
        ids = np.searchsorted(np.asarray(f.boundaries, dtype=np.float64), x, side="right") + FIRST_ID
        ids[np.isnan(x)] = OOV_ID
        return ids.astype(np.int32)[:, None]
    if f.kind == "categorical":
        return _token_ids(f, cell_strings(col).to_numpy(dtype=object)).astype(np.int32)[:, None]
    lists = split_multi(col, f.separator).reset_index(drop=True)  # positions, whatever the index holds
    out = np.full((len(col), f.max_len), PAD_ID, dtype=np.int32)
    flat = lists.explode()
    pos = flat.groupby(level=0).cumcount().to_numpy()
    row = np.repeat(np.arange(len(col)), lists.map(lambda v: max(len(v), 1)).to_numpy())
    ids = _token_ids(f, flat.to_numpy(dtype=object))
    keep = (pos < f.max_len) & flat.notna().to_numpy()
    out[row[keep], pos[keep]] = ids[keep]
    return out


def _token_ids(f: Field, tokens: np.ndarray) -> np.ndarray:
    """Ids of string tokens (None / NaN = missing -> OOV) by vocabulary lookup or by hash."""
    if not f.hashed:
        codes = _vocab_index(f).get_indexer(tokens)
        return np.where(codes >= 0, codes + FIRST_ID, OOV_ID)
    codes, uniq = pd.factorize(tokens)  # hash each distinct value once; missing -> code -1
    by_value = (stable_hash(np.asarray(uniq, dtype=object)) % np.uint64(f.hash_buckets)).astype(np.int64) + FIRST_ID
    return np.where(codes >= 0, by_value[np.maximum(codes, 0)] if len(by_value) else OOV_ID, OOV_ID)


def _vocab_index(f: Field) -> pd.Index:
    """The vocabulary as a hashed Index, built once per vocabulary list rather than once per encoded batch (the
    streaming path encodes many batches; building the table costs more than the lookups)."""
    cached = f.__dict__.get("_lookup")
    if cached is None or cached[0] is not f.vocab:
        cached = (f.vocab, pd.Index(f.vocab or [], dtype=object))
        f.__dict__["_lookup"] = cached
    return cached[1]


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def stable_hash(values) -> np.ndarray:
    """uint64 hash of each string: 64-bit FNV-1a over its UTF-8 bytes, then the splitmix64 finaliser (FNV alone
    leaves the low bits that `% buckets` keeps poorly mixed). Fixed constants, no per-process key: the same
    value hashes the same in every process, version and serving system that implements these two steps."""
    enc = [str(v).encode("utf-8") for v in values]
    n = len(enc)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    lens = np.fromiter(map(len, enc), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(enc), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    # longest first: at byte j the strings still going are a prefix, so the loop costs O(total bytes)
    order = np.argsort(-lens, kind="stable")
    lens_o, starts_o = lens[order], starts[order]
    active = np.searchsorted(-lens_o, -np.arange(int(lens_o[0])), side="left")
    with np.errstate(over="ignore"):
        for j, k in enumerate(active):
            h[:k] ^= buf[starts_o[:k] + j]
            h[:k] *= _FNV_PRIME
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    out = np.empty_like(h)
    out[order] = h
    return out


def clamp_max_len(longest: int) -> int:
    """Slots of a multi-hot field: the longest list seen in training, at least 1, at most 32."""
    return max(1, min(int(longest), 32))


def cell_strings(col: pd.Series) -> pd.Series:
    """Each value's string form, as written in a CSV cell (missing stays NaN). Integral floats lose the '.0'
    that pandas adds when a column of ints has gaps, so '24' and 24.0 name the same category."""
    if pd.api.types.is_float_dtype(col):
        vals = col.to_numpy(dtype=np.float64)
        finite = np.isfinite(vals)
        if finite.any() and np.all(np.mod(vals[finite], 1) == 0):
            s = pd.Series([str(int(v)) if ok else None for v, ok in zip(vals, finite)], index=col.index,
                          dtype=object)
            return s
    if pd.api.types.is_bool_dtype(col):
        return col.astype(object).where(col.notna(), None).map(lambda v: None if v is None else str(v))
    if pd.api.types.is_integer_dtype(col) and not col.isna().any():
        return pd.Series(col.to_numpy().astype(str).astype(object), index=col.index)  # vectorised, no per-value map
    if isinstance(col.dtype, pd.StringDtype) or (col.dtype == object and
                                                 pd.api.types.infer_dtype(col, skipna=True) in ("string", "empty")):
        return col.astype(object).where(col.notna(), None)  # text already (CSV cells): skip the per-value map
    return col.astype(object).where(col.notna(), None).map(lambda v: v if v is None or isinstance(v, str) else str(v))


def split_multi(col: pd.Series, sep: str) -> pd.Series:
    """Series of lists of tokens; empty / missing cells give an empty list."""
    s = cell_strings(col)
    return s.map(lambda v: [t for t in v.split(sep) if t != ""] if isinstance(v, str) else [])


def as_float(col: pd.Series, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)  # typed already (Parquet): nothing to parse
    x = pd.to_numeric(col, errors="coerce")
    # only cells that failed to parse are checked as text (converting every cell to str is the slow part)
    failed = x.isna() & col.notna()
    if failed.any():
        text = col[failed].astype(str).str.strip()
        if (text != "").any():
            raise LightFMPError(f"numeric column '{name}' has non-numeric value {text[text != ''].iloc[0]!r}")
    return x.to_numpy(dtype=np.float64)


def quantile_edges(x: np.ndarray, buckets: int) -> list[float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return []
    qs = np.quantile(x, np.linspace(0, 1, buckets + 1)[1:-1])
    return [float(v) for v in np.unique(qs)]


def _vocab(tokens: pd.Series, min_count: int, cap: int | None = None) -> list[str]:
    return vocab_from_counts(tokens.value_counts(), min_count, cap)


def vocab_from_counts(counts: pd.Series, min_count: int, cap: int | None = None) -> list[str]:
    """token -> count Series to a vocabulary; shared by the in-memory and the streaming fit so they agree."""
    counts = counts[counts >= min_count]
    # most frequent first, ties by token, so the same data always gives the same ids
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if cap is not None:
        order = order[:cap]
    return [tok for tok, _ in order]


def is_integral(x: np.ndarray) -> bool:
    finite = x[np.isfinite(x)]
    return bool(len(finite)) and bool(np.all(np.mod(finite, 1) == 0)) and not math.isinf(float(np.abs(finite).max()))

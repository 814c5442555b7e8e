"""The cells of a record batch as the fitter and the encoder read them: Arrow arrays in, numpy arrays out, with
work done once per distinct value of a batch and never once per cell in Python.

    tokens(col)       categorical cells -> `Tokens`: per row a code into the batch's distinct values (-1: missing)
                      and those values as text (a pyarrow string array, no nulls, no repeats)
    lists(col, sep)   multi-hot cells -> `Lists`: per row a code into the distinct cells, and per distinct cell its
                      tokens in order (empty tokens dropped)
    numbers(col)      numeric cells -> float64, NaN where missing (blank, or a MISSING_TEXT spelling)
    present(col)      how many cells are not missing (null or NaN)
    stable_hash       the hash of hashed fields, over the bytes of a string array
    VocabIndex        a vocabulary's lookup table, built once: text -> position

A value's text is the one rule `cell_strings` states, shared by CSV cells, Parquet values, DataFrames and serving
requests: text as it is; integers in decimal; an integral float without the '.0' (so 24 and 24.0 are one
category), each value by itself; other floats as Python writes them (24.5, inf); a decimal as the float it is;
bytes as their UTF-8 text; booleans 'True' / 'False'; null and NaN are missing. Arrow's hash kernel
(dictionary_encode) finds a batch's distinct values and the rule is applied to those only. A pandas Series is
accepted everywhere too (in-memory frames, export, tests): it goes through `cell_strings` / `as_float` cell by cell
and then the same code.
"""
from __future__ import annotations

import decimal
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import CellError, LightFMPError

# How a missing number is spelt in text files besides a blank cell: R writes NA, pandas' to_csv NaN or nan (its
# na_rep), databases NULL. In a numeric column each reads as missing; in a categorical one it stays a category.
MISSING_TEXT = ("nan", "NaN", "NAN", "-nan", "-NaN", "NA", "N/A", "n/a", "#N/A", "<NA>", "NULL", "null", "None")


# ---- the text rule on pandas values (frames; and the distinct values of Arrow columns of other types) --------------
def cell_strings(col: pd.Series) -> pd.Series:
    """Each value's string form, as written in a CSV cell (missing stays NaN). An integral float loses the '.0'
    that pandas adds when a column of ints has gaps, so '24' and 24.0 name the same category; each value by
    itself, so a value has one text whatever else its batch holds."""
    if pd.api.types.is_float_dtype(col):
        vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(vals) & (np.mod(vals, 1) == 0)
        return pd.Series([None if v != v else str(int(v)) if w else str(v) for v, w in zip(vals.tolist(), whole)],
                         index=col.index, dtype=object)
    if pd.api.types.is_bool_dtype(col):
        return col.astype(object).where(col.notna(), None).map(lambda v: None if v is None else str(v))
    if pd.api.types.is_integer_dtype(col) and not col.isna().any():
        return pd.Series(col.to_numpy().astype(str).astype(object), index=col.index)  # vectorised, no per-value map
    if isinstance(col.dtype, pd.StringDtype) or (col.dtype == object and
                                                 pd.api.types.infer_dtype(col, skipna=True) in ("string", "empty")):
        return col.astype(object).where(col.notna(), None)  # text already (CSV cells): skip the per-value map
    return col.astype(object).where(col.notna(), None).map(value_text)


TEXT_RULE = 2  # the version of the text rule a schema's vocabularies and hashes were fitted under (FeatureSchema.meta
               # "text_rule"): 2 reads a binary column's values as their UTF-8 text and a decimal's as the number it
               # is; before, as b'k3' and '0.50'


def read_otherwise_before(t: pa.DataType) -> bool:
    """Whether the text rule before TEXT_RULE 2 read this Arrow type's values otherwise: binary and decimal (or a
    dictionary of them)."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
        or pa.types.is_decimal(t)


def value_text(v) -> str | None:
    """A value's text where it is not text already (None stays None): bytes as their UTF-8 text (a Parquet BINARY
    column of strings without the UTF8 annotation, as older Hive and Impala write them; bytes that are no UTF-8 as
    Python writes them, b'\\xff'); a decimal as the number it is, whole ones in decimal and others as the float
    they are (24.50 -> '24.5', 24.00 -> '24', as a float column's and a JSON client's); anything else its str()."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return repr(bytes(v))
    if isinstance(v, decimal.Decimal) and v.is_finite():
        return str(int(v)) if v == v.to_integral_value() else str(float(v))
    return str(v)


def split_multi(col: pd.Series, sep: str) -> pd.Series:
    """Series of lists of tokens; empty / missing cells give an empty list."""
    s = cell_strings(col)
    return s.map(lambda v: [t for t in v.split(sep) if t != ""] if isinstance(v, str) else [])


def as_float(col: pd.Series, name: str) -> np.ndarray:
    x, bad = float_cells(col)
    if bad is not None:
        raise CellError(f"numeric column '{name}' has non-numeric value {str(col.iloc[bad]).strip()!r}", bad)
    return x


def float_cells(col: pd.Series) -> tuple[np.ndarray, int | None]:
    """The numeric rule: float64 per cell (what pandas reads as a number; NaN where missing, blank or spelled as
    `MISSING_TEXT`), and the position of the first cell that is none of these (None when every cell is one).
    Python's float() reads more (`1_000`, non-ASCII digits, `+nan`): this rule refuses those."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan), None  # typed already (Parquet): nothing to parse
    if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        return seconds(pa.array(col)), None
    x = pd.to_numeric(col, errors="coerce")
    # only cells that failed to parse are checked as text (converting every cell to str is the slow part)
    failed = (x.isna() & col.notna()).to_numpy()
    if failed.any():
        at = np.flatnonzero(failed)
        text = col.iloc[at].astype(str).str.strip()
        bad = ((text != "") & ~text.isin(MISSING_TEXT)).to_numpy()
        if bad.any():
            return x.to_numpy(dtype=np.float64), int(at[np.argmax(bad)])
    return x.to_numpy(dtype=np.float64), None


# ---- batches and columns -------------------------------------------------------------------------------------------
def column_names(data) -> list[str]:
    """Column names of a record batch, table or DataFrame."""
    return [str(c) for c in data.columns] if isinstance(data, pd.DataFrame) else list(data.schema.names)


def column(data, name: str):
    """One column of a record batch, table or DataFrame."""
    return data[name] if isinstance(data, pd.DataFrame) else data.column(name)


def _arrow(col) -> pa.Array:
    """One contiguous array (a copy when the column has several chunks: only for the less common types)."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _chunks(col) -> list[pa.Array]:
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def indices(arr: pa.Array) -> np.ndarray:
    """An integer array as numpy (read in place when it has no nulls), -1 where null."""
    values = arr.to_numpy(zero_copy_only=False) if not arr.null_count else \
        np.frombuffer(arr.buffers()[1], dtype=arr.type.to_pandas_dtype())[arr.offset:arr.offset + len(arr)]
    if not arr.null_count:
        return values
    bits = np.unpackbits(np.frombuffer(arr.buffers()[0], dtype=np.uint8), bitorder="little")
    return np.where(bits[arr.offset:arr.offset + len(arr)].astype(bool), values, -1)


def distinct(col) -> tuple[np.ndarray, pa.Array]:
    """(per row an index into the column's distinct values, -1 where null; those values, without null) by Arrow's
    hash kernel: one call over every chunk of the column, which then share one dictionary (values in order of
    first appearance)."""
    enc = pc.dictionary_encode(col, null_encoding="encode")
    parts = _chunks(enc)
    if not parts:
        return np.zeros(0, dtype=np.int32), pa.array([], type=col.type)
    values = parts[-1].dictionary
    codes = np.concatenate([p.indices.to_numpy() for p in parts]) if len(parts) > 1 else parts[0].indices.to_numpy()
    if values.null_count:  # null encoded as a value: drop it from the values, its rows get -1
        k = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        lut = np.arange(len(values), dtype=np.int32)
        lut[k + 1:] -= 1
        lut[k] = -1
        codes = lut[codes]
        values = pa.concat_arrays([values.slice(0, k), values.slice(k + 1)])
    return codes, values


def present(col) -> int:
    """Cells that are not missing (null, or NaN in a float column)."""
    if isinstance(col, pd.Series):
        return int(col.notna().sum())
    if not len(col):
        return 0
    return len(col) - int(pc.sum(pc.is_null(col, nan_is_null=True)).as_py() or 0)


def missing(col) -> np.ndarray:
    """bool per cell: null, or NaN in a float column."""
    if isinstance(col, pd.Series):
        return col.isna().to_numpy()
    return np.asarray(pc.is_null(col, nan_is_null=True).to_numpy(zero_copy_only=False), dtype=bool)


# ---- categorical cells ---------------------------------------------------------------------------------------------
@dataclass
class Tokens:
    """A column as codes into its distinct texts."""
    codes: np.ndarray     # per row: index into `values`, -1 where missing (int32 or int64)
    values: pa.Array      # the distinct texts (pa.string(), no nulls, no repeats)

    def counts(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Rows per distinct value (only the rows of `mask` when given)."""
        c = np.add(self.codes if mask is None else self.codes[mask], 1, dtype=np.intp)  # bincount's own dtype
        return np.bincount(c, minlength=len(self.values) + 1)[1:].astype(np.int64, copy=False)


def tokens(col) -> Tokens:
    """Codes and distinct texts of a categorical column (the `cell_strings` rule)."""
    if isinstance(col, pd.Series):
        return _factorize(pa.array(cell_strings(col).to_numpy(dtype=object), type=pa.string(), from_pandas=True))
    t = col.type
    if _is_text(t):
        return _factorize(col)
    if pa.types.is_null(t):
        return Tokens(np.full(len(col), -1, dtype=np.int32), pa.array([], type=pa.string()))
    if pa.types.is_dictionary(t):
        parts = _chunks(col)
        if isinstance(col, pa.ChunkedArray) and any(not p.dictionary.equals(parts[0].dictionary) for p in parts[1:]):
            parts = _chunks(col.unify_dictionaries())
        if not parts:
            return Tokens(np.zeros(0, dtype=np.int32), pa.array([], type=pa.string()))
        codes = np.concatenate([indices(p.indices) for p in parts])
        return _recode(codes, _dictionary_texts(parts[0].dictionary))
    try:
        codes, values = distinct(col)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # a type Arrow cannot hash (nested, ...): cell by cell
        return tokens(_arrow(col).to_pandas())
    if pa.types.is_integer(t):  # in decimal, exactly (through pandas a gap would make them floats, and past 2**53
        return Tokens(codes, pc.cast(values, pa.string()))  # floats round: one id read two ways)
    texts = pa.array(cell_strings(values.to_pandas()).to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    return _recode(codes, texts)


def _factorize(text) -> Tokens:
    codes, values = distinct(text)
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return Tokens(codes, values)


def _recode(codes: np.ndarray, texts: pa.Array) -> Tokens:
    """Codes into `texts` (which may repeat or hold nulls) -> codes into its distinct non-null texts."""
    inner = _factorize(texts)
    lut = np.append(inner.codes.astype(np.int32), np.int32(-1))  # code -1 (missing) stays -1
    return Tokens(lut[codes], inner.values)


def _dictionary_texts(dictionary: pa.Array) -> pa.Array:
    """The texts of a dictionary column's values (a pandas Categorical: each value's str, whatever its type)."""
    if _is_text(dictionary.type):
        return dictionary
    s = dictionary.to_pandas().astype(object)
    text = s.where(s.notna(), None).map(value_text)
    return pa.array(text.to_numpy(dtype=object), type=pa.string(), from_pandas=True)


# ---- multi-hot cells -----------------------------------------------------------------------------------------------
@dataclass
class Lists:
    """A multi-hot column as codes into its distinct cells, each split into tokens."""
    cells: Tokens          # per row a code into the distinct cells (their texts)
    tokens: Tokens         # every token of every distinct cell, in cell order (codes into the distinct tokens)
    cell: np.ndarray       # per token: its cell
    position: np.ndarray   # per token: its place in its cell's list
    lengths: np.ndarray    # per distinct cell: its number of tokens


def lists(col, sep: str) -> Lists:
    """The `split_multi` rule (a cell's text split at `sep`, empty tokens dropped) on the distinct cells of a column
    (or of its `Tokens`)."""
    cells = col if isinstance(col, Tokens) else tokens(col)
    n = len(cells.values)
    split = pc.split_pattern(cells.values, pattern=sep)
    flat = pc.list_flatten(split)
    parent = pc.list_parent_indices(split).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pc.not_equal(flat, "")
    flat = flat.filter(keep)
    parent = parent[keep.to_numpy(zero_copy_only=False)]
    lengths = np.bincount(parent, minlength=n).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(parent), dtype=np.int64) - starts[parent]
    return Lists(cells, _factorize(flat), parent, position, lengths)


# ---- numeric cells -------------------------------------------------------------------------------------------------
def numbers(col, name: str) -> np.ndarray:
    """float64 per cell, NaN where missing (the `as_float` rule: a cell that is not a number is an error, a blank
    one is missing)."""
    if isinstance(col, pd.Series):
        return as_float(col, name)
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _float_numpy(pc.cast(col, pa.float64(), safe=False))
    if pa.types.is_null(t):
        return np.full(len(col), np.nan)
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        return seconds(col)
    if _is_text(t):
        try:  # Arrow's parser accepts a subset of what pandas does and gives the same values on it
            x = _float_numpy(pc.cast(col, pa.float64()))
            # except where a NaN stands for a cell that was not null ('nan' written out): the rule, `as_float`, decides
            if np.count_nonzero(np.isnan(x)) == col.null_count:
                return x
        except pa.ArrowInvalid:
            pass
        codes, values = distinct(col)  # in order of first appearance: the first bad value is the first bad row's
        try:
            return np.append(as_float(values.to_pandas(), name), np.nan)[codes]
        except CellError as e:  # the bad value's first row
            raise CellError(str(e), int(np.argmax(codes == e.row))) from None
    return as_float(_arrow(col).to_pandas(), name)


_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


# A numeric field read from a time or duration column: what its number is, recorded in the schema and in an export's
# inputs (`derive`), so that a client can send the time itself
TIME_DERIVE = "seconds_since_1970_utc"
TIME_DERIVE_RULE = ("a time (ISO 8601 text) becomes its seconds since 1970-01-01 00:00 UTC, a time without a zone "
                    "read as UTC ('2024-01-10 12:00:00' -> 1704888000); a number is taken as those seconds; an empty "
                    "value is missing")
DURATION_DERIVE = "seconds_of_duration"
DURATION_DERIVE_RULE = "a duration is given as its seconds (a number); an empty value is missing"


def time_derive(col) -> str | None:
    """TIME_DERIVE for a column of times, DURATION_DERIVE for one of durations (Arrow or pandas), else None."""
    if isinstance(col, pd.Series):
        return TIME_DERIVE if pd.api.types.is_datetime64_any_dtype(col) else \
            DURATION_DERIVE if pd.api.types.is_timedelta64_dtype(col) else None
    t = col.type
    return TIME_DERIVE if pa.types.is_timestamp(t) else \
        DURATION_DERIVE if pa.types.is_duration(t) else None


def seconds(col) -> np.ndarray:
    """A timestamp column's seconds since 1970-01-01 UTC (a duration's seconds), NaN where missing: the number of a
    time field, the same for one instant whatever unit a file stores it in."""
    return _float_numpy(pc.cast(pc.cast(col, pa.int64()), pa.float64(), safe=False)) / _PER_SECOND[col.type.unit]


def _float_numpy(x) -> np.ndarray:
    """float64 values as numpy, NaN where null."""
    return x.to_numpy() if isinstance(x, pa.ChunkedArray) else x.to_numpy(zero_copy_only=False)


# ---- hashing and vocabulary look-up --------------------------------------------------------------------------------
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def stable_hash(values) -> np.ndarray:
    """uint64 hash of each string: 64-bit FNV-1a over its UTF-8 bytes, then the splitmix64 finaliser (FNV alone
    leaves the low bits that `% buckets` keeps poorly mixed). Fixed constants, no per-process key: the same
    value hashes the same in every process, version and serving system that implements these two steps.
    `values`: a pyarrow string array (read in place), or any sequence (each value's str())."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array([str(v) for v in values], type=pa.string())
    arr = _arrow(values)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    n = len(arr)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    offsets = offsets[arr.offset:arr.offset + n + 1].astype(np.int64)
    buf = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    starts, lens = offsets[:-1], np.diff(offsets)
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


class VocabIndex:
    """A vocabulary's look-up table, built once and used for every batch: the vocabulary's hashes sorted, so a
    batch's distinct texts are found by binary search on their hashes and then compared as text (a hash collision
    cannot give a wrong id). A vocabulary in which two entries share a hash falls back to Arrow's index_in."""

    def __init__(self, vocab: list):
        # an entry that is not text (a hand-written schema file) can never match a cell's text
        self.vocab = pa.array([v if isinstance(v, str) else None for v in vocab], type=pa.string())
        h = stable_hash(self.vocab)
        self.order = np.argsort(h, kind="stable")
        self.sorted = h[self.order]
        self.unique = bool(np.all(np.diff(self.sorted) != 0))

    def positions(self, values: pa.Array) -> np.ndarray:
        """Index of each text of `values` in the vocabulary, -1 when absent (int64)."""
        if not len(values) or not len(self.vocab):
            return np.full(len(values), -1, dtype=np.int64)
        if not self.unique:
            return indices(pc.index_in(values, value_set=self.vocab)).astype(np.int64)
        h = stable_hash(values)
        at = np.minimum(np.searchsorted(self.sorted, h), len(self.sorted) - 1)
        cand = self.order[at]
        same = pc.equal(values, self.vocab.take(pa.array(cand))).fill_null(False).to_numpy(zero_copy_only=False)
        return np.where((self.sorted[at] == h) & same, cand, -1).astype(np.int64)


def unicode_text(text: str) -> bool:
    """Whether UTF-8 can hold `text` (a JSON or Python string may hold half of a UTF-16 pair: "\\ud800")."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


__all__ = ["MISSING_TEXT", "cell_strings", "split_multi", "as_float", "column_names", "column", "present", "missing",
           "Tokens", "tokens", "Lists", "lists", "numbers", "stable_hash", "VocabIndex", "unicode_text"]

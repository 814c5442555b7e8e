"""Fitting a FeatureSchema: the kinds of the columns (named by the options, else inferred from the first
batch), then vocabularies and bucket edges in one pass over the training rows, batch by batch, in bounded memory.
This is the only fitter: a file that fits in memory goes through it too, as one or a few batches.

    kinds                     named columns as given; the rest inferred on the first batch (`infer_kind`):
                              booleans and text are categorical, integers categorical up to max(1000, rows/20)
                              distinct values, other numbers numeric
    categorical / multi-hot   per-field value counts, added batch by batch from the batch's coded columns
                              (`FeatureSchema.code`: distinct texts and their rows, counted with numpy); min_count
                              and vocab_cap are applied at the end (most frequent first, ties by token)
    numeric                   quantile edges from a seeded reservoir sample of RESERVOIR_SIZE finite values per
                              field: exact when the training rows hold at most that many values, approximate beyond.
    multi-hot list length     the longest list seen.
    hashed fields             no counts at all (`--hash-buckets`).

Memory bound on counts: when a field's counter exceeds max(10 * vocab_cap, PRUNE_MIN_ENTRIES) distinct values, the
rarest entries are dropped (lossy counting): every entry whose count is at or below the count of the
(limit/2)-th most frequent one. A dropped value that comes back starts again from zero, so its final count can be
short by at most the sum of the thresholds dropped so far; a value more frequent than that keeps its place. The
vocabulary is exact while a field has fewer distinct values than the limit (a message says when it was not).
"""
from __future__ import annotations

import decimal
import re
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from rich.markup import escape

from .coded import Coded, Unparsed
from .config import MAX_BUCKETS, DataConfig
from .encoding import MISSING_TEXT, TEXT_RULE, column, column_names, lists, numbers, present, tokens
from .errors import CellError, LightFMPError
from .formats import all_categorical, fixed_label
from .labels import check_label_column
from .splits import check_split_keys
from .schema import (BOOL_TEXTS, FRACTION_TEXT, LONG_DIGITS, MAX_HASH_BUCKETS, SPELLINGS, WHOLE_TEXT, FeatureSchema,
                     Field, clamp_max_len, is_integral, quantile_edges, vocab_from_counts)

PRUNE_MIN_ENTRIES = 1_000_000
RESERVOIR_SIZE = MAX_BUCKETS


# ---- --hash-buckets and --vocab-cap -------------------------------------------------------------------------------
def parse_hash_buckets(text: str, schema: FeatureSchema) -> dict[str, int]:
    """'N' -> every categorical / multi-hot field into N buckets; 'f1:N,f2:M' -> only those fields."""
    spec = str(text).strip()
    usage = f"--hash-buckets {text!r}: expected N or field:N,... with N from 1 to {MAX_HASH_BUCKETS:,}"
    if re.fullmatch(r"[0-9]+", spec):
        n = int(spec)
        if not 1 <= n <= MAX_HASH_BUCKETS:
            raise LightFMPError(usage)
        return {f.name: n for f in schema.fields if f.kind != "numeric"}
    out: dict[str, int] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, num = item.rpartition(":")  # rpartition: a field name may itself contain ':'
        name, num = name.strip(), num.strip()
        if not sep or not name or not re.fullmatch(r"[0-9]+", num):
            raise LightFMPError(f"{usage} (got {item!r})")
        if int(num) < 1:
            raise LightFMPError(f"--hash-buckets {text!r}: field '{name}' needs at least 1 bucket, got {num}")
        if int(num) > MAX_HASH_BUCKETS:
            raise LightFMPError(f"--hash-buckets {text!r}: field '{name}' can have at most {MAX_HASH_BUCKETS:,} buckets "
                                f"(its ids are int32), got {num}")
        if name in out and out[name] != int(num):
            raise LightFMPError(f"--hash-buckets {text!r}: field '{name}' is given twice ({out[name]} and {int(num)} "
                                f"buckets); keep one")
        if name not in schema.names:
            raise LightFMPError(f"--hash-buckets {text!r}: no field '{name}' (fields: {', '.join(schema.names)})")
        if schema.field(name).kind == "numeric":
            raise LightFMPError(f"--hash-buckets {text!r}: field '{name}' is numeric; only categorical and "
                                f"multi-hot fields can be hashed (name it with --categorical to hash it)")
        out[name] = int(num)
    if not out:
        raise LightFMPError(usage)
    return out


def apply_options(schema: FeatureSchema, hash_buckets: str | None = None,
                  vocab_cap: int | None = None) -> FeatureSchema:
    """Put --hash-buckets and --vocab-cap on a schema before it is fitted (in memory or streaming). Fields that are
    already fitted (a vocabulary from --schema FILE) keep it."""
    if vocab_cap is not None:
        if int(vocab_cap) < 1:
            raise LightFMPError(f"--vocab-cap {vocab_cap}: must be >= 1")
        schema.vocab_cap = int(vocab_cap)
    if hash_buckets is not None and str(hash_buckets).strip():
        every = re.fullmatch(r"\s*[0-9]+\s*", str(hash_buckets)) is not None
        for name, n in parse_hash_buckets(hash_buckets, schema).items():
            f = schema.field(name)
            if f.fitted and not f.hashed:
                if every:
                    continue
                raise LightFMPError(f"--hash-buckets: field '{name}' already has a vocabulary in the schema file")
            f.hash_buckets, f.vocab = n, None
    return schema


# ---- kinds from the first batch -----------------------------------------------------------------------------------
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


def parse_multi_hot(items: list[str], columns: list[str] | None = None) -> dict[str, str]:
    """['genres:|', 'tags:;'] -> {'genres': '|', 'tags': ';'}; the separator defaults to '|'. A column given twice
    with different separators is refused (which one counted would depend on their order). Given the data's
    `columns`, a column whose name holds ':' is found as it is named ('u:tags', or 'u:tags:;' with a separator):
    the item whole, or the longest column name it starts with followed by ':'; otherwise the name ends at the first
    ':'."""
    out, given = {}, {}
    for it in items:
        named = [c for c in columns or [] if ":" in c and (it == c or it.startswith(c + ":"))]
        if named:
            name = max(named, key=len)
            colon, sep = it[len(name):len(name) + 1], it[len(name) + 1:]
        else:
            name, colon, sep = it.partition(":")
        if colon and not sep:  # e.g. 'tags:,' split on its comma by a comma-separated flag
            raise LightFMPError(f"--multi-hot {it!r}: no separator after the colon (the comma-separated flag cannot "
                                f"carry a ',' separator and trims a whitespace one: use another, or a YAML list in "
                                f"--config)")
        name, sep = name.strip(), sep or "|"
        if name in out and out[name] != sep:
            raise LightFMPError(f"--multi-hot: column '{name}' is given twice with different separators "
                                f"({given[name]!r} and {it!r}); keep one")
        out[name], given[name] = sep, given.get(name, it)
    return out


def _no_fields(source: str, spec: SchemaSpec):
    left = " that --ignore leaves" if spec.ignore else ""
    raise LightFMPError(f"{source}: no feature columns{left} besides the label '{spec.label}'")


def infer_schema(data, spec: SchemaSpec, source: str, columns: list[str] | None = None
                 ) -> tuple[FeatureSchema, dict]:
    """Kinds for every column of `data` (a record batch or DataFrame; only `columns` of it when given): named ones
    as given, others inferred. Returns the (unfitted) schema and a {column: reason} dict of the inferred choices,
    for printing."""
    names = column_names(data) if columns is None else columns
    named = set(spec.categorical) | set(spec.numeric) | set(spec.multi_hot)
    _check_named(names, spec, source)
    if spec.label in named:
        raise LightFMPError(f"{source}: column '{spec.label}' is the label and cannot also be a feature")
    fields, inferred = [], {}
    for col in names:
        if col == spec.label or col in spec.ignore:
            continue
        if col in spec.multi_hot:
            fields.append(Field(col, "multi_hot", separator=spec.multi_hot[col]))
        elif col in spec.categorical:
            fields.append(Field(col, "categorical"))
        elif col in spec.numeric:
            fields.append(Field(col, "numeric"))
        else:
            kind, why = infer_kind(column(data, col), len(data))
            fields.append(Field(col, kind))
            inferred[col] = f"{kind} ({why})"
    if not fields:
        _no_fields(source, spec)
    return FeatureSchema(spec.label, fields, spec.positive, spec.min_count, spec.num_buckets), inferred


def _check_named(names: list[str], spec: SchemaSpec, source: str) -> None:
    """Every column the user named is in the data; else one error naming the column and the option that named it."""
    for option, cols in (("--categorical", spec.categorical), ("--numeric", spec.numeric),
                         ("--multi-hot", spec.multi_hot), ("--ignore", spec.ignore)):
        absent = next((c for c in cols if c not in names), None)
        if absent is not None:
            raise LightFMPError(f"{source}: column '{absent}' named by {option} is absent "
                                f"(columns: {', '.join(names)})")


_TIMES = {False: "times: seconds since 1970 UTC", True: "durations: seconds"}


def infer_kind(s, rows: int) -> tuple[str, str]:
    """Booleans, text and low-cardinality integers are categorical; times and other numbers numeric. `s`: a pandas
    Series, or an Arrow column (text that Arrow's parser reads as numbers whole is judged on those numbers, which are
    pandas'; anything else as a Series)."""
    if not isinstance(s, pd.Series):
        if pa.types.is_decimal(s.type):  # numbers, judged as numbers are
            return _number_kind(pc.cast(s, pa.float64()).to_numpy(zero_copy_only=False), rows)
        if pa.types.is_timestamp(s.type) or pa.types.is_duration(s.type):  # ordered, and new ones keep coming
            return "numeric", _TIMES[pa.types.is_duration(s.type)]
        if pa.types.is_string(s.type) or pa.types.is_large_string(s.type):
            # the spellings of a missing number are missing here (and categories, should the column be categorical)
            trimmed = pc.utf8_trim_whitespace(s)  # a cell of blanks too, as the numeric rule reads it
            marker = pc.or_(pc.is_in(trimmed, value_set=pa.array(MISSING_TEXT, s.type)), pc.equal(trimmed, ""))
            s = pc.if_else(marker, pa.scalar(None, s.type), s)
            head = s.slice(0, 4096).drop_null()
            sample = head if len(head) >= 1000 or len(s) <= 4096 else s.drop_null()
            if pd.to_numeric(sample.slice(0, 1000).to_pandas(), errors="coerce").isna().any():
                return "categorical", "text"  # the sample rule below, without turning the column into a Series
            try:
                x = pc.cast(s, pa.float64())
                vals = x.to_numpy() if isinstance(x, pa.ChunkedArray) else x.to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid:
                vals = None
            # a 'nan' written out is text to pandas: judged as a Series below
            if vals is not None and np.count_nonzero(np.isnan(vals)) == s.null_count:
                return _number_kind(vals, rows)
        s = s.to_pandas()
    if pd.api.types.is_bool_dtype(s):
        return "categorical", "boolean"
    if pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s):
        return "numeric", _TIMES[pd.api.types.is_timedelta64_dtype(s)]
    if s.dtype == object or pd.api.types.is_string_dtype(s):  # as above: a missing number's spellings
        try:
            spelled = s.str.strip().isin(MISSING_TEXT) | s.str.strip().eq("")  # a cell of blanks too
        except (AttributeError, TypeError):  # objects .str refuses (dates, bytes): only text spells a missing one
            spelled = s.map(lambda v: isinstance(v, str) and v.strip() in MISSING_TEXT + ("",))
        s = s.mask(spelled)
    sample = s.dropna().iloc[:1000]
    other = next((v for v in sample if not isinstance(v, (str, int, float, np.number, decimal.Decimal))), None)
    if other is not None and not isinstance(other, pd.Timestamp):  # dates, times, bytes: values to tell apart
        return "categorical", f"{type(other).__name__} values"
    if pd.to_numeric(sample, errors="coerce").isna().any():
        return "categorical", "text"  # decided on a sample: parsing a whole text column is slow
    x = pd.to_numeric(s, errors="coerce")
    if (x.isna() & s.notna()).any():
        return "categorical", "text"
    return _number_kind(x.to_numpy(dtype=np.float64), rows)


def _number_kind(vals: np.ndarray, rows: int) -> tuple[str, str]:
    """Integers are categorical up to max(1000, rows/20) distinct values; other numbers numeric."""
    if is_integral(vals):
        nunique = int(pd.Series(vals).nunique())
        limit = max(1000, rows // 20)
        if nunique <= limit:
            return "categorical", f"integers, {nunique} distinct"
        return "numeric", f"integers, {nunique} distinct > {limit}"
    return "numeric", "floats"


def _check_kind_flags(spec: SchemaSpec, time_column: str | None, label_from: str,
                      group_column: str | None = None) -> None:
    """A column named by two of --categorical / --numeric / --multi-hot / --ignore, or the label named as a feature,
    ignored or used as the time or group column, is a contradiction: refused, not resolved silently. `label_from`:
    what made the label column the label (`--label y`, or `--format criteo`)."""
    said = {"--categorical": spec.categorical, "--numeric": spec.numeric, "--multi-hot": list(spec.multi_hot),
            "--ignore": spec.ignore}
    seen: dict[str, str] = {}
    for flag, cols in said.items():
        for c in cols:
            if c == spec.label:
                raise LightFMPError(f"{flag} {c}: '{c}' is the label column ({label_from}); a column is the label or "
                                    f"a feature, not both")
            if c in seen and seen[c] != flag:
                raise LightFMPError(f"column '{c}' is named by both {seen[c]} and {flag}; choose one")
            seen[c] = flag
    if time_column == spec.label:
        raise LightFMPError(f"--time-column {time_column}: '{time_column}' is the label column ({label_from}); order "
                            f"rows by a time")
    if group_column == spec.label:
        raise LightFMPError(f"--group-column {group_column}: '{group_column}' is the label column ({label_from}); "
                            f"group rows by a column such as a user or session id")


def initial_schema(data, cfg: DataConfig, fmt: str, source: str) -> tuple[FeatureSchema, dict]:
    """The unfitted schema: kinds of the columns named in cfg as given, the rest inferred from `data` (the first
    record batch, or a DataFrame) by `infer_schema`; criteo / avazu fix the label and make every column
    categorical."""
    columns = column_names(data)
    fixed = fixed_label(fmt)
    if fixed and cfg.label and cfg.label != fixed:
        raise LightFMPError(f"--format {fmt}: the label column is '{fixed}', not '{cfg.label}'")
    label = cfg.label or fixed
    if not label:
        raise LightFMPError("no label: pass --label COLUMN")
    check_label_column(list(columns), label, source, flag=bool(cfg.label))  # a format's fixed label is no option
    spec = SchemaSpec(label=label, categorical=list(cfg.categorical), numeric=list(cfg.numeric),
                      multi_hot=parse_multi_hot(cfg.multi_hot, list(columns)), ignore=list(cfg.ignore),
                      positive=cfg.positive, min_count=cfg.min_count, num_buckets=cfg.num_buckets)
    _check_kind_flags(spec, cfg.time_column, f"--label {label}" if cfg.label else f"--format {fmt}", cfg.group_column)
    blank = [i for i, c in enumerate(columns) if not str(c).strip()]
    if blank:  # a field needs a name: flags, the schema and the exported model's inputs are keyed by it
        raise LightFMPError(f"{source}: column {blank[0] + 1} has no name in the header; name it or remove it")
    for c in columns:  # Arrow lists / structs / maps would be read as their Python text
        t = column(data, c).type if not isinstance(data, pd.DataFrame) else None
        if t is not None and pa.types.is_nested(t) and c not in spec.ignore:
            raise LightFMPError(f"{source}: column '{c}' holds nested values ({t}); lightfmp reads flat columns: "
                                f"write a list as text joined by a separator (--multi-hot {c}:|) or --ignore {c}")
    check_split_keys(cfg.time_column or None, cfg.group_column or None, columns, source)
    named = set(spec.categorical) | set(spec.numeric) | set(spec.multi_hot)
    for key in (cfg.time_column, cfg.group_column):  # the split key is a feature only when named as one
        if key and key not in named and key not in spec.ignore:
            spec.ignore.append(key)
    if all_categorical(fmt):
        spec.categorical += [c for c in columns if c != label and c not in spec.ignore and c not in named]
    # a column empty in the first batch only is no reason to fail: its kind is taken as named, else categorical;
    # a column empty in every row is caught after the pass
    empty = [c for c in columns if c != label and c not in spec.ignore and not present(column(data, c))]
    kinds = {c: ("multi_hot" if c in spec.multi_hot else "numeric" if c in spec.numeric else "categorical")
             for c in empty}
    sub = replace(spec, categorical=[c for c in spec.categorical if c not in kinds],
                  numeric=[c for c in spec.numeric if c not in kinds],
                  multi_hot={c: s for c, s in spec.multi_hot.items() if c not in kinds})
    rest = [c for c in columns if c not in kinds]
    inferred: dict[str, str] = {}
    if any(c != label and c not in spec.ignore for c in rest):
        schema, inferred = infer_schema(data, sub, source, columns=rest)
        fields = {f.name: f for f in schema.fields}
    else:
        _check_named(columns, spec, source)  # the check infer_schema would have made
        fields = {}
    for c, kind in kinds.items():
        fields[c] = Field(c, kind, separator=spec.multi_hot.get(c))
        if c not in named:
            inferred[c] = f"categorical (empty in the first {len(data)} rows)"
    if not fields:
        _no_fields(source, spec)
    ordered = [fields[c] for c in columns if c in fields]
    return FeatureSchema(label, ordered, spec.positive, spec.min_count, spec.num_buckets), inferred


# ---- the streaming fit ----------------------------------------------------------------------------------------------
class TokenCounter:
    """Value counts of one field, added batch by batch (distinct texts and their counts, as Arrow and numpy
    arrays), pruned lossy-counting style past `limit` entries. Batches are merged lazily: while the entries held
    plus those waiting cannot exceed the limit no prune can be due, so merging waits until the waiting entries
    outnumber the held ones (each entry is re-hashed O(log) times, not once per batch)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._keys = pa.array([], type=pa.string())
        self._vals = np.zeros(0, dtype=np.int64)
        self._waiting: list[tuple[pa.Array, np.ndarray]] = []
        self._waiting_n = 0
        self.prunes = 0
        self.undercount = 0  # most a surviving value's count can be short by

    def add(self, values: pd.Series) -> None:
        """Count a Series of tokens (missing ones skipped)."""
        t = tokens(values)
        self.add_counts(t.values, t.counts())

    def add_counts(self, keys: pa.Array, counts: np.ndarray) -> None:
        """Add `counts` (int) of the distinct texts `keys`; zero counts are skipped."""
        nonzero = counts > 0
        if not nonzero.all():
            keys, counts = keys.filter(pa.array(nonzero)), counts[nonzero]
        if not len(keys):
            return
        self._waiting.append((keys, np.asarray(counts, dtype=np.int64)))
        self._waiting_n += len(keys)
        if len(self._keys) + self._waiting_n > self.limit or self._waiting_n > max(len(self._keys), 1 << 16):
            self._merge()
            if len(self._keys) > self.limit:
                self._prune()

    def _merge(self) -> None:
        if not self._waiting:
            return
        keys = pa.concat_arrays([self._keys] + [k for k, _ in self._waiting])
        vals = np.concatenate([self._vals] + [c for _, c in self._waiting])
        self._waiting, self._waiting_n = [], 0
        enc = pc.dictionary_encode(keys)
        self._keys = enc.dictionary
        self._vals = np.bincount(enc.indices.to_numpy(), weights=vals, minlength=len(enc.dictionary)).astype(np.int64)

    def _prune(self) -> None:
        keep = self.limit // 2
        threshold = int(np.partition(self._vals, len(self._vals) - keep)[len(self._vals) - keep])
        # ties fall together, so what survives does not depend on the order values arrived in
        alive = self._vals > threshold
        self._keys, self._vals = self._keys.filter(pa.array(alive)), self._vals[alive]
        self.prunes += 1
        self.undercount += threshold

    def arrays(self) -> tuple[pa.Array, np.ndarray]:
        """(distinct texts, their counts)."""
        self._merge()
        return self._keys, self._vals

    @property
    def counts(self) -> pd.Series:
        """The counts as a Series indexed by text (for inspection)."""
        keys, vals = self.arrays()
        return pd.Series(vals, index=pd.Index(keys.to_pylist(), dtype=object), dtype=np.int64)


class Reservoir:
    """A uniform sample of at most `size` values of a stream (Algorithm R, vectorised per batch)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = int(size), rng
        self.buf = np.empty(self.size, dtype=np.float64)
        self.seen = 0

    def add(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        fill = min(len(x), max(self.size - self.seen, 0))
        self.buf[self.seen:self.seen + fill] = x[:fill]
        rest = x[fill:]
        if len(rest):
            # item t (0-based over the stream) replaces a uniform slot of [0, t] when that slot is in the sample
            t = self.seen + fill + np.arange(len(rest), dtype=np.float64)
            j = np.floor(self.rng.random(len(rest)) * (t + 1)).astype(np.int64)
            hit = j < self.size
            self.buf[j[hit]] = rest[hit]
        self.seen += len(x)

    def values(self) -> np.ndarray:
        return self.buf[:min(self.seen, self.size)]


def widened_single(texts: pa.Array, whole: pa.Array | None = None) -> tuple[int, int]:
    """Of the texts that are numbers with a fraction, how many there are and how many are a float32 value's float64
    text, longer than the value needs (`schema.long_single`: '0.20000000298023224', how a float32 column spells
    0.2). A float32 column spells most of its fractions so; a float64 one almost none (a float64 value is a float32
    one about once in 2**29). `whole`: the texts' match of WHOLE_TEXT, where the caller has it."""
    whole = pc.match_substring_regex(texts, f"^{WHOLE_TEXT}$") if whole is None else whole
    number = pc.and_(pc.match_substring_regex(texts, f"^{FRACTION_TEXT}$"), pc.invert(whole))
    text = pc.filter(texts, number)
    x = pc.cast(text, pa.float64())
    exact = pc.equal(pc.cast(pc.cast(x, pa.float32(), safe=False), pa.float64()), x)
    mantissa = pc.replace_substring_regex(pc.replace_substring_regex(text, r"[eE].*$", ""), r"[-+.]", "")
    long = pc.greater_equal(pc.utf8_length(pc.utf8_ltrim(mantissa, "0")), LONG_DIGITS)  # `schema.long_single`
    return len(x), int(pc.sum(pc.and_(exact, long)).as_py() or 0)


class Spellings:
    """What a hashed field's text looks like, for `Field.spelling`: whether its whole numbers are written '16' or
    '16.0', its booleans 'True' or 'true' (where the values show neither, the typed column's spelling), whether
    '' is one of its values, and whether its fractions are a float32 column's float64 texts (most of its distinct
    fractions so: `widened_single`)."""

    def __init__(self):
        self.seen = dict.fromkeys(("int", "float", "title", "lower", "empty"), False)
        self.fractions = self.widened = 0

    def add(self, values: pa.Array) -> None:
        """A batch's distinct texts."""
        if not len(values):
            return
        whole = pc.match_substring_regex(values, f"^{WHOLE_TEXT}$")
        for key, hit in (("int", lambda: whole),
                         ("float", lambda: pc.match_substring_regex(values, f"^{WHOLE_TEXT}\\.0$")),
                         ("title", lambda: pc.is_in(values, pa.array(BOOL_TEXTS))),
                         ("lower", lambda: pc.is_in(values, pa.array([b.lower() for b in BOOL_TEXTS]))),
                         ("empty", lambda: pc.equal(values, ""))):
            self.seen[key] = self.seen[key] or bool(pc.any(hit()).as_py())
        fractions, widened = widened_single(values, whole)
        self.fractions, self.widened = self.fractions + fractions, self.widened + widened

    def spelling(self) -> dict[str, str]:
        s = self.seen
        return {"whole": "16.0" if s["float"] and not s["int"] else "16",
                "bool": "true" if s["lower"] and not s["title"] else "True",
                "empty": "value" if s["empty"] else "missing",
                "fraction": SPELLINGS["fraction"][1 if 2 * self.widened > self.fractions else 0]}


class StreamFitter:
    """Fits the schema's unfitted fields from record batches: `add(batch, train)` per batch (only the rows where
    `train` is true count; a DataFrame of training rows works too), then `finish()`."""

    def __init__(self, schema: FeatureSchema, seed: int = 0, reservoir_size: int = RESERVOIR_SIZE,
                 log: Callable[[str], None] | None = None):
        self.schema = schema
        self.log = log or (lambda msg: None)
        self.todo = [f for f in schema.fields if not f.fitted]
        limit = max(10 * (schema.vocab_cap or 0), PRUNE_MIN_ENTRIES)
        self.counters = {f.name: TokenCounter(limit) for f in self.todo if f.kind != "numeric" and not f.hashed}
        todo = {id(f) for f in self.todo}  # by identity: a list test compares dataclasses, O(fields^2)
        self.reservoirs = {f.name: Reservoir(reservoir_size, np.random.default_rng([seed, i]))
                           for i, f in enumerate(schema.fields) if id(f) in todo and f.kind == "numeric"}
        self.longest = {f.name: 0 for f in self.todo if f.kind == "multi_hot"}
        # hashed fields have no vocabulary, only the spelling of their values to learn (fitted or not)
        self.spellings = {f.name: Spellings() for f in schema.fields if f.hashed and f.spelling is None}
        self.rows = 0

    def add(self, data, train: np.ndarray | None = None) -> None:
        """Count a batch: a record batch, table or DataFrame, or its `FeatureSchema.code` (which must hold the
        fields being fitted); only the rows where `train` is true, when given."""
        coded = data if isinstance(data, Coded) else \
            self.schema.code(data, list(dict.fromkeys([f.name for f in self.todo] + list(self.spellings))))
        self.rows += len(coded) if train is None else int(np.count_nonzero(train))
        for name, spelled in self.spellings.items():
            cells = coded.fields[name]
            spelled.add(cells.values)
            f = self.schema.field(name)
            if f.kind == "multi_hot":
                spelled.add(lists(cells, f.separator).tokens.values)
        for f in self.todo:
            cells = coded.fields[f.name]
            if f.kind == "numeric":
                self.reservoirs[f.name].add(_train_numbers(cells, train, f.name))
            elif f.kind == "categorical":
                if not f.hashed:
                    self.counters[f.name].add_counts(cells.values, cells.counts(train))
            else:
                split = lists(cells, f.separator)
                rows = cells.counts(train)
                seen = rows > 0
                if seen.any():
                    self.longest[f.name] = max(self.longest[f.name], int(split.lengths[seen].max()))
                if not f.hashed:
                    # a token counts once per row whose cell holds it (twice if the cell repeats it)
                    per_token = np.bincount(split.tokens.codes, weights=rows[split.cell],
                                            minlength=len(split.tokens.values))
                    self.counters[f.name].add_counts(split.tokens.values, per_token.astype(np.int64))

    def finish(self) -> FeatureSchema:
        s = self.schema
        fitted_here = {f.name for f in self.todo} | set(self.spellings)  # a hashed field: its spelling fitted here
        if all(f.name in fitted_here for f in s.fields):  # every field fitted here: under this text rule
            s.meta["text_rule"] = TEXT_RULE
        for name, spelled in self.spellings.items():
            s.field(name).spelling = spelled.spelling()
        for f in self.todo:
            if f.kind == "numeric":
                r = self.reservoirs[f.name]
                f.boundaries = quantile_edges(r.values().copy(), s.num_buckets)
                if r.seen > r.size:
                    self.log(f"field [bold]{escape(f.name)}[/]: bucket edges from a sample of {r.size:,} of "
                             f"{r.seen:,} values (approximate quantiles)")
                continue
            if f.kind == "multi_hot":
                f.max_len = clamp_max_len(self.longest[f.name])
                if self.longest[f.name] > f.max_len:  # a field's slots: the tokens past them are not read
                    self.log(f"field [bold]{escape(f.name)}[/]: lists of up to {self.longest[f.name]:,} tokens; each "
                             f"row's first {f.max_len} are read, the rest dropped (here and when served)")
            if f.hashed:
                continue
            c = self.counters[f.name]
            f.vocab = vocab_from_counts(*c.arrays(), s.min_count, s.vocab_cap)
            if c.prunes:
                self.log(f"field [bold]{escape(f.name)}[/]: over {c.limit:,} distinct values; rare values were dropped "
                         f"from the counts {c.prunes} time(s) (counts may be short by up to {c.undercount:,}); "
                         f"--vocab-cap or --hash-buckets bound this field")
        return s


def _train_numbers(cells: np.ndarray | Unparsed, train: np.ndarray | None, name: str) -> np.ndarray:
    """The training rows' numbers of a coded column. A column that did not parse as a whole is parsed again on its
    training rows alone, so a bad value is reported here only if a training row holds it (the encode pass reports
    the others), as when the training rows were parsed on their own."""
    if not isinstance(cells, Unparsed):
        return cells if train is None else cells[train]
    col = cells.column
    if train is None or col is None:
        cells.fail()
    try:
        return numbers(col[train] if isinstance(col, pd.Series) else col.filter(pa.array(train)), name)
    except CellError as e:  # a training row's: its row in the batch
        raise CellError(str(e), int(np.flatnonzero(train)[e.row])) from None


def fit_schema(schema: FeatureSchema, train, seed: int = 0) -> FeatureSchema:
    """Fit `schema`'s unfitted fields on one frame or record batch of training rows (the streaming fit with a single
    batch)."""
    fitter = StreamFitter(schema, seed)
    fitter.add(train)
    return fitter.finish()


__all__ = ["SchemaSpec", "infer_schema", "infer_kind", "parse_hash_buckets", "apply_options", "initial_schema",
           "StreamFitter", "fit_schema", "TokenCounter", "Reservoir", "PRUNE_MIN_ENTRIES", "RESERVOIR_SIZE"]

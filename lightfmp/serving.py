"""Serving an export: read DIR/feature_schema.json, encode raw records exactly as training did, run ONNX Runtime.

    from lightfmp.serving import Predictor
    p = Predictor("EXPORT_DIR")
    p.predict([{"city": "paris", "price": 4.5, "tags": "a|b"}])   # -> np.ndarray of probabilities
"""
from __future__ import annotations

import datetime
import decimal
import numbers
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .encoding import MISSING_TEXT, TIME_DERIVE, float_cells, unicode_text, value_text
from .errors import LightFMPError
from .export.bundle import Bundle, load_bundle, run_batched
from .export.contract import SCHEMA_FILE, InputSpec
from .export.feeds import check_feeds, feeds_from_frame
from .formats import criteo_texts
from .schema import (BOOL_TEXTS, FRACTION_TEXT, LONG_DIGITS, TIME_DERIVES, WHOLE_TEXT, FeatureSchema, Field,
                     empty_is_missing, fraction_known, significant_digits)


# The most rows one ONNX Runtime call scores; more are scored in slices of this many. One call's memory grows with
# its rows (the activations of every layer): a 500,000-row call took 1.1 GB more on a small DeepFM, and the same rows
# in slices of 4,096 took none and ran no slower.
RUN_ROWS = 4096


class Predictor:
    """Raw records in, probabilities out. Records are a list of dicts or a DataFrame; extra columns are ignored,
    unseen values go to the OOV id, missing values (None / NaN / absent key in some records) too.

    The export directory is checked first (`export.contract`): a malformed feature_schema.json, a path outside
    the directory, or a model / vocab file whose sha256 differs from the recorded one is refused."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        self.bundle: Bundle = load_bundle(path)
        # what a copy, or a worker process sent one, loads again (by absolute path: its working directory may differ)
        self._args = (os.path.abspath(path), threads, providers)
        if self.bundle.dir is None:
            raise LightFMPError(f"{path}: a Predictor needs the export directory (with {SCHEMA_FILE} and vocab/)")
        self.fields: list[tuple[InputSpec, Field]] = []
        for spec in self.bundle.inputs:
            tokens = self.bundle.vocab_tokens(spec)
            if spec.kind != "numeric" and tokens is None and spec.hash is None:
                raise LightFMPError(f"{self.bundle.dir / spec.vocab_file}: vocabulary file missing")
            self.fields.append((spec, spec.field(tokens)))
        self.schema = FeatureSchema(self.bundle.contract.label, [f for _, f in self.fields])
        self.session = self.bundle.session(threads, providers=providers)
        self.output = self.bundle.contract.output.name

    def __reduce__(self):  # an ONNX Runtime session is not picklable: the copy loads the export again
        return type(self), self._args

    @property
    def input_names(self) -> list[str]:
        return [s.name for s, _ in self.fields]

    def encode(self, records) -> dict[str, np.ndarray]:
        """The graph inputs for `records`."""
        df = _frame(records)
        twice = next((n for n in df.columns[df.columns.duplicated()] if n in self.input_names), None)
        if twice is not None:
            raise LightFMPError(f"records hold column '{twice}' twice; the model reads it once")
        missing = [n for n in self.input_names if n not in df.columns]
        if missing:
            raise LightFMPError(f"records lack column(s) {', '.join(repr(m) for m in missing)} that the model "
                                f"reads (kept fields: {', '.join(self.input_names)})")
        cols = {f.name: _check_column(f, _derived(spec, df[f.name])) for spec, f in self.fields}
        return feeds_from_frame(pd.DataFrame(cols, index=df.index), self.schema, raw=self.bundle.raw)

    def predict(self, records) -> np.ndarray:
        if not isinstance(records, pd.DataFrame) and isinstance(records, (list, tuple)) and not records:
            return np.zeros(0, dtype=np.float32)
        feeds = self.encode(records)
        if not len(next(iter(feeds.values()), [])):
            return np.zeros(0, dtype=np.float32)
        return self.run(feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The model's output for graph inputs `feeds` (`encode`'s, or arrays of the same names, shapes and types:
        checked first), in calls of at most RUN_ROWS rows."""
        return run_batched(self.session, check_feeds(self.bundle.inputs, feeds), RUN_ROWS, self.output)


def _frame(records) -> pd.DataFrame:
    if isinstance(records, pd.DataFrame):
        if isinstance(records.columns, pd.MultiIndex):  # "name" in them matches a first level, and reads a frame
            raise LightFMPError(f"records have {records.columns.nlevels} levels of column names; give one, the "
                                f"field names (e.g. records.columns = records.columns.get_level_values(0))")
        return records.reset_index(drop=True)
    if isinstance(records, dict):
        lists = records and all(isinstance(v, (list, tuple, np.ndarray, pd.Series)) for v in records.values())
        raise LightFMPError("records must be a list of dicts or a DataFrame (got " + (
            "a dict of columns; pass pandas.DataFrame(it)" if lists else "one dict; wrap it in a list") + ")")
    if isinstance(records, pd.Series) and not all(isinstance(v, dict) for v in records):  # one row of a frame:
        # iterating it gives its values, not records (a Series of dicts is a list of records)
        raise LightFMPError("records must be a list of dicts or a DataFrame (got a pandas Series; pass "
                            "[series.to_dict()] for one record, or series.to_frame().T)")
    if isinstance(records, (pa.Table, pa.RecordBatch)):  # integers with nulls stay exact Python ints (not floats,
        return records.to_pandas(integer_object_nulls=True)  # which round ids past 2**53)
    try:
        if isinstance(records, (str, bytes)):  # iterable, but its items are characters
            raise TypeError
        rows = list(records)
    except TypeError:
        raise LightFMPError(f"records must be a list of dicts or a DataFrame, not {type(records).__name__}") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise LightFMPError(f"record {i} is not a dict but {type(r).__name__}")
    # object columns keep each value as given: no float upcast of an int column with gaps (past 2**53 a float
    # rounds the id); a key absent from a record is missing there
    names = list(dict.fromkeys(k for r in rows for k in r))
    return pd.DataFrame({k: pd.Series([r.get(k) for r in rows], dtype=object) for k in names}, index=range(len(rows)))


def _derived(spec: InputSpec, col: pd.Series) -> pd.Series:
    """The values the model reads, where the data file's raw value was derived in training (`InputSpec.derive`)."""
    if spec.derive is None:
        return col
    if spec.derive in TIME_DERIVES:
        return _times(spec, col)
    return pd.Series(criteo_texts(list(col), spec.name), index=col.index, dtype=object)


def _times(spec: InputSpec, col: pd.Series) -> pd.Series:
    """A time field's ISO 8601 texts as their seconds since 1970 UTC, as training read the column's times (a time
    without a zone as UTC), each distinct text parsed once. Anything else is left to the numeric rule (`_numbers`):
    a number or its text, a missing value (blank or a MISSING_TEXT spelling), a typed time or duration."""
    values = list(col)
    at = [i for i, v in enumerate(values) if isinstance(v, str)]
    if not at:
        return col
    texts = pd.Series([values[i] for i in at], dtype=object)
    number = pd.to_numeric(texts, errors="coerce").notna() | texts.str.strip().isin(("",) + MISSING_TEXT)
    seen: dict[str, float] = {}
    for i, v, plain in zip(at, texts, number):
        if not plain:
            if v not in seen:
                seen[v] = _time_seconds(v, spec, i)
            values[i] = seen[v]
    return pd.Series(values, index=col.index, dtype=object)


def _time_seconds(v: str, spec: InputSpec, i: int) -> float:
    """One text of a time field that is no number, as its seconds (record `i` is named where it is no time)."""
    try:
        if spec.derive != TIME_DERIVE:
            raise ValueError(v)
        t = datetime.datetime.fromisoformat(v.strip())
    except ValueError:
        what = "a time (ISO 8601 text such as '2024-01-10 12:00:00', or its seconds since 1970 UTC)" \
            if spec.derive == TIME_DERIVE else "a duration as its seconds (a number)"
        raise LightFMPError(f"record {i}, field '{spec.name}' takes {what} but got {_shown(v)}") from None
    return (t if t.tzinfo is not None else t.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _missing(v) -> bool:
    """None, NaN of any float width (numpy's float32 is no Python float), pandas' NA / NaT and numpy's NaT."""
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and bool(np.isnan(v))) \
        or (isinstance(v, (np.datetime64, np.timedelta64)) and bool(np.isnat(v)))


def _check_column(f: Field, col: pd.Series) -> pd.Series:
    """Reject values whose type cannot be a value of this field's kind, naming the record (its position);
    multi-hot lists become joined text."""
    if f.kind == "numeric":
        return _numbers(f, col)
    convert = _value_rule(f)
    values = []
    for i, v in enumerate(col):
        try:
            values.append(convert(v))
        except LightFMPError as e:
            raise LightFMPError(f"record {i}, {e}") from None
    return pd.Series(values, index=col.index, dtype=object)


def _numbers(f: Field, col: pd.Series) -> pd.Series:
    """A numeric field's values as float64: numbers as they are, text by training's rule (`float_cells`), times as
    seconds since 1970 UTC (`encoding.seconds`), NaN where missing; the first record holding anything else is
    refused."""
    values, wrong = [], None
    for i, v in enumerate(col):
        if isinstance(v, str) or _missing(v):
            values.append(v)
        else:
            try:
                values.append(_number(v))
            except (TypeError, ValueError, OverflowError):  # not a number, or beyond a float's or a timestamp's range
                values.append(None)
                wrong = i if wrong is None else wrong
    x, bad = float_cells(pd.Series(values, dtype=object))
    first = min((i for i in (wrong, bad) if i is not None), default=None)
    if first is not None:
        v = col.iloc[first]
        raise LightFMPError(f"record {first}, field '{f.name}' is numeric but got {_shown(v)} ({type(v).__name__})")
    return pd.Series(x, index=col.index)


def _number(v) -> float:
    """A numeric field's value that is not text: a number, a time as its seconds since 1970 UTC (a naive one read as
    UTC), a duration as its seconds: what training reads from a timestamp or duration column (`encoding.seconds`)."""
    if isinstance(v, (datetime.datetime, np.datetime64)):
        t = pd.Timestamp(v)
        return np.nan if t is pd.NaT else float(t.timestamp())
    if isinstance(v, (datetime.timedelta, np.timedelta64)):
        d = pd.Timedelta(v)
        return np.nan if d is pd.NaT else float(d.total_seconds())
    if isinstance(v, decimal.Decimal):  # a Parquet decimal column's values, which training read as floats
        return float(v)
    if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
        raise TypeError(v)
    return float(v)


class _Spelled:
    """Stands in for a hashed field's vocabulary where `_token` picks a spelling: holds the texts spelled as the
    training text spelled its values (`Field.spelling`), and every text the spelling says nothing about."""

    def __init__(self, spelling: dict[str, str]):
        self.spelling, self.whole, self.bool = spelling, spelling["whole"], spelling["bool"]

    def __contains__(self, text: str) -> bool:
        if re.fullmatch(f"{WHOLE_TEXT}(\\.0)?", text):
            return text.endswith(".0") == self.whole.endswith(".0")
        if text in BOOL_TEXTS or text in [b.lower() for b in BOOL_TEXTS]:
            return text[0].islower() == self.bool[0].islower()
        if re.fullmatch(FRACTION_TEXT, text):  # as written, or a float32 column's float64 text
            return fraction_known(self.spelling, text)
        return True


def _known(f: Field):
    """What `_token` looks a value's spellings up in: the vocabulary, or a hashed field's recorded spelling."""
    if f.hashed and f.spelling is not None:
        return _Spelled(f.spelling)
    return set(f.vocab or [])


def _value_rule(f: Field):
    """The function that checks and converts one value of a categorical or multi-hot field f."""
    if f.kind == "multi_hot":
        def join(v):
            if isinstance(v, (list, tuple, np.ndarray)):
                bad = [t for t in v if not isinstance(t, (str, numbers.Integral)) or isinstance(t, bool)]
                for t in v:
                    if isinstance(t, str):
                        _scalar(f, t)
                if bad:
                    raise LightFMPError(f"field '{f.name}' (multi-hot) got token {bad[0]!r} "
                                        f"({type(bad[0]).__name__}) in {list(v)!r}")
                return f.separator.join(t if isinstance(t, str) else _token(f, t, known) for t in v)
            return _token(f, v, known)
        known = _known(f)
        return join
    known = _known(f)
    return lambda v: _token(f, v, known)


def _shown(v) -> str:
    text = repr(v) if not isinstance(v, int) or v.bit_length() < 1000 else f"<an integer of {v.bit_length()} bits>"
    return text if len(text) <= 60 else text[:57] + "..."


def _token(f: Field, v, known: set):
    """A categorical value's string form as training keyed it: of the texts training may have keyed it by
    (`_spellings`), the first the vocabulary holds, else the first (an unseen value: the OOV id either way)."""
    _scalar(f, v)
    if _missing(v) or (v == "" and f.hashed and empty_is_missing(f.spelling)):
        return None
    if isinstance(v, str):  # as it is; or as b'...', where a vocabulary written before bytes were read as text
        old = repr(v.encode("utf-8", "surrogatepass")) if isinstance(known, set) and v not in known else None
        return old if old is not None and old in known else v  # holds it so (a Parquet binary column's)
    texts = _spellings(f, v)
    return next((t for t in texts if t in known), texts[0])


def _spellings(f: Field, v) -> list[str]:
    """The texts a non-text value may have been keyed by in training, the one a typed column gives first
    (`encoding.cell_strings`), then those a text file's cells give for the same value: True / 'true'; a timestamp
    '2024-01-10 00:00:00' / '2024-01-10T00:00:00' / (at midnight) '2024-01-10'; 24 / 24.0 (pandas writes an
    integer column with gaps as 24.0); a float32 column's 0.2 as '0.20000000298023224' (its float64 text) / '0.2' (and
    a float16 column's); a time as a tz-aware column in UTC spells it ('2024-01-10 00:00:00+00:00')."""
    if isinstance(v, (bool, np.bool_)):
        return [str(bool(v)), str(bool(v)).lower()]
    if isinstance(v, (datetime.datetime, np.datetime64)):
        t = pd.Timestamp(v)
        if t is pd.NaT:
            return [str(t)]
        utc = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")  # a tz-aware column's, naive read as UTC
        return list(dict.fromkeys([str(t), t.isoformat()] + ([str(t.date())] if t == t.normalize() and t.tz is None
                                                             else []) + [str(utc)]))
    if isinstance(v, (datetime.timedelta, np.timedelta64)):  # a duration's: '0 days 00:00:05'
        return [str(pd.Timedelta(v))]
    if isinstance(v, datetime.date):  # a date's: '2024-01-10' (or a timestamp column's midnight)
        return [str(v), str(pd.Timestamp(v))]
    if isinstance(v, datetime.time):  # a time of day's: '10:30:00'
        return [str(v)]
    if isinstance(v, (bytes, decimal.Decimal)):
        # a Parquet binary or decimal column's: as text and number (b'k3' -> 'k3', 0.50 -> '0.5'), or as exports
        # written before read them (b'k3', '0.50'): their hashed fields, which record no "fraction", hash that
        texts = [value_text(v), str(v)]
        return list(dict.fromkeys(texts[::-1] if f.hashed and "fraction" not in (f.spelling or {}) else texts))
    if isinstance(v, numbers.Integral) or isinstance(v, numbers.Real) and float(v).is_integer():
        try:
            return [str(int(v)), str(float(v))]
        except ValueError:  # more digits than Python converts to text
            raise LightFMPError(f"field '{f.name}' got {_shown(v)}, too large for a category") from None
        except OverflowError:  # beyond a float: no float spelling to look for
            return [str(int(v))]
    if isinstance(v, numbers.Real):
        return list(dict.fromkeys([str(float(v))] + narrow_texts(float(v))))
    return [str(v)]


def narrow_texts(x: float) -> list[str]:
    """The texts a float32 or float16 column spells the value nearest `x` in (its float64 text), where they are
    longer than that value needs ('0.20000000298023224' for 0.2), then float32's own shortest text ('0.2'): a
    shorter one is a value of its own ('2.5' for 2.5005 is another category)."""
    out = []
    with np.errstate(over="ignore"):
        for narrow in (np.float32(x), np.float16(x)):
            if np.isfinite(narrow) and significant_digits(str(float(narrow))) >= LONG_DIGITS:
                out.append(str(float(narrow)))
        single = np.float32(x)
    return out + [str(single)] if np.isfinite(single) else out


def _scalar(f: Field, v) -> None:
    if isinstance(v, str) and not unicode_text(v):
        raise LightFMPError(f"field '{f.name}': a text value is not valid Unicode (a lone surrogate such as "
                            f"'\\ud800'), so it has no UTF-8 form to look up")
    if _missing(v) or isinstance(v, (str, bytes, numbers.Number, np.generic, datetime.date, datetime.time,
                                      datetime.timedelta)):  # bytes: a Parquet binary column's values
        return
    kind = f.kind.replace("_", "-")  # as the other messages spell it: multi-hot
    raise LightFMPError(f"field '{f.name}' ({kind}) got {v!r} ({type(v).__name__}); expected a string or number")


__all__ = ["Predictor"]

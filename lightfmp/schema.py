"""The feature schema: the one description of the input fields that data, models, pruning and export all read.

Id convention for every field: 0 is the padding id, 1 the OOV id (unseen, rare or missing values), real values
start at 2. Numeric fields are bucketized at quantile boundaries fitted on the training rows, so every field is an
id-based lookup into the same flat embedding table; their id 1 stands for a missing (NaN) value.

A categorical or multi-hot field may be hashed instead of having a vocabulary (`Field.hash_buckets` = N): a value's
id is FIRST_ID + stable_hash(value) % N (see `lightfmp.encoding.stable_hash` for the exact function), a missing value
is OOV_ID. A value's text (`cell_strings`), the numeric parse (`as_float`) and the hash live in lightfmp.encoding,
which works on Arrow arrays; they are imported here for the callers that read them from the schema.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .coded import Coded, Unparsed
from .config import MAX_BUCKETS
from .encoding import (DURATION_DERIVE, TIME_DERIVE, Tokens, VocabIndex, as_float, cell_strings, column,
                       column_names, lists, numbers, split_multi, stable_hash, tokens)
from .errors import LightFMPError, first_repeat
from .io import read_json, write_json_atomic

SCHEMA_VERSION = 1
PAD_ID = 0
OOV_ID = 1
FIRST_ID = 2
MAX_HASH_BUCKETS = (1 << 31) - 1 - FIRST_ID  # a hashed id (FIRST_ID + bucket) fits the int32 ids every row holds
KINDS = ("categorical", "numeric", "multi_hot")


def check_boundaries(edges, where: str) -> None:
    """A numeric field's bucket edges: a list of finite numbers in ascending order (a bucket id counts the edges at
    or below a value), else one error beginning with `where`."""
    if not isinstance(edges, list) or not all(isinstance(e, (int, float)) and not isinstance(e, bool)
                                              and math.isfinite(e) for e in edges):
        raise LightFMPError(f"{where}: boundaries must be a list of finite numbers, got {edges!r:.80}")
    if any(b < a for a, b in zip(edges, edges[1:])):
        raise LightFMPError(f"{where}: boundaries must be in ascending order, got {edges!r:.80}")


# How the text training hashed spells a typed value, for a hashed field (no vocabulary to look a spelling up in):
# a whole number as '16' or '16.0' (pandas writes an integer column with gaps as 16.0), a bool as 'True' or 'true'
# (a CSV's text), and whether the empty text was a value of its own ('value': a Parquet '') or never one
# ('missing': a text file's empty cell is a missing value, so a served '' is one too, as for a vocabulary without
# ''), and a fraction as written ('0.2'; a served float32 0.2 too) or as a float32 column's float64 text
# ('0.20000000298023224', for a served 0.2 as well). Recorded at fit from the field's values (`vocab.Spellings`),
# used where a value is served.
SPELLINGS = {"whole": ("16", "16.0"), "bool": ("True", "true"), "empty": ("missing", "value"),
             "fraction": ("0.2", "0.20000000298023224")}
# the keys a spelling gives: before "empty" was recorded ('' is then hashed as a value), before "fraction" was (a
# served fraction is then hashed as the first of its texts), since
SPELLING_KEYS = ({"whole", "bool"}, {"whole", "bool", "empty"}, set(SPELLINGS))
WHOLE_TEXT = r"-?[0-9]+"          # a whole number's text ('16'; '16.0' is it with ".0")
FRACTION_TEXT = r"-?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?"  # a number's text as Python writes it
BOOL_TEXTS = ("True", "False")    # a typed column's booleans ('true' / 'false': the same, lower case)


def check_spelling(spelling, where: str) -> None:
    if not isinstance(spelling, dict) or set(spelling) not in SPELLING_KEYS \
            or any(spelling[k] not in SPELLINGS[k] for k in spelling):
        raise LightFMPError(f"{where}: spelling {spelling!r:.80} must give "
                            + " and ".join(f"{k} as {' or '.join(map(repr, v))}" for k, v in SPELLINGS.items()))


LONG_DIGITS = 10  # significant digits from which a float32 value's float64 text is longer than the value needs:
                 # float32 round-trips in 9 ('0.2' is '0.20000000298023224' widened; '1234567.25' is a value as written)


def significant_digits(text: str) -> int:
    """The significant digits of a number's text (`FRACTION_TEXT`): '0.20000000298023224' 17, '1234567.25' 9."""
    return len(re.sub(r"[-+.]", "", re.split(r"[eE]", text)[0]).lstrip("0"))


def long_single(text: str) -> bool:
    """Whether a number's text is a float32 value's float64 text, longer than the value needs: the value is a
    float32 one and its text has LONG_DIGITS or more significant digits."""
    x = float(text)
    with np.errstate(over="ignore"):
        return float(np.float32(x)) == x and significant_digits(text) >= LONG_DIGITS


def fraction_known(spelling: dict | None, text: str) -> bool:
    """Whether a hashed field of this spelling may have hashed the number text `text` (`FRACTION_TEXT`): where it
    recorded a float32 column's texts, a float32 value's ('0.20000000298023224', '0.5'); where it recorded fractions
    as written, any but a float32 value's text longer than the value needs (`long_single`); where it recorded
    neither (before it did), any."""
    fraction = (spelling or {}).get("fraction")
    if fraction is None:
        return True
    if fraction == SPELLINGS["fraction"][1]:
        with np.errstate(over="ignore"):
            return float(np.float32(float(text))) == float(text)
    return not long_single(text)


def empty_is_missing(spelling: dict | None) -> bool:
    """Whether a served '' is a missing value for a hashed field of this spelling."""
    return spelling is not None and spelling.get("empty") == "missing"


TIME_DERIVES = (TIME_DERIVE, DURATION_DERIVE)  # a numeric field read from times / durations (`Field.derive`)


@dataclass
class Field:
    name: str
    kind: str
    vocab: list[str] | None = None        # categorical / multi_hot: token of id FIRST_ID + i
    separator: str | None = None          # multi_hot only
    max_len: int = 0                      # multi_hot only: slots per row (longer lists are truncated)
    boundaries: list[float] | None = None  # numeric only: bucket edges
    hash_buckets: int | None = None       # categorical / multi_hot: hashed into this many ids, no vocab
    spelling: dict[str, str] | None = None  # hashed only: how training's text spelled typed values (SPELLINGS)
    derive: str | None = None             # numeric only: read from times or durations, as seconds (TIME_DERIVES)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LightFMPError(f"field '{self.name}': unknown kind '{self.kind}' (expected one of {', '.join(KINDS)})")
        if self.kind == "multi_hot" and not self.separator:
            raise LightFMPError(f"field '{self.name}': a multi_hot field needs a separator")
        if self.hash_buckets is not None:
            if self.kind == "numeric":
                raise LightFMPError(f"field '{self.name}': a numeric field cannot be hashed")
            if isinstance(self.hash_buckets, bool) or not 1 <= int(self.hash_buckets) <= MAX_HASH_BUCKETS:
                raise LightFMPError(f"field '{self.name}': hash_buckets {self.hash_buckets!r} must be an integer from 1 "
                                    f"to {MAX_HASH_BUCKETS:,}")
            self.hash_buckets = int(self.hash_buckets)
        if self.spelling is not None:
            check_spelling(self.spelling, f"field '{self.name}'")
        if self.derive is not None and (self.kind != "numeric" or self.derive not in TIME_DERIVES):
            raise LightFMPError(f"field '{self.name}': derive {self.derive!r} is not one lightfmp writes (a numeric "
                                f"field's {' or '.join(TIME_DERIVES)})")

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
        if self.spelling is not None:
            d["spelling"] = dict(self.spelling)
        if self.derive is not None:  # only when set, so other schemas serialise as before
            d["derive"] = self.derive
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Field":
        if not isinstance(d, dict) or "name" not in d or "kind" not in d:
            raise LightFMPError(f"schema field entry {d!r} needs 'name' and 'kind'")
        where = f"schema field '{d['name']}'"
        unknown(d, FIELD_KEYS, where)
        max_len = whole(d, "max_len", 0, 0, where)
        hash_buckets = whole(d, "hash_buckets", None, 1, where)
        if d["kind"] == "multi_hot" and d.get("vocab") is not None and max_len < 1:  # (hashed: fitted from the data)
            raise LightFMPError(f"{where}: a multi_hot field with a vocab needs max_len >= 1 (its slots per row)")
        if d.get("separator") is not None and not isinstance(d["separator"], str):
            raise LightFMPError(f"{where}: separator {d['separator']!r} must be text")
        edges = d.get("boundaries")
        if edges is not None:
            check_boundaries(edges, f"schema field '{d['name']}'")
        vocab = d.get("vocab")
        if vocab is not None:  # each token once, as text: a token's id is its place
            bad = [vocab] if not isinstance(vocab, list) else [t for t in vocab if not isinstance(t, str)][:1]
            if bad:
                raise LightFMPError(f"schema field '{d['name']}': vocab holds {bad[0]!r}; it is a list of strings")
            twice = first_repeat(vocab)
            if twice is not None:
                raise LightFMPError(f"schema field '{d['name']}': vocab lists {twice!r} twice")
        return cls(name=str(d["name"]), kind=d["kind"], vocab=d.get("vocab"), separator=d.get("separator"),
                   max_len=max_len, boundaries=edges, hash_buckets=hash_buckets, spelling=d.get("spelling"),
                   derive=d.get("derive"))


FIELD_KEYS = ("name", "kind", "vocab", "separator", "max_len", "boundaries", "hash_buckets", "spelling", "derive")
SCHEMA_KEYS = ("schema_version", "label", "positive", "min_count", "num_buckets", "vocab_cap", "meta", "pad_id",
               "oov_id", "fields")


def unknown(d: dict, known: tuple[str, ...], where: str) -> None:
    """Refuse a key that is none of `known`: a misspelt key ('vocabulary', 'edges') would be ignored, and the field
    fitted from the data instead, quietly."""
    bad = next((k for k in d if k not in known), None)
    if bad is not None:
        raise LightFMPError(f"{where}: unknown key {bad!r} (known: {', '.join(known)})")


def whole(d: dict, key: str, default, least: int, where: str):
    """d[key] (or `default` where absent or null), refused in one line unless an integer >= least."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise LightFMPError(f"{where}: {key} {v!r} must be an integer >= {least}")
    return v


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
        if whole(d, "schema_version", 1, 1, source) > SCHEMA_VERSION:  # before its keys: a newer one may add some
            raise LightFMPError(f"{source}: schema_version {d['schema_version']} is newer than this lightfmp "
                                f"supports ({SCHEMA_VERSION})")
        unknown(d, SCHEMA_KEYS, source)
        for key, ok, what in (("label", isinstance(d["label"], str), "text"),
                              ("fields", isinstance(d["fields"], list), "a list of field entries"),
                              ("meta", isinstance(d.get("meta"), (dict, type(None))), "an object"),
                              ("positive", not isinstance(d.get("positive"), (list, dict)), "a value")):
            if not ok:
                raise LightFMPError(f"{source}: {key} {d[key]!r} must be {what}")
        counts = {key: whole(d, key, default, 1, source)
                  for key, default in (("min_count", 2), ("num_buckets", 16), ("vocab_cap", None))}
        if counts["num_buckets"] > MAX_BUCKETS:  # the flag's bound: more than the fit's sample cannot be told apart
            raise LightFMPError(f"{source}: num_buckets {counts['num_buckets']} must be at most {MAX_BUCKETS:,}")
        try:
            fields = [Field.from_dict(f) for f in d["fields"]]
        except LightFMPError as e:
            raise LightFMPError(f"{source}: {e}") from None
        twice = first_repeat(f.name for f in fields)
        if twice is not None:
            raise LightFMPError(f"{source}: field '{twice}' is listed twice; each column is one field")
        return cls(label=d["label"], fields=fields, positive=d.get("positive"), meta=dict(d.get("meta") or {}),
                   **counts)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSchema":
        return cls.from_dict(read_json(path, obj=False), source=str(path))

    # ---- encoding --------------------------------------------------------------------------------------------
    def code(self, data, names: list[str] | None = None) -> Coded:
        """A batch (record batch, table or DataFrame) coded for these fields (all, or `names`): the work that
        reads the batch's cells, shared by the fit and the encoding. A numeric column that does not parse is kept
        as `Unparsed` (the encoding raises its error)."""
        have = set(column_names(data))
        fields = {}
        by_name = {f.name: f for f in self.fields}
        for f in self.fields if names is None else [by_name[n] if n in by_name else self.field(n) for n in names]:
            if f.name not in have:
                failed = next((v for v in fields.values() if isinstance(v, Unparsed)), None)
                # fields are read in order: an earlier field's error comes first
                raise LightFMPError(failed.error if failed else f"column '{f.name}' of the schema is absent from the "
                                                                f"data")
            col = column(data, f.name)
            if f.kind != "numeric":
                fields[f.name] = tokens(col)
                continue
            try:
                fields[f.name] = numbers(col, f.name)
            except LightFMPError as e:
                fields[f.name] = Unparsed(str(e), col, getattr(e, "row", None))
        return Coded(len(data), fields)

    def encode(self, data) -> np.ndarray:
        """Encoded ids [rows, num_slots] (int32) of a batch (record batch, table or DataFrame) or of its `code`.
        Unseen values map to OOV; never raises on new categories."""
        coded = data if isinstance(data, Coded) else self.code(data)
        blocks = [_field_ids(f, coded.fields[f.name]) for f in self.fields]  # [rows, slots of the field] each
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(coded), 0), dtype=np.int32)


def encode_field(f: Field, col) -> np.ndarray:
    """Ids for one field, shape [rows, f.slots], of a pyarrow array or a pandas Series."""
    return _field_ids(f, numbers(col, f.name) if f.kind == "numeric" else tokens(col))


def _field_ids(f: Field, cells: Tokens | np.ndarray | Unparsed) -> np.ndarray:
    """Ids [rows, f.slots] of a coded column: bucket of each number, or id of each distinct text gathered by the
    codes (a multi-hot cell's tokens in its first slots, the rest padding)."""
    if isinstance(cells, Unparsed):
        cells.fail()
    if f.kind == "numeric":
        return bucket_ids(cells, f.boundaries)[:, None]
    if f.kind == "categorical":
        return np.append(token_ids(f, cells.values), OOV_ID).astype(np.int32)[cells.codes][:, None]
    split = lists(cells, f.separator)
    # each distinct cell's row of ids, then one gather per row; the extra last row (all padding) is a missing cell
    table = np.full((len(cells.values) + 1, f.max_len), PAD_ID, dtype=np.int32)
    ids = np.append(token_ids(f, split.tokens.values), OOV_ID)[split.tokens.codes]
    keep = split.position < f.max_len
    table[split.cell[keep], split.position[keep]] = ids[keep]
    return table[cells.codes]


COUNTED_EDGES = 64  # up to this many edges a bucket is counted by comparisons (one pass an edge), faster than a binary
                    # search per value; beyond it, the search. The same ids either way.


FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e+38: the largest number an exported graph's inputs hold


def beyond_float32(field: Field) -> float | None:
    """A numeric field's largest bucket edge in magnitude where it lies beyond float32's range (the exported graph
    reads numbers as float32: such an edge would become infinite), else None."""
    edge = max((abs(e) for e in field.boundaries or []), default=0.0) if field.kind == "numeric" else 0.0
    return edge if edge > FLOAT32_MAX else None


def bucket_ids(x: np.ndarray, edges: list[float], precision=np.float64) -> np.ndarray:
    """FIRST_ID + the number of edges <= x (int32) for each x; OOV_ID for NaN (a missing cell). `precision`: of the
    edges and so of the comparisons (np.float32: what the exported graph computes)."""
    edges = np.asarray(edges, dtype=precision)
    if len(edges) > COUNTED_EDGES:
        ids = (np.searchsorted(edges, x, side="right") + FIRST_ID).astype(np.int32)
    else:  # both sides in the type the search compares in (the wider of the two), whatever numpy's promotion rules
        common = np.result_type(np.asarray(x).dtype, edges.dtype)
        x, edges = np.asarray(x, dtype=common), edges.astype(common)
        ids = np.full(len(x), FIRST_ID, dtype=np.int32)
        for e in edges:
            ids += x >= e
    ids[np.isnan(x)] = OOV_ID
    return ids


def token_ids(f: Field, values: pa.Array) -> np.ndarray:
    """Ids (int64) of distinct texts, by vocabulary look-up or by hash."""
    if f.hashed:
        return (stable_hash(values) % np.uint64(f.hash_buckets)).astype(np.int64) + FIRST_ID
    pos = _vocab_index(f).positions(values)
    return np.where(pos >= 0, pos + FIRST_ID, OOV_ID)


def _vocab_index(f: Field) -> VocabIndex:
    """The vocabulary's look-up table, built once per vocabulary list rather than once per encoded batch (the
    streaming path encodes many batches; building the table costs more than the look-ups)."""
    cached = f.__dict__.get("_lookup")
    if cached is None or cached[0] is not f.vocab:
        cached = (f.vocab, VocabIndex(f.vocab or []))
        f.__dict__["_lookup"] = cached
    return cached[1]


def clamp_max_len(longest: int) -> int:
    """Slots of a multi-hot field: the longest list seen in training, at least 1, at most 32."""
    return max(1, min(int(longest), 32))


def quantile_edges(x: np.ndarray, buckets: int) -> list[float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return []
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is caught below, not printed to the user
        qs = np.quantile(x, np.linspace(0, 1, buckets + 1)[1:-1])
    if not np.isfinite(qs).all():  # values spanning more than the largest float (-1e308 and 1e308): the
        qs = np.quantile(x / 2, np.linspace(0, 1, buckets + 1)[1:-1]) * 2  # interpolation overflowed; halves do not
    return [float(v) for v in np.unique(qs)]


def vocab_from_counts(tokens: pa.Array, counts: np.ndarray, min_count: int, cap: int | None = None) -> list[str]:
    """Distinct texts and their counts to a vocabulary, the same in the in-memory and the streaming fit: texts seen
    at least min_count times, most frequent first, ties by text (code point order, which is the byte order of
    UTF-8), at most `cap`; so the same data always gives the same ids."""
    counts = np.asarray(counts, dtype=np.int64)
    keep = counts >= min_count
    table = pa.table({"neg": pa.array(-counts[keep]), "token": tokens.filter(pa.array(keep))})
    order = pc.sort_indices(table, sort_keys=[("neg", "ascending"), ("token", "ascending")])
    if cap is not None:
        order = order[:cap]
    return table.column("token").take(order).to_pylist()


def is_integral(x: np.ndarray) -> bool:
    finite = x[np.isfinite(x)]
    if len(finite) > 1000 and not np.all(np.mod(finite[:1000], 1) == 0):
        return False  # decided by the first values where a column of fractions shows one (the answer is the same)
    return bool(len(finite)) and bool(np.all(np.mod(finite, 1) == 0)) and not math.isinf(float(np.abs(finite).max()))


__all__ = ["SCHEMA_VERSION", "PAD_ID", "OOV_ID", "FIRST_ID", "KINDS", "TIME_DERIVES", "SPELLINGS", "empty_is_missing", "WHOLE_TEXT", "BOOL_TEXTS", "Field", "FeatureSchema", "encode_field",
           "check_boundaries", "bucket_ids", "token_ids", "clamp_max_len", "quantile_edges", "vocab_from_counts",
           "is_integral",
           # the text rule, the numeric parse and the hash, from lightfmp.encoding
           "cell_strings", "split_multi", "as_float", "stable_hash"]

"""The one path from a data file to encoded rows, for every command (train, prune, run, bench, export).

    read      Arrow tables of --chunk-rows rows (lightfmp.formats: CSV, Parquet file or directory, compressed text,
              Criteo, Avazu); each row keeps its global number in the file
    split     the split rule (lightfmp.splits): a hash of the row number (or of its --group-column value), or the
              rank of --time-column
    fit       the schema's kinds from the first batch and its vocabularies / bucket edges from the training rows
              (lightfmp.vocab.StreamFitter), unless the schema is given already fitted; each batch is coded once
              (FeatureSchema.code: per field its distinct values and the codes of the rows, on the batch's Arrow
              arrays) and the coded batches are kept (lightfmp.coded: in memory, or on disk when streaming)
    encode    each coded batch -> ids, labels, row numbers, split codes: one chunk of a store (FeatureSchema.encode:
              the distinct values' ids gathered by the codes). Without a fit pass, each batch is read and coded.

Where the chunks live is the only thing --stream changes (as a streaming flag picks the loader in FuxiCTR): in
memory (`rows.MemoryStore`: the file is read once), or in shards on disk (`shards.ShardStore`: the file is read
once to fit, its coded batches go to a scratch directory beside the shards and are encoded from there, and the
shards are reused by the next run on the same data). The rows, their order and the results are the same either
way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from rich.markup import escape

from .coded import Coded, CodedStore
from .config import DataConfig
from .encoding import (TEXT_RULE, column, column_names, present, read_otherwise_before, stable_hash,
                       time_derive, tokens)
from .errors import CellError, LightFMPError, shown
from .formats import (check_source, fixed_label, implies_stream, line_of, read_batches, read_tables,
                      resolve_format)
from .io import data_signature, file_sha256
from .labels import LabelCounts, check_label_column, parse_labels
from .progress import Reporter, counted
from .rows import MemoryStore, Store, StoredRows
from .schema import FIRST_ID, FeatureSchema
from .scratch import reap
from .shards import (ShardStore, ShardWriter, check_home, check_shards, fit_cache_path, load_fit, save_fit, shard_home,
                     shard_key)
from .splits import (SALT_SAMPLE, SALT_SUBSET, SPLITS, SplitRule, check_sizes, check_split_keys, row_uniform,
                     time_codes)
from .vocab import (RESERVOIR_SIZE, PRUNE_MIN_ENTRIES, StreamFitter, apply_options, initial_schema,
                    parse_hash_buckets)

Batches = Callable[[], Iterable[tuple[pa.Table | Coded, int]]]


@dataclass
class Dataset:
    """A run's encoded data: the fitted schema, the split rule and a store of encoded chunks."""
    schema: FeatureSchema
    sha256: str                      # content hash of the data file
    rows: int                        # data rows in the file
    rule: SplitRule
    store: Store
    location: Path | None = None     # the shard directory (None: in memory)

    @property
    def split(self) -> dict:
        return self.rule.to_dict()

    def split_rows(self, name: str) -> StoredRows:
        if name not in SPLITS:
            raise LightFMPError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")
        return StoredRows(self.store, self.schema.field_slot_ranges(), (SPLITS.index(name),))

    def subset(self, fraction: float, seed: int) -> tuple[StoredRows, StoredRows]:
        """(phase-1 subset, the rest) of the training split: training rows whose row_uniform(row, seed,
        SALT_SUBSET) < fraction form the subset; fraction 1.0 gives (all training rows, no rows)."""
        if not 0 < fraction <= 1:
            raise LightFMPError(f"--subset {fraction}: must be in (0, 1]")
        rest, sub = self.split_rows("train").split(fraction, seed, SALT_SUBSET)
        return sub, rest

    def split_sizes(self) -> dict[str, int]:
        counts = np.zeros(3, dtype=np.int64)
        for i in range(len(self.store)):
            counts += np.bincount(np.asarray(self.store.array(i, "split")), minlength=3)[:3]
        return dict(zip(SPLITS, map(int, counts)))


def streaming(cfg: DataConfig) -> bool:
    """--stream, or a format only read that way (criteo, avazu)."""
    return bool(cfg.stream) or (bool(cfg.data) and implies_stream(resolve_format(cfg.data, cfg.format)))


def load_dataset(cfg: DataConfig, reporter: Reporter | None = None, schema: FeatureSchema | None = None,
                 sha256: str | None = None, rule: SplitRule | None = None,
                 signature: tuple | None = None) -> Dataset:
    """Read, split, fit (unless `schema` / --schema is fitted already) and encode cfg.data. `sha256`: the file's
    content hash when the caller computed it already, and `signature` its `data_signature` taken before it did;
    `rule`: a run's recorded split rule (default: from cfg). A file changed or replaced between the hash and the end
    of any read is refused: the hash the run records (and the shard and fit caches are keyed on) would not be of the
    rows it read."""
    reporter = reporter or Reporter(quiet=True)
    path, fmt = check_source(cfg.data, cfg.format)  # --chunk-rows and the rest were range-checked by the config
    rule = rule or SplitRule(tuple(cfg.split), int(cfg.seed), cfg.time_column or None,
                             group_column=cfg.group_column or None)
    signature = signature if signature is not None and sha256 else data_signature(path)
    source, sha = str(path), sha256 or file_sha256(path)

    def unchanged():
        if data_signature(path) != signature:
            raise LightFMPError(f"{source}: changed while lightfmp read it (a file replaced, grown or rewritten since "
                                f"it was hashed); run again once it is complete")
    given = schema is None and bool(cfg.schema)
    schema = _given_schema(cfg, schema)
    if given:  # how this data spells a hashed field's values is fitted on it, whatever the file says
        for f in schema.fields:
            f.spelling = None
    on_disk = streaming(cfg)
    if on_disk:
        check_home(cfg.shard_dir, path)
        reap(shard_home(cfg.shard_dir))  # the one place: what a killed run left, whether or not this one encodes

        def batches():
            yield from read_tables(path, fmt, cfg.chunk_rows)
            unchanged()  # every pass read what was hashed
    else:
        held = list(read_tables(path, fmt, cfg.chunk_rows))  # in memory: the file is read once
        unchanged()

        def batches():
            return iter(held)
    codes = _split_codes(rule, batches, source)
    inferred, save = {}, None
    with CodedStore(shard_home(cfg.shard_dir) if on_disk else None) as kept:
        if schema is None or not all(f.fitted for f in schema.fields) \
                or given and any(f.hashed for f in schema.fields):
            schema, inferred, save = _fitted(cfg, fmt, rule, sha, schema, batches, codes, source, reporter, on_disk,
                                             kept)
        if kept.count and not on_disk:
            held.clear()  # the coded batches replace the read ones

        def encoded():
            # the fit pass ran and coded every batch: encode those instead of reading the file again
            return _numbered(kept) if kept.count else batches()
        try:
            if on_disk:
                store, location = _shards(cfg, fmt, rule, sha, schema, encoded, codes, source, reporter)
            else:
                store, location = MemoryStore(schema.num_slots), None
                _encode(encoded(), schema, codes, source, fmt, store.append, bool(cfg.label))
        except LightFMPError as e:
            raise _kind_hint(e, inferred) from None
    if save is not None:  # the fit is kept for later runs once the whole file encoded
        save()
    data = Dataset(schema, sha, _rows(store), rule, store, location)
    check_sizes(data.split_sizes(), data.rows, rule.fractions, source, rule.time_column, rule.group_column)
    return data


def _check_fit_options(cfg: DataConfig, schema: FeatureSchema) -> None:
    """A fit option beside a --schema file must act on a field the file leaves to fit, or say what the file does;
    one that would change nothing is refused, not recorded in config.yaml as if it applied. min_count and
    num_buckets are the file's (the flags' defaults ask for nothing); --vocab-cap caps the vocabularies still to
    fit (categorical and multi-hot fields without one); --hash-buckets hashes the fields it names (a field with a
    vocabulary is refused by it) or, as N, every field it can."""
    defaults = DataConfig()
    for flag, key in (("--min-count", "min_count"), ("--num-buckets", "num_buckets")):
        if getattr(cfg, key) not in (getattr(schema, key), getattr(defaults, key)):
            raise LightFMPError(f"--schema {cfg.schema}: its fields are fitted with {key} {getattr(schema, key)}; "
                                f"drop {flag} {getattr(cfg, key)} (or set {key} in the schema file)")
    if cfg.vocab_cap is not None and cfg.vocab_cap != schema.vocab_cap \
            and not any(f.kind != "numeric" and not f.fitted for f in schema.fields):
        raise LightFMPError(f"--schema {cfg.schema}: every vocabulary there is fitted already, so --vocab-cap "
                            f"{cfg.vocab_cap} would cap none; drop it")
    if cfg.hash_buckets is not None and str(cfg.hash_buckets).strip():
        trial = FeatureSchema.from_dict(schema.to_dict())
        try:
            wanted = parse_hash_buckets(cfg.hash_buckets, trial)
            apply_options(trial, cfg.hash_buckets, None)
        except LightFMPError as e:
            raise LightFMPError(f"--schema {cfg.schema}: {e}") from None
        if not any(trial.field(name).hash_buckets == n for name, n in wanted.items()):
            raise LightFMPError(f"--schema {cfg.schema}: every field there has a vocabulary, so --hash-buckets "
                                f"{cfg.hash_buckets} would hash none; drop it")


def _given_schema(cfg: DataConfig, schema: FeatureSchema | None) -> FeatureSchema | None:
    if schema is None and cfg.schema:
        kinds = [f for f, v in (("--categorical", cfg.categorical), ("--numeric", cfg.numeric),
                                ("--multi-hot", cfg.multi_hot), ("--ignore", cfg.ignore)) if v]
        if kinds:
            raise LightFMPError(f"--schema {cfg.schema}: the schema file says each field's kind; drop {kinds[0]}")
        try:
            schema = FeatureSchema.load(cfg.schema)
        except LightFMPError as e:  # named as the flag (or the config key) that gave it
            raise LightFMPError(f"--schema {e}") from None
        _check_fit_options(cfg, schema)
    if schema is None:
        if not cfg.label and not implies_stream(resolve_format(cfg.data, cfg.format)):
            raise LightFMPError("no label: pass --label COLUMN")
        return None
    schema = FeatureSchema.from_dict(schema.to_dict())  # a copy: the caller's schema is left as it was
    schema.label = cfg.label or schema.label
    where = f"--schema {cfg.schema}" if cfg.schema else "the schema given"
    if not schema.fields:
        raise LightFMPError(f"{where}: it lists no fields; a model needs at least one feature column")
    if schema.label in schema.names:
        raise LightFMPError(f"{where}: field '{schema.label}' is the label column; a column is the label or a "
                            f"feature, not both (drop the field, or name another --label)")
    if cfg.positive is not None:
        schema.positive = cfg.positive
    return schema


def _rows(store: Store) -> int:
    return int(sum(len(store.array(i, "labels")) for i in range(len(store))))


# ---- split ----------------------------------------------------------------------------------------------------------
def _split_codes(rule: SplitRule, batches: Batches, source: str) -> Callable[[int, int], np.ndarray]:
    """codes(start, n): split codes of global rows start .. start + n - 1. The time rule ranks the whole column
    first, and the group rule reads every row's group first (one extra read of the file when streaming), on the
    first call: after the first batch's checks of the flags, before any row is fitted or encoded."""
    if rule.group_column is None and rule.time_column is None:
        return lambda start, n: rule.hash_codes(np.arange(start, start + n, dtype=np.int64))
    every = None

    def codes(start: int, n: int) -> np.ndarray:
        nonlocal every
        if every is None:
            every = _every_split(rule, batches, source)
        return every[start:start + n]
    return codes


def _every_split(rule: SplitRule, batches: Batches, source: str) -> np.ndarray:
    """Every row's split code under the time or group rule; an empty split is refused here."""
    if rule.group_column is not None:
        parts, seen = [], set()
        for batch, start in batches():
            check_split_keys(None, rule.group_column, column_names(batch), source)
            groups = tokens(column(batch, rule.group_column))
            gone = np.flatnonzero(groups.codes < 0)
            if len(gone):
                raise LightFMPError(f"{source}: --group-column '{rule.group_column}' is missing at row "
                                    f"{start + int(gone[0])}: every row needs a group")
            hashes = stable_hash(groups.values)
            if len(seen) < len(SPLITS):  # whether there are that many groups (a batch's first few tell)
                seen.update(hashes[:len(SPLITS)].tolist())
            parts.append(rule.hash_codes(hashes)[groups.codes])
        every = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
        if 0 < len(seen) < len(SPLITS):
            raise LightFMPError(f"{source}: --group-column '{rule.group_column}' holds {len(seen)} group(s); a split "
                                f"by group puts each group in one of train, valid and test whole, so it needs at "
                                f"least {len(SPLITS)} (split by row hash without it)")
    else:
        parts = []
        for batch, _ in batches():
            check_split_keys(rule.time_column, None, column_names(batch), source)
            parts.append(batch.column(rule.time_column).to_pandas())
        every = time_codes(pd.concat(parts, ignore_index=True), rule.fractions, rule.time_column, source,
                           rule.time_ties)
    counts = np.bincount(every, minlength=len(SPLITS))[:len(SPLITS)]
    check_sizes(dict(zip(SPLITS, map(int, counts))), len(every), rule.fractions, source, rule.time_column,
                rule.group_column)
    return every


# ---- fit ------------------------------------------------------------------------------------------------------------
def _fitted(cfg: DataConfig, fmt: str, rule: SplitRule, sha: str, schema: FeatureSchema | None, batches: Batches,
            codes, source: str, reporter: Reporter, cache: bool,
            kept: CodedStore) -> tuple[FeatureSchema, dict[str, str], Callable[[], None] | None]:
    """The fit pass, or (streaming) its result from an earlier run with the same data and fit options. The pass
    codes every batch once, for the fit and (into `kept`) for the encoding. Returns the schema, the inferred
    columns' kinds (column -> how) and, where a fit done here is to be kept for later runs, the call that saves it
    (made once the encoding succeeded too)."""
    where = None
    if cache:
        opts = {k: getattr(cfg, k) for k in ("label", "positive", "categorical", "numeric", "multi_hot", "ignore",
                                             "min_count", "num_buckets", "hash_buckets", "vocab_cap", "chunk_rows")}
        where = fit_cache_path(cfg.shard_dir, {"data_sha256": sha, "format": fmt, "split": rule.to_dict(),
                                               "options": opts, "limits": [RESERVOIR_SIZE, PRUNE_MIN_ENTRIES],
                                               "schema": schema.to_dict() if schema is not None else None})
        saved = load_fit(where)
        if saved is not None:
            for col, why in saved[1].items():
                reporter.log(f"inferred column [bold]{escape(str(col))}[/]: {why}")
            reporter.log(f"fit pass skipped: the schema fitted on this data with these options is in {where}")
            return saved[0], saved[1], None
    t0 = time.perf_counter()
    fitter, inferred, nonmissing, n_rows = None, {}, {}, 0
    try:
        for batch, start in batches():
            if fitter is None:
                if schema is None:
                    schema, inferred = initial_schema(batch, cfg, fmt, source)
                apply_options(schema, cfg.hash_buckets, cfg.vocab_cap)
                present_columns = set(column_names(batch))
                for f in schema.fields:  # what a numeric field's number is, where the column holds times
                    if f.kind == "numeric" and f.name in present_columns:
                        f.derive = time_derive(column(batch, f.name))
                fitter = StreamFitter(schema, cfg.seed, log=reporter.log)
                nonmissing = {f.name: 0 for f in schema.fields}
                labels = LabelCounts(schema.label, schema.positive)
            _check_columns(batch, schema, source, bool(cfg.label))
            y = parse_labels(batch, schema.label, schema.positive, source, start, fmt)  # a bad label fails this pass
            train = codes(start, len(batch)) == 0
            labels.add(batch, y, train)
            coded = schema.code(batch)
            for name in (c for c, why in inferred.items() if why.startswith("categorical (integers")):
                found = _first_fraction(coded.fields[name])
                if found is not None:  # its values would each be a rare category, read as unknown: refused
                    _in_batch(CellError(f"column '{name}' holds {found[0]}, a number that is not an integer,",
                                        found[1]), source, start, len(batch), fmt)
            try:
                fitter.add(coded, train)
            except LightFMPError as e:
                _in_batch(e, source, start, len(batch), fmt)
            coded.labels = y
            kept.add(coded)
            for name in nonmissing:
                nonmissing[name] += present(batch.column(name))
            n_rows += len(batch)
        labels.check(source)
        fitter.finish()
    except LightFMPError as e:
        raise _kind_hint(e, inferred) from None
    for name, n in nonmissing.items():  # its kind does not matter: no row holds a value
        if n == 0:
            raise LightFMPError(f"{source}: column '{name}' is entirely empty (NaN); drop it with --ignore {name}")
    for name, sample in (fitter.reservoirs if fitter is not None else {}).items():  # edges: finite values only
        if sample.seen == 0:
            raise LightFMPError(f"{source}: numeric column '{name}' holds no finite number in the training rows "
                                f"(only infinities or missing values), so every value would share one bucket; "
                                f"--categorical {name} reads its values as categories, or drop it with --ignore "
                                f"{name}")
    for f in schema.fields:  # inferred categorical, and no value seen --min-count times: every value reads as unknown
        if f.name in inferred and f.kind == "categorical" and not f.hashed and not f.vocab:
            raise LightFMPError(f"{source}: column '{f.name}' was inferred {inferred[f.name]}, but none of its values "
                                f"occurs --min-count ({schema.min_count}) times in the training rows, so every value "
                                f"would read as unknown and the field carry nothing: --ignore {f.name} drops it, "
                                f"--hash-buckets {f.name}:N or --min-count 1 keeps its values; if they are numbers "
                                f"with a stray text cell, --numeric {f.name} reads them as numbers (that cell blank, "
                                f"or a missing value's spelling)")
    for col, why in inferred.items():  # once the pass succeeded: an error in the data is then the only line printed
        reporter.log(f"inferred column [bold]{escape(str(col))}[/]: {why}")
    reporter.log(f"fit: read {n_rows:,} rows in {time.perf_counter() - t0:.1f} s; schema fitted on "
                 f"{fitter.rows:,} training rows")
    return schema, inferred, (lambda: save_fit(where, schema, inferred)) if where is not None else None


def _kind_hint(e: LightFMPError, inferred: dict[str, str]) -> LightFMPError:
    """An error about a value of a column whose kind was inferred, saying how it was (the report of the inferred
    kinds comes after the pass, so the error would be the only line printed)."""
    col = next((c for c in inferred if f"column '{c}'" in str(e)), None)
    if col is None:
        return e
    return LightFMPError(f"{e} (column '{col}' was inferred {inferred[col]} from the first rows; --categorical or "
                         f"--numeric names its kind)")


def _first_fraction(tokens) -> tuple[str, int] | None:
    """The first of a categorical column's distinct values in a batch that is a number with a fraction, and its
    first row in the batch; None where there is none, or the column holds text, which a categorical column may."""
    try:
        x = pc.cast(tokens.values, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    bad = np.flatnonzero(np.isfinite(x) & (x != np.round(x)))
    if not len(bad):
        return None
    return tokens.values[int(bad[0])].as_py(), int(np.argmax(tokens.codes == bad[0]))


def _check_columns(batch: pa.Table, schema: FeatureSchema, source: str, label_flag: bool = False) -> None:
    names = column_names(batch)
    check_label_column(names, schema.label, source, flag=label_flag)
    have = set(names)  # once: the check runs on every batch of a wide table
    missing = [n for n in schema.names if n not in have]
    if missing:
        raise LightFMPError(f"{source}: column(s) {', '.join(map(repr, missing))} of the schema absent from the data "
                            f"(columns: {', '.join(names)})")


def _check_text_rule(batch: pa.Table, schema: FeatureSchema, source: str) -> None:
    """A fitted schema is encoded by the text rule it was fitted under (`encoding.TEXT_RULE`)."""
    if schema.meta.get("text_rule") != TEXT_RULE and hasattr(batch, "schema"):  # fitted by an older lightfmp
        t = next(((f, batch.schema.field(f.name).type) for f in schema.fields if f.kind != "numeric"
                  and read_otherwise_before(batch.schema.field(f.name).type)), None)
        if t is not None:
            raise LightFMPError(f"{source}: column '{t[0].name}' is {t[1]}, and the schema's "
                                f"{'hash' if t[0].hashed else 'vocabulary'} of it was fitted by an older lightfmp, "
                                f"which read its values as b'k3' / '0.50' (this one reads them as text and numbers, "
                                f"'k3' / '0.5'); fit it again: train the run again (or leave out --schema)")


# ---- encode ---------------------------------------------------------------------------------------------------------
def _numbered(kept: CodedStore) -> Iterator[tuple[Coded, int]]:
    """The kept coded batches with the global row number of each one's first row."""
    start = 0
    for coded in kept:
        yield coded, start
        start += len(coded)


def _in_batch(e: LightFMPError, source: str, start: int, n: int, fmt: str) -> NoReturn:
    """Re-raise a batch's error naming where in the file: the cell's row (and line) where the error knows it, else
    the batch's rows."""
    if isinstance(e, CellError):
        line = line_of(fmt, start + e.row, source)
        where = f"at row {start + e.row}" + (f" (line {line})" if line is not None else "")
    else:
        where = f"(in rows {start}-{start + n - 1})"
    raise LightFMPError(f"{source}: {e} {where}") from None


def _encode(batches: Iterator[tuple[pa.Table | Coded, int]], schema: FeatureSchema, codes, source: str, fmt: str,
            sink: Callable[..., None], label_flag: bool = False) -> None:
    """Encode every batch (read, or coded by the fit pass) into one chunk handed to `sink(ids=, labels=, rows=,
    split=)`. Read batches (a fitted schema given: no fit pass counted their labels) have their training rows' classes
    counted and checked here, as the fit pass checks them: before the sink's chunks are published."""
    counts, known = None, None
    for batch, start in batches:
        if isinstance(batch, Coded):
            labels = batch.labels
            split = codes(start, len(batch))
        else:
            _check_columns(batch, schema, source, label_flag)  # the cheap checks first: a column error is not a split's
            _check_text_rule(batch, schema, source)
            labels = parse_labels(batch, schema.label, schema.positive, source, start, fmt)
            split = codes(start, len(batch))
            counts = counts or LabelCounts(schema.label, schema.positive)
            counts.add(batch, labels, split == 0)
        try:
            coded = batch if isinstance(batch, Coded) else schema.code(batch)
            ids = schema.encode(coded)
        except LightFMPError as e:
            _in_batch(e, source, start, len(batch), fmt)
        known = known or KnownValues(schema)
        known.add(coded, ids, split == 0)
        sink(ids=ids, labels=labels, rows=np.arange(start, start + len(batch), dtype=np.int64), split=split)
    if counts is not None:
        counts.check(source)
    if known is not None:
        known.check(source)


class KnownValues:
    """Per field with a vocabulary, whether any training row holds a value it knows, and one value it does not
    know (its text, as the vocabulary is compared with). A fit on these rows knows their values by construction; a
    vocabulary given fitted (--schema, or a run's schema read back) may hold none of them (cells written 5.0 where
    it was fitted on 5): every row would read as unknown and the field carry nothing. Refused, naming the column,
    as an inferred field with no value seen --min-count times is, on every path (the same data and schema are
    refused by `run` and by a later `prune` or `export` alike). A column missing on every training row is left to
    the rules for missing values."""

    def __init__(self, schema: FeatureSchema):
        ranges = schema.field_slot_ranges()
        self.fields = [(f.name, *ranges[f.name], f.vocab) for f in schema.fields
                       if f.kind != "numeric" and not f.hashed and f.vocab]
        self.known = dict.fromkeys((name for name, *_ in self.fields), False)
        self.example: dict[str, str] = {}

    def add(self, coded: Coded, ids: np.ndarray, train: np.ndarray) -> None:
        if all(self.known.values()):  # decided for every field: nothing left to read
            return
        rows = np.flatnonzero(train)
        for name, a, b, _ in self.fields:
            if self.known[name] or not len(rows):  # one known value is enough
                continue
            cells = coded.fields[name]
            present = cells.codes[rows] >= 0
            known = np.any(ids[rows, a:b] >= FIRST_ID, axis=1)
            self.known[name] = bool(known.any())
            unknown = np.flatnonzero(present & ~known)
            if name not in self.example and len(unknown):
                self.example[name] = cells.values[int(cells.codes[rows[unknown[0]]])].as_py()

    def check(self, source: str) -> None:
        for name, _, _, vocab in self.fields:
            if not self.known[name] and name in self.example:
                raise LightFMPError(
                    f"{source}: column '{name}': none of its training values is in the fitted vocabulary (a value "
                    f"here: {shown(self.example[name])}; the vocabulary begins "
                    f"{', '.join(map(shown, vocab[:3]))}), so every value would read as unknown; a schema fitted "
                    f"on data written this way (or no --schema) reads them")



def _shards(cfg: DataConfig, fmt: str, rule: SplitRule, sha: str, schema: FeatureSchema, batches: Batches, codes,
            source: str, reporter: Reporter) -> tuple[ShardStore, Path]:
    key = shard_key(sha, schema, rule, fmt, cfg.chunk_rows)
    root = shard_home(cfg.shard_dir) / key
    t0 = time.perf_counter()
    manifest, why = check_shards(root, key, schema.num_slots)
    if manifest is not None:
        reporter.log(f"reusing encoded shards {root} ({manifest['rows']:,} rows, "
                     f"{counted(len(manifest['shards']), 'shard')}, verified in {time.perf_counter() - t0:.1f} s)")
        return ShardStore(root, manifest), root
    if why:
        reporter.log(f"rebuilding shards: {why}")
    with ShardWriter(root, key, schema.num_slots) as writer:
        _encode(batches(), schema, codes, source, fmt, writer.add, bool(cfg.label))
        manifest = writer.finish(data=source, data_format=fmt, data_sha256=sha, split=rule.to_dict(),
                                 chunk_rows=int(cfg.chunk_rows))
    reporter.log(f"encode: {manifest['rows']:,} rows into {counted(len(manifest['shards']), 'shard')} in "
                 f"{time.perf_counter() - t0:.1f} s -> {root}")
    return ShardStore(root, manifest), root


def quick_sample(cfg: DataConfig, rows: int, out: Path) -> DataConfig:
    """cfg with its data replaced by about `rows` rows of it (a row-hash sample, file order kept), written as
    Parquet to `out`: bench's smoke-run data. Streams the file, so it works on data of any size."""
    fmt = resolve_format(cfg.data, cfg.format)
    n = sum(len(batch) for batch, _ in read_tables(cfg.data, fmt, cfg.chunk_rows))
    keep = []
    for df, start in read_batches(cfg.data, fmt, cfg.chunk_rows):
        u = row_uniform(np.arange(start, start + len(df), dtype=np.int64), 0, SALT_SAMPLE)
        keep.append(df[u < rows / n])
    pd.concat(keep, ignore_index=True).to_parquet(out, index=False)
    return replace(cfg, data=str(out), format="parquet", label=cfg.label or fixed_label(fmt))

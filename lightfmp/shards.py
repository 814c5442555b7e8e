"""Streaming ingestion: a data file of any size -> encoded shards on disk -> rows for training, in bounded memory.

    pass 1   read the file in record batches (lightfmp.formats), assign each row to train / valid / test by a hash
             of its global row number (`row_uniform(row, seed, SALT_SPLIT)` against --split), fit the schema on
             the training rows (lightfmp.vocab). Skipped when the schema is given already fitted.
    pass 2   read again, encode each batch with the schema and write it as one shard:
             NNNNNN.ids.npy int32 [n, slots], .labels.npy float32 [n], .rows.npy int64 (global row numbers),
             .split.npy uint8 (0 train, 1 valid, 2 test).

Shards live in <shard_dir>/<key>/ (default shard_dir: $LIGHTFMP_HOME/shards). The key is a sha256 over the data
file's content hash, the fitted schema (label and fields), the split fractions and seed, the format, the chunk size and
SHARD_FORMAT_VERSION, so any change to those gives a new directory. A directory is built under a temporary name
and renamed when complete; its manifest.json lists every file with its size and blake2b checksum. A later run with
the same key reuses the shards after checking every file against the manifest, and rebuilds them (saying why)
when one is missing, truncated or altered. The schema pass 1 fitted is kept in <shard_dir>/fits/, keyed by the
data hash and every option the fit reads, so a repeated run skips pass 1 as well.

`ShardRows` reads them back through the `Rows` interface (lightfmp.rows): one shard in memory at a time.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .config import RunConfig
from .data import _FALSE, _TRUE, file_sha256, parse_labels, parse_split
from .errors import LightFMPError
from .formats import line_of, read_batches, resolve_format
from .io import atomic_dir, write_json_atomic
from .progress import Reporter
from .rows import SALT_SPLIT, SALT_SUBSET, row_uniform
from .schema import FeatureSchema, cell_strings
from .vocab import StreamFitter, apply_options, initial_schema

SHARD_FORMAT_VERSION = 1
FIT_VERSION = 1  # bump when the streaming fit changes what it computes (invalidates cached fits)
MANIFEST = "manifest.json"
SPLITS = ("train", "valid", "test")
ARRAYS = ("ids", "labels", "rows", "split")
_HASH_BLOCK = 1 << 20


def shard_home(cfg: RunConfig) -> Path:
    """cfg.shard_dir, or $LIGHTFMP_HOME/shards (the cache home the dataset fetchers use)."""
    if cfg.shard_dir:
        return Path(cfg.shard_dir).expanduser()
    from .datasets.movielens import _cache_dir
    return _cache_dir(None).parent / "shards"


def split_codes(rows: np.ndarray, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """0 train, 1 valid, 2 test per global row number."""
    u = row_uniform(rows, seed, SALT_SPLIT)
    return np.where(u < fractions[0], 0, np.where(u < fractions[0] + fractions[1], 1, 2)).astype(np.uint8)


def shard_key(data_sha256: str, schema: FeatureSchema, fractions, seed: int, fmt: str, chunk_rows: int) -> str:
    # the schema parts that decide the encoded ids and labels (not meta, min_count, ...: a run may annotate those)
    enc = {"label": schema.label, "positive": schema.positive, "fields": [f.to_dict() for f in schema.fields]}
    doc = {"version": SHARD_FORMAT_VERSION, "data_sha256": data_sha256, "schema": enc,
           "split": [float(f) for f in fractions], "seed": int(seed), "format": fmt, "chunk_rows": int(chunk_rows)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def file_checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


# ---- reading shards back ---------------------------------------------------------------------------------------------
class _Store:
    """A complete shard directory and its manifest."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.shards: list[dict] = manifest["shards"]
        self.num_slots = int(manifest["num_slots"])

    def array(self, i: int, name: str) -> np.ndarray:
        return np.load(self.root / self.shards[i]["files"][name]["file"], mmap_mode="r")


class ShardRows:
    """Rows of some splits of a shard directory, optionally hash-filtered and column-selected (the `Rows`
    interface). Filters and column selections are stored and applied per shard as it is read, so a view costs
    nothing until it is iterated; its length is counted once, from the small rows / split arrays."""

    def __init__(self, store: _Store, splits: tuple[int, ...], filters: tuple = (), cols: np.ndarray | None = None,
                 _counts: list[int] | None = None):
        self._store = store
        self._splits = tuple(splits)
        self._filters = tuple(filters)   # (fraction, seed, salt, below): keep u < fraction if below else u >= it
        self._cols = cols
        self._counts = _counts           # rows of this view per shard, once counted

    # -- the Rows interface --
    def __len__(self) -> int:
        return int(sum(self._shard_counts()))

    @property
    def num_slots(self) -> int:
        return self._store.num_slots if self._cols is None else len(self._cols)

    def select(self, cols) -> "ShardRows":
        base = np.arange(self._store.num_slots) if self._cols is None else self._cols
        return ShardRows(self._store, self._splits, self._filters, np.asarray(base[cols]).reshape(-1),
                         self._counts)

    def split(self, fraction: float, seed: int, salt: int) -> tuple["ShardRows", "ShardRows"]:
        return (ShardRows(self._store, self._splits, self._filters + ((fraction, seed, salt, False),), self._cols),
                ShardRows(self._store, self._splits, self._filters + ((fraction, seed, salt, True),), self._cols))

    def chunks(self, seed: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = None if seed is None else np.random.default_rng(seed)
        n = len(self._store.shards)
        for i in (range(n) if rng is None else rng.permutation(n)):
            idx = self._indices(int(i))
            if not len(idx):
                continue
            # read in stored order (sequential on disk), shuffle in memory
            ids, labels = self._read(int(i), idx)
            if rng is not None:
                perm = rng.permutation(len(idx))
                ids, labels = ids[perm], labels[perm]
            yield np.ascontiguousarray(ids, dtype=np.int32), np.ascontiguousarray(labels, dtype=np.float32)

    # -- extras for the pipeline and tests --
    def all_labels(self) -> np.ndarray:
        """Every label of this view, in stored order."""
        parts = [np.asarray(self._store.array(i, "labels")[self._indices(i)], dtype=np.float32)
                 for i in range(len(self._store.shards))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def row_numbers(self) -> np.ndarray:
        """Global row numbers of this view, in stored order."""
        parts = [np.asarray(self._store.array(i, "rows")[self._indices(i)], dtype=np.int64)
                 for i in range(len(self._store.shards))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # -- internals --
    def _indices(self, i: int) -> np.ndarray:
        split = np.asarray(self._store.array(i, "split"))
        keep = np.isin(split, self._splits)
        if self._filters:
            rows = np.asarray(self._store.array(i, "rows"))
            for fraction, seed, salt, below in self._filters:
                u = row_uniform(rows, seed, salt)
                keep &= (u < fraction) if below else (u >= fraction)
        return np.flatnonzero(keep)

    def _shard_counts(self) -> list[int]:
        if self._counts is None:
            if not self._filters:  # split counts are in the manifest
                self._counts = [sum(s["splits"][k] for k in self._splits) for s in self._store.shards]
            else:
                self._counts = [len(self._indices(i)) for i in range(len(self._store.shards))]
        return self._counts

    def _read(self, i: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = self._store.array(i, "ids")
        full = len(idx) == ids.shape[0]
        if self._cols is None:
            out = np.array(ids) if full else ids[idx]
        else:
            out = ids[:, self._cols] if full else ids[np.ix_(idx, self._cols)]
        labels = self._store.array(i, "labels")
        return out, np.array(labels) if full else labels[idx]


@dataclass
class StreamedData:
    """What `prepare_stream` returns: the same accessors as the in-memory `pipeline.Prepared`."""
    schema: FeatureSchema
    sha256: str                      # content hash of the data file
    rows: int                        # data rows in the file
    path: Path                       # the shard directory
    manifest: dict = dc_field(repr=False)

    def __post_init__(self):
        self._store = _Store(self.path, self.manifest)

    def split_rows(self, name: str) -> ShardRows:
        if name not in SPLITS:
            raise LightFMPError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")
        return ShardRows(self._store, (SPLITS.index(name),))

    def subset(self, fraction: float, seed: int) -> tuple[ShardRows, ShardRows]:
        """(phase-1 subset, the rest) of the training split: rows with row_uniform(row, seed, SALT_SUBSET) <
        fraction form the subset. fraction 1.0 gives (all training rows, no rows)."""
        if not 0 < fraction <= 1:
            raise LightFMPError(f"--subset {fraction}: must be in (0, 1]")
        rest, sub = self.split_rows("train").split(fraction, seed, SALT_SUBSET)
        return sub, rest

    def split_sizes(self) -> dict[str, int]:
        return {k: int(self.manifest["split_rows"][k]) for k in SPLITS}

    def labels(self, name: str) -> np.ndarray:
        return self.split_rows(name).all_labels()


# ---- building ------------------------------------------------------------------------------------------------------
def prepare_stream(cfg: RunConfig, reporter: Reporter | None = None,
                   schema: FeatureSchema | None = None) -> StreamedData:
    """Fit (pass 1, unless `schema` / cfg.schema is already fitted) and encode (pass 2, unless shards with the same
    key are on disk and intact) the data file in record batches of cfg.chunk_rows rows."""
    reporter = reporter or Reporter(quiet=True)
    if not cfg.data:
        raise LightFMPError("no data: pass --data FILE (or `data:` in --config)")
    if cfg.time_column:
        raise LightFMPError(f"--time-column {cfg.time_column}: not available when streaming (rows are split by a "
                            f"hash of their row number; ordering by time would need the whole file)")
    path = Path(cfg.data)
    if not path.exists():
        raise LightFMPError(f"{path}: file not found")
    if int(cfg.chunk_rows) < 1:
        raise LightFMPError(f"--chunk-rows {cfg.chunk_rows}: must be >= 1")
    fmt = resolve_format(path, cfg.format)
    fractions = parse_split(cfg.split)
    sha = file_sha256(path)
    if schema is None and cfg.schema:
        schema = FeatureSchema.load(cfg.schema)
    if schema is not None:
        schema = FeatureSchema.from_dict(schema.to_dict())  # a copy: the caller's schema is left as it was
        schema.label = cfg.label or schema.label
        if cfg.positive is not None:
            schema.positive = cfg.positive
    if schema is None or not all(f.fitted for f in schema.fields):
        schema = _fitted_schema(cfg, path, fmt, fractions, schema, sha, reporter)
    key = shard_key(sha, schema, fractions, cfg.seed, fmt, cfg.chunk_rows)
    root = shard_home(cfg) / key
    t1 = time.perf_counter()
    manifest, why = check_shards(root, key)
    if manifest is not None:
        reporter.log(f"reusing encoded shards {root} ({manifest['rows']:,} rows, {len(manifest['shards'])} shards, "
                     f"verified in {time.perf_counter() - t1:.1f} s)")
    else:
        if why:
            reporter.log(f"rebuilding shards: {why}")
        manifest = _encode_pass(cfg, path, fmt, fractions, schema, sha, key, root, reporter)
    _check_splits(manifest, fractions, str(path))
    return StreamedData(schema, sha, int(manifest["rows"]), root, manifest)


def check_shards(root: Path, key: str) -> tuple[dict | None, str | None]:
    """(manifest, None) when the shard directory is complete and intact; (None, why not) otherwise (why is None
    when there is simply nothing there yet)."""
    if not root.exists():
        return None, None
    mf = root / MANIFEST
    if not mf.is_file():
        return None, f"{mf} is missing"
    try:
        manifest = json.loads(mf.read_text())
        version, shards = manifest["shard_format_version"], manifest["shards"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{mf} is unreadable ({type(e).__name__})"
    if version != SHARD_FORMAT_VERSION:
        return None, f"{mf}: shard format version {version}, this lightfmp writes {SHARD_FORMAT_VERSION}"
    if manifest.get("key") != key:
        return None, f"{mf}: key differs from the directory name"
    for shard in shards:
        for entry in shard["files"].values():
            p = root / entry["file"]
            if not p.is_file():
                return None, f"{p} is missing"
            size = p.stat().st_size
            if size != entry["bytes"]:
                return None, f"{p} has {size} bytes, the manifest says {entry['bytes']}"
            if file_checksum(p) != entry["blake2b"]:
                return None, f"{p} does not match its checksum"
    return manifest, None


def _fitted_schema(cfg: RunConfig, path: Path, fmt: str, fractions, schema: FeatureSchema | None, sha: str,
                   reporter: Reporter) -> FeatureSchema:
    """Pass 1, or its result from an earlier run with the same data and fit options: the fit depends only on
    those, and pass 1 reads the whole file."""
    from . import vocab
    opts = {k: getattr(cfg, k) for k in ("label", "positive", "categorical", "numeric", "multi_hot", "ignore",
                                         "min_count", "num_buckets", "hash_buckets", "vocab_cap", "seed",
                                         "chunk_rows")}
    doc = {"version": FIT_VERSION, "data_sha256": sha, "format": fmt, "split": [float(f) for f in fractions],
           "options": opts, "schema": schema.to_dict() if schema is not None else None,
           "limits": [vocab.RESERVOIR_SIZE, vocab.PRUNE_MIN_ENTRIES]}
    cache = shard_home(cfg) / "fits" / (hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
                                        + ".json")
    try:
        saved = json.loads(cache.read_text())
        fitted = FeatureSchema.from_dict(saved["schema"], source=str(cache))
    except (OSError, ValueError, KeyError, TypeError, LightFMPError):
        fitted = None
    if fitted is not None and all(f.fitted for f in fitted.fields):
        for col, why in saved.get("inferred", {}).items():
            reporter.log(f"inferred column [bold]{col}[/]: {why}")
        reporter.log(f"pass 1 (fit) skipped: the schema fitted on this data with these options is in {cache}")
        return fitted
    fitted, inferred = _fit_pass(cfg, path, fmt, fractions, schema, reporter)
    write_json_atomic(cache, {"schema": fitted.to_dict(), "inferred": inferred})
    return fitted


def _fit_pass(cfg: RunConfig, path: Path, fmt: str, fractions, schema: FeatureSchema | None,
              reporter: Reporter) -> tuple[FeatureSchema, dict]:
    source = str(path)
    inferred: dict = {}
    t0 = time.perf_counter()
    fitter, nonmissing, n_rows, n_train = None, {}, 0, 0
    for df, start in read_batches(path, fmt, cfg.chunk_rows):
        if fitter is None:
            if schema is None:
                schema, inferred = initial_schema(df, cfg, fmt, source)
                for col, why in inferred.items():
                    reporter.log(f"inferred column [bold]{col}[/]: {why}")
            _check_columns(df, schema, source)
            apply_options(schema, cfg.hash_buckets, cfg.vocab_cap)
            fitter = StreamFitter(schema, cfg.seed, log=reporter.log)
            nonmissing = {f.name: 0 for f in schema.fields}
        _check_columns(df, schema, source)
        _labels(df, schema, source, fmt, start)  # fail in this pass, not after it, on a bad label
        train = split_codes(np.arange(start, start + len(df)), fractions, cfg.seed) == 0
        try:
            fitter.add(df.loc[train])
        except LightFMPError as e:
            raise LightFMPError(f"{source}: {e} (in rows {start}-{start + len(df) - 1})") from None
        for name in nonmissing:
            nonmissing[name] += int(df[name].notna().sum())
        n_rows += len(df)
        n_train += int(train.sum())
    for name, n in nonmissing.items():
        if n == 0:
            raise LightFMPError(f"{source}: column '{name}' is entirely empty (NaN); drop it with --ignore {name}")
    fitter.finish()
    reporter.log(f"pass 1 (fit): read {n_rows:,} rows in {time.perf_counter() - t0:.1f} s; schema fitted on "
                 f"{n_train:,} training rows")
    return schema, inferred


def _encode_pass(cfg: RunConfig, path: Path, fmt: str, fractions, schema: FeatureSchema, sha: str, key: str,
                 root: Path, reporter: Reporter) -> dict:
    source = str(path)
    t0 = time.perf_counter()
    shards, total, split_total = [], 0, np.zeros(3, dtype=np.int64)
    with atomic_dir(root, force=True) as tmp:
        for i, (df, start) in enumerate(read_batches(path, fmt, cfg.chunk_rows)):
            _check_columns(df, schema, source)
            labels = _labels(df, schema, source, fmt, start)
            try:
                ids = schema.encode(df)
            except LightFMPError as e:
                raise LightFMPError(f"{source}: {e} (in rows {start}-{start + len(df) - 1})") from None
            rows = np.arange(start, start + len(df), dtype=np.int64)
            split = split_codes(rows, fractions, cfg.seed)
            files = {}
            for name, arr in (("ids", ids), ("labels", labels), ("rows", rows), ("split", split)):
                fname = f"{i:06d}.{name}.npy"
                np.save(tmp / fname, arr, allow_pickle=False)
                files[name] = {"file": fname, "bytes": (tmp / fname).stat().st_size,
                               "blake2b": file_checksum(tmp / fname)}
            counts = np.bincount(split, minlength=3)
            shards.append({"first_row": int(start), "rows": int(len(df)), "splits": [int(c) for c in counts],
                           "files": files})
            total += len(df)
            split_total += counts
        manifest = {"format": "lightfmp-shards", "shard_format_version": SHARD_FORMAT_VERSION, "key": key,
                    "data": str(path), "data_format": fmt, "data_sha256": sha, "split": list(fractions),
                    "seed": int(cfg.seed), "chunk_rows": int(cfg.chunk_rows), "rows": int(total),
                    "num_slots": int(schema.num_slots), "split_rows": dict(zip(SPLITS, map(int, split_total))),
                    "shards": shards}
        write_json_atomic(tmp / MANIFEST, manifest)
    reporter.log(f"pass 2 (encode): {total:,} rows into {len(shards)} shards in {time.perf_counter() - t0:.1f} s "
                 f"-> {root}")
    return manifest


def _check_columns(df: pd.DataFrame, schema: FeatureSchema, source: str) -> None:
    missing = [n for n in [schema.label] + schema.names if n not in df.columns]
    if missing:
        raise LightFMPError(f"{source}: column(s) {', '.join(map(repr, missing))} of the schema absent from the data "
                            f"(columns: {', '.join(df.columns)})")


def _labels(df: pd.DataFrame, schema: FeatureSchema, source: str, fmt: str, start: int) -> np.ndarray:
    """data.parse_labels, with a failure pointing at the global row (and file line)."""
    try:
        return parse_labels(df, schema.label, schema.positive, source)
    except LightFMPError:
        col = df[schema.label]
        miss = col.isna().to_numpy()
        text = cell_strings(col)
        bad = miss | (~(text.isin(_TRUE) | text.isin(_FALSE)).to_numpy() if schema.positive is None else miss)
        if not bad.any():
            raise
        i = int(np.argmax(bad))
        row, line = start + i, line_of(fmt, start + i)
        where = f"row {row}" + (f" (line {line})" if line is not None else "")
        if miss[i]:
            raise LightFMPError(f"{source}: label column '{schema.label}' has a missing value at {where}") from None
        raise LightFMPError(f"{source}: label column '{schema.label}' is not binary: value {text.iloc[i]!r} at "
                            f"{where} (labels must be 0/1 or booleans, or pass --positive VALUE)") from None


def _check_splits(manifest: dict, fractions, source: str) -> None:
    n = int(manifest["rows"])
    if n < 10:
        raise LightFMPError(f"{source}: {n} rows is too few to split into train/valid/test")
    for name in SPLITS:
        if not manifest["split_rows"][name]:
            raise LightFMPError(f"{source}: --split {tuple(round(f, 4) for f in fractions)} leaves the {name} split "
                                f"empty with {n} rows")


__all__ = ["prepare_stream", "StreamedData", "ShardRows", "check_shards", "shard_key", "shard_home", "split_codes",
           "SHARD_FORMAT_VERSION"]

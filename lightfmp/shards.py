"""Encoded rows on disk: the store `lightfmp.dataset` writes with --stream, read back one shard at a time.

Each encoded batch of the data file becomes one shard: NNNNNN.ids.npy int32 [n, slots], .labels.npy float32 [n],
.rows.npy int64 (global row numbers), .split.npy uint8 (0 train, 1 valid, 2 test).

Shards live in <shard_dir>/<key>/ (default shard_dir: $LIGHTFMP_HOME/shards). The key is a sha256 over the data
file's content hash, the fitted schema (label and fields), the split rule, the format, the chunk size,
SHARD_FORMAT_VERSION and `code_digest()` (the source of the modules that read, fit, encode and split, and the
pyarrow / pandas versions that parse), so any change to those gives a new directory: an upgraded lightfmp never
reuses what older code encoded. A directory is built under a temporary name
and renamed when complete; its manifest.json lists every file with its size and blake2b checksum. A later run with
the same key reuses the shards after checking every file against the manifest, and rebuilds them (saying why)
when one is missing, truncated or altered. The schema a streaming fit produced is kept in <shard_dir>/fits/, keyed
by the data hash, every option the fit reads and the same code digest, so a repeated run skips the fit pass as well.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .cache import cache_home
from .errors import LightFMPError
from .io import (SHARDS_FORMAT, atomic_dir, check_utf8_name, file_sha256, json_safe, lightfmp_kind,
                 write_json_atomic, write_text_atomic)
from .schema import FeatureSchema
from .scratch import scratch_dir
from .splits import SPLITS, SplitRule

SHARD_FORMAT_VERSION = 2  # the layout of a shard directory and its manifest
# the modules whose code decides a fitted schema and the encoded ids, labels and split codes
DECIDING_MODULES = ("io", "formats", "encoding", "vocab", "schema", "labels", "splits", "coded", "dataset", "shards")
MANIFEST = "manifest.json"
ARRAYS = ("ids", "labels", "rows", "split")


@functools.cache
def code_digest() -> str:
    """sha256 over the source of DECIDING_MODULES and the versions of the parsers they call. A hand-kept version
    number is forgotten when a rule changes (how a date or a label reads); the source is not."""
    h = hashlib.sha256(f"pyarrow {pa.__version__} pandas {pd.__version__}".encode())
    here = Path(__file__).parent
    for name in DECIDING_MODULES:
        try:
            h.update((here / f"{name}.py").read_bytes())
        except OSError:  # installed without sources: the package version stands for them
            h.update(f"{name} {metadata.version('lightfmp')}".encode())
    return h.hexdigest()


def shard_home(shard_dir: str | None) -> Path:
    """--shard-dir, or $LIGHTFMP_HOME/shards."""
    return Path(shard_dir).expanduser() if shard_dir else cache_home() / "shards"


def shard_key(data_sha256: str, schema: FeatureSchema, rule: SplitRule, fmt: str, chunk_rows: int) -> str:
    # the schema parts that decide the encoded ids and labels (not meta, min_count, ...: a run may annotate those)
    enc = {"label": schema.label, "positive": schema.positive, "fields": [f.to_dict() for f in schema.fields]}
    doc = {"version": SHARD_FORMAT_VERSION, "code": code_digest(), "data_sha256": data_sha256, "schema": enc,
           "split": rule.to_dict(),
           "format": fmt, "chunk_rows": int(chunk_rows)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def file_checksum(path: Path) -> str:
    return file_sha256(path, hashlib.blake2b(digest_size=32))


class ShardStore:
    """A complete shard directory and its manifest (the `rows.Store` interface)."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.shards: list[dict] = manifest["shards"]
        self.num_slots = int(manifest["num_slots"])

    def __len__(self) -> int:
        return len(self.shards)

    def array(self, i: int, name: str) -> np.ndarray:
        return np.load(self.root / self.shards[i]["files"][name]["file"], mmap_mode="r")


class ShardWriter:
    """Builds a shard directory under a temporary name: `add(ids=, labels=, rows=, split=)` per batch, then
    `finish(**manifest fields)` writes the manifest; the directory appears under its key only when the block
    succeeds (use as a context manager). Its temporary directory is claimed (`lightfmp.io.atomic_dir`): the next
    streamed run removes one that a killed process left (`lightfmp.dataset.load_dataset`)."""

    def __init__(self, root: Path, key: str, num_slots: int):
        self.root, self.key, self.num_slots = root, key, int(num_slots)
        self.shards: list[dict] = []

    def __enter__(self) -> "ShardWriter":
        # the key names the directory: one of ours even when its manifest is what went missing
        self._ctx = atomic_dir(self.root, force=True, kind="shard directory", owned=lambda p: p.name == self.key)
        self.tmp = self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def add(self, **arrays: np.ndarray) -> None:
        i, files = len(self.shards), {}
        for name in ARRAYS:
            fname = f"{i:06d}.{name}.npy"
            np.save(self.tmp / fname, arrays[name], allow_pickle=False)
            files[name] = {"file": fname, "bytes": (self.tmp / fname).stat().st_size,
                           "blake2b": file_checksum(self.tmp / fname)}
        counts = np.bincount(arrays["split"], minlength=3)
        self.shards.append({"first_row": int(arrays["rows"][0]) if len(arrays["rows"]) else 0,
                            "rows": int(len(arrays["labels"])), "splits": [int(c) for c in counts], "files": files})

    def finish(self, **info) -> dict:
        total = np.sum([s["splits"] for s in self.shards], axis=0) if self.shards else np.zeros(3, dtype=np.int64)
        manifest = {"format": SHARDS_FORMAT, "shard_format_version": SHARD_FORMAT_VERSION, "key": self.key,
                    **info, "rows": int(sum(s["rows"] for s in self.shards)), "num_slots": self.num_slots,
                    "split_rows": dict(zip(SPLITS, map(int, total))), "shards": self.shards}
        write_json_atomic(self.tmp / MANIFEST, manifest)
        return manifest


def check_home(shard_dir: str | None, data: str | Path | None = None) -> None:
    """Refuse, before any work, a shard folder that is a file or lies under one, or that is the data or lies inside
    it (a Parquet directory: its shards would be read as part of the data)."""
    home = shard_home(shard_dir)
    if shard_dir:  # (the cache folder's own name is checked where it is chosen)
        check_utf8_name(home, "--shard-dir")
    if data:
        h, d = home.absolute().resolve(), Path(data).absolute().resolve()
        if h == d or d in h.parents:
            raise LightFMPError(f"{home}: {'is' if h == d else 'lies inside'} --data {data}; encoded shards "
                                f"(--shard-dir) need a folder outside the data")
    blocker = next((q for q in [home, *home.absolute().parents] if q.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "is a file" if blocker == home else f"lies under the file {blocker}"
        raise LightFMPError(f"{home}: {where}; encoded shards (--shard-dir) need a folder")
    inside = next((q for q in [home, *home.absolute().parents]
                   if lightfmp_kind(q) in ("run", "export", "shard directory")), None)
    if inside is not None:  # shards written there would become part of it, and go when it is replaced
        raise LightFMPError(f"{home}: {'is' if inside == home else 'lies inside'} a lightfmp {lightfmp_kind(inside)} "
                            f"({inside}); encoded shards (--shard-dir) need a folder of their own")


def fit_cache_path(shard_dir: str | None, doc: dict) -> Path:
    """Where the schema fitted for `doc` (data hash, format, split rule, fit options) by this code is kept."""
    doc = {"code": code_digest(), **doc}
    return shard_home(shard_dir) / "fits" / (hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
                                             + ".json")


def load_fit(path: Path) -> tuple[FeatureSchema, dict] | None:
    """(schema, inferred-kind notes) of a cached fit, or None when there is none, it is unreadable or damaged (its
    content no longer matches the sha256 it records), or it was written for another key (its name is the digest of
    what it was fitted for, and it records that digest: a fit copied under another fit's name is not used)."""
    try:
        saved = json.loads(path.read_text())
        body = {"schema": saved["schema"], "inferred": saved.get("inferred", {})}
        if saved.get("sha256") != _digest(json.dumps(body, allow_nan=False)):  # damaged, or written without one
            return None
        schema = FeatureSchema.from_dict(saved["schema"], source=str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, LightFMPError):
        return None
    if saved.get("key") != path.stem or not all(f.fitted for f in schema.fields):
        return None
    return schema, dict(saved.get("inferred", {}))


def _digest(text: str) -> str:
    """sha256 of a fit's JSON text (json's text of the same values read back is the same text)."""
    return hashlib.sha256(text.encode()).hexdigest()


def save_fit(path: Path, schema: FeatureSchema, inferred: dict) -> None:
    """Written compact: a fit holds every vocabulary, and an indented document goes through json's pure-Python
    encoder (slower than the fit's counting on a large vocabulary); only `load_fit` reads it."""
    body = {"schema": schema.to_dict(), "inferred": inferred}
    try:
        text = json.dumps(body, allow_nan=False)
    except ValueError:  # a NaN or an infinity: null, as in every JSON file lightfmp writes
        body = json_safe(body)
        text = json.dumps(body, allow_nan=False)
    doc = {"key": path.stem, "sha256": _digest(text), **body}  # a damaged fit is fitted again, not used
    # written in a claimed scratch folder beside the fits (a fit holds every vocabulary: a large file), so that one a
    # killed process was writing goes with the next fit saved there, where a plain temporary would stay for good
    path.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir("fit-", path.parent) as tmp:
        write_text_atomic(tmp / path.name, json.dumps(doc, allow_nan=False) + "\n")
        os.replace(tmp / path.name, path)


def check_shards(root: Path, key: str, num_slots: int | None = None) -> tuple[dict | None, str | None]:
    """(manifest, None) when the shard directory is complete and intact (and, given `num_slots`, of rows that wide);
    (None, why not) otherwise (why is None when there is simply nothing there yet)."""
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
    try:
        entries = [(root / e["file"], e["bytes"], e["blake2b"]) for shard in shards for e in shard["files"].values()]
    except (AttributeError, KeyError, TypeError) as e:
        return None, f"{mf} is unreadable ({type(e).__name__})"
    try:
        counts = np.array([shard["splits"] for shard in shards], dtype=np.int64).reshape(-1, 3)
        named = [e["file"] for shard in shards for e in shard["files"].values()]
        said = [manifest["rows"], [manifest["split_rows"][s] for s in SPLITS]]
    except (KeyError, TypeError, ValueError) as e:
        return None, f"{mf} is unreadable ({type(e).__name__})"
    # the shard list itself has no checksum: its totals and the files beside it must agree with it
    held = [int(counts.sum()), [int(c) for c in counts.sum(0)]]
    if said != held:
        return None, (f"{mf}: its shards hold {held[0]:,} rows ({', '.join(map(str, held[1]))} by split), its "
                      f"totals say {said[0]!r} ({', '.join(map(repr, said[1]))})")
    if named != [f"{i:06d}.{name}.npy" for i in range(len(shards)) for name in ARRAYS]:
        return None, f"{mf}: its list of shards is not the shard files in {root}"
    if num_slots is not None and manifest.get("num_slots") != num_slots:  # the list has no checksum of its own
        return None, f"{mf}: rows of {manifest.get('num_slots')!r} slots, the schema's have {num_slots}"
    gone = next((p for p, _, _ in entries if not p.is_file()), None)
    if gone is not None:
        return None, f"{gone} is missing"
    extra = sorted({q.name for q in root.glob("*.npy")} - set(named))
    if extra:
        return None, f"{root / extra[0]} is no shard {mf} lists"
    for p, expected, checksum in entries:
        size = p.stat().st_size
        if size != expected:
            return None, f"{p} has {size} bytes, the manifest says {expected}"
        if file_checksum(p) != checksum:
            return None, f"{p} does not match its checksum"
    return manifest, None

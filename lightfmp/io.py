"""Atomic writes: an artifact appears whole under its final name or not at all; and a directory is replaced only
when lightfmp wrote it (its marker file says so), never a directory of the user's, a file, `.`, `~` or `/`."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import LightFMPError

RUN_FORMAT = "lightfmp-run"
SHARDS_FORMAT = "lightfmp-shards"

# Each kind of directory lightfmp writes: its marker file and what the marker's JSON object holds.
MARKERS: dict[str, tuple[str, Callable[[dict], bool]]] = {
    "run": ("run.json", lambda doc: doc.get("format") == RUN_FORMAT),
    "export": ("feature_schema.json", lambda doc: "schema_version" in doc and "model_file" in doc),
    "shard directory": ("manifest.json", lambda doc: doc.get("format") == SHARDS_FORMAT),
}


def _publish_mode(path, directory: bool = False) -> None:
    """mkstemp / mkdtemp create private (0600 / 0700) entries; give the artifact the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def file_sha256(path: str | Path, h=None) -> str:
    """Content hash of a file, or of every file under a directory in sorted path order (`h`: another hashlib
    object to use, e.g. blake2b)."""
    p = Path(path)
    h = hashlib.sha256() if h is None else h
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        with open(q, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def json_safe(obj):
    """NaN / inf (e.g. the AUC of a split with one class) become null: bare NaN is not valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_json(path: str | Path, text: str | None = None, obj: bool = True):
    """The JSON document in file `path` (or in `text`, which `path` names); a missing, unreadable or malformed one
    is one error naming it. `obj`: it must be a JSON object."""
    try:
        doc = json.loads(Path(path).read_text() if text is None else text)
    except FileNotFoundError:
        raise LightFMPError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise LightFMPError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise LightFMPError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise LightFMPError(f"{path}: cannot read it ({type(e).__name__})") from None
    if obj and not isinstance(doc, dict):
        raise LightFMPError(f"{path}: not a JSON object")
    return doc


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path to write a file to; it is renamed to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_mode(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def lightfmp_kind(path: str | Path) -> str | None:
    """The kind of directory lightfmp wrote at `path` ("run", "export", "shard directory"), or None when `path` is
    not a directory or has no readable marker of one."""
    p = Path(path)
    if not p.is_dir():
        return None
    for kind, (marker, holds) in MARKERS.items():
        try:
            doc = json.loads((p / marker).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and holds(doc):
            return kind
    return None


def _protected(p: Path) -> str | None:
    """Why `p` must never be replaced whatever it holds, or None."""
    real = p.resolve()
    if real.parent == real:
        return "is the filesystem root"
    for what, where in (("the current directory", Path.cwd()), ("your home directory", Path.home())):
        where = where.resolve()
        if real == where:
            return f"is {what}"
        if real in where.parents:
            return f"contains {what}"
    return None


def check_out(path: str | Path, force: bool, owned: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before any work, an output path that the command may not create or replace: with `force` only a
    directory that lightfmp wrote (`owned`, default: it holds a marker of MARKERS) is replaced, nothing else."""
    p = Path(path)
    if p.is_symlink():
        raise LightFMPError(f"{p}: is a symbolic link; give the directory itself, or a new path")
    if not p.exists():
        parent = next((q for q in p.absolute().parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise LightFMPError(f"{p}: cannot be created, {parent} is a file")
        return
    why = _protected(p)
    if why:
        raise LightFMPError(f"{p}: {why}; the output needs a new path of its own (--force never replaces this)")
    if not p.is_dir():
        raise LightFMPError(f"{p}: is a file, not a directory lightfmp wrote; --force does not replace it, choose "
                            f"another path")
    kind = lightfmp_kind(p) if owned is None else ("directory" if owned(p) else None)
    if kind is None:
        names = [m for m, _ in MARKERS.values()]
        markers = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise LightFMPError(f"{p}: exists and is not a directory lightfmp wrote (no {markers} marker); --force does "
                            f"not replace it, choose another path or remove it yourself")
    if not force:
        raise LightFMPError(f"{p}: already exists (a lightfmp {kind}); pass --force to replace it")


@contextmanager
def atomic_dir(path: str | Path, force: bool = False, owned: Callable[[Path], bool] | None = None):
    """Yield a temporary sibling directory; it replaces `path` only when the block succeeds. An existing `path` is
    replaced only with `force` and only when lightfmp wrote it (see `check_out`, which runs before the block and
    again before the replacement)."""
    path = Path(path)
    check_out(path, force, owned)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if path.exists() or path.is_symlink():
            check_out(path, force, owned)
            # a fresh empty name to move the old directory to (a fixed name could be someone else's directory)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

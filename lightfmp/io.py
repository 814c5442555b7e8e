"""Atomic writes: an artifact appears whole under its final name or not at all. A directory is replaced only when
lightfmp wrote it as the kind the command writes (its marker file says so: a run replaces only a run, an export
only an export) and holds nothing but what lightfmp wrote there (its record, WRITTEN, says what that is), never a
directory of the user's, a file, `.`, `~` or `/`; a file the user names for --plot / --json / --trace replaces only
an earlier output of its kind. Data paths are listed in one place (`data_files`)
for the reader and the data hash alike."""
from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import LightFMPError, shown_type
from .scratch import OWNER, Claim, reap

RUN_FORMAT = "lightfmp-run"
SHARDS_FORMAT = "lightfmp-shards"

# Each kind of directory lightfmp writes: its marker file and what the marker's JSON object holds.
MARKERS: dict[str, tuple[str, Callable[[dict], bool]]] = {
    "run": ("run.json", lambda doc: doc.get("format") == RUN_FORMAT),
    "export": ("feature_schema.json", lambda doc: "schema_version" in doc and "model_file" in doc),
    "shard directory": ("manifest.json", lambda doc: doc.get("format") == SHARDS_FORMAT),
}


# In each directory atomic_dir publishes: every entry lightfmp wrote there, at any depth. A file lightfmp writes into the
# directory later (inspect's chart in a run) joins it. A directory without one was written by a lightfmp before the
# record, and is replaced whole as then.
WRITTEN = ".lightfmp-written.json"
WRITTEN_FORMAT = "lightfmp-written"


def _publish_mode(path, directory: bool = False) -> None:
    """mkstemp / mkdtemp create private (0600 / 0700) entries; give the artifact the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextmanager
def os_errors_of(path: str | Path):
    """A write to `path` by a library that does not raise its OS error as one with an errno (safetensors: '...
    (os error 28)'; numpy's short write: 'N requested and M written', a full disk) raises OSError(errno, reason,
    path) instead, which the commands turn into one line naming the file."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        if e.errno is not None:  # pyarrow's: the number, no file
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
        if re.search(r"\d+ requested and \d+ written", str(e)) is None:
            raise
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the write stopped short)", str(path)) from None
    except Exception as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # the folder value Hive and Spark write for a missing partition value


def data_files(path: str | Path) -> list[Path]:
    """The files a data path holds: the file itself, or every file under a directory in sorted path order except
    hidden and underscore names at any depth (Spark / Hive write _SUCCESS, _metadata and .crc files next to the
    parts; lightfmp's own temporary directories start with '.'). The reader and the data hash both use this list,
    so what is hashed is exactly what is read."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted(q for q in p.rglob("*") if q.is_file()
                  and not any(part.startswith((".", "_")) for part in q.relative_to(p).parts))


def data_signature(path: str | Path) -> tuple:
    """What tells a data path's files from others put in their place or changed since: each file's path, inode,
    size and modification time (no content read). Taken before the data is hashed and compared after it is read,
    so that the hash a run records is the hash of the rows it read."""
    out = []
    for q in data_files(path):
        try:
            st = q.stat()
        except OSError:  # gone since it was listed: a change
            out.append((str(q), None))
            continue
        out.append((str(q), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def partitions(root: str | Path, f: Path) -> list[tuple[str, str | None]]:
    """The (column, value) pairs of a part file's key=value folders under `root` (Hive / Spark partitioning:
    root/country=US/dt=2024-01-01/part-0.parquet), outermost first; a value is URL-decoded, and Hive's name for a
    missing one is None."""
    pairs = []
    for part in f.relative_to(root).parts[:-1] if Path(root).is_dir() else ():
        key, eq, value = part.partition("=")
        if eq and key:
            value = urllib.parse.unquote(value)
            pairs.append((urllib.parse.unquote(key), None if value == HIVE_NULL else value))
    return pairs


def file_sha256(path: str | Path, h=None) -> str:
    """Content hash of a file, or of the data files under a directory (`data_files`) in sorted path order (`h`:
    another hashlib object to use, e.g. blake2b); a part in key=value folders adds those folders' names, which
    are columns of its rows."""
    h = hashlib.sha256() if h is None else h
    for q in data_files(path):
        if partitions(path, q):
            h.update(q.relative_to(path).parent.as_posix().encode() + b"\0")
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
        raise LightFMPError(f"{path}: not valid JSON ({e.msg}: line {e.lineno})") from None
    except UnicodeDecodeError:
        raise LightFMPError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise LightFMPError(f"{path}: cannot read it ({type(e).__name__})") from None
    if obj and not isinstance(doc, dict):
        raise LightFMPError(f"{path}: not a JSON object")
    return doc


def json_text(obj) -> str:
    """The text of every JSON file lightfmp writes: indented, strict (no bare NaN: `json_safe`)."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json_atomic(path: str | Path, obj, flag: str | None = None) -> None:
    """`flag`: the path is the user's --json (see `check_output_file`); the document then says who wrote it
    (WRITTEN_BY), so that a later --json replaces it and never a JSON file of the user's."""
    if flag and isinstance(obj, dict):
        obj = {"written_by": WRITTEN_BY, **obj}
    write_text_atomic(path, json_text(obj), kind="json" if flag else None, flag=flag)


def write_text_atomic(path: str | Path, text: str, kind: str | None = None, flag: str | None = None) -> None:
    with atomic_path(path, kind, flag) as tmp:
        tmp.write_text(text)


# The kinds of file a user names with --plot / --json / --trace: how to recognise an earlier one, so that only such
# a file (or an empty one) is ever replaced.
WRITTEN_BY = "lightfmp"  # a --json document's "written_by"; a --plot image's PNG "Software" text
PNG_METADATA = {"Software": WRITTEN_BY}  # matplotlib's savefig(metadata=...)
OUTPUT_FILES: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "png": ("a PNG image lightfmp wrote", lambda p: _is_our_png(p)),
    "json": ("a JSON output of lightfmp's", lambda p: _is_our_json(p)),
}


def _is_our_json(p: Path) -> bool:
    """A --json document of lightfmp's (its "written_by"), or a --trace: ONNX Runtime's profile, a list of Chrome
    trace events, which lightfmp writes as it is."""
    try:
        with open(p, "rb") as fh:
            doc = json.load(fh)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    if isinstance(doc, dict):
        return doc.get("written_by") == WRITTEN_BY
    # ONNX Runtime's trace opens with its session's model-loading event
    return isinstance(doc, list) and bool(doc) and isinstance(doc[0], dict) and doc[0].get("cat") == "Session" \
        and all(isinstance(e, dict) and "ph" in e and "name" in e for e in doc)


def _is_our_png(p: Path) -> bool:
    """A PNG whose "Software" text chunk (before the image data) names lightfmp (`PNG_METADATA`)."""
    with open(p, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return False
            size, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind in (b"IDAT", b"IEND"):
                return False
            if kind == b"tEXt" and size <= 1024:  # "Software\0lightfmp" is short: a longer one is not it
                if fh.read(size).partition(b"\0")[::2] == (b"Software", WRITTEN_BY.encode()):
                    return True
                fh.seek(4, 1)  # the chunk's CRC
            else:
                fh.seek(size + 4, 1)  # the chunk's data and CRC, unread


def make_dirs(p: Path) -> list[Path]:
    """mkdir -p, failing in one line: a place that takes no folder (/proc, a read-only mount) says so. Returns the
    folders it created, outermost first (`remove_made` takes them away again where they stayed empty)."""
    p = Path(p)
    made = [a for a in reversed([p, *p.parents]) if not a.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LightFMPError(f"{p}: cannot create this folder ({e.strerror or type(e).__name__})") from None
    return made


def remove_made(made: list[Path]) -> None:
    """The folders `make_dirs` created, innermost first, each only while empty (rmdir takes no other)."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return


def check_writable(p: Path, parent: Path) -> None:
    """Refuse `p` when its first existing ancestor `parent` takes no new entry: the permission bits can allow what
    the file system refuses (read-only mounts, /proc), so a file is created there and removed at once."""
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LightFMPError(f"{p}: cannot be created, {parent} is not writable")
    try:
        with tempfile.TemporaryFile(prefix=".lightfmp-probe-", dir=parent):  # hidden where it gets a name at all
            pass
    except OSError as e:
        raise LightFMPError(f"{p}: cannot be created, {parent} is not writable ({e.strerror or type(e).__name__})") \
            from None


def check_outside(p: Path, own: Path | None = None, flag: str | None = None) -> None:
    """Refuse an output inside a directory lightfmp wrote (a run, an export, a shard directory) other than `own`:
    --force (and prune, for a run) replaces such a directory whole, and refuses one that holds what it did not
    write."""
    mine = Path(os.path.abspath(own)) if own is not None else None
    for q in Path(os.path.abspath(p)).parents:  # '..' resolved first: runs/r1/../x is not inside runs/r1
        kind = lightfmp_kind(q)
        if kind is not None and q != mine:
            whole = {"run": "prune and --force replace", "export": "--force replaces"}.get(kind, "lightfmp replaces")
            raise LightFMPError(f"{p}: is inside {_a(kind)} lightfmp wrote ({q}), which {whole} whole; choose a path "
                                f"outside it" + (f" for {flag}" if flag else ""))


def check_output_file(path: str | Path, kind: str, flag: str, own: Path | None = None) -> None:
    """Refuse, before any work, a `flag` path (--plot, --json, --trace) that the command may not write: a
    directory, a path under a file, or an existing file that is not a `kind` file ("png", "json") - the output
    replaces only an earlier output of its kind (or an empty file), never the user's data; a path inside a
    directory lightfmp wrote (a run, an export) other than `own` (inspect's chart goes into its own run): a file
    there is not the directory's, and a later --force of it would delete it; and a --plot path whose name does not
    end in .png (the image is a PNG whatever the name says: a viewer goes by the suffix)."""
    _check_place(Path(path), kind, flag, own)
    if kind == "png" and Path(path).suffix.lower() != ".png":
        raise LightFMPError(f"{path}: {flag} writes a PNG image; give a path ending in .png")


def _check_place(p: Path, kind: str, flag: str, own: Path | None = None) -> None:
    what, looks_like = OUTPUT_FILES[kind]
    check_name_length(p)
    if p.is_dir():
        raise LightFMPError(f"{p}: is a directory; {flag} needs a file path")
    check_outside(p, own, flag)
    parent = next((q for q in p.absolute().parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise LightFMPError(f"{p}: cannot be created, {parent} is a file")
    if parent is not None:  # a new file, or the replacement of one, is written beside it and renamed
        check_writable(p, parent)
    if not p.exists():
        return
    if not p.is_file():
        raise LightFMPError(f"{p}: is not a regular file; {flag} needs a file path")
    where = _recorded_in(p)  # in a directory of lightfmp's, its record tells lightfmp's files from the user's
    rec = written(where[0]) if where is not None else None
    if rec is not None and where[1] not in rec:
        raise LightFMPError(f"{p}: lightfmp did not write it (it is not in {where[0] / WRITTEN}); {flag} replaces only "
                            f"an earlier output of lightfmp's, choose another path or move the file out")
    inside = next((q for q in p.absolute().parents if lightfmp_kind(q)), None)  # `own`, if any
    if inside is not None and kind == "json":  # a run's JSON files are its contract, replaced only with the folder
        raise LightFMPError(f"{p}: is a file of {_a(lightfmp_kind(inside))} lightfmp wrote ({inside}); {flag} needs "
                            f"another path")
    if rec is not None:  # the directory's record lists it: lightfmp's (inspect's chart), whichever lightfmp drew it
        return
    try:
        ok = p.stat().st_size == 0 or looks_like(p)
    except OSError as e:
        raise LightFMPError(f"{p}: cannot read it ({type(e).__name__}); {flag} needs a file it may replace") from None
    if not ok:
        raise LightFMPError(f"{p}: exists and is not {what}; {flag} replaces only an earlier {flag} output, choose "
                            f"another path or remove it yourself")


@contextmanager
def atomic_path(path: str | Path, kind: str | None = None, flag: str | None = None, own: Path | None = None):
    """Yield a temporary sibling path to write a file to; it is renamed to `path` only on success. `kind`, `flag`
    and `own`: a path the user named (see `check_output_file`), checked again before it is replaced."""
    path = Path(path)
    if kind is not None:
        check_output_file(path, kind, flag or "the output", own)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_mode(tmp)
        if kind is not None:
            check_output_file(path, kind, flag or "the output", own)
        os.replace(tmp, path)
        _note_written(path)
    finally:
        Path(tmp).unlink(missing_ok=True)


NAME_MAX = 255        # bytes of one name in a path: what common file systems (ext4, XFS, APFS, NTFS) take
TEMP_NAME_CHARS = 64  # of an output's name in its temporary's: .NAME.XXXXXXXX.tmp stays within NAME_MAX


def path_of(value, what: str) -> Path:
    """`value` as a Path where it is one (text or os.PathLike); else a one-line error naming `what` (from Python:
    None or a DataFrame where a path goes)."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise LightFMPError(f"{what} must be a path (text or pathlib.Path), got {shown_type(value)}")


def as_the_kernel_reads(p: str | Path, what: str = "the output directory") -> Path:
    """`p` with its '..' parts resolved as the operating system resolves them (after any symbolic link before them:
    link/../o is the link target's parent's o), where the text alone would resolve them before the link (and put a
    sibling made from the text, a lock, checkpoints, a temporary, in another folder). Paths without '..' as given."""
    p = path_of(p, what)
    if ".." not in p.parts:
        return p
    return p.resolve() if p.name in ("", "..") else p.parent.resolve() / p.name


def temp_prefix(path: Path) -> str:
    """The start of a temporary's name beside `path` (its own name cut to TEMP_NAME_CHARS)."""
    return f".{path.name[:TEMP_NAME_CHARS]}."


def check_utf8_name(p: Path, flag: str = "") -> None:
    """Refuse, before any work, a path whose name holds bytes that are not UTF-8 (a name from another locale), where
    pyarrow or safetensors is to open it by name (they take it as UTF-8 text). `flag`: the option that gave it,
    named in the message."""
    try:
        str(p).encode()
    except UnicodeEncodeError:
        raise LightFMPError(f"{flag + ' ' if flag else ''}{str(p)!r}: the name is not UTF-8 text; choose a UTF-8 "
                            f"name") from None


def check_name_length(p: Path) -> None:
    """Refuse a path with a name longer than a file system takes, before any work (not at the end, when the output
    is published)."""
    check_utf8_name(p)
    long = next((part for part in p.parts if len(os.fsencode(part)) > NAME_MAX), None)  # the bytes the OS is given
    if long is not None:
        raise LightFMPError(f"{p}: the name {long[:24]}... is {len(os.fsencode(long))} bytes, more than a file system "
                            f"takes ({NAME_MAX}); choose a shorter one")


# mkstemp's names (.NAME.XXXXXXXX.tmp: eight random characters): a temporary of lightfmp's, left in its directory
# by a write that was killed
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _temporary(p: Path) -> bool:
    """A hidden temporary file of lightfmp's (.NAME.XXXXXXXX.tmp), left by a write that was killed; a folder or a
    link of such a name, or a name without the eight random characters (.notes.tmp, .backup.v2.tmp), is not one."""
    return bool(_TEMPORARY.fullmatch(p.name)) and p.is_file() and not p.is_symlink()


def _tree(d: Path) -> list[str]:
    """Every entry under the directory `d` as a path relative to it ('vocab/a.json'), a folder before what it
    holds, in name order; the record and lightfmp's temporaries left out, symbolic links listed, never followed."""
    out: list[str] = []

    def walk(sub: Path, prefix: str) -> None:
        for q in sorted(sub.iterdir()):
            if (not prefix and q.name in (WRITTEN, OWNER)) or _temporary(q):
                continue
            out.append(prefix + q.name)
            if q.is_dir() and not q.is_symlink():
                walk(q, f"{prefix}{q.name}/")
    walk(d, "")
    return out


def written(path: str | Path) -> set[str] | None:
    """What the record of lightfmp's directory `path` lists: its top-level names and the paths inside its folders
    ('vocab/a.json'); None when the directory has no record (a lightfmp before the record wrote it); a damaged record
    is one error naming it."""
    rec = Path(path) / WRITTEN
    if not rec.exists() and not rec.is_symlink():
        return None
    try:
        doc = json.loads(rec.read_text())
    except (OSError, ValueError):
        doc = None
    names = doc.get("names") if isinstance(doc, dict) and doc.get("format") == WRITTEN_FORMAT else None
    inside = doc.get("inside") if isinstance(doc, dict) else None
    if not isinstance(names, list) or not isinstance(inside, list) \
            or not all(isinstance(n, str) for n in names + inside):
        raise LightFMPError(f"{rec}: damaged; it lists what lightfmp wrote in {path}, so lightfmp cannot tell its "
                            f"files from yours: move your own files out, then delete it")
    return set(names) | set(inside)


def foreign_entry(path: str | Path) -> str | None:
    """The first entry of lightfmp's directory `path`, at any depth ('triton/my_model'), that lightfmp did not
    write there, or None (also for a directory without a record, see WRITTEN)."""
    rec = written(path)
    if rec is None:
        return None
    return next((rel for rel in _tree(Path(path)) if rel not in rec), None)


def _foreign_error(p: Path, foreign: str, in_place: bool = False, kind: str = "run") -> LightFMPError:
    how = ("the command rewrites it in place with lightfmp's own files only" if in_place
           else "its shards are rebuilt only over lightfmp's own files" if kind == "shard directory"
           else "--force replaces only lightfmp's own files")
    return LightFMPError(f"{p}: holds {foreign}, which lightfmp did not write; {how}, move it out first")


def _record(d: Path, names) -> None:
    names = set(names)
    write_text_atomic(d / WRITTEN, json.dumps({"format": WRITTEN_FORMAT,
                                               "names": sorted(n for n in names if "/" not in n),
                                               "inside": sorted(n for n in names if "/" in n)}, indent=2) + "\n")


def _recorded_in(path: Path) -> tuple[Path, str] | None:
    """(the nearest folder above `path` that holds a record of what lightfmp wrote, `path` relative to it), or None;
    never one above a temporary directory lightfmp is filling (.NAME.XXXX.tmp), which gets its record whole."""
    path = Path(os.path.abspath(path))  # '..' resolved: a record never lists an entry outside its folder
    for d in path.parents:
        if (d / WRITTEN).exists() or (d / WRITTEN).is_symlink():
            return d, path.relative_to(d).as_posix()
        if _TEMPORARY.fullmatch(d.name):
            return None
    return None


def _note_written(path: Path) -> None:
    """`path`, just written into a directory of lightfmp's that has a record (or into a folder of one), joins the
    record."""
    if path.name == WRITTEN:
        return
    where = _recorded_in(path)
    if where is None:
        return
    d, rel = where
    try:
        rec = written(d)
    except LightFMPError:  # refused, naming the record, when the directory is next to be replaced
        return
    parts = rel.split("/")
    new = {"/".join(parts[:i + 1]) for i in range(len(parts))}
    if not new <= rec:
        _record(d, rec | new)


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


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def check_out(path: str | Path, force: bool, kind: str = "run", owned: Callable[[Path], bool] | None = None,
              in_place: bool = False) -> None:
    """Refuse, before any work, an output path that the command may not create or replace: with `force` only a
    directory that lightfmp wrote as `kind` (a key of MARKERS: what the command writes), holding only what lightfmp
    wrote there (see WRITTEN), is replaced, nothing else.
    `owned`: the caller's own test that an unmarked directory is one of `kind` (e.g. a shard directory whose
    manifest went missing). `in_place`: the command rewrites an existing `kind` it was given (prune)."""
    if kind not in MARKERS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(MARKERS)}")
    p = Path(path)
    check_name_length(p)
    if p.is_symlink():
        raise LightFMPError(f"{p}: is a symbolic link; give the directory itself, or a new path")
    if not in_place:
        check_outside(p)
    if not p.exists():
        parent = next((q for q in p.absolute().parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise LightFMPError(f"{p}: cannot be created, {parent} is a file")
        if parent is not None:
            check_writable(p, parent)
        return
    why = _protected(p)
    if why:
        if in_place:
            raise LightFMPError(f"{p}: {why}; the command replaces that directory, so run it from outside it")
        raise LightFMPError(f"{p}: {why}; the output needs a new path of its own (--force never replaces this)")
    if not p.is_dir():
        raise LightFMPError(f"{p}: is a file, not a directory lightfmp wrote; --force does not replace it, choose "
                            f"another path")
    found = lightfmp_kind(p)
    if found is not None and found != kind:
        raise LightFMPError(f"{p}: is a lightfmp {found}, not {_a(kind)}; --force replaces only {_a(kind)}, choose "
                            f"another path")
    if found is None and owned is not None and owned(p):
        found = kind
    if found is None:
        marker = MARKERS[kind][0]
        why = f"its {marker} is not {_a(kind)}'s marker" if (p / marker).is_file() else \
            f"no {marker} marker of {_a(kind)}"
        raise LightFMPError(f"{p}: exists and is not a directory lightfmp wrote ({why}); --force does not replace it, "
                            f"choose another path or remove it yourself")
    foreign = foreign_entry(p)
    if foreign is not None:
        raise _foreign_error(p, foreign, in_place, kind)
    if not force:
        raise LightFMPError(f"{p}: already exists (a lightfmp {found}); pass --force to replace it")


def check_apart(out: str | Path, other: str | Path | None, what: str) -> None:
    """Refuse an output directory that is `other` (e.g. the data, or the run exported), lies inside it, or holds
    it: writing or replacing it would change or delete `what`."""
    if not other:
        return
    o, x = Path(out).absolute().resolve(), Path(other).absolute().resolve()
    if o == x:
        raise LightFMPError(f"{out}: is {what} {other}; choose an output path of its own")
    if x in o.parents:
        raise LightFMPError(f"{out}: is inside {what} {other}; choose an output path outside it")
    if o in x.parents:
        raise LightFMPError(f"{out}: holds {what} {other}; choose an output path that does not")


@contextmanager
def atomic_dir(path: str | Path, force: bool = False, kind: str = "run",
               owned: Callable[[Path], bool] | None = None, in_place: bool = False):
    """Yield a temporary sibling directory; it replaces `path` only when the block succeeds, with the record of what
    it holds (WRITTEN). An existing `path` is replaced only with `force` and only when lightfmp wrote it as a
    directory of `kind` (see `check_out`, which runs before the block and again before the replacement); `in_place`:
    as `check_out`'s. The temporary is claimed while it lives (`lightfmp.scratch`), and the claimed temporaries of
    killed writers beside `path` are removed first, so a SIGKILLed run or export does not leave one for good."""
    path = Path(path)
    check_out(path, force, kind, owned, in_place)
    made = [q for q in [path.parent, *path.parent.parents] if not q.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    reap(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    claim, old_claim, done = None, None, False
    try:
        with os_errors_of(tmp):
            claim = Claim(tmp)
        yield tmp
        _record(tmp, _tree(tmp))  # the owner file is not in it: it goes once the directory is published
        _publish_mode(tmp, directory=True)
        if path.exists() or path.is_symlink():
            check_out(path, force, kind, owned, in_place)
            if exchange(tmp, path):  # one step: `path` holds the new directory, `tmp` the old (removed below)
                try:  # a file put into it between that check and the swap: the old directory goes back, whole
                    foreign = foreign_entry(tmp)
                except LightFMPError:
                    foreign = WRITTEN
                if foreign is not None:
                    exchange(tmp, path)
                    raise _foreign_error(path, foreign, kind=kind)
                done = True
                old_claim = _claim(tmp)  # the old directory, until it is removed: a kill now leaves it to `reap`
                return
            # a fresh empty name to move the old directory to (a fixed name could be someone else's directory)
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
            os.replace(path, old)
            try:  # a file put into it between that check and the move: the old directory goes back, whole
                foreign = foreign_entry(old)
            except LightFMPError:
                foreign = WRITTEN
            if foreign is not None:
                os.replace(old, path)
                raise _foreign_error(path, foreign, kind=kind)
            os.replace(tmp, path)
            done = True
            old_claim = _claim(old)  # as above (only now: until the new one is in place, the old one is the run)
            remove_tree(old)
        else:
            os.replace(tmp, path)
            done = True
    finally:
        if done and claim is not None:  # until now a kill left a claimed temporary, which the next writer removes
            claim.disown(path)
        remove_tree(tmp)
        for c in (claim, old_claim):
            if c is not None:
                c.close()
        for q in made if not done else []:  # the folders made for it, where they stayed empty
            try:
                q.rmdir()
            except OSError:
                break


def _claim(old: Path) -> Claim | None:
    """A claim on the replaced directory while it is removed (None where it cannot be made: it is removed all the
    same, only a kill in between would leave it)."""
    try:
        return Claim(old)
    except OSError:
        return None


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux's renameat2 with RENAME_EXCHANGE), so that a process killed while
    a directory is replaced leaves the old one or the new one at `b`, never neither (two renames leave a moment with
    nothing there). False where the system or its file system has no such call: the caller renames twice."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):  # EPERM: a sandbox
        return False  # that forbids the call (a real permission problem shows in the two renames as well)
    raise OSError(err, os.strerror(err), str(b))


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):  # elsewhere no such call (and no CDLL(None) on Windows)
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return getattr(libc, "renameat2", None)
    except (OSError, TypeError):
        return None


def remove_tree(path: Path) -> None:
    """Remove a temporary directory of lightfmp's, also where it holds folders copied without write permission
    (a read-only run copied to be rewritten), which `shutil.rmtree` alone leaves behind."""
    if not path.exists():
        return
    try:
        for root, _, _ in os.walk(path):
            os.chmod(root, 0o700)
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)

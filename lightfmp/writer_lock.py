"""One command at a time per output: `train`, `run`, `prune` and `export` hold <out>.lock while they write <out>
(and <out>.ckpt), so that a second command on the same <out> (another terminal, a second job) is refused at its start
instead of reading and overwriting the first one's checkpoints and publishing over its run.

The lock is the operating system's (flock): it goes with the process however that ends, and a lock file left by a
killed process is taken over. The file is written whole before it appears (so an empty file there is someone
else's); a file lightfmp did not write, or a symbolic link, is refused, never overwritten or deleted. Without fcntl
(Windows) or on a file system without flock there is no lock."""
from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (a second command on the same <out> then shares its checkpoints)
    fcntl = None

from .errors import LightFMPError
from .io import as_the_kernel_reads, temp_prefix

LOCK_FORMAT = "lightfmp-lock"


def lock_path(out: str | Path) -> Path:
    out = Path(os.path.abspath(as_the_kernel_reads(out)))  # "." (a run pruned from inside it) has a name so
    return out.with_name(out.name + ".lock")


@contextmanager
def one_writer(out: str | Path, command: str):
    """Hold <out>.lock while the block writes <out> and <out>.ckpt, so that a second command on the same <out>
    (another terminal, a second job) is refused at its start instead of reading and overwriting the first one's
    checkpoints and publishing over its run. The lock is the operating system's (flock): it goes with the process
    however that ends, and a lock file left by a killed process is taken over. A file at that path that lightfmp
    did not write is refused, never overwritten or deleted. Folders made for the lock and left empty are removed."""
    if fcntl is None or not Path(os.path.abspath(out)).name:  # the root: refused by the command's own checks
        yield
        return
    path = lock_path(out)
    made = _make_parents(path.parent)
    fd = None
    try:
        fd = _acquire(path, command)
        yield
    finally:
        if fd is not None:
            try:
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
            except OSError:
                pass
            os.close(fd)  # after the unlink: a command waiting on this inode finds it gone and makes its own
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:  # not empty: the run was published there
                break


def _make_parents(folder: Path) -> list[Path]:
    made = []
    for d in reversed([folder, *folder.parents]):
        if not d.exists():
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise LightFMPError(f"{folder}: cannot create the folder ({e.strerror or e})") from None
            made.append(d)
    return made


def _acquire(path: Path, command: str) -> int | None:
    record = json.dumps({"format": LOCK_FORMAT, "pid": os.getpid(), "command": command}).encode()
    for _ in range(100):  # another command may unlink the file between our open and our lock: open it again
        _create_with(path, record)  # never empty: an empty file there is someone else's
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            continue
        except PermissionError:  # another user's lock file: it can be locked read-only all the same
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except FileNotFoundError:
                continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LightFMPError(f"{path}: is a symbolic link; lightfmp needs this path for the lock of "
                                    f"{_owner(path)} (move it away)") from None
            raise LightFMPError(f"{path}: cannot open the lock of {_owner(path)} "
                                f"({e.strerror or e})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LightFMPError(f"{path}: is not a file; lightfmp needs this path for the lock of "
                                    f"{_owner(path)} (move it away)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = _lock_record(fd)
                who = f"pid {held['pid']}, `lightfmp {held['command']}`" if held else "another process"
                raise LightFMPError(f"{path.with_suffix('')}: another lightfmp command is writing it ({who}); wait "
                                    f"for it to end") from None
            except OSError as e:
                if e.errno not in NO_LOCKS:
                    raise
                mine = (_lock_record(fd) or {}).get("pid") == os.getpid()
                os.close(fd)  # a file system without flock: no lock, as on a system without fcntl
                if mine:
                    path.unlink(missing_ok=True)
                return None
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if _lock_record(fd) is None:
                raise LightFMPError(f"{path}: is not a lock file of lightfmp's; lightfmp needs this path for the "
                                    f"lock of {_owner(path)} (move it away)")
            try:
                os.pwrite(fd, record, 0)  # ours now (a killed command's record before)
                os.ftruncate(fd, len(record))
            except OSError:  # opened read-only (another user's file): locked all the same, its record stays
                pass
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise LightFMPError(f"{path}: could not take the lock (it kept being replaced)")


def holder(out: str | Path) -> str | None:
    """Who holds <out>.lock now ("pid N, `lightfmp run`"), read without taking it; None where nobody does (no lock
    file, a killed command's, another file, or no flock here)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock_path(out), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        record = _lock_record(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted: nobody writes; released as fd closes
            return None
        except BlockingIOError:
            return f"pid {record['pid']}, `lightfmp {record['command']}`" if record else "another process"
        except OSError:
            return None
    finally:
        os.close(fd)


def _create_with(path: Path, record: bytes) -> None:
    """Create `path` holding `record` in one step (written under a temporary name, then linked), unless something
    is there already."""
    if os.path.lexists(path):
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        try:
            os.write(fd, record)
            os.fchmod(fd, 0o644)  # as a file opened for writing would be (mkstemp's are 0600)
            os.close(fd)
            fd = None
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno not in NO_LINKS:
                raise
            _create_plain(path, record)  # a file system without hard links (FAT, some network mounts)
        finally:
            if fd is not None:
                os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise LightFMPError(f"{path}: cannot create the lock of {_owner(path)} "
                            f"({e.strerror or e})") from None


NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


def _create_plain(path: Path, record: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        return
    try:
        os.write(fd, record)
    finally:
        os.close(fd)


def _lock_record(fd: int) -> dict | None:
    """The lock file's record: its first JSON value (a kill between rewriting a stale record and cutting the file
    to its length leaves the old record's tail after it)."""
    try:
        doc, _ = json.JSONDecoder().raw_decode(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and doc.get("format") == LOCK_FORMAT
    return {"pid": doc.get("pid", "?"), "command": doc.get("command", "?")} if ok else None


def _owner(path: Path) -> str:
    """The output a lock file is the lock of (its name without ".lock")."""
    return path.name[:-len(".lock")]


__all__ = ["LOCK_FORMAT", "lock_path", "one_writer", "holder"]

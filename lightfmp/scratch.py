"""Large scratch directories that a killed process does not leave behind for good.

A streamed run writes two temporary directories into the shard home, each about as large as the encoded file: the
coded batches of the fit pass (`lightfmp.coded.CodedStore`) and the shards being built (`lightfmp.shards.
ShardWriter`); `lightfmp data fetch kddcup04-bio` downloads a 22 MB wheel into one beside its table. Each goes when
its command ends, however it ends, unless the process is killed outright (SIGKILL, the out-of-memory killer, a lost
machine). So while one lives its owner holds an operating-system lock (flock) on the file OWNER inside it; the lock
goes with the process however that ends, and the next streamed run on the same shard home
(`lightfmp.dataset.load_dataset`), or the next fetch, removes every one whose lock it can take (`reap`). The
working folders of `lightfmp bench` (its runs, a --quick sample) and of a MovieLens fetch's download, in the
system's temporary directory, are such directories too (`scratch_dir`). A directory
without that file, or whose file is not lightfmp's, is left alone, and so is one another machine made (on a shared
file system its lock may not show here), and everything where the system has no flock."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so nothing is ever reaped
    fcntl = None

OWNER = ".lightfmp-owner"
OWNER_FORMAT = "lightfmp-scratch"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class Claim:
    """The lock its owner holds on a scratch directory while the directory lives. `disown(published)` takes the OWNER
    file out of the directory once it is published under its final name (until then a kill leaves the directory
    claimed, for `reap`) and keeps the lock; `close()` lets the lock go, after the directory was published or
    removed."""

    def __init__(self, folder: Path):
        self.folder, self.fd = Path(folder), None
        if fcntl is None:
            return
        path = self.folder / OWNER
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a file system without flock: no claim, and nothing is reaped there
            os.close(fd)
            path.unlink(missing_ok=True)
            return
        try:  # under the lock: a whole record means its writer held the lock
            record = {"format": OWNER_FORMAT, "pid": os.getpid(), "host": socket.gethostname()}
            os.write(fd, json.dumps(record).encode())
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def disown(self, published: Path) -> None:
        if self.fd is not None:
            (Path(published) / OWNER).unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextmanager
def scratch_dir(prefix: str, parent: str | Path | None = None):
    """A claimed scratch directory (hidden, named .<prefix>XXXXXXXX.tmp) in `parent` (default: the system's temporary
    directory), removed when the block ends however it ends; the ones of killed processes there go first."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    reap(parent)
    folder = Path(tempfile.mkdtemp(prefix=f".{prefix}", suffix=".tmp", dir=parent))
    claim = None
    try:
        claim = Claim(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if claim is not None:
            claim.close()


def reap(home: Path) -> list[Path]:
    """Remove the scratch directories directly under `home` (hidden, named *.tmp) whose owner is gone: their OWNER
    file holds lightfmp's record in full and its lock can be taken. Returns those removed."""
    if fcntl is None:
        return []
    try:
        entries = [e for e in os.scandir(home) if e.name.startswith(".") and e.name.endswith(".tmp")
                   and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    gone = []
    for entry in entries:
        owner = os.path.join(entry.path, OWNER)
        try:
            fd = os.open(owner, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)  # a FIFO there would block the open
        except OSError:  # none: not a claimed scratch directory (or its owner is making it)
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or not _ours(fd):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its owner lives
                continue
            try:  # still the same file in the same place: the owner did not publish or remove it meanwhile
                same = os.stat(owner, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if same:
                shutil.rmtree(entry.path, ignore_errors=True)
                gone.append(Path(entry.path))
        finally:
            os.close(fd)
    return gone


def _ours(fd: int) -> bool:
    """lightfmp's record in full, written on this machine: a lock another machine holds on a shared file system may
    be invisible here (NFS mounted with local locks), so only this machine's directories are ever removed."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == OWNER_FORMAT \
        and record.get("host") == socket.gethostname()

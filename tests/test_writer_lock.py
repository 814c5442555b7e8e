"""lightfmp/writer_lock.py: decisions a mutation audit found no other test pinned."""
import json
import os

import pytest

from lightfmp import writer_lock

fcntl = pytest.importorskip("fcntl")


def test_a_lock_file_replaced_between_open_and_flock_is_opened_again(tmp_path, monkeypatch):
    """Between our open and our flock another command ends (unlinking the file we opened) and a third makes its own
    lock file at the path. Locking the unlinked inode would exclude nobody: one_writer must open the path again and
    lock the file that is there, so that holder() (and any other command) sees us holding it; at the end that file
    is the one removed."""
    out = tmp_path / "r"
    path = writer_lock.lock_path(out)
    real, replaced = fcntl.flock, []

    def flock(fd, op):
        if not replaced and op & fcntl.LOCK_EX:
            replaced.append(True)
            path.unlink()
            path.write_text(json.dumps({"format": writer_lock.LOCK_FORMAT, "pid": 1, "command": "train"}))
        return real(fd, op)

    monkeypatch.setattr(writer_lock.fcntl, "flock", flock)
    with writer_lock.one_writer(out, "run"):
        assert replaced
        assert writer_lock.holder(out) == f"pid {os.getpid()}, `lightfmp run`"
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the file at the path is locked: a second command is refused
                real(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not path.exists()

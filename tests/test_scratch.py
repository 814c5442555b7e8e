"""Scratch directories in the shard home: one that a killed process left is removed by the next streamed run
there (`load_dataset`); the temporary of a run or export directory a killed process left, by the next directory
written beside it (`io.atomic_dir`); one whose owner lives, or that lightfmp did not claim, stays."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_csv
from lightfmp.coded import CodedStore
from lightfmp.config import RunConfig
from lightfmp.dataset import load_dataset
from lightfmp.io import WRITTEN, atomic_dir, read_json
from lightfmp import scratch as scratch_mod
from lightfmp.scratch import OWNER, Claim, reap

pytest.importorskip("fcntl")

BATCH = """
import numpy as np, pyarrow as pa
from lightfmp.coded import Coded
from lightfmp.encoding import Tokens
batch = Coded(4, {"t": Tokens(np.array([0, 1, 0, 1], np.int32), pa.array(["a", "b"])), "x": np.arange(4.0)},
              np.zeros(4, np.float32))
"""


def _child(code: str, home, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BATCH + code, str(home)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, **kw)


def _killed(code: str, home) -> str:
    """Run `code` in a process that prints its scratch directory and is then killed outright; that directory."""
    p = _child(code + "\nimport os, signal\nprint(where, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n", home)
    where = p.stdout.readline().strip()
    assert p.wait(timeout=60) == -9
    return where


def _batch():
    ns = {}
    exec(BATCH, ns)
    return ns["batch"]


STORE = "import sys\nfrom pathlib import Path\nfrom lightfmp.coded import CodedStore\n" \
        "store = CodedStore(Path(sys.argv[1]))\nstore.add(batch)\nwhere = store._dir\n"


def _streamed(tmp_path, home):
    return RunConfig.of(data=str(write_csv(tmp_path, n=300)), label="label", shard_dir=str(home), stream=True,
                        multi_hot=["tags:|"]).data


def _scratch(home) -> list[str]:
    return sorted(p.name for p in home.iterdir() if p.name.endswith(".tmp"))


def test_coded_batches_left_by_a_killed_run_go_with_the_next_streamed_run(tmp_path):
    home = tmp_path / "shards"
    stale = _killed(STORE, home)
    assert Path(stale).is_dir() and Path(stale).parent == home and (Path(stale) / OWNER).is_file()
    foreign = home / ".coded-mine.tmp"  # not claimed: someone else's, or older than claims
    foreign.mkdir()
    (foreign / "x").write_text("keep")
    load_dataset(_streamed(tmp_path, home))
    assert not Path(stale).exists()
    assert _scratch(home) == [foreign.name] and (foreign / "x").read_text() == "keep"  # and its own went at its end


def test_a_live_owners_scratch_stays(tmp_path):
    home = tmp_path / "shards"
    p = _child(STORE + "print(where, flush=True)\ninput()\nstore.close()\n", home)
    try:
        where = p.stdout.readline().strip()
        assert reap(home) == []
        with CodedStore(home) as store:
            store.add(_batch())
            assert Path(where).is_dir()
    finally:
        p.communicate("\n", timeout=60)
    assert p.returncode == 0 and not home.exists()  # the owner removed its directory, and the home it made


def test_a_killed_shard_writers_directory_goes_with_the_next_streamed_run(tmp_path):
    home = tmp_path / "shards"
    stale = _killed("import sys\nfrom pathlib import Path\nfrom lightfmp.shards import ShardWriter\n"
                    "w = ShardWriter(Path(sys.argv[1]) / 'a', 'a', 2).__enter__()\n"
                    "w.add(ids=np.zeros((4, 2), np.int64), labels=np.zeros(4, np.float32), "
                    "rows=np.arange(4), split=np.zeros(4, np.int8))\nwhere = w.tmp\n", home)
    assert Path(stale).is_dir()
    load_dataset(_streamed(tmp_path, home))
    assert not Path(stale).exists() and _scratch(home) == []
    shards = [p for p in home.iterdir() if p.is_dir() and p.name != "fits"]
    assert len(shards) == 1 and WRITTEN in {p.name for p in shards[0].iterdir()}
    assert OWNER not in {p.name for p in shards[0].iterdir()}  # the claim is not published with the shards


def test_a_directory_whose_owner_file_is_not_lightfmps_or_another_machines_stays(tmp_path):
    """Not lightfmp's record, an empty one, or one another machine wrote (on a shared file system its lock may not
    show here): left alone, though nothing holds its lock."""
    home = tmp_path / "shards"
    for name, record in ((".a.tmp", {"format": "other"}), (".b.tmp", None),
                         (".c.tmp", {"format": "lightfmp-scratch", "pid": 1, "host": "another-machine"})):
        (home / name).mkdir(parents=True)
        (home / name / OWNER).write_text(json.dumps(record) if record else "")
    (home / "plain").mkdir()  # not a scratch name
    (home / "plain" / OWNER).write_text(json.dumps({"format": "lightfmp-scratch"}))
    assert reap(home) == []
    assert sorted(p.name for p in home.iterdir()) == [".a.tmp", ".b.tmp", ".c.tmp", "plain"]


def test_a_streamed_run_that_reuses_its_shards_still_removes_what_a_killed_run_left(tmp_path):
    home = tmp_path / "shards"
    cfg = _streamed(tmp_path, home)
    load_dataset(cfg)  # encodes: shards and the fitted schema are cached
    stale = _killed(STORE, home)
    assert Path(stale).is_dir()
    load_dataset(cfg)  # reuses both: no scratch of its own
    assert not Path(stale).exists()


def test_a_killed_writers_temporary_beside_a_run_or_export_goes_with_the_next_directory_written_there(tmp_path):
    stale = _killed("import sys\nfrom pathlib import Path\nfrom lightfmp.io import atomic_dir\n"
                    "ctx = atomic_dir(Path(sys.argv[1]) / 'exp', kind='export')\nwhere = ctx.__enter__()\n"
                    "(where / 'model.onnx').write_bytes(b'x')\n", tmp_path)
    assert Path(stale).is_dir() and (Path(stale) / OWNER).is_file()
    mine = tmp_path / ".mine.tmp"  # a hidden *.tmp lightfmp did not claim
    mine.mkdir()
    live = _child("import sys\nfrom pathlib import Path\nfrom lightfmp.io import atomic_dir\n"
                  "ctx = atomic_dir(Path(sys.argv[1]) / 'run', kind='run')\nwhere = ctx.__enter__()\n"
                  "print(where, flush=True)\nsys.stdin.readline()\n", tmp_path)
    try:
        busy = live.stdout.readline().strip()
        with atomic_dir(tmp_path / "other", kind="export") as d:
            (d / "f").write_text("1")
        assert not Path(stale).exists() and mine.is_dir() and Path(busy).is_dir()  # a live writer's stays
    finally:
        live.communicate("\n", timeout=60)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == [WRITTEN, "f"]  # the claim is not published
    assert OWNER not in json.dumps(read_json(tmp_path / "other" / WRITTEN))


def test_a_writer_killed_while_it_publishes_leaves_a_temporary_the_next_writer_removes(tmp_path):
    """Killed after the directory is complete (its record written) and before the rename that publishes it: the
    temporary, as large as the run or the shards, is still claimed, so the next directory written beside it removes
    it (it was unclaimed from the record on, and stayed for good)."""
    stale = _killed("import sys\nfrom pathlib import Path\nimport lightfmp.io as io\n"
                    "real = io._publish_mode\n"
                    "def publish(p, directory=False):\n    if not directory:\n        return real(p, directory)\n"
                    "    print(p, flush=True)\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                    "io._publish_mode = publish\n"
                    "with io.atomic_dir(Path(sys.argv[1]) / 'exp', kind='export') as d:\n"
                    "    (d / 'model.onnx').write_bytes(b'x')\nwhere = None\n", tmp_path)
    assert (Path(stale) / WRITTEN).is_file() and (Path(stale) / "model.onnx").is_file()
    with atomic_dir(tmp_path / "other", kind="export") as d:
        (d / "f").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_coded_batches_are_removed_whole_when_a_stop_comes_while_they_are_removed(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while the coded batches' scratch directory is being removed acts once it is gone (it cut
    the removal short, and the rest stayed until the next streamed run there)."""
    import os
    import shutil
    import signal
    import lightfmp.coded as coded
    store = CodedStore(tmp_path / "home")
    store.add(_batch())
    store.add(_batch())
    real = shutil.rmtree

    def stopped_midway(path, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # Python acts on it at its next step, inside the removal
        real(path, *a, **k)
    monkeypatch.setattr(coded.shutil, "rmtree", stopped_midway)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may start with it ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            store.close()
    finally:
        signal.signal(signal.SIGINT, before)
    assert not (tmp_path / "home").exists()


SCRATCH_DIR = "import sys\nfrom lightfmp.scratch import scratch_dir\n" \
              "block = scratch_dir('lightfmp-bench-', sys.argv[1])\nwhere = block.__enter__()\n"


def test_a_scratch_dir_a_killed_process_left_goes_with_the_next_one_in_that_folder(tmp_path):
    """`lightfmp bench` trains in one, and a MovieLens fetch downloads into one, in the system's temporary directory:
    a SIGKILLed bench left its folder (runs, a --quick sample of the user's file) there for good."""
    from lightfmp.scratch import scratch_dir
    stale = Path(_killed(SCRATCH_DIR, tmp_path))
    assert stale.parent == tmp_path and stale.name.startswith(".lightfmp-bench-") and (stale / OWNER).is_file()
    foreign = tmp_path / ".lightfmp-bench-mine.tmp"  # not claimed: left alone
    foreign.mkdir()
    with scratch_dir("lightfmp-bench-", tmp_path) as mine:
        assert not stale.exists() and mine.is_dir() and mine.parent == tmp_path
        (mine / "run").mkdir()
        with scratch_dir("lightfmp-bench-", tmp_path) as inner:  # bench's runs, inside its own: a live owner's stays
            assert (mine / "run").is_dir() and inner.is_dir()
    assert not mine.exists() and _scratch(tmp_path) == [foreign.name]
    with pytest.raises(KeyboardInterrupt):  # a stop removes it too
        with scratch_dir("lightfmp-bench-", tmp_path) as mine:
            raise KeyboardInterrupt
    assert not mine.exists() and _scratch(tmp_path) == [foreign.name]

def _abandoned(folder):
    """A directory claimed by an owner that is gone (its lock let go, the OWNER file left)."""
    folder.mkdir()
    Claim(folder).close()
    (folder / "data.bin").write_bytes(b"x")
    return folder


def test_only_hidden_tmp_directories_are_reaped(tmp_path):
    hidden, visible, other = (_abandoned(tmp_path / n) for n in (".coded-1.tmp", "coded-2.tmp", ".coded-3.dir"))
    assert reap(tmp_path) == [hidden]
    assert not hidden.exists() and (visible / "data.bin").exists() and (other / "data.bin").exists()


def test_without_flock_the_claim_leaves_no_owner_file_for_a_reaper_to_take(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")
    folder = tmp_path / ".w.tmp"
    folder.mkdir()
    monkeypatch.setattr(scratch_mod.fcntl, "flock", no_flock)
    claim = Claim(folder)
    assert claim.fd is None and not (folder / OWNER).exists()
    monkeypatch.undo()
    assert reap(tmp_path) == [] and folder.exists()  # a live run's directory on such a file system stays


def test_disown_takes_the_owner_file_out_of_the_published_directory_and_keeps_the_lock(tmp_path):
    folder = tmp_path / ".w.tmp"
    folder.mkdir()
    claim = Claim(folder)
    published = tmp_path / "run"
    folder.rename(published)
    claim.disown(published)
    assert not (published / OWNER).exists() and claim.fd is not None
    claim.close()


def test_a_fifo_named_as_the_owner_file_does_not_hang_the_reaper(tmp_path):
    """Opening a FIFO for reading waits for a writer: the next streamed run would have hung in `reap`."""
    import os
    import threading
    folder = tmp_path / ".coded-x.tmp"
    folder.mkdir()
    os.mkfifo(folder / OWNER)
    done = []
    t = threading.Thread(target=lambda: done.append(reap(tmp_path)), daemon=True)
    t.start()
    t.join(timeout=20)
    in_time = list(done)
    if not done:  # let the blocked open go, so the test process can end
        os.close(os.open(folder / OWNER, os.O_WRONLY | os.O_NONBLOCK))
        t.join(timeout=20)
    assert in_time == [[]] and folder.is_dir()


def test_a_fit_a_killed_process_was_saving_goes_with_the_next_fit_saved(tmp_path):
    """A fit holds every vocabulary (a large file on a large data set): one SIGKILLed while it was written was a
    hidden temporary in <shard home>/fits/ for good; it is written in a claimed scratch folder there instead."""
    from lightfmp.schema import FeatureSchema, Field
    from lightfmp.shards import load_fit, save_fit
    fits = tmp_path / "fits"
    code = ("import os, signal, sys\nfrom pathlib import Path\nfrom lightfmp import shards\n"
            "from lightfmp.schema import FeatureSchema, Field\n"
            "shards.os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL)  # killed as it publishes\n"
            "shards.save_fit(Path(sys.argv[1]) / ('1' * 64 + '.json'),\n"
            "                FeatureSchema('y', [Field('a', 'categorical', vocab=['x'])]), {})\n")
    p = subprocess.run([sys.executable, "-c", code, str(fits)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    left = [q for q in fits.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".fit-") and (left[0] / OWNER).is_file()
    path = fits / ("2" * 64 + ".json")
    save_fit(path, FeatureSchema("y", [Field("a", "categorical", vocab=["x", "z"])]), {})
    assert sorted(q.name for q in fits.iterdir()) == [path.name]  # the killed one's folder went, the new fit is there
    assert load_fit(path)[0].field("a").vocab == ["x", "z"]

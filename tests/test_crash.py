"""Crash consistency: `python -m lightfmp run` killed with SIGKILL at points in every phase (reading the data,
encoding shards, gated pretraining, the phase boundary, continued training, the final writes), then rerun with the
same command until it finishes. Every rerun must succeed, and the final metrics must equal an uninterrupted run's:
the per-epoch checkpoints, the shard cache and the atomic writes leave nothing half-done behind.

The kill points are taken from the killed process's own progress lines on stderr (one plain line per step when
stderr is not a terminal), plus a delay drawn from the seed, so a kill lands inside an epoch, inside a checkpoint
write or between phases."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from lightfmp import checkpoint as ckpt_files, pipeline, writer_lock
from lightfmp.config import RunConfig
from lightfmp.errors import LightFMPError

from helpers import write_csv

SETTINGS = dict(label="label", multi_hot="tags:|", subset=0.5, pretrain_epochs=3, epochs=3, patience=0, keep=3,
                batch_size=64, hidden="8", embed_dim=4, device="cpu")
# (stderr line that starts the countdown, longest delay in seconds): each seed draws the delays
# (phase 3 with --epochs 3: its first epoch on the open fields, then two on the kept ones)
KILL_PLANS = {
    0: [("inferred column", 0.05), ("pretrain (gated): epoch 1/3", 0.1), ("pretrain (gated): epoch 3/3", 0.0),
        ("continue (first epoch): start", 0.05), ("continue (pruned): epoch 1/2", 0.05)],
    1: [("fit: read", 0.05), ("pretrain (gated): start", 0.1), ("continue (first epoch): epoch 1/1", 0.0),
        ("continue (pruned): start", 0.05), ("continue (pruned): epoch 2/2", 0.0)],
}
# seed 1 streams the data into shards on disk, so its first kill lands while they are written
STREAM = {0: {}, 1: dict(stream=True, chunk_rows=100)}
COMPARED = [("fields", "kept"), ("fields", "dropped"), ("params", "after"), ("phases", "pretrain", "rows"),
            ("phases", "continue", "rows"), ("phases", "continue", "epochs")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("crash"), n=600)


@pytest.fixture
def one_thread():
    """The subprocesses run with OMP_NUM_THREADS=1; the uninterrupted reference must use the same kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def flags(settings: dict) -> list[str]:
    out = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


def launch(args: list[str], trigger: str | None, delay: float) -> tuple[int, list[str]]:
    """Run `python -m lightfmp run ARGS`; with a trigger, SIGKILL it `delay` seconds after that stderr line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "lightfmp", "run", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if trigger is not None and trigger in line:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        proc.stderr.close()
        return proc.wait(timeout=120), lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def complete(out) -> bool:
    try:
        return json.loads((out / "run.json").read_text()).get("state") == "complete"
    except (OSError, ValueError):
        return False


def pick(doc: dict, path: tuple):
    for k in path:
        doc = doc[k]
    return doc


@pytest.mark.parametrize("seed", sorted(KILL_PLANS))
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_result(seed, data, tmp_path, one_thread):
    settings = {**SETTINGS, "seed": seed, **STREAM[seed]}
    reference = pipeline.run(RunConfig.of(data=str(data), shard_dir=str(tmp_path / "ref_shards"), **settings),
                             tmp_path / "ref", quiet=True)

    out = tmp_path / "runs" / "crashed"
    args = ["--data", str(data), "--out", str(out), "--shard-dir", str(tmp_path / "shards"), *flags(settings)]
    rng = random.Random(seed)
    kills, finished, last_killed = 0, False, False
    for trigger, longest in KILL_PLANS[seed]:
        if complete(out):  # the kill landed after the run had finished (between its last write and its exit)
            finished = True
            break
        rc, lines = launch(args, trigger, rng.uniform(0, longest))
        assert not any("Traceback" in line for line in lines), lines
        if rc == 0:  # on a fast machine a rerun can finish before it reaches the next kill point: it is done
            finished, last_killed = True, False
            break
        assert rc == -signal.SIGKILL, (trigger, rc, lines)
        kills, last_killed = kills + 1, True
    # the first kill point (reading the data: the process still has seconds of work ahead) always lands; later ones
    # may find the work done on a fast machine, which the loop above accepts
    assert kills >= 1, kills
    if not finished and not complete(out):  # the last kill may land between the final write and the exit
        rc, lines = launch(args, None, 0.0)
        assert rc == 0, "\n".join(lines)
        last_killed = False

    got = json.loads((out / "metrics.json").read_text())
    for path in COMPARED:
        assert pick(got, path) == pick(reference, path), path
    for split in ("test", "valid"):
        assert abs(got[split]["auc"] - reference[split]["auc"]) <= 1e-9, (split, got[split], reference[split])
        assert abs(got[split]["logloss"] - reference[split]["logloss"]) <= 1e-9, split
    assert got["gates"] == pytest.approx(reference["gates"], abs=1e-9)
    # finished: the checkpoints are gone; beside the run there is at most a hidden temporary of a killed write,
    # never a second visible directory; where the last process was killed after the run's last write (before its
    # exit let go of the lock), its lock file, which nobody holds and the next command takes over
    beside = sorted(p.name for p in out.parent.iterdir())
    visible = [n for n in beside if not n.startswith(".")]
    assert visible == ["crashed"] or (last_killed and visible == ["crashed", "crashed.lock"]), beside
    assert writer_lock.holder(out) is None
    assert all(re.fullmatch(r"\.crashed\..+\.(tmp|old)", n) for n in beside if n.startswith(".")), beside


def test_a_run_stopped_after_its_checkpoints_went_resumes_and_leaves_none(data, tmp_path):
    """The checkpoints are removed before the finished run is published; a run stopped in between is pretrained,
    marked unfinished and has no checkpoint folder: `run` again (no --force) finishes it with the same result."""
    cfg = RunConfig.of(data=str(data), shard_dir=str(tmp_path / "shards"), **SETTINGS)
    reference = pipeline.run(cfg, tmp_path / "ref", quiet=True)
    out = tmp_path / "runs" / "stopped"
    pipeline._train(pipeline._normalize(cfg), out, False, True, keep_checkpoints=True)
    ckpt_files.remove(out)  # the moment between removing the checkpoints and publishing the finished run
    assert json.loads((out / "run.json").read_text())["state"] == "pretrained"
    got = pipeline.run(cfg, out, quiet=True)
    assert got["fields"]["kept"] == reference["fields"]["kept"]
    assert abs(got["test"]["auc"] - reference["test"]["auc"]) <= 1e-9
    info = json.loads((out / "run.json").read_text())
    assert info["state"] == "complete" and pipeline.UNFINISHED not in info
    assert sorted(p.name for p in out.parent.iterdir()) == ["stopped"]


def test_phase_one_done_leaves_no_checkpoint_folder_and_the_hint_says_what_a_rerun_does(data, tmp_path):
    """Once phase 1 is published in the run directory its checkpoint goes, and with it the folder it emptied: a
    stop before phase 3's first epoch completes leaves the run and no empty <out>.ckpt; the hint names no folder
    that holds nothing."""
    cfg = RunConfig.of(data=str(data), shard_dir=str(tmp_path / "shards"), **SETTINGS)
    out = tmp_path / "runs" / "r"
    ckpt_files.reset_hint()
    try:
        pipeline._train(pipeline._normalize(cfg), out, False, True, keep_checkpoints=True)
        assert not ckpt_files.checkpoint_dir(out).exists()
        assert sorted(p.name for p in out.parent.iterdir()) == ["r"]
        ckpt_files.Checkpoint(ckpt_files.checkpoint_dir(out), "continue-first", {})  # the next phase starts
        hint = ckpt_files.resume_hint()
        assert hint == "rerun the same command to start the continue-first phase again (it had no completed epoch yet)"
    finally:
        ckpt_files.reset_hint()


def test_removing_the_checkpoints_takes_what_a_killed_safetensors_write_left(tmp_path):
    """safetensors writes through a temporary of its own (".tmp" and 6 characters) beside the file: a kill inside
    that write leaves it, and the finished run's clean-up must take it too, or the folder stays. A file of another
    name stays (the folder with it)."""
    out = tmp_path / "r"
    d = ckpt_files.checkpoint_dir(out)
    d.mkdir()
    (d / ".tmp7gw4Xp").write_bytes(b"")
    ckpt_files.remove(out)
    assert not d.exists()
    d.mkdir()
    (d / ".tmp7gw4Xp").write_bytes(b"")
    (d / "notes.txt").write_text("mine")
    ckpt_files.remove(out)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]



HOLD = ("import sys, time\nfrom lightfmp.writer_lock import one_writer\nwith one_writer(sys.argv[1], 'run'):\n"
        "    print('held', flush=True)\n    sys.stdin.read()\n")


@pytest.mark.parametrize("command", ["run", "train", "prune"])
def test_a_second_command_on_the_same_out_is_refused_while_the_first_writes_it(data, tmp_path, command):
    """Two commands on one --out would share <out>.ckpt: each resumes from and overwrites the other's checkpoints,
    and the later publishes over the first. The second is refused at its start, naming the holder, and writes
    nothing; once the first ends, its lock file and the folders made for it are gone."""
    from typer.testing import CliRunner
    from lightfmp.cli.app import app
    out = tmp_path / "new" / "r"
    if command == "prune":  # a pretrained run, as `run` leaves it before phases 2-3
        pipeline.train(RunConfig.of(data=str(data), **{k: v for k, v in SETTINGS.items() if k != "keep"}), out,
                       quiet=True)
    before = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert json.loads(writer_lock.lock_path(out).read_text())["pid"] == holder.pid
        settings = {k: v for k, v in SETTINGS.items() if command == "run" or k != "keep"}
        args = [command, str(out)] if command == "prune" else [command, "--data", str(data), "--out", str(out),
                                                               *flags(settings)]
        res = CliRunner().invoke(app, args)
        assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
        assert f"{out}: another lightfmp command is writing it (pid {holder.pid}, `lightfmp run`); wait for it to " \
               f"end" in res.output
        assert sorted(p.name for p in out.parent.iterdir()) == sorted(before + ["r.lock"])
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert sorted(p.name for p in out.parent.iterdir()) == before if before else not (tmp_path / "new").exists()


def test_an_export_is_refused_while_another_command_writes_its_run_or_its_out(data, tmp_path):
    """`export` holds its --out's lock as the training commands hold theirs (two exports into one folder: the second
    is refused at its start, not after its work), and refuses a run another command is writing (a prune of it
    replaces the model it would read); once the other command ends, the export goes ahead and leaves no lock."""
    from typer.testing import CliRunner
    from lightfmp.cli.app import app
    run = tmp_path / "r"
    pipeline.run(RunConfig.of(data=str(data), **SETTINGS), run, quiet=True)
    for held, out in ((run, tmp_path / "e"), (tmp_path / "e", tmp_path / "e")):
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            res = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
            assert res.exit_code == 2 and res.output.strip() == (
                f"error: {held}: another lightfmp command is writing it (pid {holder.pid}, `lightfmp run`); wait for "
                f"it to end"), res.output
            assert not out.exists()
        finally:
            holder.communicate("")
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "e"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "r"]


def test_prune_of_a_run_still_in_phase_1_names_the_command_writing_it(tmp_path):
    """`prune r` while `run` is in phase 1 (r not written yet): it says who is writing it, not "no such run
    directory"; with no holder, or a killed one's lock file, it is "no such run directory" as before."""
    from typer.testing import CliRunner
    from lightfmp.cli.app import app
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = CliRunner().invoke(app, ["prune", str(out)])
        assert res.exit_code == 2 and res.output.strip() == (
            f"error: {out}: not written yet: another lightfmp command is writing it (pid {holder.pid}, `lightfmp "
            f"run`); wait for it to end"), res.output
    finally:
        holder.communicate("")
    writer_lock.lock_path(out).write_text(json.dumps({"format": writer_lock.LOCK_FORMAT, "pid": 1, "command": "run"}))
    res = CliRunner().invoke(app, ["prune", str(out)])
    assert res.exit_code == 2 and "no such run directory" in res.output, res.output


def test_a_lock_left_by_a_killed_command_is_taken_over_and_a_file_not_lightfmps_is_refused(data, tmp_path):
    cfg = RunConfig.of(data=str(data), **SETTINGS)
    lock = writer_lock.lock_path(tmp_path / "r")
    lock.write_text(json.dumps({"format": writer_lock.LOCK_FORMAT, "pid": 1, "command": "run"}))  # no process holds it
    pipeline.run(cfg, tmp_path / "r", quiet=True)
    assert complete(tmp_path / "r") and not lock.exists()
    for text in ("my notes", ""):  # an empty file too: lightfmp's lock file is never empty
        mine = writer_lock.lock_path(tmp_path / "mine")
        mine.write_text(text)
        with pytest.raises(LightFMPError, match=r"mine.lock: is not a lock file of lightfmp's"):
            pipeline.run(cfg, tmp_path / "mine", quiet=True)
        assert mine.read_text() == text and not (tmp_path / "mine").exists()
    mine.write_text("my notes")
    with pytest.raises(LightFMPError, match=r"mine.lock: is not a lock file of lightfmp's"):
        pipeline.run(cfg, tmp_path / "mine", quiet=True)
    assert mine.read_text() == "my notes" and not (tmp_path / "mine").exists()
    link = writer_lock.lock_path(tmp_path / "link")
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LightFMPError, match=r"link.lock: is a symbolic link"):
        pipeline.train(cfg, tmp_path / "link", quiet=True)
    assert not (tmp_path / "elsewhere").exists()


def test_a_checkpoint_folder_holding_what_lightfmp_did_not_write_there_is_refused(data, tmp_path):
    """A run named a.ckpt, or a folder of the user's, at <out>.ckpt: its pretrain.safetensors was overwritten by
    phase 1's checkpoint and then deleted with the checkpoints."""
    cfg = RunConfig.of(data=str(data), **{k: v for k, v in SETTINGS.items() if k != "keep"})
    pipeline.train(cfg, tmp_path / "a.ckpt", quiet=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a.ckpt").iterdir()}
    with pytest.raises(LightFMPError, match=r"a.ckpt: is a lightfmp run; checkpoints of a need this path"):
        pipeline.run(cfg, tmp_path / "a", quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a.ckpt").iterdir()} == before
    mine = tmp_path / "b.ckpt"
    mine.mkdir()
    (mine / "pretrain.safetensors").write_text("mine")
    with pytest.raises(LightFMPError, match=r"b.ckpt: holds 'pretrain.safetensors'"):
        pipeline.train(cfg, tmp_path / "b", quiet=True)
    assert (mine / "pretrain.safetensors").read_text() == "mine"


def test_an_out_with_dots_after_a_link_keeps_its_lock_and_checkpoints_beside_it(data, tmp_path):
    """link/../o is, to the operating system, o beside the link's target; the lock and the checkpoints' temporaries
    were put beside the link by the text, and the run ended in a traceback."""
    (tmp_path / "sub" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "inner")
    cfg = RunConfig.of(data=str(data), **SETTINGS)
    pipeline.run(cfg, tmp_path / "link" / ".." / "o", quiet=True)
    assert complete(tmp_path / "sub" / "o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "sub"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["inner", "o"]
    assert writer_lock.lock_path(tmp_path / "link" / ".." / "o") == tmp_path / "sub" / "o.lock"


KILLED_IN_THE_SWAP = """
import os, signal, sys
from pathlib import Path
from lightfmp import io, pipeline
looked = io.foreign_entry
def killed(p, *a, **k):  # the moment the old run, moved out of its place to a hidden name, is looked into
    if Path(p).name.startswith(".r."):
        os.kill(os.getpid(), signal.SIGKILL)
    return looked(p, *a, **k)
io.foreign_entry = killed
pipeline.prune(sys.argv[1], keep=2, quiet=True)
"""


def test_a_kill_while_a_run_is_replaced_leaves_a_run_in_its_place(data, tmp_path):
    """prune (and --force, and run's last step) replaced the run directory in two renames: a SIGKILL between them
    left no run at all, and `prune` then said there was none. The swap is one step where the system has one."""
    from lightfmp.io import exchange
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    if not exchange(tmp_path / "x", tmp_path / "y"):  # renameat2 (Linux): elsewhere the two renames remain
        pytest.skip("no one-step exchange on this system")
    cfg = RunConfig.of(data=str(data), **{k: v for k, v in SETTINGS.items() if k != "keep"})
    pipeline.train(cfg, tmp_path / "r", quiet=True)
    p = subprocess.run([sys.executable, "-c", KILLED_IN_THE_SWAP, str(tmp_path / "r")],
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "r" / "run.json").read_text())["state"] in ("pretrained", "complete")
    pipeline.prune(tmp_path / "r", keep=2, quiet=True)  # and the next prune finds it
    assert complete(tmp_path / "r")


def test_prune_refuses_a_checkpoint_folder_holding_a_file_of_the_users(data, tmp_path):
    cfg = RunConfig.of(data=str(data), **{k: v for k, v in SETTINGS.items() if k != "keep"})
    pipeline.train(cfg, tmp_path / "q", quiet=True)
    (tmp_path / "q.ckpt").mkdir()
    (tmp_path / "q.ckpt" / "continue.safetensors").write_text("mine")
    with pytest.raises(LightFMPError, match=r"q.ckpt: holds 'continue.safetensors'"):
        pipeline.prune(tmp_path / "q", keep=2, quiet=True)
    assert (tmp_path / "q.ckpt" / "continue.safetensors").read_text() == "mine"


def test_the_lock_copes_with_long_names_a_tail_left_by_a_kill_and_file_systems_without_flock(data, tmp_path,
                                                                                            monkeypatch):
    long = tmp_path / ("r" * 240)  # the lock's temporary takes a shortened name, as every temporary does
    with writer_lock.one_writer(long, "run"):
        assert writer_lock.lock_path(long).exists()
    assert not writer_lock.lock_path(long).exists()
    lock = writer_lock.lock_path(tmp_path / "t")
    old = json.dumps({"format": writer_lock.LOCK_FORMAT, "pid": 123456789, "command": "prune-and-more"})
    lock.write_text(json.dumps({"format": writer_lock.LOCK_FORMAT, "pid": 1, "command": "run"}) + old[-20:])
    with writer_lock.one_writer(tmp_path / "t", "run"):  # a killed rewrite's tail: still lightfmp's, taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with writer_lock.one_writer(tmp_path / "u", "run"):  # no lock, as without fcntl, and no file left
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []

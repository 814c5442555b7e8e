"""What must never go wrong around the real work: --force replaces only what lightfmp wrote; a damaged checkpoint
or run directory is one line naming the file, never a traceback; long commands say what they are doing, Ctrl-C
says how to resume, and bench saves its table before the curves."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

import lightfmp.bench.core as bench_core
import lightfmp.checkpoint as checkpoint_mod
import lightfmp.demo as demo_mod
import lightfmp.models.base as model_base
import lightfmp.models.dcnv2 as model_dcnv2
import lightfmp.pipeline as pipeline_mod
from lightfmp.bench.report import results_table
from lightfmp.bench.selectors import METHODS
from lightfmp.config import RunConfig
from lightfmp.errors import LightFMPError
from lightfmp.io import WRITTEN, atomic_dir, check_out, file_sha256, lightfmp_kind
from lightfmp.progress import Reporter
from lightfmp.rundir import open_run
from lightfmp.cli.app import app

from helpers import cli, one_line_error, unwarned, without_flag, write_csv

FAST = ["--pretrain-epochs", "2", "--epochs", "1", "--batch-size", "128", "--hidden", "8", "--embed-dim", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("d"), n=600)


def train_args(data, out, *extra):
    return ["train", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.5",
            *FAST, *extra]


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pre"
    r = cli(*train_args(data, out, "--quiet"))
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def complete(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.5",
            "--keep", "3", *FAST, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def listing(d):
    return sorted(p.name for p in d.iterdir())


# ---- --force replaces only what lightfmp wrote -------------------------------------------------------------------

def test_force_refuses_a_directory_of_the_users(data, tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    (v / "important.txt").write_text("mine")
    before = listing(tmp_path)
    r = cli(*train_args(data, v, "--quiet", "--force"))
    one_line_error(r, v, "not a directory lightfmp wrote", "--force")
    assert (v / "important.txt").read_text() == "mine" and listing(v) == ["important.txt"]
    assert listing(tmp_path) == before  # no temporary sibling left either


def test_refusal_comes_before_any_work(data, tmp_path, monkeypatch):
    v = tmp_path / "v"
    v.mkdir()
    (v / "important.txt").write_text("mine")

    def no_work(*a, **k):
        raise AssertionError("the data was read before --out was checked")
    monkeypatch.setattr(pipeline_mod, "load_data", no_work)
    for cmd in ("train", "run"):
        r = cli(cmd, "--data", data, "--label", "label", "--out", v, "--force", "--quiet")
        one_line_error(r, v, "not a directory lightfmp wrote")


def test_force_replaces_a_previous_run(data, tmp_path):
    out = tmp_path / "r"
    assert cli(*train_args(data, out, "--quiet")).exit_code == 0
    first = (out / "metrics.json").read_text()
    one_line_error(cli(*train_args(data, out, "--quiet")), out, "already exists", "--force")
    assert (out / "metrics.json").read_text() == first
    r = cli(*train_args(data, out, "--quiet", "--force", "--seed", "1"))
    assert r.exit_code == 0, r.output
    assert open_run(out).state == "pretrained" and (out / "metrics.json").read_text() != first
    assert listing(tmp_path) == ["r"]  # the replaced directory is gone, nothing else left behind


def test_force_refuses_the_current_directory_and_what_contains_it(data, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    one_line_error(cli(*train_args(data, ".", "--quiet", "--force")), "current directory")
    one_line_error(cli(*train_args(data, tmp_path, "--quiet", "--force")), tmp_path, "contains the current directory")
    one_line_error(cli(*train_args(data, "/", "--quiet", "--force")), "filesystem root")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    one_line_error(cli(*train_args(data, home, "--quiet", "--force")), home, "home directory")
    assert listing(work) == ["notes.txt"] and listing(home) == []


def test_the_current_directory_is_refused_even_when_it_is_a_run(pretrained, tmp_path, monkeypatch):
    run = tmp_path / "copy"
    shutil.copytree(pretrained, run)
    monkeypatch.chdir(run)
    with pytest.raises(LightFMPError, match="is the current directory"):
        check_out(".", force=True)


def test_force_refuses_a_file(data, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    one_line_error(cli(*train_args(data, f, "--quiet", "--force")), f, "is a file")
    one_line_error(cli(*train_args(data, f / "run", "--quiet")), f, "is a file")
    assert f.read_text() == "mine"


def test_symlink_out_refused(pretrained, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(pretrained, target_is_directory=True)
    with pytest.raises(LightFMPError, match="symbolic link"):
        check_out(link, force=True)
    assert (pretrained / "run.json").exists()


def test_atomic_dir_recognises_each_kind_of_lightfmp_directory(tmp_path):
    markers = {"run": ("run.json", {"format": "lightfmp-run", "format_version": 1}),
               "export": ("feature_schema.json", {"schema_version": 1, "model_file": "model.onnx", "inputs": []}),
               "shard directory": ("manifest.json", {"format": "lightfmp-shards", "shards": []})}
    for kind, (name, doc) in markers.items():
        d = tmp_path / kind.replace(" ", "_")
        d.mkdir()
        (d / name).write_text(json.dumps(doc))
        assert lightfmp_kind(d) == kind
        for other in markers.keys() - {kind}:  # another kind is refused, whatever --force says
            with pytest.raises(LightFMPError, match=f"is a lightfmp {kind}, not an? {other}; --force replaces only"):
                with atomic_dir(d, force=True, kind=other) as tmp:
                    raise AssertionError("the block must not run")
            assert listing(d) == [name]
        with atomic_dir(d, force=True, kind=kind) as tmp:
            (tmp / "new.txt").write_text("new")
        assert listing(d) == [WRITTEN, "new.txt"]
    # a marker with the wrong content, or unreadable, is no marker
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "run.json").write_text(json.dumps({"format": "something-else"}))
    (fake / "manifest.json").write_text("{not json")
    assert lightfmp_kind(fake) is None
    with pytest.raises(LightFMPError, match="not a directory lightfmp wrote"):
        with atomic_dir(fake, force=True) as tmp:
            raise AssertionError("the block must not run")
    assert listing(fake) == ["manifest.json", "run.json"]


def test_atomic_dir_never_deletes_a_sibling_of_the_users(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"format": "lightfmp-run"}))
    mine = tmp_path / ".r.old"  # the name a fixed-name scheme would have used for the old directory
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with atomic_dir(d, force=True) as tmp:
        (tmp / "run.json").write_text(json.dumps({"format": "lightfmp-run", "n": 2}))
    assert (mine / "keep.txt").read_text() == "mine"
    assert json.loads((d / "run.json").read_text())["n"] == 2
    assert listing(tmp_path) == [".r.old", "r"]


def test_a_failed_atomic_dir_takes_away_the_folders_it_made_and_no_others(tmp_path):
    """A block that fails leaves no trace: the temporary goes, and so do the folders made for the output's parents
    (innermost first, while they are empty); a folder that existed before, or that something else filled meanwhile,
    stays. After success the parents stay."""
    (tmp_path / "had").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "had" / "new1" / "new2" / "run") as tmp:
            (tmp / "part.bin").write_bytes(b"x")
            raise RuntimeError("the block failed")
    assert listing(tmp_path) == ["had"] and listing(tmp_path / "had") == []
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "had" / "new1" / "new2" / "run"):
            (tmp_path / "had" / "new1" / "theirs.txt").write_text("written meanwhile")
            raise RuntimeError("the block failed")
    assert listing(tmp_path / "had" / "new1") == ["theirs.txt"]
    with atomic_dir(tmp_path / "had" / "new3" / "run") as tmp:
        (tmp / "run.json").write_text(json.dumps({"format": "lightfmp-run"}))
    assert (tmp_path / "had" / "new3" / "run" / "run.json").exists()


def test_export_force_refuses_what_lightfmp_did_not_write(complete, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    v = tmp_path / "v"
    v.mkdir()
    (v / "important.txt").write_text("mine")
    one_line_error(cli("export", complete, "--out", v, "--force"), v, "not a directory lightfmp wrote")
    assert listing(v) == ["important.txt"]
    monkeypatch.chdir(v)
    one_line_error(cli("export", complete, "--out", ".", "--force"), "current directory")
    assert listing(v) == ["important.txt"]


def recorded(d):
    """What a lightfmp directory's record says lightfmp wrote there."""
    return sorted(json.loads((d / WRITTEN).read_text())["names"])


def run_args(data, out, *extra):
    return ["run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, "--subset", "0.5",
            "--keep", "3", *FAST, "--quiet", *extra]


def test_force_never_deletes_a_file_of_the_users_inside_a_run(data, complete, tmp_path, monkeypatch):
    run = tmp_path / "a"
    shutil.copytree(complete, run)
    assert recorded(run) == [n for n in listing(run) if n != WRITTEN]  # the record is the run's own files
    (run / "my_notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with monkeypatch.context() as m:
        m.setattr(pipeline_mod, "load_data", stop)  # refused before any work
        for args in (run_args(data, run, "--force"), train_args(data, run, "--quiet", "--force")):
            one_line_error(cli(*args), run, "holds my_notes.txt, which lightfmp did not write",
                           "--force replaces only lightfmp's own files, move it out first")
        one_line_error(cli("prune", run, "--keep", "2"), run, "holds my_notes.txt",
                       "rewrites it in place with lightfmp's own files only")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert open_run(run).state == "complete" and listing(tmp_path) == ["a"]
    # lightfmp's own later files (inspect's chart) and a killed write's temporary are no one else's
    (run / "my_notes.txt").unlink()
    assert cli("inspect", run, "--quiet").exit_code == 0 and "gates.png" in recorded(run)
    (run / ".metrics.json.x1y2abcd.tmp").write_text("half")
    r = cli(*run_args(data, run, "--force", "--seed", "1"))
    assert r.exit_code == 0, r.output
    assert (run / "metrics.json").read_bytes() != before["metrics.json"]
    assert recorded(run) == [n for n in listing(run) if n != WRITTEN] and "gates.png" not in listing(run)


def test_prune_keeps_the_record_right(pretrained, tmp_path):
    run = tmp_path / "pre"
    shutil.copytree(pretrained, run)
    assert cli("inspect", run, "--quiet").exit_code == 0 and "gates.png" in recorded(run)
    assert cli("prune", run, "--keep", "2", "--quiet").exit_code == 0
    assert open_run(run).state == "complete"
    assert recorded(run) == [n for n in listing(run) if n != WRITTEN] and "model.safetensors" in recorded(run)


def test_export_force_never_deletes_a_file_of_the_users_inside_it(complete, tmp_path):
    pytest.importorskip("onnx")
    exp = tmp_path / "exp"
    assert cli("export", complete, "--out", exp, "--quiet").exit_code == 0
    assert recorded(exp) == [n for n in listing(exp) if n != WRITTEN]
    (exp / "README.md").write_text("mine")
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    one_line_error(cli("export", complete, "--out", exp, "--force"), exp,
                   "holds README.md, which lightfmp did not write", "move it out first")
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before
    (exp / "README.md").unlink()
    r = cli("export", complete, "--out", exp, "--force", "--quiet")
    assert r.exit_code == 0, r.output
    assert recorded(exp) == [n for n in listing(exp) if n != WRITTEN]


def test_a_shard_directory_keeps_what_lightfmp_did_not_write(tmp_path):
    from lightfmp.shards import ShardWriter
    d = tmp_path / "k"
    with ShardWriter(d, "k", 2) as w:
        w.finish()
    assert recorded(d) == ["manifest.json"]
    (d / "notes.txt").write_text("mine")
    with pytest.raises(LightFMPError, match="holds notes.txt, which lightfmp did not write") as e:
        with ShardWriter(d, "k", 2):
            raise AssertionError("the block must not run")
    assert "\n" not in str(e.value) and (d / "notes.txt").read_text() == "mine"


def test_a_directory_without_a_record_is_replaced_as_before(tmp_path):
    """Written by a lightfmp before the record: the marker alone decides, and the record comes with the new one."""
    d = tmp_path / "r"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"format": "lightfmp-run"}))
    (d / "old.txt").write_text("old")
    with atomic_dir(d, force=True) as tmp:
        (tmp / "run.json").write_text(json.dumps({"format": "lightfmp-run", "n": 2}))
    assert listing(d) == [WRITTEN, "run.json"] and recorded(d) == ["run.json"]
    (d / WRITTEN).write_text("{cut")  # a damaged record: refused, naming it
    with pytest.raises(LightFMPError, match=f"{WRITTEN}: damaged") as e:
        check_out(d, force=True)
    assert "\n" not in str(e.value)


# ---- a damaged checkpoint does not block the rerun ---------------------------------------------------------------

def interrupt_after_first_save(monkeypatch):
    save = checkpoint_mod.Checkpoint.save

    def save_then_stop(self, *a, **k):
        save(self, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint_mod.Checkpoint, "save", save_then_stop)


@pytest.mark.parametrize("damage", ["truncate tensors", "truncate json", "delete tensors", "garbage json",
                                    "edited json", "flipped byte in tensors", "renamed tensors"])
def test_damaged_checkpoint_is_reported_and_the_phase_restarts(data, tmp_path, monkeypatch, damage):
    out = tmp_path / "r"
    with monkeypatch.context() as m:
        interrupt_after_first_save(m)
        r = cli(*train_args(data, out, "--quiet"))
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines() == [f"interrupted: rerun the same command to resume from epoch 1 "
                                             f"(pretrain phase; checkpoint in {tmp_path / 'r.ckpt'})"]
    tensors, doc = tmp_path / "r.ckpt" / "pretrain.safetensors", tmp_path / "r.ckpt" / "pretrain.json"
    assert tensors.exists() and doc.exists() and not out.exists()
    target = tensors if "tensors" in damage else doc
    if damage.startswith("truncate"):
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage.startswith("delete"):
        target.unlink()
    elif damage.startswith("edited"):  # JSON that parses, its state changed: it would stop the phase at once
        target.write_text(json.dumps({**json.loads(target.read_text()), "stopped": True}))
    elif damage.startswith("flipped"):  # one byte in the middle of the tensors' data: other moments, silently
        raw = bytearray(target.read_bytes())
        start = 8 + int.from_bytes(raw[:8], "little")
        raw[(start + len(raw)) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage.startswith("renamed"):  # a moment's name changed in the header: an optimizer state missing a key
        raw = target.read_bytes()
        assert raw.count(b'"opt.weights.1.exp_avg"') == 1
        target.write_bytes(raw.replace(b'"opt.weights.1.exp_avg"', b'"opt.weights.1.exp_avX"'))
    else:
        target.write_text('["not", "a", "checkpoint"]')
    r = cli(*train_args(data, out))  # not --quiet: the line about the checkpoint is a log line
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    said = [line for line in r.output.splitlines() if "damaged checkpoint" in line]
    assert len(said) == 1 and "pretrain starts again from its first epoch" in said[0], r.output
    assert "resuming" not in r.output
    assert open_run(out).state == "pretrained" and not (tmp_path / "r.ckpt").exists()
    history = json.loads((out / "history.json").read_text())["pretrain"]
    assert "resumed_from_epoch" not in history and len(history["epochs"]) == 2


def test_intact_checkpoint_still_resumes(data, tmp_path, monkeypatch):
    out = tmp_path / "r"
    with monkeypatch.context() as m:
        interrupt_after_first_save(m)
        assert cli(*train_args(data, out, "--quiet")).exit_code == 130
    r = cli(*train_args(data, out))
    assert r.exit_code == 0, r.output
    assert "resuming pretrain from epoch 1" in r.output and "damaged" not in r.output
    assert json.loads((out / "history.json").read_text())["pretrain"]["resumed_from_epoch"] == 1


def test_a_checkpoint_of_a_schema_file_edited_since_is_not_resumed(data, tmp_path, monkeypatch):
    """A phase stopped after its first epoch, its --schema file then edited at the same path: the checkpoint's
    weights were trained on the old encoding, so the phase starts again (the key holds the file's sha256)."""
    assert cli(*train_args(data, tmp_path / "base", "--quiet")).exit_code == 0
    given = tmp_path / "s.json"
    shutil.copy(tmp_path / "base" / "schema.json", given)
    out = tmp_path / "r"
    args = ["train", "--data", data, "--label", "label", "--schema", given, "--out", out, "--subset", "0.5", *FAST]
    with monkeypatch.context() as m:
        interrupt_after_first_save(m)
        assert cli(*args, "--quiet").exit_code == 130
    doc = json.loads(given.read_text())
    f = next(f for f in doc["fields"] if f.get("vocab") and len(f["vocab"]) > 1)
    f["vocab"] = f["vocab"][::-1]
    given.write_text(json.dumps(doc))
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "resuming" not in r.output and "resumed_from_epoch" not in \
        json.loads((out / "history.json").read_text())["pretrain"], r.output


# ---- one loader for a run directory ------------------------------------------------------------------------------

def damage(run, name, how):
    p = run / name
    if how == "delete":
        p.unlink()
    else:
        blob = p.read_bytes()
        p.write_bytes(blob[: len(blob) // 2])


RUN_FILES = ["run.json", "config.yaml", "schema.json", "metrics.json", "history.json", "pretrain.safetensors",
             "pretrain_optimizer.safetensors"]


@pytest.mark.parametrize("how", ["delete", "truncate"])
@pytest.mark.parametrize("name", RUN_FILES)
def test_damaged_pretrained_run_is_one_line_naming_the_file(pretrained, tmp_path, name, how):
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    damage(run, name, how)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for cmd in (["inspect", run], ["prune", run, "--quiet"]):
        line = one_line_error(cli(*cmd), name)
        assert str(run) in line
    with pytest.raises(LightFMPError, match=name.replace(".", r"\.")):
        open_run(run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written, nothing removed


@pytest.mark.parametrize("how", ["delete", "truncate"])
@pytest.mark.parametrize("name", RUN_FILES + ["model.safetensors"])
def test_damaged_complete_run_is_one_line_naming_the_file(complete, tmp_path, name, how):
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    damage(run, name, how)
    for cmd in (["inspect", run], ["prune", run, "--quiet"], ["export", run, "--out", tmp_path / "x"]):
        one_line_error(cli(*cmd), name, run)
    assert not (tmp_path / "x").exists()


def test_inspect_of_a_complete_run_without_its_selection_record_says_so(complete, tmp_path):
    """metrics.json of a --keep K run without `selection` (an older lightfmp's, or edited): inspect names the rule
    and says it does not know how it decided, instead of describing another rule (the gates' top K)."""
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    m = json.loads((run / "metrics.json").read_text())
    del m["selection"]
    (run / "metrics.json").write_text(json.dumps(m))
    info = json.loads((run / "run.json").read_text())  # an older lightfmp recorded no sha256 of metrics.json
    (run / "run.json").write_text(json.dumps({**{k: v for k, v in info.items() if k != "metrics_sha256"},
                                              "format_version": 2}))
    r = cli("inspect", run)
    assert r.exit_code == 0, r.output
    shown = " ".join(r.output.split())
    assert "kept by: --keep 3 (where and how it decided is not in metrics.json" in shown, shown
    assert "by deterministic gate" not in shown


@pytest.mark.parametrize("name", ["model.safetensors", "pretrain.safetensors", "pretrain_optimizer.safetensors"])
def test_a_tensor_file_edited_in_place_is_refused_by_its_sha256(complete, tmp_path, name):
    """A byte flipped inside a weight leaves the file readable and may move no test metric (an unseen value's row,
    which the test rows never read): run.json records each tensor file's sha256 and every load checks it. A run
    written before it recorded them (no key) loads as before."""
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    info = json.loads((run / "run.json").read_text())
    assert set(info["weights_sha256"]) == {"model.safetensors", "pretrain.safetensors",
                                           "pretrain_optimizer.safetensors"}
    blob = bytearray((run / name).read_bytes())
    blob[-3] ^= 0x01  # a tensor byte, past the header
    (run / name).write_bytes(bytes(blob))
    cmd = ["export", run, "--out", tmp_path / "x"] if name == "model.safetensors" else ["prune", run, "--quiet"]
    one_line_error(cli(*cmd), f"{run / name}: changed since the run wrote it")
    assert not (tmp_path / "x").exists()
    without = {k: v for k, v in info.items() if k != "weights_sha256"}
    (run / "run.json").write_text(json.dumps(without))  # a key removed from a run that always records it: an edit
    cmd = ["export", run, "--out", tmp_path / "x"] if name == "model.safetensors" else ["prune", run, "--quiet"]
    first = "model.safetensors" if name == "model.safetensors" else "pretrain.safetensors"  # the first it loads
    one_line_error(cli(*cmd), f"{run / 'run.json'}: records no sha256 for {first} under 'weights_sha256'")
    assert not (tmp_path / "x").exists()
    (run / "run.json").write_text(json.dumps({**without, "format_version": 2}))  # an older run: none recorded
    if name == "model.safetensors":
        assert cli("export", run, "--out", tmp_path / "x", "--quiet").exit_code == 0


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("fields"), "metrics.json: missing key 'fields'"),
    (lambda m: m["fields"].pop("kept"), "metrics.json: missing key 'fields.kept'"),
    (lambda m: m["gates"].pop(next(iter(m["gates"]))), "metrics.json: missing key 'a' in 'gates'"),
    (lambda m: m["fields"].update(kept="a"), "fields.kept"),
    (lambda m: m["fields"].update(all=["a"]), "fields.all does not match"),
    (lambda m: m["gates"].update(a="x"), "gates['a'] must be a number from 0 to 1, not 'x'"),
    (lambda m: m["gates"].update(a=5.0), "gates['a'] must be a number from 0 to 1, not 5.0"),
    (lambda m: m["log_alpha"].update(a=True), "log_alpha['a'] must be a finite number, not True"),
    (lambda m: m["open_probability"].update(a=-1), "open_probability['a'] must be a number from 0 to 1, not -1"),
    (lambda m: m.update(selection={"scores": {"a": "x"}}), "selection.scores['a'] must be a number or null"),
    (lambda m: m.update(selection=[1]), "'selection' must be an object"),
])
def test_metrics_keys_readers_need_are_checked(complete, tmp_path, edit, message):
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    m = json.loads((run / "metrics.json").read_text())
    edit(m)
    (run / "metrics.json").write_text(json.dumps(m))
    for cmd in (["inspect", run], ["prune", run, "--quiet"]):
        one_line_error(cli(*cmd), message)


@pytest.mark.parametrize("edit", [lambda m: m["gates"].update(a=0.01), lambda m: m["open_probability"].update(a=0.1),
                                  lambda m: m["selection"]["scores"].update(a=99.0)])
def test_a_metrics_json_edited_within_its_checks_is_refused_by_its_sha256(complete, tmp_path, edit):
    """Values that pass every check of their own (a gate of 0.01, a score of 99) would make `inspect` show a run
    that contradicts itself: run.json records metrics.json's sha256 and every reader checks it. A run written
    before it recorded one (no key) reads as before."""
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    m = json.loads((run / "metrics.json").read_text())
    edit(m)
    (run / "metrics.json").write_text(json.dumps(m))
    for cmd in (["inspect", run], ["prune", run, "--quiet"], ["export", run, "--out", tmp_path / "x"]):
        one_line_error(cli(*cmd), f"{run / 'metrics.json'}: changed since the run wrote it (sha256 differs")
    assert not (tmp_path / "x").exists()
    info = json.loads((run / "run.json").read_text())
    without = {k: v for k, v in info.items() if k != "metrics_sha256"}
    (run / "run.json").write_text(json.dumps(without))  # a key removed from a run that always records it: an edit
    one_line_error(cli("inspect", run), f"{run / 'run.json'}: missing key 'metrics_sha256'")
    (run / "run.json").write_text(json.dumps({**without, "format_version": 2}))  # an older run: none recorded
    assert cli("inspect", run).exit_code == 0


def test_an_edited_history_or_optimizer_record_is_refused_not_read(complete, tmp_path):
    """history.json holds what phase 1's gates alone shut, which the default rule cuts: one edited number there
    (a field's log_alpha set to -20) cut an informative field with exit 0. run.json records its sha256 as it does
    metrics.json's. And a run.json saying no optimizer state was stored, where the run wrote one, made prune start
    a fresh optimizer, silently."""
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    info = json.loads((run / "run.json").read_text())
    h = json.loads((run / "history.json").read_text())
    h["pretrain"]["epochs"][0]["seconds"] = 99.0
    (run / "history.json").write_text(json.dumps(h))
    for cmd in (["inspect", run], ["prune", run, "--quiet"]):
        one_line_error(cli(*cmd), f"{run / 'history.json'}: changed since the run wrote it (sha256 differs")
    without = {k: v for k, v in info.items() if k != "history_sha256"}
    (run / "run.json").write_text(json.dumps(without))
    one_line_error(cli("prune", run, "--quiet"), f"{run / 'run.json'}: missing key 'history_sha256'")
    (run / "run.json").write_text(json.dumps({**without, "format_version": 2}))  # an older run: none recorded
    assert cli("inspect", run).exit_code == 0
    shutil.rmtree(run)
    shutil.copytree(complete, run)
    (run / "run.json").write_text(json.dumps({**info, "optimizer_state": False}))
    one_line_error(cli("prune", run, "--quiet"), f"{run / 'run.json'}: 'optimizer_state' is false, but the run wrote "
                                                 f"pretrain_optimizer.safetensors")
    # the key and the file's sha256 both removed: a run with gates of this format always stored it
    hashes = {k: v for k, v in info["weights_sha256"].items() if k != "pretrain_optimizer.safetensors"}
    (run / "run.json").write_text(json.dumps({**{k: v for k, v in info.items() if k != "optimizer_state"},
                                              "weights_sha256": hashes}))
    one_line_error(cli("prune", run, "--quiet"), f"{run / 'run.json'}: 'optimizer_state' is null, but the run wrote "
                                                 f"pretrain_optimizer.safetensors")


def test_another_runs_weights_file_is_named_as_what_changed_not_the_config(data, pretrained, tmp_path):
    """A weights file copied in from another run (another seed) differs from its run's in what it was trained with
    and in its sha256: the error names the file, not config.yaml, which nobody edited."""
    other = tmp_path / "other"
    assert cli(*train_args(data, other, "--seed", "1", "--quiet")).exit_code == 0
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    shutil.copy(other / "pretrain.safetensors", run / "pretrain.safetensors")
    for cmd in (["inspect", run], ["prune", run, "--quiet"]):
        r = cli(*cmd)
        one_line_error(r, f"{run / 'pretrain.safetensors'}: changed since the run wrote it (sha256 differs")
        assert "config.yaml" not in r.output


def test_truncated_json_names_the_file_and_the_reason(pretrained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    damage(run, "metrics.json", "truncate")
    one_line_error(cli("inspect", run), f"{run / 'metrics.json'}: not valid JSON (")


def test_config_cut_at_a_line_end_is_still_caught(pretrained, tmp_path):
    """YAML cut short at a line end parses; the keys run.json recorded are missing from it."""
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    lines = (run / "config.yaml").read_text().splitlines(keepends=True)
    (run / "config.yaml").write_text("".join(lines[: len(lines) // 2]))
    one_line_error(cli("inspect", run), f"{run / 'config.yaml'}: missing key")
    # the same words where run.json's list is what was edited: both files named, neither blamed alone
    (run / "config.yaml").write_text("".join(lines))
    info = json.loads((run / "run.json").read_text())
    info["config_keys"] = [k if k != "vocab_cap" else "vocab_bap" for k in info["config_keys"]]
    assert "vocab_bap" in info["config_keys"]
    (run / "run.json").write_text(json.dumps(info))
    one_line_error(cli("inspect", run), f"{run / 'config.yaml'}: missing key 'vocab_bap', which "
                                        f"{run / 'run.json'} lists under config_keys (either file cut short or edited?)")


# ---- long jobs say what they do; Ctrl-C says how to resume -------------------------------------------------------

def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(data, tmp_path):
    r = cli(*train_args(data, tmp_path / "r"))
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert "pretrain (gated): start, 2 epochs of " in err
    assert "pretrain (gated): epoch 1/2 loss" in err and "pretrain (gated): epoch 2/2 loss" in err
    assert "pretrain (gated): done in" in err


def test_quiet_reporter_says_nothing(capsys):
    rep = Reporter(quiet=True)
    rep.log("hello")
    with rep.bars("x", 2, 3) as (next_batch, next_epoch, status):
        status("s")
        next_epoch()
    assert capsys.readouterr().err == ""


def movielens_like(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 20, n)
    df = pd.DataFrame({"user_id": user, "item_id": rng.integers(0, 30, n), "age": rng.integers(18, 60, n),
                       "gender": rng.choice(["M", "F"], n), "occupation": rng.choice(["a", "b", "c"], n),
                       "zip": rng.choice(["z1", "z2"], n), "release_year": rng.integers(1990, 1998, n),
                       "hour": rng.integers(0, 24, n), "weekday": rng.integers(0, 7, n),
                       "genres": ["|".join(rng.choice(list("xyz"), 2, replace=False)) for _ in range(n)],
                       "label": (rng.random(n) < 0.3 + 0.4 * (user % 2)).astype(int)})
    df.to_csv(path, index=False)
    return path


def test_demo_reports_its_steps_to_a_log(tmp_path, monkeypatch):
    csv = movielens_like(tmp_path / "ml.csv")
    monkeypatch.setattr(demo_mod, "fetch_movielens_100k", lambda quiet=False: csv)
    r = cli("demo", "--out", tmp_path / "demo")
    assert r.exit_code == 0, r.output
    err = r.stderr
    order = ["demo: fetching MovieLens-100k", "demo: step 1/2: Light-FMP", "pretrain (gated): start",
             "pretrain (gated): epoch 1/", "continue (pruned): start", "demo: step 2/2: comparison run",
             "train (all fields): start", "train (all fields): done in", "demo: done"]
    at = [err.find(s) for s in order]
    assert all(i >= 0 for i in at) and at == sorted(at), (at, err)
    assert "test AUC" in r.stdout


def test_demo_replaces_an_earlier_demo_but_not_someone_elses_run(data, tmp_path, monkeypatch):
    """`demo --out DIR` writes DIR/lightfmp and DIR/all-fields: an earlier demo's runs there are replaced, a run of
    other data at that name only with --force."""
    csv = movielens_like(tmp_path / "ml.csv")
    monkeypatch.setattr(demo_mod, "fetch_movielens_100k", lambda quiet=False: csv)
    out = tmp_path / "exp"
    assert cli(*train_args(data, out / "lightfmp", "--quiet")).exit_code == 0  # the user's own run
    before = listing(out / "lightfmp")
    one_line_error(cli("demo", "--out", out, "--no-compare", "--quiet"), str(out / "lightfmp"),
                   "is a run of other data than the demo's", "--force")
    assert listing(out / "lightfmp") == before
    assert cli("demo", "--out", out, "--no-compare", "--quiet", "--force").exit_code == 0
    again = cli("demo", "--out", out, "--no-compare", "--quiet")  # now the demo's own: replaced without --force
    assert again.exit_code == 0, again.output
    import shutil  # the cache moved (another $LIGHTFMP_HOME, a copied folder): the table's content says it is ours
    moved = tmp_path / "moved" / "ml.csv"
    moved.parent.mkdir()
    shutil.copy(csv, moved)
    monkeypatch.setattr(demo_mod, "fetch_movielens_100k", lambda quiet=False: moved)
    monkeypatch.setattr(demo_mod, "CTR_SHA256", file_sha256(moved))
    again = cli("demo", "--out", out, "--no-compare", "--quiet")
    assert again.exit_code == 0, again.output
    (tmp_path / "other" / "lightfmp").mkdir(parents=True)  # not a run at all: --force would not replace it either
    one_line_error(cli("demo", "--out", tmp_path / "other", "--no-compare", "--force", "--quiet"),
                   "is not a lightfmp run")


def test_demo_refuses_a_file_of_the_users_in_its_second_run_before_the_first_is_replaced(tmp_path, monkeypatch):
    """A note of the user's inside DIR/all-fields (which --force would not delete) is refused before step 1
    replaces DIR/lightfmp, not after: the refused command leaves both runs as they were."""
    csv = movielens_like(tmp_path / "ml.csv")
    monkeypatch.setattr(demo_mod, "fetch_movielens_100k", lambda quiet=False: csv)
    out = tmp_path / "d"
    assert cli("demo", "--out", out, "--quiet").exit_code == 0
    (out / "all-fields" / "notes.txt").write_text("mine")
    before = listing(out / "lightfmp")
    for force in ([], ["--force"]):
        one_line_error(cli("demo", "--out", out, "--quiet", *force), str(out / "all-fields"), "notes.txt")
        assert listing(out / "lightfmp") == before


def test_demo_refuses_a_place_no_run_can_go_before_the_download(tmp_path, monkeypatch):
    """`demo --out FILE` (a file where its folder would go) is refused before MovieLens is fetched: the download
    is minutes on a fresh machine, the refusal needs none of it."""
    def fetch(quiet=False):
        raise AssertionError("fetched before the output was checked")
    monkeypatch.setattr(demo_mod, "fetch_movielens_100k", fetch)
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(cli("demo", "--out", tmp_path / "notes.txt", "--quiet"), "notes.txt", "is a file")
    (tmp_path / "d" / "lightfmp").mkdir(parents=True)
    one_line_error(cli("demo", "--out", tmp_path / "d", "--quiet"), "is not a lightfmp run")
    assert (tmp_path / "notes.txt").read_text() == "mine" and not any((tmp_path / "d" / "lightfmp").iterdir())


@pytest.mark.parametrize("flags, shown", [(["--keep", "2"], "--keep 2 and --closing-test"),
                                          (["--threshold", "0.5"], "--threshold 0.5 and --closing-test")])
def test_closing_test_goes_with_no_other_rule(pretrained, flags, shown):
    before = sorted(q.name for q in pretrained.iterdir())
    one_line_error(cli("prune", pretrained, *flags, "--closing-test"), shown, "give one keep rule")
    assert sorted(q.name for q in pretrained.iterdir()) == before


def stop(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.parametrize("cmd", ["train", "run", "prune", "demo"])
def test_ctrl_c_is_one_line_and_exit_130(cmd, data, pretrained, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "load_data", stop)
    monkeypatch.setattr(demo_mod, "fetch_movielens_100k", lambda quiet=False: data)
    args = {"train": train_args(data, tmp_path / "r"),
            "run": ["run", "--data", data, "--label", "label", "--out", tmp_path / "r"],
            "prune": ["prune", pretrained],
            "demo": ["demo", "--out", tmp_path / "demo", "--quiet"]}[cmd]
    r = cli(*args)
    assert r.exit_code == 130, r.output
    lines = [line for line in r.output.strip().splitlines() if not line.startswith("demo:")]
    assert lines == ["interrupted: rerun the same command to start again"], r.output
    assert "Traceback" not in r.output


def ctrl_c_after_the_first_continue_save(monkeypatch):
    """Ctrl-C right after phase 3's first checkpoint of its kept fields is written."""
    save = checkpoint_mod.Checkpoint.save

    def stop(self, *a, **k):
        save(self, *a, **k)
        if self.phase == "continue":
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint_mod.Checkpoint, "save", stop)


def test_a_continue_checkpoint_of_one_rule_is_not_resumed_by_another(data, tmp_path, monkeypatch):
    """The default rule's continued training (after a first epoch on every field phase 1 left open) and --threshold's
    (after a first epoch on its kept fields) may keep the same fields with the same epochs: an interrupted one's
    checkpoint must not be resumed by the other."""
    out = tmp_path / "r"
    assert cli(*train_args(data, out), "--quiet").exit_code == 0
    ctrl_c_after_the_first_continue_save(monkeypatch)
    r = cli("prune", out, "--continue-epochs", "3", "--quiet")
    assert r.exit_code == 130, r.output
    monkeypatch.undo()
    kept = json.loads((tmp_path / "r.ckpt" / "continue.json").read_text())["key"]["kept"]
    # the threshold rule made to keep the very same fields: only the path differs
    monkeypatch.setattr(pipeline_mod, "select_fields", lambda *a, **k: kept)
    r = cli("prune", out, "--threshold", "0.5", "--continue-epochs", "3")
    assert r.exit_code == 0, r.output
    assert "resuming" not in r.output, r.output
    assert json.loads((out / "metrics.json").read_text())["fields"]["kept"] == kept


def stop_right_after(monkeypatch, name: str) -> None:
    """Ctrl-C right after `lightfmp.checkpoint.<name>(out)` has marked what the run directory now holds."""
    mark = getattr(checkpoint_mod, name)

    def then_stop(out):
        mark(out)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint_mod, name, then_stop)


@pytest.mark.parametrize("command", ["run", "no-select"])
def test_ctrl_c_after_the_result_is_written_says_nothing_is_lost(data, tmp_path, monkeypatch, command):
    """A stop between publishing the finished run (its checkpoints deleted) and the end of the command: the line
    says the run is whole, not to resume from a checkpoint that no longer exists."""
    stop_right_after(monkeypatch, "published")
    out = tmp_path / "r"
    extra = ["--no-select"] if command == "no-select" else []
    r = cli("run", "--data", data, "--label", "label", "--out", out, *FAST, "--epochs", "2", "--quiet", *extra)
    assert r.exit_code == 130, r.output
    assert unwarned(r.output).strip() == f"interrupted: {out} was written in full before that; nothing to rerun"
    assert json.loads((out / "run.json").read_text())["state"] == "complete" and (out / "model.safetensors").exists()
    assert not (tmp_path / "r.ckpt").exists()


def test_ctrl_c_after_phase_1_is_published_says_the_rerun_resumes_after_it(data, tmp_path, monkeypatch):
    """A stop between `run` publishing phase 1 (its checkpoint deleted) and phase 3's first saved epoch: the line
    names the run directory phase 1 is in, not a checkpoint that no longer exists; the rerun resumes after it."""
    stop_right_after(monkeypatch, "phase1_published")
    out = tmp_path / "r"
    args = ["run", "--data", data, "--label", "label", "--out", out, *FAST, "--epochs", "2"]
    r = cli(*args, "--quiet")
    assert r.exit_code == 130, r.output
    assert unwarned(r.output).strip() == f"interrupted: rerun the same command to resume after phase 1 (complete in {out})"
    assert not (tmp_path / "r.ckpt").exists()
    monkeypatch.undo()
    r = cli(*args)
    assert r.exit_code == 0 and f"resuming: phase 1 is already complete in {out}" in r.output, r.output


@pytest.mark.parametrize("change", ["data", "flag", "schema", "damaged"])
def test_a_rerun_that_cannot_resume_an_unfinished_run_says_why(data, tmp_path, monkeypatch, change):
    """An unfinished run (phase 1 done) and a rerun with other data, another setting or a --schema file edited at
    the same path (its path alone does not say what it holds), or a file of phase 1 damaged since: it is not
    resumed, and the refusal says why (not only that the directory exists); --force starts again."""
    copy = tmp_path / "data.csv"
    shutil.copy(data, copy)
    out = tmp_path / "r"
    args = ["run", "--data", copy, "--label", "label", "--out", out, *FAST, "--epochs", "2", "--quiet"]
    if change == "schema":
        assert cli("train", "--data", copy, "--label", "label", "--out", tmp_path / "base", *FAST,
                   "--quiet").exit_code == 0
        shutil.copy(tmp_path / "base" / "schema.json", tmp_path / "s.json")
        args += ["--schema", tmp_path / "s.json"]
    stop_right_after(monkeypatch, "phase1_published")
    assert cli(*args).exit_code == 130
    monkeypatch.undo()
    if change == "data":
        lines = copy.read_text().splitlines(keepends=True)
        copy.write_text("".join(lines[:-1]))
        why = f"holds an unfinished run of other data ({copy} has changed since its phase 1 read it"
    elif change == "damaged":  # a file of phase 1 cut short: the loader's own words say which
        (out / "pretrain.safetensors").write_bytes((out / "pretrain.safetensors").read_bytes()[:5000])
        why = "holds an unfinished run whose files do not load ("
    elif change == "schema":  # the same fields, one vocabulary in another order: other ids for the same values
        doc = json.loads((tmp_path / "s.json").read_text())
        f = next(f for f in doc["fields"] if f.get("vocab") and len(f["vocab"]) > 1)
        f["vocab"] = f["vocab"][::-1]
        (tmp_path / "s.json").write_text(json.dumps(doc))
        why = f"holds an unfinished run of another schema ({tmp_path / 's.json'} has changed since its phase 1 read it"
    else:
        args += ["--seed", "7"]
        why = "holds an unfinished run of other settings (seed: 0 there, 7 now)"
    one_line_error(cli(*args), f"{out}: {why}")
    assert json.loads((out / "run.json").read_text())["state"] == "pretrained"  # left as it was
    assert cli(*args, "--force").exit_code == 0


def test_an_unfinished_schema_run_of_an_earlier_lightfmp_still_resumes(data, tmp_path, monkeypatch):
    """A run stopped after phase 1 by a lightfmp that did not record its --schema file's sha256: unknown is not
    "changed", so the rerun resumes it, as before."""
    assert cli("train", "--data", data, "--label", "label", "--out", tmp_path / "base", *FAST,
               "--quiet").exit_code == 0
    shutil.copy(tmp_path / "base" / "schema.json", tmp_path / "s.json")
    out = tmp_path / "r"
    args = ["run", "--data", data, "--label", "label", "--schema", tmp_path / "s.json", "--out", out, *FAST,
            "--epochs", "2"]
    stop_right_after(monkeypatch, "phase1_published")
    assert cli(*args, "--quiet").exit_code == 130
    monkeypatch.undo()
    info = json.loads((out / "run.json").read_text())
    del info["schema_file_sha256"]
    (out / "run.json").write_text(json.dumps(info))
    r = cli(*args)
    assert r.exit_code == 0 and f"resuming: phase 1 is already complete in {out}" in r.output, r.output


def test_a_train_run_with_a_stopped_prune_is_not_called_an_unfinished_run(data, tmp_path, monkeypatch):
    """`train`, then a `prune` stopped in phase 3 (its checkpoints left): `run` on that folder is refused as an
    existing run (it is not an unfinished `run`, whose settings a rerun should repeat)."""
    out = tmp_path / "r"
    copy = tmp_path / "data.csv"
    shutil.copy(data, copy)
    assert cli("train", "--data", copy, "--label", "label", "--out", out, *FAST, "--quiet").exit_code == 0
    (tmp_path / "r.ckpt").mkdir()  # what a stopped prune leaves
    r = cli("run", "--data", copy, "--label", "label", "--out", out, *FAST, "--epochs", "2", "--quiet")
    line = one_line_error(r, f"{out}: already exists")
    assert "unfinished" not in line


def test_under_torchrun_every_rank_refuses_what_rank_0_will_not_resume(data, tmp_path, monkeypatch):
    """Rank 0 decides and says why; the other ranks refuse with it, in one line each (before, they waited on rank 0
    and reported a lost peer, with the advice to rerun)."""
    from lightfmp import distributed as dist_mod
    from lightfmp import pipeline
    monkeypatch.setattr(dist_mod, "is_main", lambda: False)
    monkeypatch.setattr(dist_mod, "broadcast_int", lambda value, long_wait=False: -1)
    cfg = RunConfig.of(data=str(data), label="label")
    with pytest.raises(LightFMPError, match="holds an unfinished run this command does not resume \\(rank 0 says why"):
        pipeline._run(cfg, tmp_path / "r", False, True, None)


def test_ctrl_c_in_a_later_epoch_names_the_checkpoint(data, tmp_path, monkeypatch):
    ctrl_c_after_the_first_continue_save(monkeypatch)
    out = tmp_path / "r"
    r = cli("run", "--data", data, "--label", "label", "--out", out, *FAST, "--epochs", "2", "--quiet")
    assert r.exit_code == 130, r.output
    assert unwarned(r.output).strip() == (f"interrupted: rerun the same command to resume from epoch 1 (continue phase; "
                                f"checkpoint in {tmp_path / 'r.ckpt'})")
    monkeypatch.undo()
    r = cli("run", "--data", data, "--label", "label", "--out", out, *FAST, "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "resuming continue from epoch 1" in r.output


# ---- bench: the table is saved before the curves, the curves report per K, 80 columns ----------------------------

def bench_args(data, *extra):
    methods = [] if "--methods" in extra else ["--methods", "lpfs,random"]  # a list flag is given once
    return ["bench", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--k", "2", *methods,
            "--epochs", "1", "--pretrain-epochs", "1", "--hidden", "8", "--embed-dim", "4", "--batch-size", "256",
            *extra]


def test_bench_writes_the_table_before_the_curves(data, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_core, "curves", stop)
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    r = cli(*bench_args(data, "--json", js, "--plot", png))
    assert r.exit_code == 130, r.output
    doc = json.loads(js.read_text())
    assert [x["method"] for x in doc["results"]] == ["random", "lpfs"] and "curves" not in doc
    assert not png.exists()


def test_bench_curves_report_each_k_and_the_json_gets_them(data, tmp_path):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    r = cli(*bench_args(data, "--json", js, "--plot", png, "--methods", "lpfs"))
    assert r.exit_code == 0, r.output
    n = 5  # a, b, noise, x, tags
    for k in range(1, n + 1):
        assert f"curve lpfs: K={k}/{n} test AUC" in r.stderr, r.stderr
    assert f"bench: results written to {js}" in r.stderr
    doc = json.loads(js.read_text())
    assert doc["curves"]["lpfs"]["k"] == list(range(1, n + 1))
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert all(len(line) <= 80 for line in r.stdout.splitlines()) and "…" not in r.stdout


def test_plot_without_a_gate_method_is_refused_before_any_work(data, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_core, "load_dataset", stop)
    one_line_error(cli(*bench_args(data, "--methods", "random", "--plot", tmp_path / "p.png")), "--plot")


def test_bench_table_fits_80_columns_without_cutting_anything():
    kept = ["user_id", "item_id", "genres", "occupation"]
    res = [dict(method=m, kept=kept if m != "full" else [f"C{i}" for i in range(39)], auc=0.79123, auc_std=0.01234,
                logloss=0.52345, selection_seconds=1234.5, total_seconds=99999.9, params=987654,
                stability=0.8123 if m == "lightfmp" else None) for m in METHODS]
    doc = dict(backbone="deepfm", k=4, seeds=[0, 1, 2], quick=True, results=res,
               curves={"lightfmp": {"area": 0.77}, "lpfs": {"area": 0.76}})
    con = Console(width=80, record=True, file=open("/dev/null", "w"))
    con.print(results_table(doc))
    text = con.export_text()
    assert all(len(line.rstrip()) <= 80 for line in text.splitlines())
    assert "…" not in text
    for m in METHODS:
        assert f" {m} " in text and f"{m}: " in text
    assert "0.7912±0.0123" in text and "987,654" in text and "0.7700" in text and "39 fields" in text
    assert text.count("stability over the seeds") == 1 and "(stability over the seeds 0.81)" in text
    assert "user_id, item_id, genres, occupation" in text


def test_finished_run_removes_only_its_own_checkpoint_files(data, tmp_path, monkeypatch):
    """<out>.ckpt/ is lightfmp's only as far as its checkpoint files go: a file of the user's there survives."""
    out = tmp_path / "r"
    with monkeypatch.context() as m:
        interrupt_after_first_save(m)
        assert cli(*train_args(data, out, "--quiet")).exit_code == 130
    (tmp_path / "r.ckpt" / "notes.txt").write_text("mine")
    assert cli(*train_args(data, out, "--quiet")).exit_code == 0
    assert listing(tmp_path / "r.ckpt") == ["notes.txt"]


# ---- garbage data files: one line naming the file, nothing left behind --------------------------------------------

def _garbage(kind: str, d):
    import gzip
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    if kind == "random bytes":
        p = d / "blob.dat"
        p.write_bytes(noise)
    elif kind == "binary named .csv":
        p = d / "data.csv"
        p.write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + noise)
    elif kind == "truncated gzip":
        p = d / "data.csv.gz"
        whole = gzip.compress(b"a,b,label\n" + b"x,y,1\nz,w,0\n" * 3000)
        p.write_bytes(whole[:len(whole) // 2])
    else:  # a header that opens a quote and never closes it
        p = d / "data.csv"
        p.write_text('a,"b,label\n' + "x,y,1\nz,w,0\n" * 20)
    return p


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind, words", [("random bytes", ["not a CSV text file"]),
                                         ("binary named .csv", ["not a CSV text file"]),
                                         ("truncated gzip", ["cannot read"]),
                                         ("unclosed quote", ["quote", "never closed"])])
def test_garbage_data_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, kind, words, stream):
    src = tmp_path / "src"
    src.mkdir()
    p = _garbage(kind, src)
    out, shards = tmp_path / "out", tmp_path / "shards"
    r = cli("train", "--data", p, "--label", "label", "--out", out, "--shard-dir", shards, "--quiet",
            *(["--stream"] if stream else []))
    one_line_error(r, p, *words)
    assert listing(tmp_path) == ["src"] and listing(src) == [p.name]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("stream", [False, True])
def test_duplicate_column_names_are_refused_by_name(tmp_path, fmt, stream):
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols = [pa.array(["x", "y"] * 50), pa.array(["1", "2"] * 50), pa.array([0, 1] * 50)]
    table = pa.Table.from_arrays(cols, names=["city", "city", "label"])
    p = tmp_path / f"dup.{fmt}"
    if fmt == "csv":
        p.write_text("city,city,label\n" + "x,1,0\ny,2,1\n" * 50)
    else:
        pq.write_table(table, p)
    r = cli("train", "--data", p, "--label", "label", "--out", tmp_path / "out", "--shard-dir", tmp_path / "sh",
            "--quiet", *(["--stream"] if stream else []))
    one_line_error(r, p, "repeats column name", "'city'")
    assert listing(tmp_path) == [p.name]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("flags, words", [
    (["--multi-hot", "tags:|,tags:;"], ["--multi-hot", "column 'tags' is given twice", "'tags:|' and 'tags:;'"]),
    (["--hash-buckets", "a:8,noise:4,a:16"], ["--hash-buckets", "field 'a' is given twice (8 and 16 buckets)"]),
    (["--categorical", "a,label"], ["--categorical label", "is the label column (--label label)"]),
    (["--ignore", "label"], ["--ignore label", "is the label column (--label label)"]),
    (["--time-column", "label"], ["--time-column label", "is the label column (--label label)"]),
    (["--categorical", "a", "--numeric", "x,a"], ["column 'a' is named by both --categorical and --numeric"]),
    (["--ignore", "noise", "--multi-hot", "noise:;"], ["column 'noise' is named by both --multi-hot and --ignore"]),
])
def test_a_column_given_two_roles_or_settings_is_refused(data, tmp_path, flags, words, stream):
    r = cli("train", "--data", data, "--label", "label", "--out", tmp_path / "out", "--shard-dir", tmp_path / "sh",
            "--quiet", *flags, *(["--stream"] if stream else []))
    one_line_error(r, *words)
    assert listing(tmp_path) == []


def test_a_column_repeated_with_the_same_settings_is_taken(data, tmp_path):
    r = cli("run", "--data", data, "--label", "label", "--out", tmp_path / "r", "--no-select", "--multi-hot",
            "tags:|,tags", "--hash-buckets", "a:8,a:8", "--categorical", "a,a", *FAST, "--quiet")
    assert r.exit_code == 0, r.output
    schema = open_run(tmp_path / "r").schema
    assert schema.field("tags").separator == "|" and schema.field("a").hash_buckets == 8


# ---- --force replaces only a directory of the kind the command writes -------------------------------------------

def _fake_export(d):
    d.mkdir()
    (d / "feature_schema.json").write_text(json.dumps({"schema_version": 1, "model_file": "model.onnx"}))
    return d


def test_export_force_never_replaces_a_run(complete, pretrained, tmp_path):
    pytest.importorskip("onnx")
    b = tmp_path / "b"
    shutil.copytree(pretrained, b)
    before = listing(b)
    one_line_error(cli("export", complete, "--out", b, "--force"), b,
                   "is a lightfmp run, not an export; --force replaces only an export")
    assert listing(b) == before and open_run(b).state == "pretrained"


def test_train_force_never_replaces_an_export(data, tmp_path, monkeypatch):
    exp = _fake_export(tmp_path / "exp")
    monkeypatch.setattr(pipeline_mod, "load_data", stop)  # refused before any work
    for cmd in ("train", "run"):
        r = cli(cmd, "--data", data, "--label", "label", "--out", exp, "--force", "--quiet")
        one_line_error(r, exp, "is a lightfmp export, not a run; --force replaces only a run")
    assert listing(exp) == ["feature_schema.json"]


def test_shard_writer_never_replaces_a_run_or_an_export(tmp_path):
    from lightfmp.shards import ShardWriter
    for make in (lambda d: (d.mkdir(), (d / "run.json").write_text(json.dumps({"format": "lightfmp-run"}))),
                 _fake_export):
        d = tmp_path / "k"
        make(d)
        before = listing(d)
        with pytest.raises(LightFMPError, match="not a shard directory; --force replaces only a shard directory"):
            with ShardWriter(d, "k", 2):
                raise AssertionError("the block must not run")
        assert listing(d) == before
        shutil.rmtree(d)
    # a directory named by its key whose manifest went missing is still the writer's to replace
    d = tmp_path / "k"
    d.mkdir()
    (d / "000000.ids.npy").write_bytes(b"partial")
    with ShardWriter(d, "k", 2) as w:
        w.finish()
    assert listing(d) == [WRITTEN, "manifest.json"]


# ---- --plot / --json / --trace replace only an earlier output of their kind -------------------------------------

def _png(path: Path, software: str | None) -> None:
    """A PNG of one pixel, with a "Software" text chunk when given (what a chart of lightfmp's carries)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(0.1, 0.1))
    fig.savefig(path, format="png", metadata={"Software": software})
    plt.close(fig)


def test_output_file_guard(tmp_path):
    """--plot / --json / --trace replace an earlier output of lightfmp's (a PNG whose Software text says lightfmp, a
    JSON document whose written_by does, an ONNX Runtime trace) or an empty file, and nothing else: not an image or
    a JSON document of the user's."""
    from lightfmp.io import check_output_file, write_json_atomic
    png, trace, empty, text = (tmp_path / n for n in ("a.png", "t.json", "e.json", "data.csv"))
    theirs_png, theirs_js, list_js = (tmp_path / n for n in ("photo.png", "settings.json", "numbers.json"))
    _png(png, "lightfmp")
    _png(theirs_png, "GIMP")
    trace.write_text('[{"cat": "Session", "ph": "X", "name": "model_loading_uri"}]')
    empty.write_text("")
    (tmp_path / "e.png").write_text("")
    text.write_text("a,b,label\nx,y,1\n")
    theirs_js.write_text('{"my": "precious settings"}')
    list_js.write_text("[1, 2, 3]")
    for path, kind in ((png, "png"), (trace, "json"), (empty, "json"), (tmp_path / "e.png", "png"),
                       (tmp_path / "new.png", "png")):
        check_output_file(path, kind, "--flag")  # accepted
    for path, kind, words in ((text, "png", "not a PNG image lightfmp wrote"),
                              (text, "json", "not a JSON output of lightfmp's"),
                              (png, "json", "not a JSON output"), (trace, "png", "not a PNG image"),
                              (theirs_png, "png", "not a PNG image lightfmp wrote"),
                              (theirs_js, "json", "not a JSON output of lightfmp's"), (list_js, "json", "not a JSON"),
                              (tmp_path, "png", "is a directory"), (text / "x.png", "png", "is a file")):
        with pytest.raises(LightFMPError, match=words) as e:
            check_output_file(path, kind, "--flag")
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for path in (text, theirs_js):
        with pytest.raises(LightFMPError, match="not a JSON output"):
            write_json_atomic(path, {"a": 1}, flag="--json")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    for _ in range(2):  # a new file, then lightfmp's own is replaced
        write_json_atomic(tmp_path / "out.json", {"a": 1}, flag="--json")
        assert json.loads((tmp_path / "out.json").read_text()) == {"written_by": "lightfmp", "a": 1}


def test_inspect_redraws_a_chart_the_runs_record_lists_whoever_drew_it(pretrained, tmp_path):
    """RUN/gates.png is listed in the run's record: inspect redraws it even where an older lightfmp drew it without
    the Software text (the record, not the content, says whose it is)."""
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    assert cli("inspect", run, "-q").exit_code == 0
    _png(run / "gates.png", None)  # as a lightfmp before the Software text drew it
    r = cli("inspect", run, "-q")
    assert r.exit_code == 0, r.output
    from lightfmp.io import _is_our_png
    assert _is_our_png(run / "gates.png")


def test_output_kinds_are_recognised_without_reading_too_much_or_failing(tmp_path):
    """The checks of an existing output never raise: a PNG chunk claiming 4 GiB is skipped, not read; JSON nested
    beyond Python's recursion limit is not lightfmp's; an empty list or a trace of the user's (not ONNX Runtime's,
    which opens with its session's event) is not replaced."""
    from lightfmp.io import check_output_file
    huge, deep, empty, theirs, ort = (tmp_path / n for n in ("h.png", "deep.json", "e.json", "mine.json", "t.json"))
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + (0xFFFFFFFF).to_bytes(4, "big") + b"tEXt" + b"Software\0lightfmp")
    deep.write_text("[" * 100_000)
    empty.write_text("[]")
    theirs.write_text('[{"name": "step", "ph": "B", "ts": 1}]')
    ort.write_text('[{"cat": "Session", "name": "model_loading_uri", "ph": "X", "ts": 1}]')
    for path, kind in ((huge, "png"), (deep, "json"), (empty, "json"), (theirs, "json")):
        with pytest.raises(LightFMPError, match="exists and is not"):
            check_output_file(path, kind, "--flag")
    check_output_file(ort, "json", "--trace")


def test_sigterm_handling_leaves_a_callers_own_disposition(tmp_path):
    """A command installs its SIGTERM handler only over the default: a caller that ignores SIGTERM (`trap '' TERM`)
    or handles it keeps that while the command runs, and every disposition is restored afterwards."""
    import signal
    from lightfmp.cli.common import friendly
    seen = []

    @friendly
    def command():
        seen.append(signal.getsignal(signal.SIGTERM))

    mine = lambda *_: None  # noqa: E731
    before = signal.getsignal(signal.SIGTERM)
    try:
        for disposition in (signal.SIG_IGN, mine, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, disposition)
            command()
            assert signal.getsignal(signal.SIGTERM) is disposition
    finally:
        signal.signal(signal.SIGTERM, before)
    assert seen[:2] == [signal.SIG_IGN, mine] and seen[2] not in (signal.SIG_DFL, signal.SIG_IGN, mine)


def test_inspect_plot_never_replaces_the_data(pretrained, data, tmp_path):
    mine = tmp_path / "data.parquet"
    shutil.copyfile(data, mine)
    before = mine.read_bytes()
    one_line_error(cli("inspect", pretrained, "--plot", mine, "-q"), mine, "not a PNG image", "--plot")
    assert mine.read_bytes() == before
    one_line_error(cli("inspect", pretrained, "--plot", tmp_path, "-q"), tmp_path, "is a directory", "--plot")
    png = tmp_path / "g.png"
    for _ in range(2):  # a new path, then an earlier chart is replaced
        assert cli("inspect", pretrained, "--plot", png, "-q").exit_code == 0
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert listing(tmp_path) == ["data.parquet", "g.png"]


@pytest.mark.parametrize("name", ["gates.svg", "gates.PNG.pdf", "gates"])
def test_a_plot_path_not_ending_in_png_is_refused_before_any_work(pretrained, data, tmp_path, monkeypatch, name):
    target = tmp_path / name
    one_line_error(cli("inspect", pretrained, "--plot", target, "-q"), target, "writes a PNG image", ".png")
    one_line_error(cli("profile", tmp_path / "none.onnx", "--plot", target), target, "writes a PNG image", ".png")
    monkeypatch.setattr(bench_core, "load_dataset", stop)
    one_line_error(cli(*bench_args(data, "--plot", target)), target, "writes a PNG image", ".png")
    assert listing(tmp_path) == []
    assert cli("inspect", pretrained, "--plot", tmp_path / "upper.PNG", "-q").exit_code == 0  # any case of .png


def test_bench_json_and_plot_are_checked_before_any_work(data, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_core, "load_dataset", stop)
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    one_line_error(cli(*bench_args(data, "--json", mine)), mine, "not a JSON output", "--json")
    one_line_error(cli(*bench_args(data, "--plot", mine)), mine, "not a PNG image", "--plot")
    one_line_error(cli(*bench_args(data, "--json", tmp_path)), tmp_path, "is a directory", "--json")
    assert mine.read_text() == "mine" and listing(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("flag, words", [("--json", "not a JSON output"), ("--plot", "not a PNG image"),
                                         ("--trace", "not a JSON output")])
def test_profile_outputs_are_checked_before_any_work(tmp_path, flag, words):
    mine = tmp_path / "data.csv"
    mine.write_text("a,b\n1,2\n")
    # the model does not exist: the output paths are refused before it is even opened
    one_line_error(cli("profile", tmp_path / "none.onnx", flag, mine), mine, words, flag)
    one_line_error(cli("profile", tmp_path / "none.onnx", flag, tmp_path), tmp_path, "is a directory", flag)
    assert mine.read_text() == "a,b\n1,2\n"


def test_profile_plot_writer_never_replaces_another_file(tmp_path):
    from lightfmp import profiling
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    with pytest.raises(LightFMPError, match="not a PNG image"):
        profiling.plot([], mine)
    assert mine.read_text() == "mine" and listing(tmp_path) == ["notes.txt"]


# ---- data synth writes only where it wrote before ----------------------------------------------------------------

SYNTH = ["data", "synth", "--rows", "200", "--fields", "5", "--informative", "2"]


@pytest.mark.parametrize("name, content", [("data.parquet", "mine"), ("data.csv", "a,b\n"),
                                           ("truth.json", '{"informative": ["mine"]}')])
def test_data_synth_never_overwrites_the_users_files(tmp_path, name, content):
    d = tmp_path / "d"
    d.mkdir()
    (d / name).write_text(content)
    one_line_error(cli(*SYNTH, "--out", d), d, name, "not an earlier")
    assert listing(d) == [name] and (d / name).read_text() == content


def test_data_synth_replaces_its_own_output(tmp_path):
    d = tmp_path / "d"
    assert cli(*SYNTH, "--out", d, "--seed", "1").exit_code == 0
    first = (d / "truth.json").read_text()
    r = cli(*SYNTH, "--out", d, "--seed", "2", "--format", "csv")
    assert r.exit_code == 0, r.output
    # no temporary file left, and not the earlier data.parquet that the new truth.json does not describe
    assert listing(d) == ["data.csv", "truth.json"]
    assert json.loads((d / "truth.json").read_text())["data_file"] == "data.csv"
    assert json.loads((d / "truth.json").read_text())["seed"] == 2 and (d / "truth.json").read_text() != first
    f = tmp_path / "f"
    f.write_text("mine")
    one_line_error(cli(*SYNTH, "--out", f), f, "is a file")
    assert f.read_text() == "mine"


# ---- a Parquet data directory: what is read is what is hashed ----------------------------------------------------

def _parquet_dir(d):
    import pyarrow as pa
    import pyarrow.parquet as pq
    d.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"a": [f"x{i}", "y"] * 20, "label": [0, 1] * 20}), d / f"part-{i}.parquet")
    return d


def test_reader_and_data_hash_see_the_same_files(tmp_path):
    from lightfmp.formats import read_batches
    from lightfmp.io import data_files, file_sha256
    d = _parquet_dir(tmp_path / "pq")
    sha, rows = file_sha256(d), sum(len(df) for df, _ in read_batches(d, "parquet", 1000))
    (d / "_SUCCESS").write_text("")
    (d / ".part-0.parquet.crc").write_bytes(b"crc")
    (d / ".run.x.tmp").mkdir()  # a directory lightfmp is writing next to the parts
    (d / ".run.x.tmp" / "run.json").write_text("{}")
    assert [q.name for q in data_files(d)] == ["part-0.parquet", "part-1.parquet"]
    assert file_sha256(d) == sha and sum(len(df) for df, _ in read_batches(d, "parquet", 1000)) == rows
    shutil.copyfile(d / "part-0.parquet", d / "part-2.parquet")
    assert file_sha256(d) != sha and sum(len(df) for df, _ in read_batches(d, "parquet", 1000)) == rows * 3 // 2



def test_hive_partition_folders_are_columns_and_part_of_the_hash(tmp_path):
    """Parts in key=value folders (Spark / Hive partitioning) hold those values as text columns (kinds inferred
    from the text, as a CSV column's); renaming a folder changes the rows, so it changes the data hash; a plain
    directory hashes as before (its contents only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lightfmp.formats import read_batches
    from lightfmp.io import HIVE_NULL, file_sha256
    d = tmp_path / "hv"
    for country, dt, n in (("US", "2024-01-01", 3), ("FR", "2024-01-02", 2), ("a%2Fb", HIVE_NULL, 1)):
        (d / f"country={country}" / f"dt={dt}").mkdir(parents=True)
        pq.write_table(pa.table({"c": [f"{country}{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}),
                       d / f"country={country}" / f"dt={dt}" / "part-0.parquet")
    df = pd.concat([b for b, _ in read_batches(d, "parquet", 1000)], ignore_index=True)
    assert list(df.columns) == ["c", "label", "country", "dt"]
    got = {(r.c, r.country, r.dt if isinstance(r.dt, str) else None) for r in df.itertuples()}
    assert got == {("US0", "US", "2024-01-01"), ("US1", "US", "2024-01-01"), ("US2", "US", "2024-01-01"),
                   ("FR0", "FR", "2024-01-02"), ("FR1", "FR", "2024-01-02"), ("a%2Fb0", "a/b", None)}
    sha = file_sha256(d)
    (d / "country=FR").rename(d / "country=DE")
    assert file_sha256(d) != sha
    plain = _parquet_dir(tmp_path / "pq")
    assert file_sha256(plain) == hashlib.sha256(b"".join(q.read_bytes() for q in sorted(plain.glob("*")))).hexdigest()
    pq.write_table(pa.table({"c": ["x"], "country": ["US"], "label": [1]}), d / "country=US" / "dt=2024-01-01" /
                   "part-1.parquet")  # a folder's key that is also a column of the file: refused, not guessed
    with pytest.raises(LightFMPError, match="repeats column name"):
        list(read_batches(d, "parquet", 1000))

def test_a_non_parquet_file_in_a_data_directory_names_the_parquet_file_to_pass(tmp_path):
    """A `lightfmp data synth` folder holds truth.json beside data.parquet: `--data` given the folder reads every
    file as a part, and the one-line error names the file that is not Parquet and the data file to pass."""
    d = tmp_path / "syn"
    assert cli(*SYNTH, "--out", d).exit_code == 0
    line = one_line_error(cli("run", "--data", d, "--label", "label", "--out", tmp_path / "r", *FAST),
                          d / "truth.json", "cannot read Parquet", f"pass the data file itself ({d / 'data.parquet'})")
    assert not (tmp_path / "r").exists(), line
    parts = _parquet_dir(tmp_path / "parts")  # several parts: passing one would drop the others
    (parts / "README.txt").write_text("notes")
    one_line_error(cli("run", "--data", parts, "--label", "label", "--out", tmp_path / "r", *FAST),
                   parts / "README.txt", "move README.txt out, or start its name with '_' or '.'")
    (parts / "README.txt").rename(parts / "_README.txt")  # skipped, as said
    assert cli("run", "--data", parts, "--label", "label", "--categorical", "a", "--out", tmp_path / "r",
               "--no-select", *FAST, "--quiet").exit_code == 0


def test_an_output_apart_from_the_data():
    from lightfmp.io import check_apart
    check_apart("runs/a", "pq", "--data")
    check_apart("runs/a", None, "--data")
    for out, words in (("pq/run", "is inside --data pq"), ("pq", "is --data pq"), (".", "holds --data pq")):
        with pytest.raises(LightFMPError, match=words):
            check_apart(out, "pq", "--data")


def test_a_run_inside_its_parquet_data_directory_is_refused(tmp_path, monkeypatch):
    d = _parquet_dir(tmp_path / "pq")
    monkeypatch.setattr(pipeline_mod, "load_data", stop)
    one_line_error(cli("train", "--data", d, "--label", "label", "--out", d / "run", "--quiet"), "inside --data")
    assert listing(d) == ["part-0.parquet", "part-1.parquet"]



@pytest.mark.parametrize("extra", [["--no-select"], []])
def test_a_fit_whose_loss_stops_being_finite_stops_in_one_line(data, tmp_path, extra):
    """A learning rate that drives the loss to NaN finished the run (exit 0) with NaN weights and an AUC of NaN
    scores, or (with gates) failed later on NaN gates. Now: one line naming the rates, nothing published."""
    out = tmp_path / "r"
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, *FAST, "--lr", "1e30",
            "--quiet", *extra)
    one_line_error(r, "training diverged", "a smaller --lr")
    assert ("--gate-lr" in r.output) == (extra == []), r.output  # a run without gates is not told of their rates
    assert not out.exists()


def test_gates_that_stop_being_finite_in_an_epoch_stop_the_fit_in_one_line(data, tmp_path):
    """With --l0-lambda 1e39 the gates went to NaN in phase 1's second epoch while the weights' loss stayed finite:
    the run was published (exit 0) with that epoch's validation logloss null, instead of the promised error."""
    out = tmp_path / "r"
    r = cli("train", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, *FAST,
            "--l0-lambda", "1e39", "--quiet")
    one_line_error(r, "training diverged", "gates whose log_alpha is not finite", "--l0-lambda")
    assert not out.exists()

def test_no_command_writes_into_its_parquet_data_directory(tmp_path):
    """A file or folder written inside a Parquet data directory becomes a part of the data: the run's next step
    would find the data changed (or unreadable). inspect --plot, export --out, bench --json / --plot refuse it."""
    d = _parquet_dir(tmp_path / "pq")
    run = tmp_path / "r"
    assert cli("run", "--data", d, "--label", "label", "--categorical", "a", "--out", run, *FAST,
               "--quiet").exit_code == 0
    for args in (["inspect", run, "--plot", d / "gates.png"], ["export", run, "--out", d / "exp"],
                 ["bench", "--data", d, "--label", "label", "--k", "1", "--seeds", "0", "--methods", "random",
                  "--json", d / "b.json"],
                 ["bench", "--data", d, "--label", "label", "--k", "1", "--seeds", "0", "--methods", "random",
                  "--plot", d / "b.png"]):
        one_line_error(cli(*args), "is inside", "--data")
    assert listing(d) == ["part-0.parquet", "part-1.parquet"]


# ---- numeric options outside the config: one line naming the flag ------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["profile", "m.onnx", "--threads", "-1"], ["--threads -1", ">= 0"]),
    (["profile", "m.onnx", "--threads", "100000"], ["--threads 100000", "<= 1024"]),
    (["serve", "e", "--threads", "100000"], ["--threads 100000", "<= 1024"]),
    (["profile", "m.onnx", "--max-seconds", "nan"], ["--max-seconds nan", "finite"]),
    (["profile", "m.onnx", "--max-seconds", "0"], ["--max-seconds 0", "> 0"]),
    (["profile", "m.onnx", "--max-runs", "0"], ["--max-runs 0", ">= 1"]),
    (["profile", "m.onnx", "--batch-sizes", "1,100000000"], ["--batch-sizes", "<= 1,048,576"]),
    (SYNTH + ["--out", "never", "--seed", "-1"], ["--seed -1", ">= 0"]),
    (SYNTH + ["--out", "never", "--seed", str(2**70)], ["--seed", "<= 4294967295"]),
    (SYNTH + ["--out", "never", "--rows", "0"], ["--rows 0", ">= 1"]),
    (SYNTH + ["--out", "never", "--informative", "9"], ["--informative 9", "<= 5"]),
    (["train", "--data", "x.csv", "--out", "never", "--seed", "99999999999999999999"], ["--seed", "<= 4294967295"]),
])
def test_numeric_options_outside_their_range_are_one_line(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli(*args), *words)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("args, words", [
    (["run", "--epochs", "abc"], "--epochs 'abc': expected an integer"),
    (["run", "--lr", "x"], "--lr 'x': expected a number"),
    (["train", "--subset", "1e"], "--subset '1e': expected a number"),
    (["run", "--seed", "1.5"], "--seed '1.5': expected an integer"),
    (["run", "--epochs=3", "--epochs=zz"], "--epochs 'zz': expected an integer"),
    (["prune", "r", "--keep", "two"], "--keep 'two': expected an integer"),
    (["bench", "--k", "x"], "--k 'x': expected an integer"),
    (["export", "r", "--opset", "x"], "--opset 'x': expected an integer"),
    (["profile", "m.onnx", "--max-seconds", "soon"], "--max-seconds 'soon': expected a number"),
    (["serve", "e", "--port", "http"], "--port 'http': expected an integer"),
    (SYNTH + ["--out", "never", "--rows", "1e3"], "--rows '1e3': expected an integer"),
])
def test_a_value_that_is_not_a_number_is_one_line(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    assert one_line_error(cli(*args), words).startswith("error: ")
    assert listing(tmp_path) == []


def test_profile_help_gives_the_batch_size_bound():
    assert "1,048,576" in " ".join(_help(["profile"]).split())


# ---- rough edges --------------------------------------------------------------------------------------------------

def _model_config_class():
    """The part of Triton's ModelConfig message that config.pbtxt uses, so the text can be parsed as Triton does."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="model_config_subset.proto", package="mc", syntax="proto3")
    enum = fdp.enum_type.add(name="DataType")
    for i, n in enumerate(["TYPE_INVALID", "TYPE_INT64", "TYPE_FP32", "TYPE_STRING"]):
        enum.value.add(name=n, number=i)

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for i, (fname, ftype, repeated, tname) in enumerate(fields, 1):
            f = m.field.add(name=fname, number=i, type=ftype, label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if tname:
                f.type_name = tname
    message("Reshape", [("shape", F.TYPE_INT64, True, None)])
    message("Tensor", [("name", F.TYPE_STRING, False, None), ("data_type", F.TYPE_ENUM, False, ".mc.DataType"),
                       ("dims", F.TYPE_INT64, True, None), ("reshape", F.TYPE_MESSAGE, False, ".mc.Reshape")])
    message("Batching", [("max_queue_delay_microseconds", F.TYPE_UINT64, False, None)])
    message("ModelConfig", [("name", F.TYPE_STRING, False, None), ("platform", F.TYPE_STRING, False, None),
                            ("max_batch_size", F.TYPE_INT32, False, None),
                            ("input", F.TYPE_MESSAGE, True, ".mc.Tensor"), ("output", F.TYPE_MESSAGE, True, ".mc.Tensor"),
                            ("dynamic_batching", F.TYPE_MESSAGE, False, ".mc.Batching")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mc.ModelConfig"))


ODD_NAMES = ["new\nline", 'quote"s', "back\\slash", "tab\tand\rreturn", "bell\x07", "café ✓", "[/x]"]


def test_field_names_with_newlines_quotes_and_control_characters_give_a_valid_triton_config(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from google.protobuf import text_format
    rng = np.random.default_rng(0)
    n = 300
    cols = {name: pa.array([f"v{v}" for v in rng.integers(0, 4, n)]) for name in ODD_NAMES[:-1]}
    cols["label"] = pa.array(rng.integers(0, 2, n))
    pq.write_table(pa.table(cols), tmp_path / "odd.parquet")
    r = cli("run", "--data", tmp_path / "odd.parquet", "--label", "label", "--out", tmp_path / "run", "--no-select",
            "--epochs", "1", "--hidden", "8", "--embed-dim", "4", "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("export", tmp_path / "run", "--out", tmp_path / "exp", "--quiet")
    assert r.exit_code == 0, r.output
    pbtxt = next((tmp_path / "exp" / "triton").glob("*/config.pbtxt")).read_text()
    assert not any(ord(c) < 32 and c != "\n" for c in pbtxt)
    parsed = text_format.Parse(pbtxt, _model_config_class()())
    assert [t.name for t in parsed.input] == ODD_NAMES[:-1]
    assert [t.name for t in parsed.output] == ["probability"] and parsed.max_batch_size == 4096


def test_triton_config_escapes_every_odd_name():
    from google.protobuf import text_format
    from lightfmp.export.contract import InputSpec
    from lightfmp.export.exporter import triton_config
    specs = [InputSpec(name=n, kind="categorical", dtype="int64", shape=["batch"], vocab_size=3) for n in ODD_NAMES]
    parsed = text_format.Parse(triton_config('m"\n', specs, 8), _model_config_class()())
    assert parsed.name == 'm"\n' and [t.name for t in parsed.input] == ODD_NAMES


COMMANDS = [[], ["train"], ["run"], ["prune"], ["inspect"], ["demo"], ["data"], ["data", "synth"], ["data", "fetch"],
            ["export"], ["profile"], ["serve"], ["bench"]]


def _help(cmd):
    r = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert r.exit_code == 0, r.output
    return r.output


def test_every_command_is_in_the_help_checks():
    """The list above is every command, so a new one gets the checks below."""
    import typer.main
    group = typer.main.get_command(app)
    names = {(n,) for n in group.commands} | {("data", n) for n in group.commands["data"].commands}
    assert names <= {tuple(c) for c in COMMANDS}


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "lightfmp")
def test_help_shows_no_value_after_flags_and_no_braces(cmd):
    text = _help(cmd)
    for line in text.splitlines():
        assert "<bool>" not in line, line
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    if cmd in (["prune"], ["inspect"], ["export"]):
        assert usage.rstrip().endswith("RUN"), usage
    if cmd == ["profile"]:
        assert usage.rstrip().endswith("MODEL"), usage


def test_flags_still_take_no_value(pretrained):
    r = cli("inspect", pretrained, "--quiet")
    assert r.exit_code == 0 and r.output.strip() == "", r.output


@pytest.mark.parametrize("cmd, options", [
    (["demo"], ["--backbone", "--quiet", "--force"]),
    (["data", "synth"], ["--rows", "--fields", "--informative", "--out", "--seed", "--redundant", "--format"]),
    (["profile"], ["--batch-sizes", "--quiet"]),
    (["inspect"], ["--quiet"]),
    (["export"], ["--quiet"]),
])
def test_options_have_help_texts(cmd, options):
    import typer.main
    command = typer.main.get_command(app)
    for name in cmd:
        command = command.commands[name]
    for param in command.params:
        if set(param.opts) & set(options):
            assert (param.help or "").strip(), (cmd, param.opts)


def test_data_synth_prints_the_label_column(tmp_path):
    r = cli("data", "synth", "--rows", "200", "--fields", "5", "--informative", "2", "--out", tmp_path / "syn",
            "--format", "csv")
    assert r.exit_code == 0, r.output
    truth = json.loads((tmp_path / "syn" / "truth.json").read_text())
    assert f"label column '{truth['label']}'" in " ".join(r.output.split())
    assert truth["label"] in pd.read_csv(tmp_path / "syn" / "data.csv", nrows=1).columns


def test_export_records_the_run_name_not_a_path_of_this_machine(complete, tmp_path, monkeypatch):
    import onnx
    from lightfmp.export.contract import load_contract, locate_run
    out = tmp_path / "nested" / "exp"  # two levels down: no run folder sits beside the export's folder
    r = cli("export", complete, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    schema = json.loads((out / "feature_schema.json").read_text())
    assert schema["run_dir"] == complete.name
    here = str(complete.resolve().parent)
    for p in out.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".pbtxt"):
            assert here not in p.read_text(), p
    meta = {m.key: m.value for m in onnx.load(str(out / "model.onnx"), load_external_data=False).metadata_props}
    assert here not in json.dumps(meta)
    # the run is found again by its name: next to the export directory, else in the working directory
    assert load_contract(out).run_dir == complete.name
    assert locate_run(out, complete.name) == complete.name  # not next to tmp_path/exp
    beside = complete.parent / "exp_beside"
    assert cli("export", complete, "--out", beside, "--quiet").exit_code == 0
    assert locate_run(beside, load_contract(beside).run_dir) == str(complete)
    assert locate_run(out, "/old/absolute/run") == "/old/absolute/run"
    shutil.rmtree(beside)
    # runs/NAME and export/NAME side by side (the README's layout): the export itself is never taken for the run
    runs, exports = tmp_path / "lay" / "runs", tmp_path / "lay" / "export"
    runs.mkdir(parents=True)
    shutil.copytree(complete, runs / complete.name)
    assert cli("export", runs / complete.name, "--out", exports / complete.name, "--quiet").exit_code == 0
    assert locate_run(exports / complete.name, complete.name) == str(runs / complete.name)
    monkeypatch.chdir(exports)  # the export named from inside its folder: its folder is still export/
    for spelled in (complete.name, f"./{complete.name}"):
        assert locate_run(spelled, complete.name) == str(runs / complete.name)
    (tmp_path / "home").mkdir()  # the export reached through a link elsewhere: the run beside where it leads
    (tmp_path / "home" / "latest").symlink_to(exports / complete.name, target_is_directory=True)
    monkeypatch.chdir(tmp_path / "home")
    assert locate_run("latest", complete.name) == str(runs / complete.name)
    (tmp_path / "lay" / "more").mkdir()
    shutil.copytree(complete, tmp_path / "lay" / "more" / complete.name)  # two candidates: none is guessed
    with pytest.raises(LightFMPError, match=r"2 lightfmp runs of that name .*none is guessed"):
        locate_run(exports / complete.name, complete.name)


# ---- never a pickle -----------------------------------------------------------------------------------------------

def test_yaml_python_tags_are_refused_and_never_run(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("lr: !!python/object/apply:os.system ['touch PWNED']\n")
    r = cli(*train_args(data, tmp_path / "out", "--config", cfg))
    one_line_error(r, cfg, "not valid YAML")
    assert not (tmp_path / "PWNED").exists() and listing(tmp_path) == ["evil.yaml"]


@pytest.mark.parametrize("text, words", [
    ("epochs: 2\nlr: 0.1\nepochs: 3\n", ["'epochs' is given twice (lines 1 and 3)", "keep one"]),
    ("train:\n  lr: 0.1\n  batch-size: 8\n  lr: 0.2\n", ["'lr' is given twice (lines 2 and 4)"]),
])
def test_a_yaml_key_given_twice_is_refused(data, tmp_path, monkeypatch, text, words):
    monkeypatch.setattr(pipeline_mod, "load_data", stop)  # refused before any work
    cfg = tmp_path / "twice.yaml"
    cfg.write_text(text)
    one_line_error(cli(*train_args(data, tmp_path / "out", "--config", cfg)), cfg, *words)
    assert listing(tmp_path) == ["twice.yaml"]


def test_a_yaml_merge_may_still_be_overridden(tmp_path):
    from lightfmp.config import resolve
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("train:\n  <<: {lr: 0.1, epochs: 4}\n  lr: 0.3\n")
    got = resolve({}, str(cfg))
    assert got.train.lr == 0.3 and got.train.epochs == 4


@pytest.mark.parametrize("text, words", [
    ("categorical: {a: 1}\n", ["'categorical' must be a list of text items", "got a mapping {'a': 1}"]),
    ("model:\n  hidden: {x: 1}\n", ["'hidden' must be a list of integers", "got a mapping {'x': 1}"]),
    ("hidden: [8, [4]]\n", ["'hidden' must be a list of integers", "got the item [4], a list"]),
    ("label: [a, b]\n", ["'label' must be text", "got a list ['a', 'b']"]),
    ("positive: {click: 1}\n", ["'positive' must be text", "got a mapping"]),
    ("ignore: [noise, {x: 1}]\n", ["'ignore' must be a list of text items", "got the item {'x': 1}"]),
    ("split: {train: 0.8}\n", ["'split' must be a list of numbers", "got a mapping"]),
])
def test_a_yaml_value_of_the_wrong_shape_names_the_file_key_and_type(data, tmp_path, monkeypatch, text, words):
    monkeypatch.setattr(pipeline_mod, "load_data", stop)
    cfg = tmp_path / "shape.yaml"
    cfg.write_text(text)
    one_line_error(cli(*train_args(data, tmp_path / "out", "--config", cfg)), f"{cfg}: ", *words)
    assert listing(tmp_path) == ["shape.yaml"]


def test_a_yaml_list_is_still_taken_where_the_text_is_a_list(tmp_path):
    from lightfmp.config import resolve
    cfg = tmp_path / "lists.yaml"
    cfg.write_text("hash-buckets: [a:8, b:16]\ncategorical: [a, b]\nhidden: 8,4\n")
    got = resolve({}, str(cfg))
    assert got.data.hash_buckets == "a:8,b:16" and got.data.categorical == ["a", "b"] and got.model.hidden == [8, 4]


def test_no_loader_that_can_unpickle_in_the_source():
    """Weights are safetensors, tables .npy without object arrays, documents JSON / safe YAML: nothing in the
    package can load a pickle."""
    import re
    from pathlib import Path
    import lightfmp
    root = Path(lightfmp.__file__).parent.parent
    unsafe = re.compile(r"\bimport (c?pickle|dill|joblib|marshal|shelve)\b|torch\.load\(|yaml\.(unsafe_)?load\(|"
                        r"allow_pickle\s*=\s*True|yaml\.Loader\b|yaml\.UnsafeLoader\b")
    found = [f"{p}:{i}" for d in ("lightfmp", "cli", "kernels", "examples") for p in (root / d).rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not found, found


def test_json_outputs_never_replace_a_run_or_export_file(complete, tmp_path):
    """--json / --trace replace an earlier output or an empty file, never a JSON file of a run or an export (its
    contract); nor do they write a new file inside one (a bench's --json there was written, then refused at the
    end as a file of the run, after all the work; and a later --force deleted it); a --plot there only as
    inspect's chart of its own run."""
    from lightfmp.io import check_output_file
    before = (complete / "metrics.json").read_bytes()
    for name in ("metrics.json", "run.json"):
        with pytest.raises(LightFMPError, match=f"{name}: is inside a run lightfmp wrote .*replace whole"):
            check_output_file(complete / name, "json", "--json")
        with pytest.raises(LightFMPError, match=f"{name}: is a file of a run lightfmp wrote .*--json needs another"):
            check_output_file(complete / name, "json", "--json", own=complete)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "feature_schema.json").write_text(json.dumps({"schema_version": 1, "model_file": "model.onnx",
                                                         "inputs": []}))
    with pytest.raises(LightFMPError, match="an export lightfmp wrote.*--trace"):
        check_output_file(exp / "feature_schema.json", "json", "--trace")
    with pytest.raises(LightFMPError, match="profile.json: is inside a run lightfmp wrote"):
        check_output_file(complete / "profile.json", "json", "--json")
    with pytest.raises(LightFMPError, match="gates.png: is inside a run lightfmp wrote"):
        check_output_file(complete / "gates.png", "png", "--plot")
    check_output_file(complete / "gates.png", "png", "--plot", own=complete)  # inspect's chart of its own run
    assert (complete / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("flag, name", [("--json", "b.json"), ("--plot", "b.png")])
def test_a_bench_output_inside_a_run_is_refused_before_any_work(data, complete, tmp_path, monkeypatch, flag, name):
    """A bench --json into a run's folder ran every method, wrote the file, and was then refused at the end (the
    file it had written was by then a JSON file of the run)."""
    import lightfmp.cli.bench_cmds as bench_cmds
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    monkeypatch.setattr(bench_cmds, "run_bench", lambda *a, **k: pytest.fail("work started before the refusal"))
    r = cli("bench", "--data", data, "--label", "label", "--k", "2", "--methods", "lightfmp", flag, run / name)
    one_line_error(r, f"{run / name}: is inside a run lightfmp wrote ({run})", f"outside it for {flag}")
    assert not (run / name).exists()


def test_a_path_the_machine_refuses_is_one_line(tmp_path):
    """An OSError on a path (not a directory, no permission, read-only, full) ends like bad input: one line naming
    the path, exit 2."""
    home = tmp_path / "a_file"
    home.write_text("x")
    r = cli("data", "fetch", "movielens-100k", "--home", home)
    one_line_error(r, "a_file", "Not a directory")


def test_outputs_under_a_folder_that_is_not_writable_are_refused_first(data, tmp_path, monkeypatch):
    import lightfmp.io as io_mod
    real = io_mod.os.access
    monkeypatch.setattr(io_mod.os, "access",  # the os module itself: only the write check of "ro" fails
                        lambda p, mode: False if str(p) == str(tmp_path / "ro") and mode & io_mod.os.W_OK
                        else real(p, mode))
    (tmp_path / "ro").mkdir()
    r = cli(*train_args(data, tmp_path / "ro" / "sub" / "run"))
    one_line_error(r, "ro/sub/run", "is not writable")
    assert listing(tmp_path / "ro") == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_outputs_where_the_file_system_refuses_them_are_refused_first(data, complete, tmp_path):
    """/proc allows writing by its permission bits (to root) and still takes no new file: refused before any work,
    for a run, an export and a --json file alike."""
    one_line_error(cli(*train_args(data, "/proc/lightfmp-run")), "/proc/lightfmp-run", "/proc is not writable")
    one_line_error(cli("export", complete, "--out", "/proc/lightfmp-export"), "/proc is not writable")
    one_line_error(cli("profile", complete, "--json", "/proc/lightfmp.json"), "/proc is not writable")
    assert not Path("/proc/lightfmp-run.ckpt").exists()


@pytest.mark.parametrize("inner", ["run", "export", "synth"])
def test_an_output_inside_a_directory_lightfmp_wrote_is_refused(data, complete, tmp_path, inner):
    """A run, an export or synthetic data written inside a run (or an export) would block prune and --force on it,
    which replace that directory whole: refused before any work, and the run is left as it was."""
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    before = listing(run)
    where = run / "inner"
    args = {"run": train_args(data, where), "export": ["export", run, "--out", where],
            "synth": ["data", "synth", "--rows", "50", "--out", where]}[inner]
    one_line_error(cli(*args), "is inside a run lightfmp wrote", "choose a path outside it")
    assert listing(run) == before


def test_a_path_that_only_passes_through_a_run_is_outside_it(complete, tmp_path):
    """RUN/../beside is beside the run, not inside it ('..' is resolved before the check)."""
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    r = cli("data", "synth", "--rows", "50", "--out", run / ".." / "beside")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "beside" / "truth.json").is_file()


def test_a_run_already_inside_another_is_still_pruned(complete, pretrained, tmp_path):
    """A run that an older lightfmp left inside another run is rewritten in place as before: the check that an
    output lies outside lightfmp's directories is for new outputs, not for a prune's publication."""
    outer = tmp_path / "outer"
    shutil.copytree(complete, outer)
    shutil.copytree(pretrained, outer / "inner")
    r = cli("prune", outer / "inner", "--keep", "2", "--continue-epochs", "0", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((outer / "inner" / "run.json").read_text())["state"] == "complete"


def test_a_loaded_model_is_not_held_to_training_memory(complete, monkeypatch):
    """The memory check is for a new model about to train here; a model loaded from a run (export, profile) is
    bounded by its own files and loads on a machine too small to train it."""
    from lightfmp.models import build_model
    run = open_run(complete)
    monkeypatch.setattr(model_base.os, "sysconf", lambda name: 1)  # a machine of one byte
    model, _ = run.load_final()
    assert model.num_params() > 0
    with pytest.raises(LightFMPError, match="more than this machine's"):
        build_model(run.config.model.backbone, run.schema, run.config.model, trains_on="cpu")


def test_a_kind_inferred_wrongly_is_named_in_the_one_line_error(tmp_path):
    """The inferred-column report is printed after the fit pass; an error in that pass about a column whose kind was
    inferred from the first rows says so in its one line (a later 'unknown' in a column of numbers; 'n/a', a
    missing number's spelling, would read as missing)."""
    n = 400
    df = pd.DataFrame({"a": [f"v{i % 7}" for i in range(n)], "x": [str(i / 10) for i in range(n)],
                       "label": [i % 2 for i in range(n)]})
    df.loc[n - 5, "x"] = "unknown"
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    r = cli("train", "--data", path, "--label", "label", "--out", tmp_path / "r", "--stream", "--chunk-rows", "100",
            "--shard-dir", tmp_path / "shards")
    one_line_error(r, "'unknown'", "column 'x' was inferred numeric", "--categorical")


@pytest.mark.parametrize("command", [["prune"], ["inspect"], ["export"]])
def test_a_run_path_that_does_not_exist_is_said_so(tmp_path, command):
    extra = ["--out", str(tmp_path / "ex")] if command == ["export"] else []
    one_line_error(cli(*command, tmp_path / "nope", *extra), "nope: no such run directory")


def test_a_phase_1_smaller_than_one_batch_is_warned_about(tmp_path):
    """A tiny table still runs, but says that phase 1's subset is less than one batch (the gates cannot learn)."""
    data = write_csv(tmp_path, n=300)  # the validation rows still hold both classes, which the keep rule needs
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", tmp_path / "r",
            "--epochs", "1", "--pretrain-epochs", "1", "--hidden", "8", "--embed-dim", "4")
    assert r.exit_code == 0, r.output
    assert "warning: phase 1 trains on" in r.output and "fewer than one batch (--batch-size 512)" in r.output
    # --quiet silences progress and tables, not a warning that the result may not be what was asked for
    r = cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", tmp_path / "q",
            "--epochs", "1", "--pretrain-epochs", "1", "--hidden", "8", "--embed-dim", "4", "--quiet")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("warning: phase 1 trains on") and "epoch" not in r.output.split("\n", 1)[1], r.output


def test_a_warning_speaks_with_quiet_but_only_on_the_rank_that_speaks(capsys, monkeypatch):
    """Every torchrun rank would say the same warning: only the first does (the others' reporters are quiet)."""
    import lightfmp.distributed as dist
    for main, heard in ((True, True), (False, False)):
        monkeypatch.setattr(dist, "is_main", lambda: main)
        pipeline_mod._reporter(quiet=True).warn("the subset is small")
        assert ("warning: the subset is small" in capsys.readouterr().err) is heard


def test_a_damaged_marker_is_named_as_such(complete, tmp_path):
    """An export folder whose feature_schema.json no longer reads is not replaced by --force, and the message says
    the marker is there but is not one (not that it is missing)."""
    out = tmp_path / "ex"
    out.mkdir()
    (out / "feature_schema.json").write_text('{"schema_version": 1, "model_')
    one_line_error(cli("export", complete, "--out", out, "--force"),
                   "its feature_schema.json is not an export's marker")
    assert listing(out) == ["feature_schema.json"]


def test_prune_refuses_a_read_only_run(pretrained, tmp_path, monkeypatch):
    run = tmp_path / "pre"
    shutil.copytree(pretrained, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real = pipeline_mod.os.access
    monkeypatch.setattr(pipeline_mod.os, "access",  # the os module itself: only the write check of this run fails
                        lambda p, mode: False if str(p) == str(run) and mode & pipeline_mod.os.W_OK else real(p, mode))
    one_line_error(cli("prune", run, "--keep", "2"), "is read-only", "prune rewrites the run in place")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not any(p.name.startswith(".pre.") for p in tmp_path.iterdir())


def test_shards_inside_the_run_are_refused_before_any_work(data, complete, tmp_path):
    out = tmp_path / "run"
    for shard_dir in (out, out / "shards"):
        r = cli(*train_args(data, out, "--stream", "--shard-dir", shard_dir))
        one_line_error(r, "--shard-dir", "choose an output path")
        assert listing(tmp_path) == []
    before = listing(complete)
    for shard_dir in (complete, complete / "shards"):  # nor inside a finished run
        r = cli(*train_args(data, tmp_path / "other", "--stream", "--shard-dir", shard_dir))
        one_line_error(r, "a lightfmp run", "need a folder of their own")
    assert listing(complete) == before and listing(tmp_path) == []


def test_shards_inside_a_shard_directory_are_refused_before_any_work(data, tmp_path):
    """A --shard-dir inside another shard directory would be swept away when those shards are rebuilt."""
    home = tmp_path / "sh"
    assert cli(*train_args(data, tmp_path / "a", "--stream", "--shard-dir", home, "--quiet")).exit_code == 0
    key = next(p for p in home.iterdir() if (p / "manifest.json").is_file())
    before = listing(home)
    for shard_dir in (key, key / "inner"):
        r = cli(*train_args(data, tmp_path / "b", "--stream", "--shard-dir", shard_dir))
        one_line_error(r, "a lightfmp shard directory", "need a folder of their own")
    assert listing(home) == before and not (tmp_path / "b").exists()


def test_an_integer_beyond_what_torch_holds_is_one_line(data, tmp_path):
    """A size no tensor can have (`--embed-dim 10**23`) is refused by its range, naming the flag, before any work."""
    out = tmp_path / "r"
    one_line_error(cli(*train_args(data, out, "--quiet"), "--embed-dim", str(10**23)), "--embed-dim", "<=")
    assert not out.exists()


ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
             "allocate 49392000000000 bytes. Error code 12 (Cannot allocate memory)")


def test_running_out_of_memory_is_one_line_and_leaves_nothing(data, tmp_path, monkeypatch):
    """An allocation that fails (torch's CPU allocator, here at building the model) ends in one line saying how much
    was asked and which flags size it, exit 2, nothing at --out; any other RuntimeError stays a real error."""
    def alloc_fails(*a, **k):
        raise RuntimeError(ALLOCATOR)
    monkeypatch.setattr(pipeline_mod, "build_model", alloc_fails)
    out = tmp_path / "r"
    one_line_error(cli(*train_args(data, out, "--quiet")), "out of memory", "45,999.9 GiB", "--embed-dim")
    assert not out.exists()

    def bug(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(pipeline_mod, "build_model", bug)
    r = cli(*train_args(data, out, "--quiet"))
    assert r.exit_code != 0 and isinstance(r.exception, RuntimeError) and "shapes" in str(r.exception)


@pytest.mark.parametrize("flags, named", [(["--backbone", "dcnv2", "--cross-layers", str(10**9)], "--cross-layers"),
                                          (["--hidden", ",".join(["100000"] * 50)], "--hidden 100000,")])
def test_a_model_too_large_to_train_is_refused_before_its_layers_are_built(data, tmp_path, monkeypatch, flags, named):
    """Many small layers (a billion cross layers) would allocate one by one for minutes before memory ran out: the
    model's size is checked against the machine's memory before any layer is built."""
    built = []
    for module in (model_base, model_dcnv2):
        monkeypatch.setattr(module, "Linear", lambda *a, **k: built.append(a))
    out = tmp_path / "r"
    args = without_flag(train_args(data, out, "--quiet"), flags[0]) if flags[0] == "--hidden" else \
        train_args(data, out, "--quiet")
    one_line_error(cli(*args, *flags), named, "parameters", "GiB of memory")
    assert built == [] and not out.exists()


def test_what_an_out_of_memory_error_asked_for():
    from lightfmp.cli.common import out_of_memory
    assert out_of_memory(RuntimeError(ALLOCATOR)) == "an allocation of 45,999.9 GiB failed"
    assert out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total)")) \
        == "an allocation of 2.00 GiB failed"
    assert out_of_memory(MemoryError()) == "an allocation failed"
    assert out_of_memory(RuntimeError("expected scalar type Float")) is None


@pytest.mark.parametrize("flag, value", [("--hidden", "8,,4"), ("--categorical", "a,"), ("--split", "0.8,0.1,0.1,"),
                                         ("--numeric", ",x")])
def test_an_empty_item_in_a_comma_separated_list_is_refused(data, tmp_path, flag, value):
    """A doubled or trailing comma is a typo, not an item to drop silently: one line naming the flag and the text,
    before any work."""
    out = tmp_path / "r"
    args = train_args(data, out, "--quiet")
    one_line_error(cli(*(without_flag(args, flag) if flag in args else args), flag, value), flag, repr(value),
                   "empty item")
    assert not out.exists()


def test_an_empty_item_in_a_config_list_names_the_file(data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('hidden: "8,,4"\n')
    one_line_error(cli(*train_args(data, tmp_path / "r", "--quiet"), "--config", cfg), str(cfg), "'hidden'",
                   "empty item")


@pytest.mark.parametrize("args, words", [(["trian"], ["No such command 'trian'", "'train'"]),
                                         (["data", "fecth"], ["No such command 'fecth'"]),
                                         (["--bogus"], ["No such option: --bogus"])])
def test_a_mistyped_command_or_option_is_one_line(args, words):
    one_line_error(cli(*args), *words)


def test_a_group_without_a_command_still_shows_its_help():
    r = cli("data")
    assert "Usage" in r.output and "fetch" in r.output and "synth" in r.output


# ---- SIGTERM ends a command as Ctrl-C does: one line, its temporaries removed -----------------------------------

def test_sigterm_removes_the_half_written_file_and_exits_143(tmp_path):
    """`kill` / `timeout` / a stopped container send SIGTERM: the command stops where it is, says so in one line,
    exits 128 + 15, and its half-written temporary goes, as on Ctrl-C (a SIGKILL cannot be caught: the atomic
    rename still keeps a half-written file from ever taking the real name)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "synth"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "lightfmp", "data", "synth", "--rows", "20000000", "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))  # as a shell starts it
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(out.iterdir())):  # the temporary data file is being written
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["terminated: rerun the same command to start again"], stderr
    assert not out.exists()  # the folder it made goes too: nothing is left
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_while_a_finished_command_shuts_down_keeps_its_exit_code(tmp_path, sig):
    """A stop signal after the command's work (the file is in place) while the interpreter shuts down (torch's
    teardown takes a moment): the command's own exit code, no traceback (before: killed by the signal, or a
    KeyboardInterrupt traceback, over a finished file)."""
    import os
    import subprocess
    import sys
    out = tmp_path / "synth"
    code = ("import atexit, os, signal, sys\n"
            f"atexit.register(lambda: os.kill(os.getpid(), signal.{sig}))  # at shutdown, after the command\n"
            f"sys.argv = ['lightfmp', 'data', 'synth', '--rows', '300', '--out', {str(out)!r}]\n"
            "from lightfmp.cli.entry import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and (out / "data.parquet").is_file(), r.stderr


def _synth_stopped_while_torch_loads(tmp_path, sig: str, ignored: bool):
    """`lightfmp data synth` through the entry point, sent `sig` while torch is being imported (the parent having
    set it to be ignored, or not): (the finished process, its --out)."""
    import os
    import subprocess
    import sys
    out = tmp_path / "synth"
    # the parent's choice, whatever this test process inherited (a background job of a script starts with SIGINT
    # ignored): ignored, or the default a terminal's process starts with
    default = "signal.default_int_handler" if sig == "SIGINT" else "signal.SIG_DFL"
    code = ("import builtins, os, signal, sys\n"
            + f"signal.signal(signal.{sig}, {'signal.SIG_IGN' if ignored else default})\n"
            + "real = builtins.__import__\n"
            "def hook(name, *a, **k):\n"
            f"    if name == 'torch':\n        os.kill(os.getpid(), signal.{sig})\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hook\n"
            f"sys.argv = ['lightfmp', 'data', 'synth', '--rows', '300', '--out', {str(out)!r}]\n"
            "from lightfmp.cli.entry import main\nmain()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}), out


@pytest.mark.parametrize("sig,line,rc", [("SIGINT", "interrupted", 130), ("SIGTERM", "terminated", 143)])
def test_a_stop_while_the_commands_load_is_one_line(tmp_path, sig, line, rc):
    """Ctrl-C (or SIGTERM) in a command's first seconds, while torch loads: the one line and exit code of a stopped
    command, not a traceback through the imports (the entry point sets its handlers before the commands load)."""
    r, out = _synth_stopped_while_torch_loads(tmp_path, sig, ignored=False)
    assert r.returncode == rc, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"{line}: rerun the same command to start again"], r.stderr
    assert not out.exists()


@pytest.mark.parametrize("sig,line,rc", [("SIGINT", "interrupted", 130), ("SIGTERM", "terminated", 143)])
def test_a_stop_after_the_imports_before_the_command_starts_is_one_line(tmp_path, sig, line, rc):
    """A stop after the commands have loaded, while typer builds them and reads the arguments (a tenth of a second
    before the command starts): still the one line and exit code (before: no line at all, a traceback, or killed
    by SIGTERM's default)."""
    import os
    import subprocess
    import sys
    out = tmp_path / "synth"
    default = "signal.default_int_handler" if sig == "SIGINT" else "signal.SIG_DFL"
    code = ("import os, signal, sys\n"
            f"signal.signal(signal.{sig}, {default})\n"
            "from lightfmp.cli.entry import main\n"
            "import typer.main\n"
            "real = typer.main.get_command\n"
            "def hook(*a, **k):\n"
            f"    os.kill(os.getpid(), signal.{sig})\n"
            "    return real(*a, **k)\n"
            "typer.main.get_command = hook\n"
            f"sys.argv = ['lightfmp', 'data', 'synth', '--rows', '300', '--out', {str(out)!r}]\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == rc, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"{line}: rerun the same command to start again"], r.stderr
    assert not out.exists()


def test_import_lightfmp_loads_no_torch_and_each_exported_name_loads_on_use():
    import subprocess
    import sys
    code = ("import sys\nimport lightfmp\nassert 'torch' not in sys.modules, 'torch loaded'\n"
            "from lightfmp import RunConfig, run\n"
            "from lightfmp.config import RunConfig as R\nfrom lightfmp.pipeline import run as r\n"
            "assert RunConfig is R and run is r\n"
            "assert all(getattr(lightfmp, n) is not None for n in lightfmp.__all__)\n"
            "assert set(lightfmp.__all__) <= set(dir(lightfmp))\n"
            "from lightfmp import io\nassert io.__name__ == 'lightfmp.io'\n"
            "assert lightfmp.rundir.open_run and lightfmp.cache.cache_home  # submodules, as the package gave them\n"
            "try:\n    lightfmp.nothing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("outcome", ["done", "stopped", "terminated", "refused"])
def test_a_stopped_command_ends_with_its_line_and_no_interpreter_teardown(tmp_path, outcome):
    """A stopped command (130) ends right after its one line: after a stop inside an extension's import (triton's,
    in a command's first seconds) the interpreter's teardown printed tens of lines of leak reports (seen here: an
    exit handler never runs). A command that ends otherwise (done, refused) ends as any Python program does, so that
    a profiler or a host program around it still finishes its work."""
    import os
    import subprocess
    import sys
    out = tmp_path / "synth"
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
            "import lightfmp.cli.app as a\n")
    if outcome == "stopped":
        code += "def stop(**kw):\n    raise KeyboardInterrupt\na.synthesize = stop\n"
    elif outcome == "terminated":  # SIGTERM (143), as from a scheduler or `timeout`
        code += ("import os, signal, time\ndef stop(**kw):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
                 "    time.sleep(60)\na.synthesize = stop\n")
    rows = "0" if outcome == "refused" else "300"
    code += (f"sys.argv = ['lightfmp', 'data', 'synth', '--rows', {rows!r}, '--out', {str(out)!r}]\n"
             "from lightfmp.cli.entry import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if outcome == "done":
        assert r.returncode == 0 and (out / "data.parquet").is_file() and "wrote" in r.stdout, r.stderr
        assert r.stderr.strip() == "teardown ran", r.stderr
    elif outcome in ("stopped", "terminated"):
        word, code = ("interrupted", 130) if outcome == "stopped" else ("terminated", 143)
        assert r.returncode == code, (r.returncode, r.stderr)
        assert r.stderr.strip().splitlines() == [f"{word}: rerun the same command to start again"], r.stderr
        assert not out.exists()
    else:
        assert r.returncode == 2 and "--rows" in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1] == "teardown ran" and len(r.stderr.strip().splitlines()) == 2


def test_the_commands_called_in_a_python_process_end_in_system_exit_and_leave_its_signals_alone():
    """`lightfmp.cli.app.main` in a host program: SystemExit with the code, nothing ended or ignored behind it."""
    import signal
    import sys
    from lightfmp.cli.app import main
    before, handlers = sys.argv, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.argv = ["lightfmp", "--help"]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = before
    assert e.value.code in (0, None)
    assert {s: signal.getsignal(s) for s in handlers} == handlers


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_the_parent_ignores_stays_ignored_while_the_commands_load(tmp_path, sig):
    """A background job of a shell script starts with SIGINT ignored: the entry point's handlers go only where the
    signal was not ignored, so such a job runs on through the stop (as before), here to its end."""
    r, out = _synth_stopped_while_torch_loads(tmp_path, sig, ignored=True)
    assert r.returncode == 0 and (out / "data.parquet").is_file(), (r.returncode, r.stderr)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_between_the_checkpoint_files_waits_until_both_are_in_place(tmp_path, monkeypatch, sig):
    """Ctrl-C or SIGTERM arriving while a checkpoint's two files are renamed into place acts only once both are
    there: the new epoch's pair is whole and loads (before, a stop between them lost the previous epoch too)."""
    import os
    import signal
    import torch
    from lightfmp import io as io_mod
    from lightfmp.checkpoint import Checkpoint, TrainState
    from lightfmp.cli.common import Terminated, _on_sigterm
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    ck = Checkpoint(tmp_path / "r.ckpt", "pretrain", {"config": "x"})
    ck.dir.mkdir()
    ck.save(model, {"w": opt}, TrainState(epoch=1, history=[{"epoch": 1}]))
    real, calls = os.replace, []

    def replace_then_signal(a, b):
        real(a, b)
        calls.append(b)
        if len(calls) == 1:  # after the first of the two renames
            signal.raise_signal(getattr(signal, sig))

    # the handlers a command runs with (a shell's background job starts with SIGINT ignored: set them here)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    monkeypatch.setattr(io_mod.os, "replace", replace_then_signal)
    try:
        with pytest.raises(KeyboardInterrupt if sig == "SIGINT" else Terminated):
            ck.save(model, {"w": opt}, TrainState(epoch=2, history=[{"epoch": 1}, {"epoch": 2}]))
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        monkeypatch.undo()
    assert len(calls) == 2  # both renames happened before the stop
    state = Checkpoint(tmp_path / "r.ckpt", "pretrain", {"config": "x"}).load(model, {"w": opt})
    assert state is not None and state.epoch == 2


# ---- names as long as a file system takes ------------------------------------------------------------------------

def test_an_output_name_the_file_system_takes_is_published_and_a_longer_one_refused_first(data, tmp_path):
    """A 250-byte name is legal: its temporary (.NAME.XXXX.tmp) must be too. A 256-byte one is refused before any
    work, in one line, for a directory and for a --plot / --json file alike."""
    legal = tmp_path / ("x" * 250)
    with atomic_dir(legal, kind="run") as tmp:
        (tmp / "run.json").write_text("{}")
    assert legal.is_dir() and listing(tmp_path) == [legal.name]
    too_long = tmp_path / ("y" * 256)
    one_line_error(cli(*run_args(data, too_long)), "256 bytes", "255")
    one_line_error(cli("profile", tmp_path / "none.onnx", "--json", tmp_path / ("z" * 251 + ".json")), "256 bytes")
    one_line_error(cli("data", "synth", "--rows", "10", "--out", tmp_path / ("s" * 256)), "256 bytes")
    one_line_error(cli("data", "fetch", "kddcup04-bio", "--home", tmp_path / ("h" * 256)), "256 bytes")
    assert listing(tmp_path) == [legal.name]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_shard_folder_where_no_folder_can_be_made_is_one_line(data, tmp_path):
    """/proc takes no new folder (ENOENT, not a permission error): one line naming it, and no run left."""
    out = tmp_path / "r"
    one_line_error(cli(*run_args(data, out, "--stream", "--shard-dir", "/proc/lightfmp-shards")),
                   "/proc/lightfmp-shards: cannot create this folder")
    assert listing(tmp_path) == []


# ---- Parquet columns of types other than text and numbers: inferred, not a traceback ------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_parquet_dates_times_bytes_and_decimals_get_a_kind(tmp_path, stream):
    """Dates, times and bytes are categories (their values told apart); decimals are numbers."""
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    n = 400
    a = rng.integers(0, 6, n)
    day = datetime.date(2024, 1, 1)
    pq.write_table(pa.table({
        "a": pa.array([f"a{v}" for v in a]), "label": pa.array((rng.random(n) < (a + 1) / 8).astype(int)),
        "day": pa.array([day + datetime.timedelta(days=int(v)) for v in rng.integers(0, 20, n)], pa.date32()),
        "at": pa.array([datetime.time(int(h)) for h in rng.integers(0, 24, n)], pa.time64("us")),
        "raw": pa.array([bytes([int(v)]) for v in rng.integers(65, 70, n)], pa.binary()),
        "price": pa.array([decimal.Decimal(f"{v:.2f}") for v in rng.normal(5, 2, n)], pa.decimal128(6, 2))}),
        tmp_path / "t.parquet")
    res = cli("train", "--data", tmp_path / "t.parquet", "--label", "label", "--out", tmp_path / "r", "--quiet",
              "--shard-dir", tmp_path / "shards", *(["--stream"] if stream else []), *FAST)
    assert res.exit_code == 0, res.output
    kinds = {f["name"]: f["kind"] for f in json.loads((tmp_path / "r" / "schema.json").read_text())["fields"]}
    assert kinds == {"a": "categorical", "day": "categorical", "at": "categorical", "raw": "categorical",
                     "price": "numeric"}


@pytest.mark.parametrize("where", ["checkpoint", "run"])
def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch, where):
    """safetensors reports a full disk as its own error ('... (os error 28)'): told as the OS error it is, one line
    naming where it could not write, nothing left at --out."""
    from safetensors import SafetensorError
    import lightfmp.rundir as rundir_mod

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(checkpoint_mod if where == "checkpoint" else rundir_mod, "save_file", full)
    data = write_csv(tmp_path, n=300)
    res = cli("train", "--data", data, "--label", "label", "--out", tmp_path / "r", "--quiet", *FAST)
    one_line_error(res, "No space left on device", tmp_path)
    assert not (tmp_path / "r").exists()


def test_a_short_write_of_the_scratch_codes_is_a_full_disk(tmp_path):
    from lightfmp.io import os_errors_of
    with pytest.raises(OSError) as e:
        with os_errors_of(tmp_path / "x"):
            raise OSError("3000 requested and 1008 written")
    assert e.value.errno == 28 and e.value.filename == str(tmp_path / "x")
    with pytest.raises(OSError) as e:  # pyarrow's: an errno, no file
        with os_errors_of(tmp_path / "y"):
            raise OSError(28, "No space left on device")
    assert e.value.errno == 28 and e.value.filename == str(tmp_path / "y")
    with pytest.raises(OSError) as e:  # an error that names its file already is left as it is
        with os_errors_of(tmp_path / "y"):
            open(tmp_path / "nope" / "z")
    assert e.value.filename == str(tmp_path / "nope" / "z")


def test_a_named_pipe_as_data_is_refused_before_it_is_opened(tmp_path):
    """A pipe can be read once; the data is read more than once (hash, fit, encode): refused in one line, without
    opening it (which would wait for a writer)."""
    import os
    os.mkfifo(tmp_path / "d.csv")
    one_line_error(cli("train", "--data", tmp_path / "d.csv", "--label", "label", "--out", tmp_path / "r", "--quiet"),
                   "d.csv: not a regular file")
    assert not (tmp_path / "r").exists()

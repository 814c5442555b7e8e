"""Attempts to make --force, the record of what lightfmp wrote, the one-line flag errors and the config checks lose
a user's file or print more than one line."""
import json
import shutil

import pytest

import lightfmp.io as io_mod
import lightfmp.pipeline as pipeline_mod
from lightfmp.errors import LightFMPError
from lightfmp.io import WRITTEN, atomic_dir, check_out
from lightfmp.rundir import open_run

from helpers import cli, one_line_error, write_csv

FAST = ["--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "128", "--hidden", "8", "--embed-dim", "4"]
PNG = b"\x89PNG\r\n\x1a\n" + b"the user's own chart"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("d"), n=600)


@pytest.fixture(scope="module")
def complete(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    r = cli("run", "--data", data, "--label", "label", "--out", out, "--subset", "0.5", "--keep", "3", *FAST,
            "--quiet")
    assert r.exit_code == 0, r.output
    return out


def listing(d):
    return sorted(p.name for p in d.iterdir())


def stop(*a, **k):
    raise AssertionError("work started before the refusal")


def a_run(d):
    """A small directory lightfmp wrote as a run, with a subfolder (as an export has vocab/ and triton/)."""
    with atomic_dir(d, kind="run") as tmp:
        (tmp / "run.json").write_text(json.dumps({"format": "lightfmp-run"}))
        (tmp / "vocab").mkdir()
        (tmp / "vocab" / "a.json").write_text("{}")
    return d


def test_force_keeps_a_file_of_the_users_inside_a_subfolder(tmp_path):
    d = a_run(tmp_path / "r")
    (d / "vocab" / "notes.txt").write_text("mine")
    with pytest.raises(LightFMPError, match="holds vocab/notes.txt, which lightfmp did not write") as e:
        with atomic_dir(d, force=True, kind="run"):
            raise AssertionError("the block must not run")
    assert "\n" not in str(e.value) and (d / "vocab" / "notes.txt").read_text() == "mine"
    (d / "vocab" / "notes.txt").unlink()
    with atomic_dir(d, force=True, kind="run") as tmp:  # lightfmp's own subfolder is replaced as before
        (tmp / "run.json").write_text(json.dumps({"format": "lightfmp-run", "n": 2}))
    assert listing(d) == [WRITTEN, "run.json"]


def test_export_force_keeps_a_second_model_in_the_triton_repository(complete, tmp_path):
    pytest.importorskip("onnx")
    exp = tmp_path / "exp"
    assert cli("export", complete, "--out", exp, "--quiet").exit_code == 0
    (exp / "triton" / "my_model").mkdir()
    (exp / "triton" / "my_model" / "config.pbtxt").write_text("mine")
    (exp / "vocab" / "NOTES.md").write_text("mine too")
    one_line_error(cli("export", complete, "--out", exp, "--force"), exp,
                   "holds triton/my_model, which lightfmp did not write")
    assert (exp / "triton" / "my_model" / "config.pbtxt").read_text() == "mine"
    assert (exp / "vocab" / "NOTES.md").read_text() == "mine too"
    shutil.rmtree(exp / "triton" / "my_model")
    (exp / "vocab" / "NOTES.md").unlink()
    r = cli("export", complete, "--out", exp, "--force", "--quiet")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("name, kind", [(".backup.tmp", "folder"), (".notes.tmp", "file"), (".backup.v2.tmp", "file"),
                                        # named exactly as a temporary, but a folder or a link is never one
                                        (".backup.20240101.tmp", "folder"), (".backup.20240101.tmp", "link")])
def test_force_keeps_a_hidden_entry_of_the_users_named_like_a_temporary(tmp_path, name, kind):
    d = a_run(tmp_path / "r")
    target = tmp_path / "mine.txt"
    target.write_text("precious")
    if kind == "folder":
        (d / name).mkdir()
        (d / name / "model.safetensors").write_text("precious")
    elif kind == "link":
        (d / name).symlink_to(target)
    else:
        (d / name).write_text("precious")
    with pytest.raises(LightFMPError, match=f"holds {name}, which lightfmp did not write"):
        check_out(d, force=True)
    assert (d / name).exists()
    assert (d / name / "model.safetensors" if kind == "folder" else d / name).read_text() == "precious"
    # a killed write's temporary file stays lightfmp's
    shutil.rmtree(d / name) if kind == "folder" else (d / name).unlink()
    (d / ".run.json.x1y2abcd.tmp").write_text("half")
    check_out(d, force=True)


def test_inspect_never_overwrites_a_png_of_the_users_in_the_run(complete, tmp_path):
    run = tmp_path / "a"
    shutil.copytree(complete, run)
    (run / "gates.png").unlink(missing_ok=True)
    (run / "gates.png").write_bytes(PNG)  # the user's own chart, under the name inspect uses
    one_line_error(cli("inspect", run, "--quiet"), run / "gates.png", "lightfmp did not write")
    assert (run / "gates.png").read_bytes() == PNG
    # another run's chart is no place for this run's: refused as inside a directory lightfmp wrote
    one_line_error(cli("inspect", complete, "--quiet", "--plot", run / "gates.png"), f"{run / 'gates.png'}: is "
                   f"inside a run lightfmp wrote ({run})")
    assert (run / "gates.png").read_bytes() == PNG
    # lightfmp's own chart is replaced as before
    (run / "gates.png").unlink()
    assert cli("inspect", run, "--quiet").exit_code == 0
    assert cli("inspect", run, "--quiet").exit_code == 0


def test_a_file_of_the_users_made_at_an_output_path_while_the_command_ran_is_kept(tmp_path):
    """--json / --plot are checked before the work and again before the rename: a file the user saved there in
    between (not a JSON of lightfmp's) is not replaced."""
    out = tmp_path / "bench.json"
    with pytest.raises(LightFMPError, match="exists and is not"):
        with io_mod.atomic_path(out, "json", "--json") as tmp:
            tmp.write_text("{}")
            out.write_text("my notes")
    assert out.read_text() == "my notes" and listing(tmp_path) == ["bench.json"]


@pytest.mark.parametrize("swap", [True, False])  # one step (renameat2), or two renames where the system has none
def test_a_file_put_in_between_the_last_check_and_the_move_is_kept(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(io_mod, "exchange", lambda a, b: False)
    d = a_run(tmp_path / "r")
    real, calls = io_mod.check_out, []

    def check_then_user_writes(path, *a, **k):
        real(path, *a, **k)
        calls.append(path)
        if len(calls) == 2:  # the check just before the rename passed; the user saves a file right then
            (d / "late.txt").write_text("mine")
    monkeypatch.setattr(io_mod, "check_out", check_then_user_writes)
    with pytest.raises(LightFMPError, match="holds late.txt, which lightfmp did not write"):
        with atomic_dir(d, force=True, kind="run") as tmp:
            (tmp / "run.json").write_text(json.dumps({"format": "lightfmp-run", "n": 2}))
    assert (d / "late.txt").read_text() == "mine"
    assert json.loads((d / "run.json").read_text()) == {"format": "lightfmp-run"}  # the old run, in its place
    assert listing(tmp_path) == ["r"]  # no temporary left beside it


@pytest.mark.parametrize("swap", [True, False])  # one step (renameat2), or two renames where the system has none
def test_the_replaced_directory_left_by_a_kill_is_removed_by_the_next_write_beside_it(tmp_path, swap):
    """A kill after the new directory took the old one's place and before the old one was removed left a whole copy
    of the old run under a temporary name for good: it is claimed while it is removed, so the next directory
    written beside it takes it (as it takes a killed writer's temporary)."""
    import subprocess
    import sys
    d = a_run(tmp_path / "r")
    code = ("import json, os, sys\nimport lightfmp.io as io\nfrom pathlib import Path\n"
            f"{'' if swap else 'io.exchange = lambda a, b: False'}\n"
            "io.remove_tree = lambda path: os._exit(9)  # killed as the old directory was to go\n"
            "with io.atomic_dir(Path(sys.argv[1]), force=True, kind='run') as tmp:\n"
            "    (tmp / 'run.json').write_text(json.dumps({'format': 'lightfmp-run', 'n': 2}))\n")
    assert subprocess.run([sys.executable, "-c", code, str(d)]).returncode == 9
    assert json.loads((d / "run.json").read_text())["n"] == 2  # the new run is in place
    left = [n for n in listing(tmp_path) if n != "r"]
    assert len(left) == 1 and (tmp_path / left[0] / "vocab" / "a.json").exists()  # the old one, whole
    a_run(tmp_path / "other")
    assert listing(tmp_path) == ["other", "r"]


def test_a_stop_between_the_two_renames_keeps_the_old_directory(tmp_path, monkeypatch):
    """Where the system has no one-step swap, the old directory is moved aside and the new one moved in: a stop
    between the two leaves no directory at the name, and the old one must then stay (unclaimed: the next write
    beside it does not take it), not be removed as a replaced directory would be."""
    d = a_run(tmp_path / "r")
    monkeypatch.setattr(io_mod, "exchange", lambda a, b: False)
    real = io_mod.os.replace

    def stop_before_the_new_one_moves_in(src, dst):
        if str(dst) == str(d) and not d.exists():
            raise KeyboardInterrupt
        real(src, dst)
    monkeypatch.setattr(io_mod.os, "replace", stop_before_the_new_one_moves_in)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(d, force=True, kind="run") as tmp:
            (tmp / "run.json").write_text(json.dumps({"format": "lightfmp-run", "n": 2}))
    monkeypatch.setattr(io_mod.os, "replace", real)
    a_run(tmp_path / "other")
    left = [n for n in listing(tmp_path) if n not in ("other", "r")]
    assert len(left) == 1 and json.loads((tmp_path / left[0] / "run.json").read_text()) == {"format": "lightfmp-run"}


@pytest.mark.parametrize("args, words", [
    (["prune"], ["Missing argument", "RUN"]),
    (["inspect"], ["Missing argument", "RUN"]),
    (["data", "synth"], ["Missing option", "--out"]),
    (["export", "r"], ["--out"]),
])
def test_a_missing_argument_is_named_in_one_line(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(cli(*args), *words)
    assert not line.rstrip().endswith(":"), line
    assert listing(tmp_path) == []


@pytest.mark.parametrize("args, words", [
    (["train", "--force=1"], ["--force", "does not take a value"]),
    (["run", "--select=yes"], ["--select", "does not take a value"]),
    (["prune", "r", "--closing-test=no"], ["--closing-test", "does not take a value"]),
    (["inspect", "r", "--quiet=1"], ["--quiet", "does not take a value"]),
    (["train", "--epochs"], ["--epochs", "requires an argument"]),
    (["train", "--epoch", "3"], ["--epoch"]),
])
def test_a_flag_used_wrongly_is_one_line(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli(*args), *words)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("text, key, what", [
    ("epochs:\n", "epochs", "int"),
    ("train:\n  epochs: ~\n", "epochs", "int"),
    ("backbone: null\n", "backbone", "text"),
    ("hidden:\n", "hidden", "a list of integers"),
    ("device:\n", "device", "text"),
])
def test_a_yaml_key_left_empty_names_the_file_and_key(data, tmp_path, monkeypatch, text, key, what):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    monkeypatch.setattr(pipeline_mod, "load_data", stop)
    line = one_line_error(cli("run", "--data", data, "--label", "label", "--out", tmp_path / "o", "--config", cfg,
                              *FAST), cfg, f"'{key}'", what)
    assert "None" not in line, line
    assert not (tmp_path / "o").exists()


def test_a_runs_own_config_with_its_nulls_is_taken_back(complete, data, tmp_path):
    assert "null" in (complete / "config.yaml").read_text()  # optional keys left unset
    r = cli("run", "--config", complete / "config.yaml", "--out", tmp_path / "again", "--quiet")
    assert r.exit_code == 0, r.output
    assert open_run(tmp_path / "again").config == open_run(complete).config


def test_a_text_list_left_empty_in_yaml_is_none(tmp_path):
    """`categorical: null` (how older runs wrote an unset list) still reads as none given."""
    from lightfmp.config import RunConfig
    cfg = RunConfig.from_dict({"categorical": None, "data": {"ignore": None}}, "c.yaml")
    assert cfg.data.categorical == [] and cfg.data.ignore == []


def test_data_synth_keeps_the_users_own_file_of_the_other_format(tmp_path):
    d = tmp_path / "syn"
    synth = ["data", "synth", "--rows", "200", "--fields", "3", "--informative", "1", "--out", d]
    assert cli(*synth, "--format", "csv").exit_code == 0
    (d / "data.parquet").write_bytes(b"PAR1 the user's own copy of the data PAR1")
    for fmt in ("csv", "parquet"):  # the new output would delete it, or write over it
        one_line_error(cli(*synth, "--format", fmt, "--seed", "1"), "holds data.parquet", "truth.json")
        assert (d / "data.parquet").read_bytes() == b"PAR1 the user's own copy of the data PAR1"
    (d / "data.parquet").unlink()
    for fmt in ("parquet", "csv"):  # its own earlier output of the other format still goes
        assert cli(*synth, "--format", fmt, "--seed", "2").exit_code == 0
        assert listing(d) == [f"data.{fmt}", "truth.json"]


@pytest.mark.parametrize("args, words", [
    (["--label", "la\nbel"], ["--label", "la\\nbel", "is not one of its columns"]),
    (["--label", "label", "--categorical", "a\nx"], ["a\\nx"]),
    (["--label", "label", "--config", "no\nfile.yaml"], ["no\\nfile.yaml", "not found"]),
])
def test_a_line_break_in_a_value_keeps_the_error_on_one_line(data, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("train", "--data", data, "--out", "o", *args, *FAST), *words)
    assert listing(tmp_path) == []


def test_a_shard_directory_refusal_does_not_speak_of_force(tmp_path):
    """The shard cache is rebuilt without --force: its refusal says what happens instead."""
    from lightfmp.shards import ShardWriter
    d = tmp_path / "k"
    with ShardWriter(d, "k", 2) as w:
        w.finish()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(LightFMPError, match="holds notes.txt, which lightfmp did not write") as e:
        with ShardWriter(d, "k", 2):
            raise AssertionError("the block must not run")
    assert "--force" not in str(e.value) and "rebuilt" in str(e.value)
    assert (d / "notes.txt").read_text() == "mine"


def test_a_json_file_is_replaced_whole_never_rewritten_in_place(tmp_path):
    """A JSON output is written beside its path and renamed over it: a reader that opened the earlier file reads
    that document whole (never the new one, or a mix), the path then holds the new one, and no temporary is
    left."""
    out = tmp_path / "out.json"
    io_mod.write_json_atomic(out, {"v": "old " * 1000})
    with open(out) as reader:
        io_mod.write_json_atomic(out, {"v": "new"})
        assert json.loads(reader.read()) == {"v": "old " * 1000}
    assert json.loads(out.read_text()) == {"v": "new"} and listing(tmp_path) == ["out.json"]

"""The CLI layer (cli/): decisions a mutation audit found no other test pinned."""
import errno

import pytest

from helpers import cli, one_line_error, write_csv

FAST = ["--pretrain-epochs", "2", "--epochs", "1", "--batch-size", "128", "--hidden", "8", "--embed-dim", "4",
        "--quiet"]


@pytest.mark.parametrize("flag, a, b", [("--batch-sizes", "1", "8"), ("--clients", "1", "2")])
def test_profiles_own_list_flags_given_twice_are_refused(tmp_path, flag, a, b):
    """--batch-sizes 1 --batch-sizes 8 timed batch 8 alone, quietly: a list flag is one flag (COMMA_LISTS)."""
    extra = ["--url", "http://127.0.0.1:9"] if flag == "--clients" else []
    one_line_error(cli("profile", tmp_path / "m.onnx", *extra, flag, a, flag, b),
                   f"{flag} is given 2 times; give it once")


def test_a_write_inside_a_temporary_folder_is_told_as_the_folder_the_user_named():
    """The outermost lightfmp temporary (.name.xxxx.tmp) names the error: its parent, the folder given."""
    from lightfmp.cli.common import path_error
    e = OSError(errno.ENOSPC, "No space left on device", "/data/runs/.r.ab12.tmp/.metrics.json.cd34.tmp")
    assert path_error(e) == "/data/runs: No space left on device: cannot write there"
    e = OSError(errno.EACCES, "Permission denied", "/data/runs/x.csv")
    assert path_error(e) == "/data/runs/x.csv: Permission denied"


def test_out_of_memory_is_recognised_in_any_case():
    from lightfmp.cli.common import out_of_memory
    assert out_of_memory(RuntimeError("HIP error: Out Of Memory")) == "an allocation failed"


def test_a_flag_that_replaces_the_config_files_value_is_not_blamed_on_the_file(data_csv, tmp_path):
    """The file set --numeric and so did the command line: the error names the flag, not the file."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data_csv}\nlabel: label\nnumeric: x\n")
    line = one_line_error(cli("train", "--config", cfg, "--numeric", "nosuch", "--out", tmp_path / "r", *FAST),
                          "named by --numeric is absent")
    assert str(cfg) not in line, line


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("d"), n=300)


def test_an_error_the_config_file_already_names_is_not_told_twice(tmp_path):
    """`c.yaml: --batch-size 0: must be >= 1` names the file itself: no '(--batch-size from c.yaml)' after it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {tmp_path / 'absent.csv'}\nlabel: label\nbatch_size: 0\n")
    line = one_line_error(cli("run", "--config", cfg, "--out", tmp_path / "r"), f"{cfg}: --batch-size 0: must be >= 1")
    assert line.endswith("must be >= 1"), line


def test_a_flag_inside_a_longer_flag_is_not_said_to_come_from_the_file(tmp_path):
    """The file sets --seed (0, which bench takes); the refusal names bench's --seeds: not '(--seed from FILE)'."""
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    df = pd.DataFrame({f: rng.choice(list("xyz"), 40) for f in "abc"})
    df["label"] = 0
    df.loc[[3, 17], "label"] = 1
    df.to_csv(tmp_path / "tiny.csv", index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {tmp_path / 'tiny.csv'}\nlabel: label\nseed: 0\n")
    line = one_line_error(cli("bench", "--config", cfg, "--k", "2", "--seeds", "0,1,2", "--methods", "full",
                              "--embed-dim", "4", "--hidden", "8", "--epochs", "1", "--batch-size", "64", "--quiet"),
                          "rows of one label only")
    assert f"from {cfg}" not in line, line


@pytest.mark.parametrize("cmd", ["train", "run"])
def test_a_training_command_without_out_names_the_flag(tmp_path, cmd):
    one_line_error(cli(cmd, "--data", tmp_path / "absent.csv", "--label", "label"),
                   "missing --out RUN (the run directory to create)")


def test_a_later_command_in_the_same_process_is_not_blamed_on_an_earlier_commands_config(data_csv, tmp_path):
    """Each command forgets the --config of the one before (the Python API, a notebook, CliRunner)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data_csv}\nlabel: clicked\n")
    one_line_error(cli("train", "--config", cfg, "--out", tmp_path / "r", *FAST), f"(--label from {cfg})")
    line = one_line_error(cli("train", "--data", data_csv, "--label", "clicked", "--out", tmp_path / "r", *FAST),
                          "--label 'clicked' is not one of its columns")
    assert str(cfg) not in line, line


def test_the_config_flags_help_gives_each_default_as_a_flag_would_take_it():
    """Help names the default of every config flag, a list as the comma-separated text the flag takes."""
    r = cli("run", "--help")
    assert r.exit_code == 0
    text = " ".join(r.output.replace("│", " ").split())
    for shown in ("Embedding size per field. (default: 16)", "(default: 256,128)", "(default: 0.8,0.1,0.1)",
                  "(default: deepfm)"):
        assert shown in text, shown


def test_a_fetch_that_writes_its_table_says_prepared_not_already_in_the_cache(monkeypatch, tmp_path):
    from lightfmp.datasets import FETCHERS

    def fresh(home=None, quiet=False):
        p = tmp_path / "table.csv"
        p.write_text("x\n")
        return p
    monkeypatch.setitem(FETCHERS, "kddcup04-bio", fresh)
    r = cli("data", "fetch", "kddcup04-bio", "--home", tmp_path)
    assert r.exit_code == 0 and r.output.startswith("prepared "), r.output


def test_data_synth_writes_parquet_by_default(tmp_path):
    r = cli("data", "synth", "--rows", "200", "--fields", "3", "--informative", "1", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["data.parquet", "truth.json"]



def test_bench_refuses_k_0_before_reading_anything(tmp_path):
    one_line_error(cli("bench", "--data", tmp_path / "absent.csv", "--label", "label", "--k", "0"),
                   "--k 0: must be >= 1")


def test_bench_has_no_init_seed_flag():
    one_line_error(cli("bench", "--init-seed", "3", "--k", "1"), "No such option: --init-seed")


def test_profile_url_checks_max_seconds_before_any_request(tmp_path):
    one_line_error(cli("profile", tmp_path / "m.onnx", "--url", "http://127.0.0.1:9", "--max-seconds", "0"),
                   "--max-seconds 0.0: must be > 0")


def test_export_defaults_are_fp32_ids_and_the_default_opset(monkeypatch, tmp_path):
    import lightfmp.cli.serving_cmds as serving_cmds
    from lightfmp.errors import LightFMPError
    from lightfmp.export.graph import DEFAULT_OPSET
    seen = []

    def fake(run, out_dir, **kw):
        seen.append(kw)
        raise LightFMPError("stop here")
    monkeypatch.setattr(serving_cmds, "export_run", fake)
    one_line_error(cli("export", tmp_path / "run", "--out", tmp_path / "e"), "stop here")
    assert seen == [dict(opset=DEFAULT_OPSET, dtype="fp32", inputs="ids", force=False, triton_name=None,
                         max_batch_size=4096)]

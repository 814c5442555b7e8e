"""Review of odd inputs around run / prune / inspect / profile: each is refused before any work with one line, or
said plainly, never a traceback or a silently ignored flag."""
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from helpers import cli, make_frame, one_line_error, without_flag, write_csv
from lightfmp.closed_fields import ClosedFields
from lightfmp.config import RunConfig, load_yaml
from lightfmp.errors import LightFMPError
from lightfmp.keep_rule import closing_test, keep_order
from lightfmp.models import ModelConfig, build_model
from lightfmp.schema import FeatureSchema, Field
from lightfmp.vocab import fit_schema

FAST = ["--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "128", "--hidden", "8", "--embed-dim", "4", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("d"), n=600)


def run_args(data, out, *extra):
    return ["run", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out, *FAST, *extra]


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_file_where_the_checkpoints_go_is_refused_before_any_work(data, tmp_path, command):
    (tmp_path / "r.ckpt").write_text("my notes")
    args = run_args(data, tmp_path / "r")
    args[0] = command
    one_line_error(cli(*args), "r.ckpt", "is not a folder")
    assert (tmp_path / "r.ckpt").read_text() == "my notes" and not (tmp_path / "r").exists()


def test_a_linked_checkpoint_folder_is_refused_before_any_work(data, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "r.ckpt")
    one_line_error(cli(*run_args(data, tmp_path / "r")), "r.ckpt", "symbolic link")
    assert list((tmp_path / "elsewhere").iterdir()) == [] and not (tmp_path / "r").exists()


def test_a_new_run_named_as_another_runs_checkpoint_folder_is_refused(data, tmp_path):
    """`--out r.ckpt` beside the run `r` is where r's checkpoints go: refused before any work (it was accepted, and
    then every `prune r` was refused); a folder of lightfmp's already there is named as what to move away."""
    assert cli(*run_args(data, tmp_path / "r")).exit_code == 0
    one_line_error(cli(*run_args(data, tmp_path / "r.ckpt")), f"{tmp_path / 'r.ckpt'}: is where the checkpoints of "
                                                               f"the run {tmp_path / 'r'} go; give --out another name")
    assert not (tmp_path / "r.ckpt").exists()
    assert cli(*run_args(data, tmp_path / "s")).exit_code == 0
    (tmp_path / "s").rename(tmp_path / "q.ckpt")  # a run moved there by hand
    one_line_error(cli(*run_args(data, tmp_path / "q")), "q.ckpt: is a lightfmp run", "move it away")
    for name in (".ckpt", "..ckpt"):  # no run's checkpoint folder: a run like any other
        assert cli(*run_args(data, tmp_path / "n" / name)).exit_code == 0


def test_a_schema_file_that_is_not_there_is_one_line_naming_the_flag(data, tmp_path):
    for given in (tmp_path / "nosuch.json", tmp_path):
        args = ["run", "--data", data, "--label", "label", "--schema", given, "--out", tmp_path / "r", *FAST]
        one_line_error(cli(*args), f"--schema {given}: ")
        assert not (tmp_path / "r").exists()


def test_keep_and_threshold_together_are_refused_on_the_command_line_and_in_a_file(data, tmp_path):
    one_line_error(cli(*run_args(data, tmp_path / "r", "--keep", "2", "--threshold", "0.5")),
                   "--keep 2", "--threshold 0.5", "not both")
    assert not (tmp_path / "r").exists()
    yml = tmp_path / "c.yaml"
    yml.write_text("prune: {keep: 2, threshold: 0.5}\n")
    with pytest.raises(LightFMPError, match=r"c\.yaml: --keep 2 and --threshold 0\.5: give one keep rule"):
        RunConfig.from_dict(load_yaml(yml), source=str(yml))
    with pytest.raises(LightFMPError, match="not both"):
        RunConfig.of(keep=2, threshold=0.5)
    # target-k with a threshold: trained toward k, cut by the threshold (keep is not set from target-k then)
    r = cli(*run_args(data, tmp_path / "tk", "--target-k", "2", "--threshold", "0.0"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "tk" / "metrics.json").read_text())
    assert m["selection"]["score"] == "gate" and m["selection"]["cut"] == 0.0


def test_target_k_above_the_field_count_names_target_k(data, tmp_path):
    one_line_error(cli(*run_args(data, tmp_path / "r", "--target-k", "9")), "--target-k 9", "number of fields (5)")


def _model_and_rows(n):
    df = pd.DataFrame({"a": [str(i % 3) for i in range(50)], "b": [str(i % 5) for i in range(50)],
                       "label": [i % 2 for i in range(50)]})
    s = fit_schema(FeatureSchema("label", [Field("a", "categorical"), Field("b", "categorical")], min_count=1), df)
    torch.manual_seed(0)
    m = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    return m, s, s.encode(df)[:n], df["label"].to_numpy(np.float32)[:n]


def test_rows_of_one_class_among_those_the_rules_read_are_refused_whatever_comes_after(monkeypatch):
    """The rules read the first TEST_ROWS validation rows: both classes later on do not help them, and are not
    taken for both classes there."""
    import lightfmp.keep_rule as keep_rule
    monkeypatch.setattr(keep_rule, "TEST_ROWS", 10)
    labels = np.array([0] * 10 + [1] * 10)
    with pytest.raises(LightFMPError, match="every validation row of the first 10 \\(those the rule reads\\) has "
                                            "label 0: --keep 2"):
        keep_rule.check_rule_rows(labels, 2, None, 5)
    with pytest.raises(LightFMPError, match=r"a larger validation share \(--split\) or another --seed gives both"):
        keep_rule.check_rule_rows(labels, 2, None, 5, split_kind="group")  # a group hash: the seed moves groups
    keep_rule.check_rule_rows(labels[5:], 2, None, 5)  # both classes among the first 10: compared as usual


def test_the_default_rules_check_reads_the_rows_its_closing_test_reads():
    """On a wide model the closing test reads fewer rows than TEST_ROWS (`closing_rows`: what its state holds in
    memory); rows of one class among those are refused although both classes come later."""
    from lightfmp.keep_rule import TEST_ROWS, check_rule_rows, closing_rows
    s = FeatureSchema("label", [Field(f"f{i}", "categorical", vocab=["a", "b"]) for i in range(300)])
    model = build_model("deepfm", s, ModelConfig(embed_dim=16, hidden=[8]), gated=True)
    n = closing_rows(model)
    assert n < TEST_ROWS
    labels = np.r_[np.zeros(n), np.ones(TEST_ROWS - n)]
    with pytest.raises(LightFMPError, match=f"every validation row of the first {n:,} .* the default keep rule"):
        check_rule_rows(labels, None, None, 300, model=model)
    check_rule_rows(labels, 5, None, 300, model=model)  # --keep K reads the first TEST_ROWS: both classes


def test_one_validation_row_is_refused_by_both_keep_rules():
    """A closed field reads another row's values: with one row there is none (it would read itself, and the
    closing test would close every field on no evidence)."""
    m, s, ids, y = _model_and_rows(1)
    for rule in (lambda: closing_test(m, s, ids, y), lambda: keep_order(m, s, ids, y, 1),
                 lambda: ClosedFields(m, ids, y, [0])):
        with pytest.raises(LightFMPError, match=r"1 validation row\(s\).*at least 2.*--split"):
            rule()
    m, s, ids, y = _model_and_rows(2)
    assert len(closing_test(m, s, ids, y)["kept"]) >= 1  # two rows: defined


def _newest_negative(tmp_path) -> list:
    """A table whose newest rows (validation and test by --time-column t) are all negative: the run's data flags."""
    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame({"a": rng.integers(0, 4, n).astype(str), "b": rng.integers(0, 4, n).astype(str),
                       "t": np.arange(n)})
    df["label"] = (rng.random(n) < 0.5).astype(int)
    df.loc[df["t"] >= 270, "label"] = 0
    df.to_csv(tmp_path / "d.csv", index=False)
    return ["--data", tmp_path / "d.csv", "--label", "label", "--time-column", "t", "--split", "0.7,0.15,0.15"]


@pytest.mark.parametrize("rule", [[], ["--keep", "1"]])
def test_keep_rules_refuse_validation_rows_of_one_class(tmp_path, rule):
    """The default rule and --keep K compare fields on the validation rows' logloss: with one class there they
    would close every field on no evidence. `run` refuses before training, `prune` before deciding; nothing is
    written. --threshold T (the gates alone) and --no-select need no validation classes."""
    data = _newest_negative(tmp_path)
    r = cli("run", *data, *rule, "--out", tmp_path / "r", *FAST)
    one_line_error(r, "every validation row has label 0", "a larger validation share (--split) gives both",
                   "--no-select")
    assert "--seed" not in r.output  # a time split is by rank: no seed moves its rows
    assert not (tmp_path / "r").exists()
    assert cli("train", *data, "--out", tmp_path / "p", *FAST).exit_code == 0
    before = sorted(p.name for p in (tmp_path / "p").iterdir())
    one_line_error(cli("prune", tmp_path / "p", *rule), "every validation row has label 0")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == before
    r = cli("prune", tmp_path / "p", "--threshold", "0.5")
    assert r.exit_code == 0, r.output
    r = cli("run", *data, "--keep", "2", "--out", tmp_path / "every", *FAST)  # keeping every field compares nothing
    assert r.exit_code == 0, r.output


def test_one_class_validation_rows_are_said(tmp_path):
    """Validation rows of one label: the run says AUC is undefined there and epochs go by logloss (under a rule
    that needs no validation classes)."""
    r = cli("run", *_newest_negative(tmp_path), "--threshold", "0.5", "--out", tmp_path / "r", *FAST[:-1])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "every validation row has label 0" in text and "chosen by validation logloss" in text
    assert "--seed" not in text  # a time split is by rank whatever the seed
    assert "every test row has label 0" in text and "the test AUC is nan" in text  # so is the test split


def test_split_with_a_zero_share_says_each_share_must_be_positive(data, tmp_path):
    one_line_error(cli(*run_args(data, tmp_path / "r", "--split", "0.95,0,0.05")), "--split '0.95,0,0.05'", "each > 0")


def test_pruning_again_drops_the_chart_of_the_earlier_kept_set(data, tmp_path):
    out = tmp_path / "r"
    assert cli(*run_args(data, out)).exit_code == 0
    assert cli("inspect", out, "-q").exit_code == 0 and (out / "gates.png").is_file()
    assert cli("prune", out, "--keep", "2", "-q").exit_code == 0
    assert not (out / "gates.png").exists()  # it showed the earlier rule's kept set
    assert cli("inspect", out, "-q").exit_code == 0 and (out / "gates.png").is_file()


def test_prune_from_inside_the_run_says_to_run_it_from_outside(data, tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert cli(*run_args(data, out)).exit_code == 0
    monkeypatch.chdir(out)
    one_line_error(cli("prune", ".", "-q"), "is the current directory", "run it from outside")


def test_field_names_with_dots_run_prune_and_inspect(tmp_path):
    """Column names like `user.age` are common: the run's tables key fields by their whole name."""
    df = make_frame(600).rename(columns={"a": "user.a", "tags": "tags.x"})
    df.to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "r"
    r = cli("run", "--data", tmp_path / "d.csv", "--label", "label", "--multi-hot", "tags.x:|", "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert "user.a" in m["gates"] and "tags.x" in m["log_alpha"]
    assert cli("prune", out, "--keep", "2", "-q").exit_code == 0
    r = cli("inspect", out)
    assert r.exit_code == 0 and "user.a" in r.output, r.output


def test_a_shard_folder_that_is_a_file_is_refused_before_any_work(data, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(cli(*run_args(data, tmp_path / "r", "--stream", "--shard-dir", tmp_path / "afile")),
                   "afile", "is a file", "--shard-dir")
    one_line_error(cli(*run_args(data, tmp_path / "r", "--stream", "--shard-dir", tmp_path / "afile" / "sub")),
                   "lies under the file")
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, words", [
    (["--methods", ","], ["--methods", "at least one method"]),
    (["--methods", ""], ["--methods ''", "at least one method"]),
    (["--methods", "all,random"], ["--methods 'all,random'", "'all' stands alone"]),
    (["--seeds", "-1"], ["--seeds -1"]),
    (["--seeds", "0,,1"], ["--seeds '0,,1'", "comma-separated integers"]),
    (["--methods", "random,,full"], ["--methods 'random,,full'", "empty item"]),
    (["--methods", "random,"], ["--methods 'random,'", "empty item"]),
    (["--ablate-subset", "0.1,,0.2"], ["--ablate-subset '0.1,,0.2'", "comma-separated fractions"]),
    # a repeat would be one row of the table, quietly (as --seeds refuses one); fractions compared as numbers
    (["--ablate-subset", "0.5,0.1,.50"], ["--ablate-subset '0.5,0.1,.50'", "0.5 is given twice"]),
    (["--methods", "lpfs,random,LPFS"], ["--methods 'lpfs,random,LPFS'", "lpfs is given twice"]),
])
def test_bench_flags_that_name_nothing_or_a_bad_seed_are_refused(data, tmp_path, flags, words):
    one_line_error(cli("bench", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--k", "2", *flags,
                       "--json", tmp_path / "b.json", "-q"), *words)
    assert not (tmp_path / "b.json").exists()


def test_bench_subset_fractions_keep_their_order():
    from lightfmp.bench import parse_fractions
    assert parse_fractions("0.5,0.1,1") == [0.5, 0.1, 1.0]


def test_synth_refuses_a_lightfmp_folder_and_names_its_flags(data, tmp_path):
    out = tmp_path / "r"
    assert cli(*run_args(data, out)).exit_code == 0
    one_line_error(cli("data", "synth", "--rows", "100", "--fields", "5", "--informative", "2", "--out", out),
                   "is a lightfmp run", "directory of its own")
    assert not (out / "truth.json").exists()
    one_line_error(cli("data", "synth", "--rows", "100", "--fields", "5", "--informative", "2", "--redundant", "4",
                       "--out", tmp_path / "s"), "--redundant 4: must be in [0, 3]", "--fields 5, --informative 2")
    assert not (tmp_path / "s").exists()


def test_synth_refuses_sizes_the_machine_cannot_hold_before_any_work(tmp_path):
    """A field count whose chunk exceeds the memory, or a row count whose least possible file exceeds the free disk,
    is refused in one line naming the flag, before anything is created."""
    one_line_error(cli("data", "synth", "--rows", "100", "--fields", "100000000", "--out", tmp_path / "a"),
                   "--fields 100,000,000", "GiB of memory")
    one_line_error(cli("data", "synth", "--rows", str(10 ** 14), "--out", tmp_path / "b", "--format", "csv"),
                   "--rows 100,000,000,000,000 x --fields 39", "GiB of csv", "GiB free in")
    assert list(tmp_path.iterdir()) == []


def test_an_ablation_fraction_that_selects_no_row_is_named(data, tmp_path):
    one_line_error(cli("bench", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--k", "2",
                       "--ablate-subset", "1e-300", "--json", tmp_path / "b.json", "-q"),
                   "--ablate-subset 1e-300", "selects none")


def test_nested_parquet_columns_are_refused_naming_the_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 200
    pq.write_table(pa.table({"a": [str(i % 3) for i in range(n)], "tags": [["t0", "t1"][: i % 3] for i in range(n)],
                             "label": [i % 2 for i in range(n)]}), tmp_path / "d.parquet")
    one_line_error(cli("run", "--data", tmp_path / "d.parquet", "--label", "label", "--out", tmp_path / "r", *FAST),
                   "column 'tags' holds nested values", "--ignore tags")
    r = cli("run", "--data", tmp_path / "d.parquet", "--label", "label", "--ignore", "tags", "--out", tmp_path / "r",
            *FAST)
    assert r.exit_code == 0, r.output


def test_prune_records_its_rule_in_config_yaml_and_the_file_reproduces_the_run(data, tmp_path):
    out = tmp_path / "t"
    assert cli("train", "--data", data, "--label", "label", "--multi-hot", "tags:|", "--out", out,
               *FAST).exit_code == 0
    assert cli("prune", out, "--keep", "3", "-q").exit_code == 0
    cfg = (out / "config.yaml").read_text()
    assert "keep: 3" in cfg and "threshold: null" in cfg
    again = tmp_path / "again"
    assert cli("run", "--config", out / "config.yaml", "--out", again, "-q").exit_code == 0
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (out, again))
    assert m1["fields"]["kept"] == m2["fields"]["kept"] and m1["test"]["auc"] == m2["test"]["auc"]
    # a keep rule given as a flag replaces the file's: --threshold over the file's keep
    flag = tmp_path / "flag"
    r = cli("run", "--config", out / "config.yaml", "--threshold", "0.0", "--out", flag, "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((flag / "metrics.json").read_text())["selection"]["score"] == "gate"


def test_the_python_api_refuses_two_keep_rules(data, tmp_path):
    from lightfmp import pipeline
    with pytest.raises(LightFMPError, match="not both"):
        pipeline.prune(tmp_path / "anything", keep=2, threshold=0.5)


def test_yaml_booleans_for_text_options_and_an_empty_multi_hot_separator_are_refused(data, tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("positive: yes\n")
    one_line_error(cli(*run_args(data, tmp_path / "r", "--config", yml)), "'positive' must be text", "quote")
    one_line_error(cli("run", "--data", data, "--label", "label", "--multi-hot", "tags:,", "--out", tmp_path / "r",
                       *FAST), "--multi-hot 'tags:'", "no separator")
    one_line_error(cli("run", "--data", data, "--label", "label", "--multi-hot", "tags: ", "--out", tmp_path / "r",
                       *FAST), "--multi-hot 'tags:'", "trims a whitespace one", "YAML list")


def test_flag_type_errors_name_the_flag_and_a_key_given_twice_in_a_file_is_refused(data, tmp_path):
    one_line_error(cli(*without_flag(run_args(data, tmp_path / "r"), "--hidden"), "--hidden", "abc"),
                   "--hidden 'abc': must be int")
    one_line_error(cli(*run_args(data, tmp_path / "r", "--lr", "nan")), "--lr", "must be a finite number")
    for text in ("train: {epochs: 3}\nepochs: 1\n", "embed-dim: 4\nembed_dim: 8\n"):
        yml = tmp_path / "c.yaml"
        yml.write_text(text)
        one_line_error(cli(*run_args(data, tmp_path / "r", "--config", yml)), "c.yaml", "given twice")
    assert not (tmp_path / "r").exists()


def test_a_subset_fraction_that_selects_no_row_names_subset(data, tmp_path):
    one_line_error(cli(*run_args(data, tmp_path / "r", "--subset", "1e-9")), "--subset 1e-09", "selects none")


def test_a_column_without_a_name_is_refused(tmp_path):
    (tmp_path / "d.csv").write_text("a,,label\n" + "".join(f"{i % 3},{i % 5},{i % 2}\n" for i in range(60)))
    one_line_error(cli("run", "--data", tmp_path / "d.csv", "--label", "label", "--out", tmp_path / "r", *FAST),
                   "d.csv", "column 2 has no name")


def test_positive_matches_the_same_number_written_otherwise(tmp_path):
    from lightfmp.labels import parse_labels
    df = pd.DataFrame({"y": ["1.0", "0.0", "1", "2", "1e0", "x"]})
    assert parse_labels(df, "y", "1", "d.csv").tolist() == [1, 0, 1, 0, 1, 0]
    assert parse_labels(df, "y", "x", "d.csv").tolist() == [0, 0, 0, 0, 0, 1]
    booleans = pa.table({"y": pa.array([True, False, True])})  # a Parquet boolean label: --positive true means True
    assert parse_labels(booleans, "y", "true", "d.parquet").tolist() == [1, 0, 1]
    assert parse_labels(booleans, "y", "FALSE", "d.parquet").tolist() == [0, 1, 0]



@pytest.mark.parametrize("positive", [None, "click"])
def test_a_label_spelled_missing_is_refused_with_or_without_positive(positive):
    """'NA' in a label is a missing label, as in a number: refused, never read as a negative under --positive."""
    from lightfmp.labels import parse_labels
    values = ["click", "none", " NA ", "click"] if positive else ["1", "0", " NA ", "1"]
    with pytest.raises(LightFMPError, match=r"d.csv: label column 'y' has a missing value \(' NA '\) at row 12 "
                                            r"\(line 14\)"):
        parse_labels(pd.DataFrame({"y": values}), "y", positive, "d.csv", start=10, fmt="csv")


@pytest.mark.parametrize("near", [" yes", "Yes", "YES "])
def test_a_label_that_differs_from_positive_only_in_case_or_spaces_is_refused(near):
    """An exact rule read ' yes' beside --positive yes as 0, silently; where no row matched it said so."""
    from lightfmp.labels import parse_labels
    with pytest.raises(LightFMPError, match=f"holds {near!r} at row 2, which differs from --positive 'yes' only in "
                                            f"case or spaces"):
        parse_labels(pd.DataFrame({"y": ["yes", "no", near]}), "y", "yes", "d.csv")
    assert parse_labels(pd.DataFrame({"y": ["yes", "no", "yess"]}), "y", "yes", "d.csv").tolist() == [1, 0, 0]


def test_a_positive_value_spelled_like_a_missing_number_is_the_positive_class():
    from lightfmp.labels import parse_labels
    assert parse_labels(pd.DataFrame({"y": ["EU", "NA", "AS", "NA"]}), "y", "NA", "d.csv").tolist() == [0, 1, 0, 1]
    with pytest.raises(LightFMPError, match=r"has a missing value \('null'\) at row 2"):
        parse_labels(pd.DataFrame({"y": ["EU", "NA", "null"]}), "y", "NA", "d.csv")


def test_an_inferred_categorical_column_with_no_value_seen_twice_is_refused(tmp_path):
    """A column of numbers with one stray text cell is inferred categorical (text), and a column of row ids too;
    with every value seen once, every value would read as unknown and the field carry nothing: refused, naming the
    column and the flags that resolve it, before anything is written. Named by the user, or dropped, it runs."""
    df = make_frame(600)
    x = df["x"].astype(object)
    x.iloc[450] = "abc"
    for column, values in (("x", x), ("row", [f"r{i}" for i in range(600)])):
        p = tmp_path / f"{column}.csv"
        df.assign(**{column: values}).to_csv(p, index=False)
        out = tmp_path / f"out_{column}"
        one_line_error(cli("run", "--data", p, "--label", "label", "--multi-hot", "tags:|", "--out", out, *FAST),
                       f"column '{column}' was inferred categorical (text)", "--min-count (2)",
                       f"--ignore {column}", f"--hash-buckets {column}:N", "--min-count 1", f"--numeric {column}")
        assert not out.exists()
    p = tmp_path / "row.csv"
    r = cli("run", "--data", p, "--label", "label", "--multi-hot", "tags:|", "--out", tmp_path / "ok", *FAST,
            "--ignore", "row")
    assert r.exit_code == 0, r.output
    r = cli("run", "--data", p, "--label", "label", "--multi-hot", "tags:|", "--out", tmp_path / "named", *FAST,
            "--categorical", "row")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_a_header_not_in_utf8_or_a_binary_file_named_csv_is_one_line(tmp_path, stream):
    """A Latin-1 header (pyarrow decodes the column names and raised UnicodeDecodeError: a traceback) and a Parquet
    file under a .csv name are refused in one line naming the file; nothing is written."""
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"label,caf\xe9,b\n1,x,1\n0,y,2\n1,x,1\n0,y,2\n")
    parquet = tmp_path / "pq.csv"
    pd.DataFrame({"label": [0, 1] * 20, "a": ["x", "y"] * 20}).to_parquet(parquet)
    for f, words in ((latin, ["header row is not UTF-8 text", "0xe9"]), (parquet, ["not a CSV text file"])):
        one_line_error(cli("run", "--data", f, "--label", "label", "--out", tmp_path / "r", "--quiet", *stream),
                       str(f), *words)
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("item, sep", [("u:tags", "|"), ("u:tags:;", ";")])
def test_a_multi_hot_column_whose_name_holds_a_colon(tmp_path, item, sep):
    """--multi-hot NAME[:SEP] for a column named 'u:tags' (the name was cut at its first ':', and no spelling
    could name it): the data's columns say where the name ends."""
    from lightfmp.dataset import load_dataset
    rng = np.random.default_rng(0)
    tags = [sep.join(rng.choice(list("abc"), 2, replace=False)) for _ in range(200)]
    path = tmp_path / "c.csv"
    pd.DataFrame({"label": rng.integers(0, 2, 200), "u:tags": tags, "b": rng.integers(0, 3, 200)}).to_csv(path,
                                                                                                    index=False)
    data = load_dataset(RunConfig.of(data=str(path), label="label", multi_hot=item, min_count=1).data)
    field = next(f for f in data.schema.fields if f.name == "u:tags")
    assert field.kind == "multi_hot" and field.separator == sep and field.slots == 2
    # a flag's kind for it replaces the config file's other kind for it, as for any column
    from lightfmp.config import resolve
    (tmp_path / "c.yaml").write_text(f"data: {path}\nlabel: label\ncategorical: ['u:tags']\nmin-count: 1\n")
    cfg = resolve({"multi_hot": [item]}, str(tmp_path / "c.yaml"))
    assert cfg.data.categorical == [] and next(f.kind for f in load_dataset(cfg.data).schema.fields
                                               if f.name == "u:tags") == "multi_hot"

"""The config: four sections that are the configs the code uses, flat or sectioned YAML, typed lists, and every
numeric flag's range checked in one place (a parametrised test over all fields, so a new flag cannot escape it)."""
import re
import typing

import pytest
import yaml

from lightfmp.config import COMMAND_LINE, SECTIONS, ModelConfig, RunConfig, TrainConfig, check_range, fields_of, resolve
from lightfmp.errors import LightFMPError

def _hint(name):
    for tp in SECTIONS.values():
        hints = typing.get_type_hints(tp)
        if name in hints:
            return hints[name]


def _base(name):
    return ([a for a in typing.get_args(_hint(name)) if a is not type(None)] or [_hint(name)])[0]


def _item_type(name):
    tp = _base(name)
    return typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp


NUMERIC = [f for f in fields_of() if _item_type(f.name) in (int, float)]


def test_every_numeric_flag_declares_its_range():
    assert len(NUMERIC) >= 20
    for f in NUMERIC:
        assert f.metadata["low"] is not None, f"--{f.name} has no lower bound"


@pytest.mark.parametrize("f", NUMERIC, ids=lambda f: f.name)
def test_numeric_flag_bounds(f):
    m, tp = f.metadata, _item_type(f.name)
    low = m["low"]
    below = low if m["open_low"] else (low - 1 if tp is int else low - 1e-9)
    wrap = (lambda v: [v]) if typing.get_origin(_base(f.name)) is list else (lambda v: v)
    with pytest.raises(LightFMPError, match=f"--{f.name.replace('_', '-')} .*must be"):
        RunConfig.of(**{f.name: wrap(below)})
    if m["high"] is not None:
        above = m["high"] if m["open_high"] else m["high"] + (1 if tp is int else 1e-9)
        with pytest.raises(LightFMPError, match=f"--{f.name.replace('_', '-')} .*must be"):
            RunConfig.of(**{f.name: wrap(above)})
    inside = (low + m["high"]) / 2 if m["high"] is not None else (low + 1 if m["open_low"] else low)
    if f.name != "split":  # a split is three fractions summing to 1: accepted values in test_named_bad_values
        RunConfig.of(**{f.name: wrap(tp(inside))})  # accepted


@pytest.mark.parametrize("key,value,match", [
    ("batch_size", 0, "--batch-size 0: must be >= 1"), ("embed_dim", 0, "--embed-dim 0: must be >= 1"),
    ("lr", -1, "--lr -1.0: must be > 0"), ("gate_holdout", 1.0, "--gate-holdout 1.0: must be < 1"),
    ("subset", 0, "--subset 0.0: must be > 0"), ("backbone", "resnet", "--backbone 'resnet': expected one of"),
    ("split", "0.5,0.5,0.5", "--split .*sum to 1"), ("hidden", "256,0", "--hidden 0: must be >= 1"),
    ("lr", "nan", "'lr' must be a finite number"),
    ("categorical", {"a"}, "'categorical' must be a list of text items .*got a set"),  # its text is no name
])
def test_named_bad_values(key, value, match):
    with pytest.raises(LightFMPError, match=match):
        RunConfig.of(**{key: value})


def test_sections_are_the_configs_the_code_uses():
    cfg = RunConfig.of(hidden="64,32", lr=0.01, keep=3, label="y", split="0.7,0.2,0.1")
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.model, ModelConfig)
    assert cfg.model.hidden == [64, 32] and cfg.train.lr == 0.01 and cfg.prune.keep == 3 and cfg.data.label == "y"
    assert cfg.data.split == [0.7, 0.2, 0.1]
    assert cfg.but(lr=0.5).train.lr == 0.5 and cfg.train.lr == 0.01


def test_yaml_takes_sections_and_flat_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"hidden": [8, 4], "embed-dim": 3}, "lr": "1e-3", "categorical": "a,b"}))
    cfg = resolve({"epochs": 2}, str(p))
    assert cfg.model.hidden == [8, 4] and cfg.model.embed_dim == 3 and cfg.train.lr == 1e-3
    assert cfg.data.categorical == ["a", "b"] and cfg.train.epochs == 2
    # a run's config.yaml (sections) reads back to the same config
    assert RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg



def test_an_error_quotes_a_value_cut_short(tmp_path):
    """YAML aliases expand a few hundred bytes into megabytes: the one-line error quotes the value cut short."""
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  - &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n  - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                 "  - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n  - [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n")
    with pytest.raises(LightFMPError, match=r"section 'train' must be a mapping of option: value, got \[\[1, ") as e:
        resolve({}, str(p))
    assert len(str(e.value)) < 400
    with pytest.raises(LightFMPError, match=r"'epochs' must be .*, got 'x+\.\.\.x+'$") as e:
        resolve({}, str(_yaml(tmp_path, {"epochs": "x" * 100_000})))
    assert len(str(e.value)) < 400


def test_a_text_list_holds_scalar_items():
    """--hash-buckets' items as a YAML list: a nested item was joined as its text (megabytes under aliases)."""
    with pytest.raises(LightFMPError, match=r"'hash_buckets' must be .*, got the item \[1, 2\], a list"):
        RunConfig.from_dict({"hash_buckets": [[1, 2]]}, "c.yaml")
    assert RunConfig.from_dict({"hash_buckets": ["a:8", "b:4"]}, "c.yaml").data.hash_buckets == "a:8,b:4"


def _yaml(tmp_path, d):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(d))
    return tmp_path / "e.yaml"


def test_a_kind_given_as_a_flag_replaces_the_files_kind_for_that_column(tmp_path):
    """Flags win over the config file column by column: --numeric a takes a out of the file's categorical (before,
    a stood in both and the run was refused as a conflict); the file's other columns keep their kinds."""
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"categorical": ["a", "b"], "multi-hot": ["g:;", "h"], "ignore": ["z"]}}))
    for numeric in (["a", "g"], "a,g"):  # as a list, and as the command line gives it: comma-separated text
        cfg = resolve({"numeric": numeric, "categorical": None}, str(p))
        assert cfg.data.numeric == ["a", "g"] and cfg.data.categorical == ["b"] and cfg.data.multi_hot == ["h"]
        assert cfg.data.ignore == ["z"]
    cfg = resolve({"categorical": "z"}, str(p))  # the flag's own list replaces the file's, as every flag does
    assert cfg.data.categorical == ["z"] and cfg.data.ignore == [] and cfg.data.multi_hot == ["g:;", "h"]
    cfg = resolve({"multi_hot": "tags:|,b"}, str(p))  # a multi-hot item names the column before its ':'
    assert cfg.data.categorical == ["a"] and cfg.data.multi_hot == ["tags:|", "b"] and cfg.data.ignore == ["z"]
    p.write_text(yaml.safe_dump({"categorical": "price,b"}))  # the file's list as comma-separated text too
    assert resolve({"numeric": "price"}, str(p)).data.categorical == ["b"]

def test_a_target_k_flag_replaces_the_keep_the_files_target_implied(tmp_path):
    """A run's config.yaml records the keep its --target-k implied (keep = K): re-running it with another --target-k
    keeps the new K, not the old one; --no-select over it trains every field instead of being refused."""
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(RunConfig.of(data="x.csv", label="y", target_k=3, keep=3).to_dict()))
    cfg = resolve({"target_k": 2}, str(p))
    assert cfg.train.target_k == 2 and cfg.prune.keep == 2
    cfg = resolve({"target_k": 2, "keep": 4}, str(p))        # a --keep given beside it is the user's own
    assert cfg.train.target_k == 2 and cfg.prune.keep == 4
    cfg = resolve({"target_k": 2, "threshold": 0.5}, str(p))  # so is a --threshold
    assert cfg.prune.keep is None and cfg.prune.threshold == 0.5
    cfg = resolve({"no_select": True}, str(p))
    assert cfg.train.no_select and (cfg.prune.keep, cfg.prune.threshold, cfg.train.target_k) == (None, None, None)
    p.write_text(yaml.safe_dump(RunConfig.of(data="x.csv", label="y", keep=3, continue_epochs=2).to_dict()))
    assert resolve({"no_select": True}, str(p)).prune.continue_epochs is None  # phase 3's epochs go with the rule
    with pytest.raises(LightFMPError, match="--no-select and --keep 2"):  # both given on the command line
        resolve({"no_select": True, "keep": 2}, str(p))
    p.write_text(yaml.safe_dump(RunConfig.of(data="x.csv", label="y", target_k=3, keep=5).to_dict()))
    cfg = resolve({"target_k": 2}, str(p))                   # a keep the file chose apart from its target stays
    assert cfg.train.target_k == 2 and cfg.prune.keep == 5


@pytest.mark.parametrize("doc,match", [({"lrr": 1}, "unknown key 'lrr'"),
                                       ({"train": {"hidden": [8]}}, "unknown key 'hidden' in section 'train'"),
                                       ({"epochs": "ten"}, "'epochs' must be int")])
def test_bad_keys_named(doc, match):
    with pytest.raises(LightFMPError, match=match):
        RunConfig.from_dict(doc, "c.yaml")


@pytest.mark.parametrize("text", ["train:\n#  lr: 0.01\n", "train:\nmodel:\nprune:\n", "data:\n",
                                  "data: null\nlr: 0.5\n"])
def test_a_section_with_every_key_commented_out_is_empty(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    cfg = resolve({}, str(p))
    assert cfg.data.data is None and cfg.model == ModelConfig()
    assert cfg.train.lr == (0.5 if "lr: 0.5" in text else TrainConfig().lr)


def test_data_is_the_section_or_the_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: x.csv\n")
    assert resolve({}, str(p)).data.data == "x.csv"
    p.write_text("data:\n  data: y.csv\n  label: click\n")
    cfg = resolve({}, str(p))
    assert cfg.data.data == "y.csv" and cfg.data.label == "click"
    p.write_text("train: 5\n")
    with pytest.raises(LightFMPError, match=f"{p}: section 'train' must be a mapping"):
        resolve({}, str(p))


@pytest.mark.parametrize("text,match", [("split: 0.5,0.5,0.5\n", "--split .*sum to 1"),
                                        ("train:\n  batch_size: 0\n", "--batch-size 0: must be >= 1"),
                                        ("seed: 99999999999999999999\n", "--seed 99999999999999999999: must be <="),
                                        ("backbone: resnet\n", "--backbone 'resnet': expected one of")])
def test_range_errors_from_a_yaml_file_name_the_file(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(LightFMPError) as e:
        resolve({}, str(p))
    assert str(e.value).startswith(f"{p}: ") and re.search(match, str(e.value)), str(e.value)


def test_range_errors_of_flags_name_the_flag_first():
    with pytest.raises(LightFMPError) as e:
        resolve({"seed": 2**32})
    assert str(e.value) == "--seed 4294967296: must be <= 4294967295 and >= 0"
    assert resolve({"seed": 2**32 - 1}).data.seed == 2**32 - 1


def test_check_range_for_options_outside_the_config():
    assert check_range("--threads", 0, 0) == 0
    for value, match in ((-1, "--threads -1: must be >= 0"), (float("nan"), "--threads nan: must be a finite"),
                         (float("inf"), "--threads inf: must be a finite")):
        with pytest.raises(LightFMPError, match=match):
            check_range("--threads", value, 0)
    with pytest.raises(LightFMPError, match="--max-seconds 0: must be > 0"):
        check_range("--max-seconds", 0, 0, open_low=True)


def test_backbone_choices_are_the_models_there_are():
    from lightfmp import config, models
    assert set(config.BACKBONES) == set(models.BACKBONES)


@pytest.mark.parametrize("rule, shown", [({"keep": 3}, "--keep 3"), ({"threshold": 0.5}, "--threshold 0.5"),
                                         ({"target_k": 2}, "--target-k 2"),
                                         ({"continue_epochs": 3}, "--continue-epochs 3")])
def test_no_select_with_a_keep_rule_is_refused(tmp_path, rule, shown):
    """--no-select trains every field without gates: a rule given with it would be recorded and never applied."""
    with pytest.raises(LightFMPError, match=f"^config: --no-select and {shown}: .*give one or the other$"):
        RunConfig.of(data="d.csv", label="y", no_select=True, **rule)
    path = tmp_path / "c.yaml"
    path.write_text("data: d.csv\nlabel: y\nno_select: true\n")
    with pytest.raises(LightFMPError, match=f"--no-select and {shown}"):
        resolve({**rule}, str(path))
    assert RunConfig.of(data="d.csv", label="y", **rule).train.no_select is False  # each alone is fine


def test_a_run_recorded_with_no_select_and_a_rule_still_reads_back():
    """Runs written before the refusal recorded such configs: reading one back (inspect, export) must still work."""
    cfg = RunConfig.from_dict({"data": "d.csv", "label": "y", "no_select": True, "keep": 3}, "runs/r/config.yaml")
    assert cfg.train.no_select and cfg.prune.keep == 3


def test_the_pipeline_refuses_a_python_built_no_select_config_with_a_rule(tmp_path):
    """RunConfig.but and from_dict read runs back and so do not refuse; training a new run from such a config does."""
    from lightfmp import pipeline
    cfg = RunConfig.of(data=str(tmp_path / "d.csv"), label="y", keep=3).but(no_select=True)
    for call in (pipeline.run, pipeline.train):
        with pytest.raises(LightFMPError, match="--no-select and --keep 3"):
            call(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_python_values_whose_text_is_no_value_are_refused_or_read_as_lists():
    """From Python, a DataFrame for `data` (its repr became the path) or a bytes label is one line; a numpy array,
    a pandas Index or an iterator of column names is the list it holds (its repr named no column)."""
    import numpy as np
    import pandas as pd
    with pytest.raises(LightFMPError, match=r"'data' must be text \(a path: .*\), got a value of type DataFrame"):
        RunConfig.of(data=pd.DataFrame({"a": [1]}), label="y")
    with pytest.raises(LightFMPError, match="'label' must be text, got a value of type bytes"):
        RunConfig.of(data="d.csv", label=b"y")
    with pytest.raises(LightFMPError, match="'categorical' must be a list of text items .*, got a value of type"):
        RunConfig.of(data="d.csv", categorical=np.array([["a", "b"]]))
    cfg = RunConfig.of(data="d.csv", label="y", categorical=pd.Index(["a", "b"]), numeric=(c for c in ["x"]),
                       hidden=np.array([8, 4]), ignore=pd.Series(["z"]))
    assert (cfg.data.categorical, cfg.data.numeric, cfg.model.hidden, cfg.data.ignore) == (["a", "b"], ["x"], [8, 4],
                                                                                            ["z"])
    cfg = RunConfig.of(data="d.csv", label="y", no_select=np.True_, hidden=np.array(8), epochs=np.int64(2))
    assert (cfg.train.no_select, cfg.model.hidden, cfg.train.epochs) == (True, [8], 2)
    import datetime  # a YAML date is a value (`positive: 2024-01-01`), as before
    assert RunConfig.from_dict({"positive": datetime.date(2024, 1, 1)}, "c.yaml").data.positive == "2024-01-01"


@pytest.mark.parametrize("key", ["data", "label", "schema", "time_column", "group_column", "shard_dir"])
def test_an_empty_name_or_path_is_refused_not_read_as_none(key):
    """`--time-column "$COL"` with COL unset would otherwise train on a random split and say nothing: a column
    name or a path that is empty (or blank) is an error naming the flag, from the command line and from a file."""
    for value in ("", "  "):
        with pytest.raises(LightFMPError, match=f"--{key.replace('_', '-')} '{value}': empty"):
            RunConfig.from_dict({"data": "x.csv", "label": "y", key: value}, COMMAND_LINE)
    with pytest.raises(LightFMPError, match=f"c.yaml: '{key}' '': empty"):
        RunConfig.from_dict(yaml.safe_load(f"data: x.csv\nlabel: y\n{key}: ''\n"), "c.yaml")


def test_comma_separated_integers_are_read_one_way_for_every_flag():
    """--seeds, --batch-sizes and --clients read lists of integers by one rule: digits only ('1_0' is no 10),
    no empty item, in range; a repeat refused where it would bias a mean (seeds), dropped where it is harmless."""
    from lightfmp.bench.core import parse_seeds
    from lightfmp.profiling import parse_batch_sizes, parse_clients
    assert parse_seeds(" 0 , 1") == [0, 1] and parse_batch_sizes("1,1,8") == [1, 8] and parse_clients("4") == [4]
    for parse, flag in ((parse_seeds, "--seeds"), (parse_batch_sizes, "--batch-sizes"), (parse_clients, "--clients")):
        for text in ("1_0", "1,,2", "a", "", "٣"):
            with pytest.raises(LightFMPError, match=f"{flag} .*expected comma-separated integers"):
                parse(text)
    with pytest.raises(LightFMPError, match="--seeds '0,0': 0 is given twice"):
        parse_seeds("0,0")
    with pytest.raises(LightFMPError, match="--batch-sizes 0: must be >= 1"):
        parse_batch_sizes("0")


def test_a_runs_recorded_empty_name_still_reads_as_not_given(tmp_path):
    """Runs of earlier versions recorded an empty --schema / --time-column / --shard-dir as '' (meaning "not
    given"): their config.yaml still opens, read as it meant it; only new input refuses the empty name."""
    from lightfmp.rundir import _unset_empty_names
    doc = {"data": {"data": "x.csv", "label": "y", "schema": "", "time_column": " ", "shard_dir": ""},
           "train": {"lr": 0.01}}
    cfg = RunConfig.from_dict(_unset_empty_names(doc), "run/config.yaml")
    assert (cfg.data.schema, cfg.data.time_column, cfg.data.shard_dir) == (None, None, None)


def test_the_largest_batch_size_and_client_count_are_accepted():
    """The documented maximums are inside the range: --batch-sizes 1048576 and --clients 1024 are taken, one more
    is refused."""
    from lightfmp.profiling import MAX_BATCH_SIZE, MAX_CLIENTS, parse_batch_sizes, parse_clients
    assert (MAX_BATCH_SIZE, MAX_CLIENTS) == (1048576, 1024)
    assert parse_batch_sizes("1,1048576") == [1, 1048576] and parse_clients("1024") == [1024]
    with pytest.raises(LightFMPError, match="--batch-sizes 1048577: must be >= 1 and <= 1,048,576"):
        parse_batch_sizes("1048577")
    with pytest.raises(LightFMPError, match="--clients 1025: must be >= 1 and <= 1,024"):
        parse_clients("1025")


def test_a_fraction_for_an_integer_option_is_refused_not_cut_down(tmp_path):
    """epochs 2.5 (from Python or a YAML file) is an error naming the key, not 2 epochs; a whole float is the
    integer it equals."""
    with pytest.raises(LightFMPError, match=r"^config: 'epochs' must be int, got 2\.5$"):
        RunConfig.of(epochs=2.5)
    with pytest.raises(LightFMPError, match=r"e\.yaml: 'epochs' must be int, got 2\.5$"):
        resolve({}, str(_yaml(tmp_path, {"epochs": 2.5})))
    assert RunConfig.of(epochs=3.0).train.epochs == 3
    assert resolve({}, str(_yaml(tmp_path, {"epochs": 3.0}))).train.epochs == 3


@pytest.mark.parametrize("text, value", [("on", True), ("off", False), ("yes", True), ("no", False), ("1", True),
                                         ("0", False), ("true", True), ("false", False), (" On ", True),
                                         ("OFF", False)])
def test_a_switch_reads_every_spelling_of_yes_and_no(tmp_path, text, value):
    """An on/off option given as text (from Python, or quoted in a YAML file) reads on/off, yes/no, 1/0 and
    true/false in any case."""
    assert RunConfig.of(stream=text).data.stream is value
    assert resolve({}, str(_yaml(tmp_path, {"stream": text}))).data.stream is value

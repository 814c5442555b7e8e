"""The config: four sections that are the configs the code uses, flat or sectioned YAML, typed lists, and every
numeric flag's range checked in one place (a parametrised test over all fields, so a new flag cannot escape it)."""
import typing

import pytest
import yaml

from lightfmp.config import SECTIONS, ModelConfig, RunConfig, TrainConfig, fields_of, resolve
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
    ("lr", "nan", "'lr' must be float"),
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


@pytest.mark.parametrize("doc,match", [({"lrr": 1}, "unknown key 'lrr'"),
                                       ({"train": {"hidden": [8]}}, "unknown key 'hidden' in section 'train'"),
                                       ({"epochs": "ten"}, "'epochs' must be int")])
def test_bad_keys_named(doc, match):
    with pytest.raises(LightFMPError, match=match):
        RunConfig.from_dict(doc, "c.yaml")

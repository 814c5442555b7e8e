"""Property-based checks of the two doors bad input comes through:

* the command line: any out-of-range value of any numeric flag (ranges read from the RunConfig field metadata, so a
  new flag is covered the day it is added) ends in exit code 2 and one line, no traceback, and no file created;
* `Predictor`: any malformed batch of records is scored or refused with a one-line LightFMPError, never another
  exception."""
import math
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lightfmp import pipeline
from lightfmp.cli.app import app
from lightfmp.config import SECTIONS, RunConfig, fields_of, flag
from lightfmp.errors import LightFMPError
from lightfmp.export import export_run
from lightfmp.serving import Predictor

from helpers import write_csv

runner = CliRunner()
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_HINTS = {name: hint for tp in SECTIONS.values() for name, hint in typing.get_type_hints(tp).items()}


def _number_type(hint):
    """int or float for a numeric field (also `int | None` and `list[float]`), else None; and whether a list."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, type(int | None)) and args:
        hint = args[0]
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return (item, True) if item in (int, float) else (None, True)
    return (hint, False) if hint in (int, float) else (None, False)


# (command that takes the flag, field): `train` takes every section but prune's, which `run` takes
NUMERIC = [("run" if section == "prune" else "train", f) for section in SECTIONS for f in fields_of(section)
           if _number_type(_HINTS[f.name])[0] is not None
           and (f.metadata["low"] is not None or f.metadata["high"] is not None)]


def test_every_ranged_number_flag_is_drawn():
    """The strategy below covers each numeric flag with a range (guards the type reading above)."""
    names = {f.name for _, f in NUMERIC}
    assert {"batch_size", "embed_dim", "lr", "split", "hidden", "gate_holdout", "subset", "threshold",
            "dropout", "min_count", "chunk_rows", "keep"} <= names


def _out_of_range(f) -> st.SearchStrategy:
    tp, _ = _number_type(_HINTS[f.name])
    m = f.metadata
    options = []
    if tp is int:
        if m["low"] is not None:
            options.append(st.integers(max_value=m["low"] - (0 if m["open_low"] else 1), min_value=-10 ** 12))
        if m["high"] is not None:
            options.append(st.integers(min_value=m["high"] + (0 if m["open_high"] else 1), max_value=10 ** 12))
    else:
        if m["low"] is not None:
            options.append(st.floats(max_value=m["low"], exclude_max=not m["open_low"], allow_nan=False,
                                     allow_infinity=False, min_value=-1e12))
        if m["high"] is not None:
            options.append(st.floats(min_value=m["high"], exclude_min=not m["open_high"], allow_nan=False,
                                     allow_infinity=False, max_value=1e12))
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(options)


def _bad_flag(command_field) -> st.SearchStrategy:
    """(command, flag, text): one bad value, or for a list flag a list with one bad item among good ones."""
    command, f = command_field
    _, is_list = _number_type(_HINTS[f.name])
    bad = _out_of_range(f).map(repr)
    if not is_list:
        return bad.map(lambda v: (command, flag(f.name), v))
    good = "0.2" if f.name == "split" else "8"
    return st.tuples(bad, st.integers(0, 2)).map(
        lambda t: (command, flag(f.name), ",".join([good] * t[1] + [t[0]])))


BAD_FLAGS = st.sampled_from(NUMERIC).flatmap(_bad_flag)


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_csv(root, n=300)
    return root


@SETTINGS
@given(bad=BAD_FLAGS)
@example(bad=("train", "--split", "0.2,-1.0,0.8"))  # a list flag takes comma-separated text
@example(bad=("train", "--hidden", "16,0"))
def test_bad_numeric_flag_is_one_line_and_exit_2(bad, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("LIGHTFMP_HOME", str(sandbox / "home"))
    before = files_under(sandbox)
    command, name, value = bad
    r = runner.invoke(app, [command, "--data", "data.csv", "--label", "label", "--out", "run", "--quiet",
                            f"{name}={value}"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, (bad, r.output, r.exception)
    assert len(lines) == 1 and "Traceback" not in r.output, (bad, r.output)
    assert name in lines[0] or f"'{name[2:].replace('-', '_')}'" in lines[0], (bad, lines[0])  # the flag, or its key
    assert files_under(sandbox) == before


# ---- Predictor ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """A tiny export of every field kind: categorical text and integers, numeric, multi-hot."""
    root = tmp_path_factory.mktemp("serve")
    data = write_csv(root, n=300)
    cfg = RunConfig.of(data=str(data), label="label", multi_hot="tags:|", no_select=True, epochs=1, embed_dim=4,
                       hidden="8", batch_size=128, device="cpu")
    pipeline.run(cfg, root / "run", quiet=True)
    export_run(root / "run", root / "export")
    return Predictor(root / "export")


GOOD = {"a": "a1", "b": 3, "noise": "z2", "x": 0.5, "tags": "p|q"}
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.text(min_size=1, max_size=8).map(lambda s: s * 5_000), st.binary(max_size=10),
    st.just(10 ** 5000), st.sampled_from([math.nan, math.inf, -math.inf, np.float32(np.nan), np.int64(7)]),
    st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none(), st.floats()), max_size=4),
    st.lists(st.lists(st.integers(), max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
DROPPED = object()  # stands for a key left out of the record
# a record of the model's fields where each value may be odd and each key may be missing
ODD_RECORD = st.tuples(*[st.one_of(st.just(v), st.just(DROPPED), ODD_VALUES) for v in GOOD.values()]).map(
    lambda values: {k: v for k, v in zip(GOOD, values) if v is not DROPPED})
ODD_BATCH = st.one_of(
    st.lists(ODD_RECORD, min_size=1, max_size=4),
    st.lists(ODD_RECORD, min_size=1, max_size=4),  # twice: records that are dicts reach the encoders
    st.lists(st.one_of(ODD_RECORD, ODD_VALUES), min_size=1, max_size=3),  # a non-dict among dicts
    ODD_VALUES,  # not a list of records at all
)


@SETTINGS
@given(records=ODD_BATCH)
# integers beyond float range and beyond Python's int-to-text digit limit, and a numeric string of 5000 digits
@example(records=[{**GOOD, "x": 10 ** 400}])
@example(records=[{**GOOD, "tags": 10 ** 5000}])
@example(records=[{**GOOD, "b": 10 ** 5000}])
@example(records=[{**GOOD, "x": "1" * 5000}])
def test_malformed_records_are_scored_or_refused_in_one_line(records, predictor):
    try:
        scores = predictor.predict(records)
    except LightFMPError as e:
        assert "\n" not in str(e) and str(e).strip(), repr(str(e)[:300])
        return
    scores = np.asarray(scores)
    assert scores.ndim == 1 and np.all((scores >= 0) & (scores <= 1)), scores


def test_good_records_are_scored(predictor):
    """The baseline the malformed records are made from is itself valid."""
    scores = predictor.predict([GOOD, {**GOOD, "tags": ["p", "s"]}])
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))

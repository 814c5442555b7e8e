"""The Predictor (raw records -> probabilities) and the dependency-free example client."""
import datetime
import decimal
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lightfmp import pipeline
from lightfmp.config import RunConfig
from lightfmp.errors import LightFMPError
from lightfmp.export import export_run
from lightfmp.schema import FeatureSchema
from lightfmp.serving import Predictor
from test_export import get_export, held_out_rows, shared, torch_probs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "serve_onnx.py"


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    return shared(tmp_path_factory)


def _records(df: pd.DataFrame) -> list[dict]:
    # CSV text as a JSON client would send it: missing cells as null
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


@pytest.mark.parametrize("mode", ["ids", "raw"])
def test_predictor_on_raw_records_equals_model_on_encoded_rows(s, mode):
    run = s["runs"]["mlp"]
    df = held_out_rows(run)
    p = Predictor(get_export(s, "mlp", inputs=mode))
    got = p.predict(_records(df))
    assert got.shape == (len(df),)
    assert np.abs(got - torch_probs(run, df)).max() <= 1e-5
    assert np.abs(p.predict(df) - got).max() == 0  # a DataFrame gives the same
    assert np.abs(p.predict(pa.Table.from_pandas(df, preserve_index=False)) - got).max() == 0  # and an Arrow table
    with pytest.raises(LightFMPError, match=re.escape("got a dict of columns; pass pandas.DataFrame(it)")):
        p.predict({c: df[c].tolist() for c in df.columns})
    with pytest.raises(LightFMPError, match=re.escape("got a pandas Series; pass [series.to_dict()]")):
        p.predict(df.iloc[0])  # one row of the frame: its values are not records
    records = df.apply(lambda r: r.to_dict(), axis=1)  # a Series of records is records
    assert np.array_equal(p.predict(records), p.predict(df))
    assert p.predict([df.iloc[0].to_dict()])[0] == p.predict(df.iloc[:1])[0]  # the way the message says


def test_predictor_typed_values_extra_columns_and_unseen(s):
    p = Predictor(get_export(s, "mlp"))
    base = {"city": "paris", "dev": "3", "price": "4.5", "tags": "a|b", "noise": "1"}
    typed = {"city": "paris", "dev": 3, "price": 4.5, "tags": ["a", "b"], "noise": 1.0, "unused": {"x": 1}}
    a, b = p.predict([base, typed])
    assert a == b
    unseen = p.predict([{**base, "city": "atlantis"}, {**base, "city": None}, {**base, "tags": "a|qqq|b"}])
    assert unseen[0] == unseen[1]  # unseen and missing both read the OOV row
    assert p.predict([]).shape == (0,)
    missing_key = p.predict([base, {k: v for k, v in base.items() if k != "price"}])
    assert missing_key.shape == (2,)
    # numpy's missing values are missing too, not the text 'nan' / 'NaT' (a category, or a hashed token)
    numpy_missing = p.predict([{**base, "city": np.float32("nan"), "price": np.float16("nan"), "tags": np.float32("nan")},
                               {**base, "city": np.datetime64("NaT"), "price": None, "tags": None},
                               {**base, "city": None, "price": None, "tags": None}])
    assert numpy_missing[0] == numpy_missing[2] and numpy_missing[1] == numpy_missing[2]


def test_run_takes_text_for_a_raw_exports_fields_and_refuses_other_values(s):
    p = Predictor(get_export(s, "mlp", inputs="raw"))
    feeds = p.encode([{"city": "paris", "dev": "3", "price": "4.5", "tags": "a|b", "noise": "1"}])
    assert p.run(feeds).shape == (1,)
    text = next(n for n in p.input_names if feeds[n].dtype == object)
    for bad, says in ((np.array([b"paris"]), "holds |S5 values, expected string"),
                      (np.array([None], dtype=object), "holds None, not text (a raw export's missing value is '')"),
                      (np.array([1.5], dtype=object), "holds 1.5, not text")):
        with pytest.raises(LightFMPError, match=re.escape(f"feeds: input '{text}' {says}")):
            p.run({**feeds, text: bad})


def test_predictor_only_needs_kept_columns(s):
    p = Predictor(get_export(s, "deepfm"))
    kept = p.input_names
    df = held_out_rows(s["runs"]["deepfm"])
    got = p.predict(df[kept])
    assert np.abs(got - torch_probs(s["runs"]["deepfm"], df)).max() <= 1e-5


@pytest.mark.parametrize("field,value", [("price", "cheap"), ("price", [1.0]), ("city", ["paris"]),
                                         ("city", {"a": 1}), ("tags", {"a": 1}), ("price", True)])
def test_predictor_wrong_type_names_field_and_value(s, field, value):
    p = Predictor(get_export(s, "mlp"))
    rec = {"city": "paris", "dev": "3", "price": 4.5, "tags": "a", "noise": "1", field: value}
    with pytest.raises(LightFMPError) as e:
        p.predict([rec])
    assert f"'{field}'" in str(e.value) and repr(value)[:6] in str(e.value)


def test_predictor_missing_kept_column(s):
    p = Predictor(get_export(s, "deepfm"))
    missing = p.input_names[0]
    rec = {n: "x" for n in p.input_names if n != missing}
    with pytest.raises(LightFMPError, match=f"'{missing}'"):
        p.predict([rec])


def test_predictor_bad_dir(tmp_path):
    with pytest.raises(LightFMPError, match="not a lightfmp export"):
        Predictor(tmp_path)


def test_example_client_runs_without_torch(s, tmp_path):
    out = get_export(s, "mlp")
    df = held_out_rows(s["runs"]["mlp"]).head(25)
    recs = _records(df)
    recs[0]["tags"] = ["a", "b"]
    src = tmp_path / "r.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in recs))
    # -S-free but torch-free: the example must not import torch or lightfmp
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code + "; import sys as s; assert 'torch' not in s.modules "
                          "and 'lightfmp' not in s.modules", str(EXAMPLE), str(out), str(src)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = np.array([json.loads(line)["probability"] for line in res.stdout.splitlines()])
    assert np.abs(got - Predictor(out).predict(recs)).max() <= 1e-6
    demo = subprocess.run([sys.executable, str(EXAMPLE), str(get_export(s, "mlp", inputs="raw"))],
                          capture_output=True, text=True, timeout=60)
    assert demo.returncode == 0 and len(demo.stdout.splitlines()) == 3, demo.stderr


def test_example_client_refuses_a_schema_of_another_shape_and_records_not_utf8_in_one_line(s, tmp_path):
    import shutil
    shutil.copytree(get_export(s, "mlp"), tmp_path / "e")
    schema = json.loads((tmp_path / "e" / "feature_schema.json").read_text())
    (tmp_path / "bad.jsonl").write_bytes(b'{"city": "\xff"}\n')
    r = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "e"), str(tmp_path / "bad.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'bad.jsonl'}: not UTF-8 text", r.stderr
    for shape in ({k: v for k, v in schema.items() if k != "inputs"}, [schema], {**schema, "schema_version": "3"},
                  {**schema, "inputs": [{k: v for k, v in i.items() if k != "kind"} for i in schema["inputs"]]}):
        (tmp_path / "e" / "feature_schema.json").write_text(json.dumps(shape))
        r = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "e")], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "not a feature schema this client reads" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# ---- the example client encodes and refuses as the Predictor does ---------------------------------------------------
GOOD = {"city": "paris", "dev": 3, "price": 4.5, "tags": "a|b", "noise": 1}


def test_example_reads_a_missing_number_as_training_does(example):
    from lightfmp.encoding import MISSING_TEXT
    assert example.MISSING_TEXT == MISSING_TEXT


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("serve_onnx_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("mode", ["ids", "raw"])
def test_example_encodes_like_the_predictor(s, example, mode):
    out = get_export(s, "mlp", inputs=mode)
    recs = [GOOD, {k: v for k, v in GOOD.items() if k != "price"},       # a key absent from one record: missing
            {**GOOD, "city": True}, {**GOOD, "noise": False},               # bools: the categories 'True' / 'False'
            {**GOOD, "tags": ["a", "b"]}, {**GOOD, "tags": ["b", 3]}, {**GOOD, "tags": []}, {**GOOD, "tags": None},
            {**GOOD, "tags": True}, {**GOOD, "tags": "a|zzz|b|c|d|e|f"}, {**GOOD, "dev": 3.0}, {**GOOD, "dev": "3"},
            {**GOOD, "dev": 3.5}, {**GOOD, "price": "4.5"}, {**GOOD, "price": ""}, {**GOOD, "price": None},
            {**GOOD, "city": None}, {**GOOD, "city": ""}, {**GOOD, "city": "atlantis"},
            {**GOOD, "price": "NA"}, {**GOOD, "price": " NULL "}, {**GOOD, "city": "NA"}]  # missing in a number only
    p, c = Predictor(out), example.Client(out)
    want, got = p.encode(recs), c.encode(recs)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert np.array_equal(got[name], want[name], equal_nan=want[name].dtype == np.float32), name
    assert np.array_equal(c.predict(recs), p.predict(recs))
    assert len(set(p.predict(recs[:4]).tolist())) > 1  # the edits above do reach the model


@pytest.mark.parametrize("records", [
    [["paris"]], [GOOD, 3], [GOOD, "city=paris"],                             # not a dict
    [{k: v for k, v in GOOD.items() if k != "city"}],                        # a kept field in no record
    [{**GOOD, "price": True}], [{**GOOD, "price": [1.0]}], [{**GOOD, "price": "cheap"}],
    [{**GOOD, "city": ["paris"]}], [{**GOOD, "city": {"a": 1}}], [{**GOOD, "tags": {"a": 1}}],
    [{**GOOD, "tags": [True]}], [{**GOOD, "tags": ["a", 1.5]}], [{**GOOD, "tags": [None]}],
])
def test_example_refuses_what_the_predictor_refuses(s, example, records):
    out = get_export(s, "mlp")
    with pytest.raises(LightFMPError) as want:
        Predictor(out).predict(records)
    with pytest.raises(example.ServeError) as got:
        example.Client(out).predict(records)
    assert str(got.value) == str(want.value) and "\n" not in str(got.value)



# text a numeric field may receive: numbers, missing spellings, and what Python's float() reads but training does not
NUMBER_TEXT = ["4.5", " 12 ", "+3", ".5", "1e5", "Infinity", "-inf", "1e999", "NaN", " NULL ", "", "1_000", "\u0661\u0662",
               "+nan", "nAn", "0x10", "1,5", "cheap", "\u00a012"]


@pytest.mark.parametrize("text", NUMBER_TEXT)
def test_a_numeric_text_reads_as_training_reads_it(s, example, text):
    """A numeric field's text is read by training's rule (`encoding.as_float`), in the Predictor and the example
    client alike: the same value, or the same one-line refusal."""
    from lightfmp.encoding import as_float
    out = get_export(s, "mlp", inputs="raw")
    recs = [GOOD, {**GOOD, "price": text}]
    try:
        want = as_float(pd.Series([text], dtype=object), "price")[0]
    except LightFMPError:
        want = None
    if want is None:
        with pytest.raises(LightFMPError) as refused:
            Predictor(out).encode(recs)
        assert str(refused.value) == f"record 1, field 'price' is numeric but got {text!r} (str)"
        with pytest.raises(example.ServeError) as got:
            example.Client(out).encode(recs)
        assert str(got.value) == str(refused.value)
        return
    p, c = Predictor(out).encode(recs)["price"], example.Client(out).encode(recs)["price"]
    assert np.array_equal(p, np.array([4.5, want], np.float32), equal_nan=True)
    assert np.array_equal(c, p, equal_nan=True)


def test_a_numeric_field_refuses_the_first_bad_record_of_any_kind(s):
    """Text is checked column-wise and other values one by one; the refusal still names the first bad record."""
    out = get_export(s, "mlp", inputs="raw")
    text, listed, huge = {**GOOD, "price": "1_000"}, {**GOOD, "price": [1.0]}, {**GOOD, "price": 10 ** 400}
    for recs, why in [([GOOD, text, listed], "'1_000' (str)"), ([GOOD, listed, text], "[1.0] (list)"),
                      ([GOOD, huge, text], "<an integer of 1329 bits> (int)")]:
        with pytest.raises(LightFMPError, match=re.escape(f"record 1, field 'price' is numeric but got {why}")):
            Predictor(out).encode(recs)



@pytest.mark.parametrize("known", [set(), {"16"}, {"16.0"}, {"16", "16.0"}])
def test_a_whole_number_takes_the_spelling_the_vocabulary_has(example, known):
    """A CSV keeps each cell's text, and pandas writes an integer column with gaps as 16.0: a served 16 or 16.0
    reads '16.0' where only that is known, '16' otherwise, in the Predictor and the example client alike."""
    from lightfmp.serving import _token
    from lightfmp.schema import Field
    f = Field("cnt", "categorical", vocab=sorted(known))
    want = "16.0" if known == {"16.0"} else "16"
    for v in (16, 16.0, np.int64(16), np.float32(16.0)):
        assert _token(f, v, known) == want, v
    for v in (16, 16.0):
        assert example.token({"name": "cnt", "kind": "categorical"}, v, known) == want, v
    assert _token(f, 16.5, known) == example.token({}, 16.5, known) == "16.5"


def test_a_time_served_to_a_numeric_field_is_its_seconds_as_in_training():
    """A field trained from a Parquet timestamp holds seconds since 1970 UTC: a served datetime (naive read as UTC,
    as Arrow stores it; aware converted) is those seconds, the same as the training path gives."""
    import datetime
    import pyarrow as pa
    from lightfmp.encoding import numbers
    from lightfmp.schema import Field
    from lightfmp.serving import _numbers
    when = [pd.Timestamp("2024-03-05 10:30"), datetime.datetime(2024, 3, 5, 10, 30, tzinfo=datetime.timezone.utc),
            np.datetime64("2024-03-05T10:30"), pd.Timestamp("2024-03-05 11:30", tz="Europe/Paris"), None,
            np.datetime64("NaT"), 5.0]
    got = _numbers(Field("t", "numeric"), pd.Series(when, dtype=object)).to_numpy()
    trained = numbers(pa.array([pd.Timestamp("2024-03-05 10:30")] * 4 + [None, None]), "t")
    assert np.array_equal(got[:6], trained, equal_nan=True) and got[6] == 5.0
    lasted = [datetime.timedelta(seconds=90), pd.Timedelta("90s"), np.timedelta64(90, "s")]  # a duration: seconds
    got = _numbers(Field("d", "numeric"), pd.Series(lasted, dtype=object)).to_numpy()
    assert np.array_equal(got, numbers(pa.array([pd.Timedelta("90s")] * 3), "d"))


def test_a_date_or_time_served_to_a_categorical_field_is_keyed_as_training_keyed_it():
    """A Parquet date or timestamp column made categorical is keyed by its cells' text ('2024-01-10',
    '2024-01-10 05:00:00'): the Predictor keys a served date, datetime or Timestamp the same, not refuse it."""
    import datetime
    import pyarrow as pa
    from lightfmp.encoding import tokens
    from lightfmp.schema import Field
    from lightfmp.serving import _token
    f = Field("d", "categorical", vocab=[])
    for trained, served in ((datetime.date(2024, 1, 10), [datetime.date(2024, 1, 10)]),
                            (pd.Timestamp("2024-01-10 05:00"), [pd.Timestamp("2024-01-10 05:00"),
                                                                datetime.datetime(2024, 1, 10, 5),
                                                                np.datetime64("2024-01-10T05:00")]),
                            (pd.Timestamp("2024-01-10 05:00", tz="Europe/Paris"),
                             [pd.Timestamp("2024-01-10 05:00", tz="Europe/Paris")]),
                            (datetime.time(10, 30), [datetime.time(10, 30)]),
                            (pd.Timedelta("5s"), [pd.Timedelta("5s"), datetime.timedelta(seconds=5),
                                                  np.timedelta64(5, "s")])):
        key = tokens(pa.array([trained])).values.to_pylist()[0]
        assert [_token(f, v, set()) for v in served] == [key] * len(served), trained


def test_a_fraction_near_a_short_category_is_not_that_category(example):
    """float16 keeps about 3 digits: 2.5005 is not the category '2.5' of a CSV's text, nor 0.30000000000000004 the
    category '0.3'; a float32 or float16 column's own texts are looked for only where longer than the value needs."""
    from lightfmp.schema import Field
    from lightfmp.serving import _token
    known = {"2.5", "0.375", "0.0999755859375", "0.20000000298023224"}
    f = Field("c", "categorical", vocab=sorted(known))
    served = [2.5005, 0.37501, 0.1, 0.2]
    want = ["2.5005", "0.37501", "0.0999755859375", "0.20000000298023224"]
    assert [_token(f, v, known) for v in served] == want
    assert [example.token({"name": "c", "kind": "categorical"}, v, known) for v in served] == want


@pytest.mark.parametrize("fraction", ["0.2", "0.20000000298023224"])
def test_a_float32_value_sent_as_its_long_text_hashes_alike_in_the_predictor_and_the_client(example, fraction):
    """Java, Go or numpy's .item() write a float32 0.2 as 0.20000000298023224: both encoders hash it in the field's
    recorded spelling."""
    from lightfmp.schema import Field
    from lightfmp.serving import _known, _token
    spelling = {"whole": "16", "bool": "True", "empty": "missing", "fraction": fraction}
    f = Field("c", "categorical", hash_buckets=64, spelling=spelling)
    for v in (0.20000000298023224, 0.2, 0.5, 1234567.25):
        ours = _token(f, v, _known(f))
        assert ours == example.token({"name": "c", "kind": "categorical"}, v, example.Spelled(spelling)), v
        assert ours == ("0.2" if fraction == "0.2" and v in (0.2, 0.20000000298023224) else
                        "0.20000000298023224" if v in (0.2, 0.20000000298023224) else str(v))


@pytest.mark.parametrize("trained,served", [
    (pa.array(["true", "false"]), [True, np.bool_(True)]),                      # a CSV's text: 'true'
    (pa.array([True, False]), [True, np.bool_(True)]),                          # a typed column's: 'True'
    (pa.array([datetime.date(2024, 1, 3)]), [pd.Timestamp("2024-01-03"), datetime.datetime(2024, 1, 3),
                                             np.datetime64("2024-01-03")]),     # a date32 column, sent as times
    (pa.array(["2024-01-03T05:00:00"]), [pd.Timestamp("2024-01-03 05:00")]),    # a text file's ISO cells
    (pa.array([0.2], type=pa.float32()), [0.2, np.float32(0.2)]),               # a float32 column: its float64 text
    (pa.array(["0.2"]), [0.2, np.float32(0.2)]),
    (pa.array([np.float16(0.1)], type=pa.float16()), [0.1, np.float16(0.1)]),   # a float16 column: its float64 text
    (pa.array([pd.Timestamp("2024-01-02", tz="UTC")]),                          # a tz-aware column, sent naive
     [pd.Timestamp("2024-01-02"), datetime.datetime(2024, 1, 2), pd.Timestamp("2024-01-02 01:00", tz="Europe/Paris")]),
    (pa.array([b"a"]), [b"a"]),                                                 # a binary column: not refused
])
def test_a_typed_value_takes_the_spelling_training_keyed(example, trained, served):
    """A value can reach the Predictor typed otherwise than training read it (pandas reads a CSV's true as a
    bool, a date32 column comes back as Timestamps, JSON has no float32): of the texts training may have keyed it
    by, the one the vocabulary holds is used, never an unseen spelling of a seen value."""
    from lightfmp.encoding import tokens
    from lightfmp.schema import Field
    from lightfmp.serving import _token
    key = tokens(trained).values.to_pylist()[0]
    known = set(tokens(trained).values.to_pylist())
    f = Field("c", "categorical", vocab=sorted(known))
    assert [_token(f, v, known) for v in served] == [key] * len(served), (key, served)
    json_values = [v for v in served if type(v) in (bool, float)]  # what the example client is sent (JSON)
    assert [example.token({"name": "c", "kind": "categorical"}, v, known) for v in json_values] \
        == [key] * len(json_values), (key, json_values)


def test_a_csv_bool_column_is_scored_as_trained(tmp_path):
    """End to end: a CSV column of true / false trains on its text; the same file read by pandas (bools) scores
    exactly as the text does, not as unseen values."""
    rng = np.random.default_rng(0)
    flag = rng.random(600) < 0.5
    df = pd.DataFrame({"flag": np.where(flag, "true", "false"), "g": rng.integers(0, 5, 600).astype(str),
                       "label": (rng.random(600) < np.where(flag, 0.8, 0.2)).astype(int)})
    df.to_csv(tmp_path / "d.csv", index=False)
    cfg = RunConfig.of(data=str(tmp_path / "d.csv"), label="label", categorical="flag,g", epochs=2, embed_dim=4,
                       hidden="8", batch_size=128, device="cpu", no_select=True)
    pipeline.run(cfg, tmp_path / "run", quiet=True)
    export_run(tmp_path / "run", tmp_path / "exp")
    p = Predictor(tmp_path / "exp")
    read = pd.read_csv(tmp_path / "d.csv").drop(columns="label")
    assert read["flag"].dtype == bool
    assert np.array_equal(p.predict(read), p.predict(read.astype({"flag": str}).replace({"True": "true",
                                                                                         "False": "false"})))
    assert p.encode(read)["flag"].min() >= 2  # no row read as the OOV id (1)


def test_a_hashed_field_hashes_a_typed_value_as_training_spelled_it(tmp_path, example):
    """A hashed field has no vocabulary to choose a spelling from: its fit records how the training text spelled
    whole numbers and booleans ('16.0' for an integer column with gaps, 'true' for a CSV's text), and the Predictor
    and the example client hash a value read back by pandas (16.0 -> 16.0, True) in that spelling."""
    rng = np.random.default_rng(0)
    n = 2000
    flag = rng.random(n) < 0.5
    dev = rng.integers(0, 6, n).astype(float)
    dev[::17] = np.nan  # pandas writes the column as 3.0, 4.0, ...
    df = pd.DataFrame({"flag": np.where(flag, "true", "false"), "dev": dev, "u": rng.integers(0, 50, n).astype(str),
                       "label": (rng.random(n) < np.where(flag, 0.8, 0.2)).astype(int)})
    df.to_csv(tmp_path / "d.csv", index=False)
    cfg = RunConfig.of(data=str(tmp_path / "d.csv"), label="label", categorical="flag,dev,u", epochs=2, embed_dim=4,
                       hidden="8", batch_size=128, device="cpu", no_select=True, hash_buckets="flag:64,dev:64")
    pipeline.run(cfg, tmp_path / "run", quiet=True)
    spelled = {f.name: f.spelling for f in pipeline.open_run(tmp_path / "run").schema.fields}
    assert spelled == {"flag": {"whole": "16", "bool": "true", "empty": "missing", "fraction": "0.2"},
                       "dev": {"whole": "16.0", "bool": "True", "empty": "missing", "fraction": "0.2"}, "u": None}
    export_run(tmp_path / "run", tmp_path / "exp")
    p = Predictor(tmp_path / "exp")
    read = pd.read_csv(tmp_path / "d.csv").drop(columns="label")  # bools and floats
    text = pd.read_csv(tmp_path / "d.csv", dtype=str, keep_default_na=False).drop(columns="label")  # as trained
    assert read["flag"].dtype == bool and read["dev"].dtype == float
    assert np.array_equal(p.predict(read), p.predict(text.replace({"dev": {"": None}})))
    records = [{"flag": bool(f), "dev": None if np.isnan(d) else int(d), "u": str(u)}
               for f, d, u in zip(read["flag"], read["dev"], read["u"])]
    client = example.Client(tmp_path / "exp")
    assert np.abs(client.predict(records) - p.predict(read)).max() <= 1e-6
    # the spelling describes the data, not the schema file: the same schema on typed Parquet data fits its own
    df.astype({"dev": "Int64"}).assign(flag=flag).to_parquet(tmp_path / "d.parquet", index=False)
    cfg2 = cfg.but(data=str(tmp_path / "d.parquet"), schema=str(tmp_path / "run" / "schema.json"), categorical=[])
    pipeline.run(cfg2, tmp_path / "run2", quiet=True)
    spelled = {f.name: f.spelling for f in pipeline.open_run(tmp_path / "run2").schema.fields}
    assert spelled["dev"] == spelled["flag"] == {"whole": "16", "bool": "True", "empty": "missing", "fraction": "0.2"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_hashed_field_reads_a_served_empty_text_as_training_read_it(tmp_path, example, fmt):
    """A text file's empty cell is a missing value: a hashed field trained on one reads a served '' as missing (the
    OOV id), as a vocabulary without '' does; a Parquet '' is a value of its own and is hashed. Before, a served ''
    was hashed whatever the training data, and the rows with a blank cell scored otherwise than trained."""
    rng = np.random.default_rng(0)
    city = rng.choice(["paris", "rome", ""], 900)
    df = pd.DataFrame({"city": city, "x": rng.normal(size=900),
                       "label": (rng.random(900) < np.where(city == "", 0.8, 0.3)).astype(int)})
    path = tmp_path / f"d.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    pipeline.run(RunConfig.of(data=str(path), label="label", categorical="city", hash_buckets="city:40", epochs=1,
                              embed_dim=4, hidden="8", device="cpu", no_select=True), tmp_path / "run", quiet=True)
    export_run(tmp_path / "run", tmp_path / "exp")
    held = held_out_rows(tmp_path / "run")
    want = torch_probs(tmp_path / "run", held)
    sent = held.assign(city=held["city"].fillna(""))  # blank cells as the text a JSON client sends
    assert (sent["city"] == "").sum() > 10
    p = Predictor(tmp_path / "exp")
    assert np.abs(p.predict(sent) - want).max() <= 1e-5
    assert np.abs(example.Client(tmp_path / "exp").predict(sent.to_dict("records")) - want).max() <= 1e-5
    empty = p.encode([{"city": "", "x": 0.0}])["city"][0]
    assert (empty == 1) == (fmt == "csv")  # the OOV id only where '' was never a value


def test_a_hashed_float32_field_hashes_a_served_float_as_training_spelled_it(tmp_path, example):
    """A float32 column's values train as their float64 texts ('0.20000000298023224'); JSON has no float32, so a
    client sends 0.2. A vocabulary holds the trained text and picks it; a hashed field has none, so its fit records
    the spelling ("fraction") and the Predictor and the example client hash the served 0.2 as training did. Before,
    they hashed '0.2': every row scored as an unseen value, silently."""
    rng = np.random.default_rng(0)
    score = rng.choice(np.array([0.1, 0.2, 0.3, 0.7, 0.9], dtype=np.float32), 1200)
    df = pd.DataFrame({"score": score, "g": rng.integers(0, 5, 1200).astype(str),
                       "label": (rng.random(1200) < np.where(score > 0.5, 0.8, 0.2)).astype(int)})

    def trained(frame, name):  # the run's spelling of 'score', its export, and the model's scores of its test rows
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
        pipeline.run(RunConfig.of(data=str(tmp_path / f"{name}.parquet"), label="label", categorical="score,g",
                                  hash_buckets="score:64", epochs=1, embed_dim=4, hidden="8", device="cpu",
                                  no_select=True), tmp_path / name, quiet=True)
        export_run(tmp_path / name, tmp_path / f"{name}_exp")
        held = held_out_rows(tmp_path / name)
        return (pipeline.open_run(tmp_path / name).schema.field("score").spelling["fraction"],
                Predictor(tmp_path / f"{name}_exp"), held, torch_probs(tmp_path / name, held))

    assert df["score"].dtype == np.float32
    fraction, p, held, want = trained(df, "single")
    assert fraction == "0.20000000298023224"
    sent = [{"score": float(str(np.float32(v))), "g": g} for v, g in zip(held["score"], held["g"])]  # JSON's 0.2
    assert sent[0]["score"] in (0.1, 0.2, 0.3, 0.7, 0.9)
    assert np.abs(p.predict(sent) - want).max() <= 1e-5
    assert np.abs(p.predict(held) - want).max() <= 1e-5  # float32 values as read back
    assert np.abs(example.Client(tmp_path / "single_exp").predict(sent) - want).max() <= 1e-5
    # a float64 column of the values sent (0.2) spells them as written, and a float32 0.2 sent to it is 0.2 too
    fraction, p, _, want = trained(df.assign(score=[float(str(v)) for v in score]), "double")
    assert fraction == "0.2"
    assert np.abs(p.predict(sent) - want).max() <= 1e-5
    singles = [{"score": np.float32(r["score"]), "g": r["g"]} for r in sent]  # numpy float32 values
    assert np.abs(p.predict(singles) - want).max() <= 1e-5


def test_a_parquet_binary_or_decimal_category_is_scored_from_what_a_json_client_sends(tmp_path, example):
    """A BINARY column of strings (older Hive and Impala write strings so) trains on their UTF-8 text and a decimal
    column on the numbers it holds (0.50 -> '0.5'): a JSON client's 'k3' and 0.5 score as trained. Before, the
    vocabularies held "b'k3'" and '0.50', and every served value was an unseen one, silently."""
    import decimal
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    n = 1500
    k = rng.integers(0, 6, n)
    price = rng.choice([decimal.Decimal("0.50"), decimal.Decimal("2.00"), decimal.Decimal("1.25")], n)
    table = pa.table({"site": pa.array([f"k{v}".encode() for v in k], pa.binary()),
                      "price": pa.array(price, pa.decimal128(6, 2)),
                      "label": (rng.random(n) < np.where(k > 2, 0.8, 0.2)).astype(int)})
    pq.write_table(table, tmp_path / "d.parquet")
    pipeline.run(RunConfig.of(data=str(tmp_path / "d.parquet"), label="label", categorical="site,price", epochs=1,
                              embed_dim=4, hidden="8", device="cpu", no_select=True), tmp_path / "run", quiet=True)
    schema = pipeline.open_run(tmp_path / "run").schema
    assert sorted(schema.field("site").vocab) == [f"k{v}" for v in range(6)]
    assert sorted(schema.field("price").vocab) == ["0.5", "1.25", "2"]
    export_run(tmp_path / "run", tmp_path / "exp")
    held = held_out_rows(tmp_path / "run")
    want = torch_probs(tmp_path / "run", held)
    sent = [{"site": s.decode(), "price": float(p)} for s, p in zip(held["site"], held["price"])]
    p = Predictor(tmp_path / "exp")
    assert np.abs(p.predict(sent) - want).max() <= 1e-5
    assert np.abs(p.predict(held) - want).max() <= 1e-5  # bytes and Decimals, as pandas reads the file back
    assert np.abs(example.Client(tmp_path / "exp").predict(sent) - want).max() <= 1e-5


def test_a_schema_fitted_before_bytes_were_read_as_text_is_refused_on_such_a_column(tmp_path):
    """A run fitted by an older lightfmp holds "b'k3'" for a binary column: pruning or resuming it re-encodes the
    data, which now reads 'k3', so every value would be unseen, silently. Its schema lacks the text rule's version:
    refused in one line naming the column; a schema fitted now has it and encodes as it did."""
    import pyarrow.parquet as pq
    from lightfmp.config import DataConfig
    from lightfmp.dataset import load_dataset
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"site": pa.array([f"k{v}".encode() for v in rng.integers(0, 4, 300)], pa.binary()),
                             "label": rng.integers(0, 2, 300)}), tmp_path / "d.parquet")
    cfg = DataConfig(data=str(tmp_path / "d.parquet"), label="label", categorical=["site"])
    fitted = load_dataset(cfg).schema
    assert fitted.meta["text_rule"] == 2 and sorted(fitted.field("site").vocab) == ["k0", "k1", "k2", "k3"]
    again = load_dataset(cfg, schema=fitted)
    assert (again.split_rows("train").arrays()[0] >= 2).all()
    older = FeatureSchema.from_dict({**fitted.to_dict(), "meta": {}})
    with pytest.raises(LightFMPError, match="column 'site' is binary, and the schema's vocabulary of it was fitted "
                                            "by an older lightfmp"):
        load_dataset(cfg, schema=older)


def test_a_vocabulary_written_before_bytes_were_read_as_text_still_finds_them():
    from lightfmp.encoding import value_text
    from lightfmp.schema import Field
    from lightfmp.serving import _known, _token
    known = {"b'k3'", "b'\\xc3\\xa9'", "0.50"}
    f = Field("c", "categorical", vocab=sorted(known))
    assert [_token(f, v, known) for v in ("k3", b"k3", "\u00e9", decimal.Decimal("0.50"), "k4")] == \
        ["b'k3'", "b'k3'", "b'\\xc3\\xa9'", "0.50", "k4"]
    old = {"whole": "16", "bool": "True", "empty": "missing"}  # a hashed field's spelling written before
    for spelling, want in ((old, ["b'k3'", "0.50"]), ({**old, "fraction": "0.2"}, ["k3", "0.5"])):
        h = Field("h", "categorical", hash_buckets=64, spelling=spelling)
        assert [_token(h, v, _known(h)) for v in (b"k3", decimal.Decimal("0.50"))] == want
    assert [value_text(v) for v in (b"k3", b"\xff", decimal.Decimal("0.50"), decimal.Decimal("2.00"),
                                    decimal.Decimal("1E+30"), "x", None)] == \
        ["k3", "b'\\xff'", "0.5", "2", "1" + "0" * 30, "x", None]


def test_an_arrow_tables_ints_stay_exact_and_list_tokens_take_the_vocabularys_spelling():
    """An Arrow int column with nulls is not made float on its way to pandas (ids past 2**53 would round); a
    multi-hot list's number tokens are spelled as the vocabulary holds them, as a scalar value is."""
    from lightfmp.schema import Field
    from lightfmp.serving import _frame, _value_rule
    big = 2 ** 60 + 3
    frame = _frame(pa.table({"id": pa.array([big, None], type=pa.int64())}))
    assert frame["id"].tolist()[0] == big
    f = Field("t", "multi_hot", vocab=["16.0", "a"], separator="|", max_len=2)
    assert _value_rule(f)([16, "a"]) == "16.0|a"


def test_an_id_past_2_53_is_keyed_exactly_beside_a_gap():
    """Records become object columns value by value: an int column with a gap is not made float (which rounds
    ids past 2**53 onto their neighbours), so the key is training's (`encoding.tokens`)."""
    import pyarrow as pa
    from lightfmp.encoding import tokens
    from lightfmp.schema import Field
    from lightfmp.serving import _check_column, _frame
    big = 2 ** 53 + 1
    want = tokens(pa.array([big, None])).values.to_pylist()
    f = Field("id", "categorical", vocab=want)
    for recs in ([{"id": big}, {"id": None}], [{"id": big}, {}], [{"id": big}, {"id": 7.0}]):
        assert _check_column(f, _frame(recs)["id"]).tolist()[0] == str(big) == want[0], recs


def test_records_holding_a_model_column_twice_are_refused_naming_it(s):
    d = pd.DataFrame([GOOD] * 3)
    with pytest.raises(LightFMPError, match="records hold column 'city' twice"):
        Predictor(get_export(s, "mlp")).predict(pd.concat([d, d[["city"]]], axis=1))


def test_an_edit_of_how_values_are_encoded_is_refused_and_other_edits_are_not(s, tmp_path):
    """feature_schema.json's files are checked by sha256, so an edit that swaps two fields' vocab files (with their
    hashes) or a separator passed that check and changed every prediction silently; the copy of the contract inside
    model.onnx now decides. The Triton name may still be edited."""
    d = tmp_path / "x"
    shutil.copytree(get_export(s, "mlp"), d)
    doc = json.loads((d / "feature_schema.json").read_text())
    cats = [i for i in doc["inputs"] if i.get("vocab_file")]
    a, b = cats[0], cats[1]
    for k in ("vocab_file", "vocab_sha256", "vocab_size"):
        a[k], b[k] = b[k], a[k]
    (d / "feature_schema.json").write_text(json.dumps(doc))
    with pytest.raises(LightFMPError, match=rf"feature_schema.json: input '{a['name']}' vocab_file .* differs from the "
                                            rf".* model.onnx was exported with"):
        Predictor(d)
    shutil.rmtree(d)
    shutil.copytree(get_export(s, "mlp"), d)
    doc = json.loads((d / "feature_schema.json").read_text())
    doc["triton_model"] = "renamed"
    doc["inputs"] = doc["inputs"][::-1]  # feeds go by name: the order is not how a value is encoded
    (d / "feature_schema.json").write_text(json.dumps(doc))
    assert len(Predictor(d).predict([GOOD])) == 1

def test_a_large_batch_is_scored_in_slices(s, monkeypatch):
    """ONNX Runtime's memory grows with a call's rows: more than RUN_ROWS rows go through in slices, with the
    outputs of one call."""
    import lightfmp.serving as serving
    p = Predictor(get_export(s, "mlp"))
    recs = [{**GOOD, "dev": d, "price": 0.5 * d} for d in range(12)]
    whole = p.predict(recs)
    calls = []

    class Counting:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            calls.append(len(next(iter(feeds.values()))))
            return self.session.run(names, feeds)

    p.session = Counting(p.session)
    monkeypatch.setattr(serving, "RUN_ROWS", 5)
    sliced = p.predict(recs)
    assert calls == [5, 5, 2] and sliced.shape == whole.shape
    np.testing.assert_allclose(sliced, whole, rtol=0, atol=1e-6)

def test_a_string_of_records_is_refused_as_a_whole():
    """A string is iterable, but its items are characters: refused as what it is, not as 'record 0 is a str'."""
    from lightfmp.serving import _frame
    for bad in ("city=paris", b"x"):
        with pytest.raises(LightFMPError, match=f"records must be a list of dicts or a DataFrame, not {type(bad).__name__}"):
            _frame(bad)


def test_example_hash_rule_matches_lightfmp(example):
    """A hashed field: the example applies the rule written in feature_schema.json, as lightfmp encodes it."""
    from lightfmp.schema import FIRST_ID, stable_hash
    values = ["paris", "", "ünïcode", "24", "a much longer value than the others"]
    want = [FIRST_ID + int(h) for h in stable_hash(np.array(values, dtype=object)) % np.uint64(97)]
    assert [example.hashed_id(v, {"first_id": FIRST_ID, "buckets": 97}) for v in values] == want


def test_example_cli_one_line_error_for_a_bad_record(s, tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(GOOD) + "\n[1, 2]\n")
    res = subprocess.run([sys.executable, str(EXAMPLE), str(get_export(s, "mlp")), str(src)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == "error: record 1 is not a dict but list"


# ---- changed, swapped or escaping files ---------------------------------------------------------------------------
def _copy(s, tmp_path) -> Path:
    d = tmp_path / "exp"
    shutil.copytree(get_export(s, "mlp"), d)
    return d


def test_example_refuses_a_schema_that_does_not_describe_the_graph_and_names_a_bad_line(s, example, tmp_path):
    """The example client checks feature_schema.json's inputs and output against the graph it loads, and names the
    line of a records file that is not JSON: one line each, exit 2."""
    d = _copy(s, tmp_path)
    doc = json.loads((d / "feature_schema.json").read_text())
    good = json.dumps(doc)
    doc["inputs"][0]["name"] = "zzz"
    (d / "feature_schema.json").write_text(json.dumps(doc))
    with pytest.raises(example.ServeError, match="its inputs / output do not match model.onnx's"):
        example.Client(d)
    (d / "feature_schema.json").write_text(good)
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(GOOD) + "\n\n{bad\n")
    res = subprocess.run([sys.executable, str(EXAMPLE), str(d), str(src)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.startswith(f"error: {src}, line 3: not JSON") and len(res.stderr.splitlines()) == 1


def test_a_changed_triton_copy_of_the_model_is_refused_and_a_removed_triton_entry_is_not_needed(s, tmp_path):
    """The Triton entry's model.onnx is the file Triton loads: a byte changed there passed every check (only the
    top-level model.onnx was hashed). Its config.pbtxt is the user's to tune, and an export without the entry serves."""
    import shutil
    d = _copy(s, tmp_path)
    name = json.loads((d / "feature_schema.json").read_text())["triton_model"]
    copy = d / "triton" / name / "1" / "model.onnx"
    blob = bytearray(copy.read_bytes())
    blob[-1] ^= 0x01
    copy.write_bytes(bytes(blob))
    with pytest.raises(LightFMPError) as e:
        Predictor(d)
    assert str(e.value) == f"{copy}: sha256 differs from feature_schema.json (the file was changed or replaced)"
    copy.unlink()  # the entry switched to another backend: its files are the user's
    (d / "triton" / name / "config.pbtxt").write_text("# tuned by hand\n")
    Predictor(d)
    shutil.rmtree(d / "triton")
    Predictor(d)


def test_changed_vocab_file_is_refused(s, example, tmp_path):
    d = _copy(s, tmp_path)
    target = d / json.loads((d / "feature_schema.json").read_text())["inputs"][0]["vocab_file"]
    vocab = json.loads(target.read_text())
    a, b = list(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # still a valid vocabulary, but not the one the model was trained with
    target.write_text(json.dumps(vocab))
    with pytest.raises(LightFMPError) as e:
        Predictor(d)
    assert str(e.value) == f"{target}: sha256 differs from feature_schema.json (the file was changed or replaced)"
    with pytest.raises(example.ServeError) as e:
        example.Client(d)
    assert str(target) in str(e.value) and "sha256 differs" in str(e.value)


def test_swapped_model_is_refused(s, tmp_path):
    d = _copy(s, tmp_path)
    shutil.copyfile(get_export(s, "mlp", dtype="fp16") / "model.onnx", d / "model.onnx")
    with pytest.raises(LightFMPError, match="sha256 differs") as e:
        Predictor(d)
    assert str(d / "model.onnx") in str(e.value) and "\n" not in str(e.value)
    res = subprocess.run([sys.executable, str(EXAMPLE), str(d)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert str(d / "model.onnx") in res.stderr and "sha256 differs" in res.stderr


@pytest.mark.parametrize("value", ["../outside.json", "/etc/hostname"])
def test_vocab_path_outside_the_export_is_refused(s, example, tmp_path, value):
    d = _copy(s, tmp_path)
    doc = json.loads((d / "feature_schema.json").read_text())
    shutil.copyfile(d / doc["inputs"][0]["vocab_file"], tmp_path / "outside.json")
    doc["inputs"][0]["vocab_file"] = value
    (d / "feature_schema.json").write_text(json.dumps(doc))
    with pytest.raises(LightFMPError, match="must be a relative path inside the export directory") as e:
        Predictor(d)
    assert str(d / "feature_schema.json") in str(e.value)
    with pytest.raises(example.ServeError, match="must be a relative path inside the export"):
        example.Client(d)


def test_predictor_malformed_schema_is_one_error(s, tmp_path):
    d = _copy(s, tmp_path)
    (d / "feature_schema.json").write_text('{"inputs": [], "model_file": "model.onnx"}')
    with pytest.raises(LightFMPError) as e:
        Predictor(d)
    assert str(e.value) == f"{d / 'feature_schema.json'}: 'inputs' must be a non-empty list"


def test_a_parquet_decimal_column_is_scored_as_training_read_it(tmp_path):
    """Training reads a decimal128 column as floats; the Predictor took only Python numbers and refused the Decimal
    values the same Parquet file gives (to_pylist, an Arrow table, pandas)."""
    import decimal
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    price = rng.choice(["1.50", "2.25", "3.00", "7.75"], 600)
    table = pa.table({"label": (rng.random(600) < np.where(price == "3.00", 0.7, 0.3)).astype(np.int64),
                      "price": pa.array([decimal.Decimal(v) for v in price], pa.decimal128(5, 2)),
                      "c": rng.choice(["a", "b"], 600)})
    pq.write_table(table, tmp_path / "dec.parquet")
    pipeline.run(RunConfig.of(data=str(tmp_path / "dec.parquet"), label="label", no_select=True, epochs=1,
                              embed_dim=4, hidden="8", device="cpu"), tmp_path / "run", quiet=True)
    export_run(tmp_path / "run", tmp_path / "exp")
    held = held_out_rows(tmp_path / "run")
    assert isinstance(held["price"].iloc[0], decimal.Decimal)  # as the run's own reader gives them
    want = torch_probs(tmp_path / "run", held)
    p = Predictor(tmp_path / "exp")
    for given in (held.to_dict("records"), pa.Table.from_pandas(held, preserve_index=False)):
        assert np.abs(p.predict(given) - want).max() <= 1e-5


def _criteo_lines(path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(1500):
        ints = rng.integers(-1, 60, 13)
        cells = [str(rng.integers(0, 2))] + ["" if rng.random() < 0.1 else str(v) for v in ints] + \
            [f"{v:08x}" for v in rng.integers(0, 6, 26)]
        lines.append("\t".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return lines


def _raw_test_records(run_dir: Path, lines: list[str]) -> list[dict]:
    """The run's test rows as the raw fields of their log lines, in file order."""
    from lightfmp.formats import CRITEO_COLUMNS
    from lightfmp.pipeline import run_data
    from lightfmp.rundir import open_run
    numbers = np.sort(run_data(open_run(run_dir)).split_rows("test").row_numbers())
    return [dict(zip(CRITEO_COLUMNS, lines[i].split("\t"))) for i in numbers]


def test_a_criteo_export_scores_raw_counts_as_training_derived_them(tmp_path, example):
    """Criteo's I columns are read as floor(ln(v)^2) of the raw count; the export records that (`derive`), and the
    Predictor and the example client apply it to the raw counts of a log line. Before, a raw count was looked up
    as it was: an unseen value, every test row scored otherwise, without a word."""
    lines = _criteo_lines(tmp_path / "day.txt")
    pipeline.run(RunConfig.of(data=str(tmp_path / "day.txt"), format="criteo", no_select=True, epochs=1,
                              embed_dim=4, hidden="8", device="cpu"), tmp_path / "run", quiet=True)
    export_run(tmp_path / "run", tmp_path / "exp")
    doc = json.loads((tmp_path / "exp" / "feature_schema.json").read_text())
    assert {s["name"]: s.get("derive", {}).get("type") for s in doc["inputs"]} == \
        {**{f"I{i}": "criteo_log_square" for i in range(1, 14)}, **{f"C{i}": None for i in range(1, 27)}}
    assert doc["schema_version"] == 2  # a reader of version 1 would score raw counts as they are: it refuses
    records = _raw_test_records(tmp_path / "run", lines)
    want = torch_probs(tmp_path / "run", held_out_rows(tmp_path / "run"))
    assert np.abs(Predictor(tmp_path / "exp").predict(records) - want).max() <= 1e-5
    typed = [{k: int(v) if k.startswith("I") and v else v for k, v in r.items()} for r in records]
    assert np.abs(Predictor(tmp_path / "exp").predict(typed) - want).max() <= 1e-5  # counts as numbers too
    assert np.abs(example.Client(tmp_path / "exp").predict(records) - want).max() <= 1e-5
    with pytest.raises(LightFMPError, match=r"record 1, field 'I1' \(a Criteo count\) got '2.5'; expected an integer"):
        Predictor(tmp_path / "exp").predict([records[0], {**records[1], "I1": "2.5"}])
    with pytest.raises(example.ServeError, match=r"field 'I1' \(a Criteo count\) got '2.5'"):
        example.Client(tmp_path / "exp").predict([{**records[1], "I1": "2.5"}])
    from lightfmp.export.contract import InputSpec
    entry = next(s for s in doc["inputs"] if s["name"] == "I1")
    assert InputSpec.from_dict(entry, "f: inputs[0]").derive == "criteo_log_square"
    for bad in ({"type": "log"}, "criteo_log_square", {"rule": "v"}):
        with pytest.raises(LightFMPError, match=r"f: inputs\[0\] \('I1'\): derive"):
            InputSpec.from_dict({**entry, "derive": bad}, "f: inputs[0]")
    with_na = pd.DataFrame(records[:3])
    with_na["I1"] = pd.array([None, 38, 2], dtype="Int64")  # pandas' NA is a missing count
    assert Predictor(tmp_path / "exp").encode(with_na)["I1"][0] == 1


def test_criteo_counts_named_numeric_are_bucketized_as_derived(tmp_path, example):
    """--numeric I1,I2: their bucket edges are in derived values, so the export derives them too."""
    lines = _criteo_lines(tmp_path / "day.txt")
    pipeline.run(RunConfig.of(data=str(tmp_path / "day.txt"), format="criteo", numeric="I1,I2", no_select=True,
                              epochs=1, embed_dim=4, hidden="8", device="cpu"), tmp_path / "run", quiet=True)
    export_run(tmp_path / "run", tmp_path / "exp")
    doc = json.loads((tmp_path / "exp" / "feature_schema.json").read_text())
    kinds = {s["name"]: (s["kind"], s.get("derive", {}).get("type")) for s in doc["inputs"]}
    assert kinds["I1"] == ("numeric", "criteo_log_square") and kinds["I3"] == ("categorical", "criteo_log_square")
    records = _raw_test_records(tmp_path / "run", lines)
    want = torch_probs(tmp_path / "run", held_out_rows(tmp_path / "run"))
    assert np.abs(Predictor(tmp_path / "exp").predict(records) - want).max() <= 1e-5
    assert np.abs(example.Client(tmp_path / "exp").predict(records) - want).max() <= 1e-5


def test_a_time_field_says_what_its_number_is_and_takes_the_time_itself(tmp_path, example):
    """A numeric field read from a Parquet timestamp holds seconds since 1970 UTC, one from a duration seconds: the
    schema and the export's inputs say so (`derive`, with its rule), and the Predictor and the example client take
    a time as ISO 8601 text (a time without a zone read as UTC, as training read the column), a typed time, or its
    seconds, each scored alike; other text is refused naming the record and field."""
    rng = np.random.default_rng(0)
    n = 2000
    when = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 90 * 86400, n), unit="s")
    wait = pd.to_timedelta(rng.integers(0, 7200, n), unit="s")
    logit = (when.day_of_week.to_numpy() >= 5) + (wait.total_seconds().to_numpy() > 3600) - 0.7
    pd.DataFrame({"ts": when, "wait": wait, "c": rng.choice(list("abcd"), n),
                  "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)}).to_parquet(tmp_path / "t.parquet")
    pipeline.run(RunConfig.of(data=str(tmp_path / "t.parquet"), label="label", no_select=True, epochs=1,
                              embed_dim=4, hidden="8", device="cpu"), tmp_path / "run", quiet=True)
    fields = {f.name: f.derive for f in FeatureSchema.load(tmp_path / "run" / "schema.json").fields}
    assert fields == {"ts": "seconds_since_1970_utc", "wait": "seconds_of_duration", "c": None}
    export_run(tmp_path / "run", tmp_path / "exp")
    doc = json.loads((tmp_path / "exp" / "feature_schema.json").read_text())
    derive = {i["name"]: i.get("derive") for i in doc["inputs"]}
    assert derive["c"] is None and doc["schema_version"] == 2
    assert derive["ts"]["type"] == "seconds_since_1970_utc" and "'2024-01-10 12:00:00' -> 1704888000" in \
        derive["ts"]["rule"] and pd.Timestamp("2024-01-10 12:00:00", tz="UTC").timestamp() == 1704888000
    assert derive["wait"]["type"] == "seconds_of_duration"
    noon = pd.Timestamp("2024-01-06 12:00:00")  # a Saturday
    same = [{"ts": "2024-01-06 12:00:00", "wait": 5400, "c": "a"},
            {"ts": "2024-01-06T13:00:00+01:00", "wait": "5400", "c": "a"},
            {"ts": noon, "wait": pd.Timedelta("90min"), "c": "a"},
            {"ts": noon.timestamp(), "wait": 5400.0, "c": "a"},
            {"ts": str(int(noon.timestamp())), "wait": 5400, "c": "a"}]
    p = Predictor(tmp_path / "exp").predict(same)
    assert np.all(p == p[0])
    missing = Predictor(tmp_path / "exp").predict([{**same[0], "ts": t} for t in ("", "NA", None)])
    assert np.all(missing == missing[0]) and missing[0] != p[0]  # a missing time, however spelled
    json_rows = [{k: (v if not isinstance(v, (pd.Timestamp, pd.Timedelta)) else str(v)) for k, v in r.items()}
                 for r in same[:2] + same[3:]]
    np.testing.assert_allclose(example.Client(tmp_path / "exp").predict(json_rows), p[0], rtol=1e-6)
    assert Predictor(tmp_path / "exp").predict([{**same[0], "ts": "2024-03-20 12:00:00"}])[0] != p[0]  # another bucket
    with pytest.raises(LightFMPError, match=r"record 1, field 'ts' takes a time \(ISO 8601 text such as "
                                            r"'2024-01-10 12:00:00', or its seconds since 1970 UTC\) but got 'soon'$"):
        Predictor(tmp_path / "exp").predict([same[0], {**same[0], "ts": "soon"}])
    with pytest.raises(LightFMPError, match=r"record 0, field 'wait' takes a duration as its seconds \(a number\) "
                                            r"but got '1 days'$"):
        Predictor(tmp_path / "exp").predict([{**same[0], "wait": "1 days"}])
    with pytest.raises(example.ServeError, match=r"field 'ts' takes a time \(ISO 8601 text, or its seconds since "
                                                 r"1970 UTC\); got 'soon'"):
        example.Client(tmp_path / "exp").predict([{**same[0], "ts": "soon"}])
    from lightfmp.export.contract import InputSpec
    entry = next(i for i in doc["inputs"] if i["name"] == "c")  # a time's derive on a categorical input
    with pytest.raises(LightFMPError, match=r"f: inputs\[2\] \('c'\): derive"):
        InputSpec.from_dict({**entry, "derive": derive["ts"]}, "f: inputs[2]")


def test_an_export_that_derives_nothing_stays_schema_version_1(s):
    assert json.loads((get_export(s, "mlp") / "feature_schema.json").read_text())["schema_version"] == 1


@pytest.mark.parametrize("mode", ["ids", "raw"])
def test_predictor_run_refuses_feeds_unlike_the_graphs_inputs_in_one_line(s, mode):
    p = Predictor(get_export(s, "mlp", inputs=mode))
    feeds = p.encode(_records(held_out_rows(s["runs"]["mlp"])))
    good = p.run(feeds)
    first, other = p.input_names[0], p.input_names[-1]
    multi = next(sp.name for sp in p.bundle.inputs if sp.kind == "multi_hot")
    bad = [({k: v for k, v in feeds.items() if k != first}, f"missing '{first}'"),
           ({**feeds, "nope": feeds[first]}, "unknown 'nope'"),
           ({**feeds, other: feeds[other][:-1]}, f"'{other}' has {len(good) - 1:,} rows"),
           ({**feeds, multi: feeds[multi][:, 0]}, f"'{multi}' has shape"),
           (list(feeds.values()), "a dict of input name")]
    if mode == "ids":
        bad.append(({**feeds, first: feeds[first].astype(str)}, f"'{first}' holds <U"))
    for given, message in bad:
        with pytest.raises(LightFMPError, match=re.escape(message)):
            p.run(given)
    wide = np.concatenate([feeds[multi], feeds[multi][:, :1]], 1)  # one column more than the graph's width
    with pytest.raises(LightFMPError, match=re.escape(f"'{multi}' has shape {list(wide.shape)}")):
        p.run({**feeds, multi: wide})
    # arrays of a compatible type are taken as the graph's (lists, other int widths)
    cast = {k: (v.tolist() if v.dtype != object else v) for k, v in feeds.items()}
    assert np.array_equal(p.run(cast), good)
    for sp in (sp for sp in p.bundle.inputs if sp.dtype == "float32"):  # whole numbers as integers: read as floats
        whole = np.round(np.nan_to_num(feeds[sp.name]))  # a missing number (NaN) has no integer
        assert np.array_equal(p.run({**feeds, sp.name: whole.astype(np.int64)}),
                              p.run({**feeds, sp.name: whole.astype(np.float32)}))


@pytest.mark.parametrize("field,value", [("city", "\ud800"), ("tags", "a|\udfff"), ("tags", ["a", "x\ud83d"])])
def test_predictor_refuses_a_text_utf8_cannot_hold_naming_record_and_field(s, field, value):
    p = Predictor(get_export(s, "mlp"))
    rec = {"city": "paris", "dev": "3", "price": 4.5, "tags": "a", "noise": "1"}
    with pytest.raises(LightFMPError, match=re.escape(f"record 1, field '{field}': a text value is not valid Unicode")):
        p.predict([rec, {**rec, field: value}])


@pytest.mark.parametrize("threads", [10 ** 6, 1025, -1, 2.0, True])
def test_predictor_refuses_a_thread_count_past_the_cap_before_starting_any(s, threads):
    with pytest.raises(LightFMPError, match=re.escape(f"threads {threads!r}: must be a whole number from 0 to 1024")):
        Predictor(get_export(s, "mlp"), threads=threads)

"""The Predictor (raw records -> probabilities) and the dependency-free example client."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightfmp.errors import LightFMPError
from lightfmp.serving import Predictor
from test_export import get_export, shared, test_rows, torch_probs

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
    df = test_rows(s, run)
    p = Predictor(get_export(s, "mlp", inputs=mode))
    got = p.predict(_records(df))
    assert got.shape == (len(df),)
    assert np.abs(got - torch_probs(run, df)).max() <= 1e-5
    assert np.abs(p.predict(df) - got).max() == 0  # a DataFrame gives the same


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


def test_predictor_only_needs_kept_columns(s):
    p = Predictor(get_export(s, "deepfm"))
    kept = p.input_names
    df = test_rows(s, s["runs"]["deepfm"])
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
    df = test_rows(s, s["runs"]["mlp"]).head(25)
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

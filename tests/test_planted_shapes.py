"""benchmarks/planted_shapes.py: each table holds what its docstring plants."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "planted_shapes.py"
spec = importlib.util.spec_from_file_location("planted_shapes", SCRIPT)
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)

ROWS = 60_000


def _columns(shape, seed=0, rows=ROWS):
    table, informative = shapes.planted_shape(shape, rows, seed)
    return {k: v.to_numpy(zero_copy_only=False) for k, v in zip(table.column_names, table.columns)}, informative


def _label_spread(y, values):
    """How far the label rate moves across a column's values (numbers: across its quintiles), beyond what the same
    column shuffled shows: a planted effect moves it, noise does not."""
    def spread(v):
        if v.dtype.kind == "f":
            ok = ~np.isnan(v)
            v, yy = np.digitize(v[ok], np.quantile(v[ok], [0.2, 0.4, 0.6, 0.8])), y[ok]
        else:
            yy = y
        top = [u for u, c in zip(*np.unique(v, return_counts=True)) if c >= 500]
        rates = [yy[v == u].mean() for u in top]
        return max(rates) - min(rates) if len(rates) > 1 else 0.0
    shuffled = np.random.default_rng(0).permutation(values)
    return spread(values) - spread(shuffled)


def test_click_log_plants_numeric_and_categorical_signal_nulls_and_noise():
    t, informative = _columns("click-log")
    y = t["label"]
    assert 0.10 < y.mean() < 0.14
    assert informative == ["n00", "n01", "n02", "n03", "c00", "c01", "c02", "c03", "c04", "c05"]
    assert sorted(t) == sorted(["label"] + [f"n{k:02d}" for k in range(13)] + [f"c{k:02d}" for k in range(20)])
    for name in ("n03", "n08", "n09", "n10"):  # 30% nulls
        assert 0.27 < np.isnan(t[name]).mean() < 0.33
    assert not np.isnan(t["n00"]).any() and np.array_equal(t["n00"], np.floor(t["n00"]))  # whole counts as floats
    for name in ("n00", "n01", "c00", "c01"):  # the strongest effects show in the label rate
        assert _label_spread(y, t[name]) > 0.01, name
    for name in ("n04", "n07", "c06", "c08"):  # noise does not
        assert _label_spread(y, t[name]) < 0.01, name
    assert len(np.unique(t["c04"])) > 10_000  # id-like
    assert all(v.startswith("v") for v in t["c00"][:100])


def test_all_weak_has_every_field_informative_and_no_noise():
    t, informative = _columns("all-weak")
    y = t["label"]
    assert 0.37 < y.mean() < 0.43
    assert informative == [f"a{k:02d}" for k in range(15)] == sorted(set(t) - {"label"})
    assert [len(np.unique(t[f])) for f in informative[:3]] == [2, 4, 8]
    assert _label_spread(y, t["a00"]) > 0.02  # the strongest of the graded effects


def test_same_seed_same_table_and_the_command_writes_truth(tmp_path):
    a, b, c = (shapes.planted_shape("click-log", 4000, s)[0] for s in (1, 1, 2))
    assert a.equals(b) and not a.equals(c)
    out = tmp_path / "weak.parquet"
    subprocess.run([sys.executable, str(SCRIPT), "--shape", "all-weak", "--rows", "3000", "--seed", "0", "--out",
                    str(out)], check=True, capture_output=True)
    assert pq.read_table(out).num_rows == 3000
    truth = json.loads(Path(f"{out}.truth.json").read_text())
    assert truth["shape"] == "all-weak" and len(truth["informative"]) == 15 and truth["noise"] == []

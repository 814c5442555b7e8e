"""Ingestion on Arrow arrays: the ids the data path stores are checked against a plain-Python encoder written from
the documented rules (lightfmp.schema, lightfmp.vocab, lightfmp.encoding), for every field kind, on CSV (every cell
text) and Parquet (typed columns, dictionary columns, several chunks per batch), in memory and streamed."""
import bisect
import csv
import math
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from helpers import fnv_reference
from lightfmp.config import DataConfig
from lightfmp.dataset import load_dataset
from lightfmp.coded import Coded, CodedStore, Unparsed
from lightfmp.encoding import MISSING_TEXT, Tokens, VocabIndex, as_float, numbers, stable_hash, tokens
from lightfmp.errors import LightFMPError
from lightfmp.formats import read_batches, read_tables
from lightfmp.schema import FIRST_ID, OOV_ID, PAD_ID
from lightfmp.vocab import TokenCounter

N = 1500
MIN_COUNT = 3
HASH = {"hashed": 50, "hcat": 7}


def frame(n=N, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "label": rng.integers(0, 2, n),
        "cat_s": rng.choice(["a", "b", "c", "héllo", "x y", "rare1", "rare2"], n, p=[.3, .25, .2, .1, .13, .01, .01]),
        "cat_i": rng.integers(0, 40, n).astype(float),
        "flag": rng.random(n) < 0.3,
        "num": rng.normal(5, 2, n),
        "tags": ["|".join(rng.choice(["t1", "t2", "t3", "", "t4"], rng.integers(0, 5))) for _ in range(n)],
        "hashed": [f"h{v}" for v in rng.integers(0, 300, n)],
        "hcat": rng.integers(0, 40, n),
        "when": rng.permutation(n),
    })
    df.loc[rng.random(n) < 0.1, "cat_s"] = None
    df.loc[rng.random(n) < 0.1, "cat_i"] = np.nan
    df.loc[rng.random(n) < 0.1, "num"] = np.nan
    df.loc[rng.random(n) < 0.05, "tags"] = None
    df.loc[rng.random(n) < 0.05, "hashed"] = None
    df.loc[7, "num"] = np.inf
    df.loc[3:4, "cat_s"] = ["solo1", "solo2"]  # below min_count: OOV
    return df


# ---- the reference: the documented rules, one value at a time ------------------------------------------------------
def texts_of(values, from_csv):
    """Each cell's text: a CSV cell as written (empty: missing); a typed value by the rule (an integral float
    without '.0', booleans True/False, NaN missing)."""
    if from_csv:
        return [None if v is None or v == "" else v for v in values]
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, bool):
            out.append(str(v))
        elif isinstance(v, float) and math.isfinite(v) and v == int(v):
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def vocab(counts, cap=None):
    kept = sorted(((-n, t) for t, n in counts.items() if n >= MIN_COUNT))
    return [t for _, t in kept][:cap]


def ref_ids(cells, kind, train, cap=None, buckets=None, sep="|", num_buckets=16):
    """ids [rows, slots] of one column by the rules, fitted on the rows where `train` holds."""
    if kind == "numeric":
        x = np.array([np.nan if v is None else float(v) for v in cells])
        fit = x[train & np.isfinite(x)]
        edges = sorted(set(np.quantile(fit, np.linspace(0, 1, num_buckets + 1)[1:-1]).tolist()))
        return np.array([[OOV_ID if math.isnan(v) else FIRST_ID + bisect.bisect_right(edges, v)] for v in x])

    def ids_of(tokens_, voc):
        if buckets:
            return [FIRST_ID + fnv_reference(t) % buckets for t in tokens_]
        index = {t: i for i, t in enumerate(voc)}
        return [FIRST_ID + index[t] if t in index else OOV_ID for t in tokens_]

    if kind == "categorical":
        voc = vocab(Counter(t for t, tr in zip(cells, train) if tr and t is not None), cap)
        return np.array([[OOV_ID] if t is None else ids_of([t], voc) for t in cells])
    lists = [[t for t in c.split(sep) if t != ""] if c is not None else [] for c in cells]
    max_len = max(1, min(32, max(len(lst) for lst, tr in zip(lists, train) if tr)))
    voc = vocab(Counter(t for lst, tr in zip(lists, train) if tr for t in lst), cap)
    out = np.full((len(cells), max_len), PAD_ID)
    for r, lst in enumerate(lists):
        got = ids_of(lst[:max_len], voc)
        out[r, :len(got)] = got
    return out


KINDS = {"cat_s": "categorical", "cat_i": "categorical", "flag": "categorical", "num": "numeric",
         "tags": "multi_hot", "hashed": "categorical", "hcat": "categorical"}


def stored(data):
    """(row numbers, ids) of every split, in row order."""
    rows, ids = [], []
    for split in ("train", "valid", "test"):
        r = data.split_rows(split)
        rows.append(r.row_numbers())
        ids.append(r.arrays()[0])
    rows, ids = np.concatenate(rows), np.concatenate(ids)
    order = np.argsort(rows)
    return rows[order], ids[order]


def raw_cells(df, path=None):
    """Per column its raw values: the CSV file's cells as text (read with the csv module), else the frame's."""
    if path is None:
        return {c: df[c].astype(object).where(df[c].notna(), None).tolist() for c in df.columns}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {c: [r[c] for r in rows] for c in rows[0]}


def check_against_reference(data, df, from_csv, cap=None, path=None):
    s = data.schema
    assert [f.name for f in s.fields] == list(KINDS) and [f.kind for f in s.fields] == list(KINDS.values())
    rows, ids = stored(data)
    assert np.array_equal(rows, np.arange(len(df)))
    train = np.zeros(len(df), dtype=bool)
    train[data.split_rows("train").row_numbers()] = True
    slots = s.field_slot_ranges()
    columns = raw_cells(df, path if from_csv else None)
    for name, kind in KINDS.items():
        cells = texts_of(columns[name], from_csv)
        if kind == "numeric" and not from_csv:
            cells = columns[name]
        want = ref_ids(cells, kind, train, cap=None if name in HASH else cap, buckets=HASH.get(name))
        a, b = slots[name]
        assert np.array_equal(ids[:, a:b], want), name


def cfg(path, **kw):
    return DataConfig(data=str(path), label="label", multi_hot=["tags:|"], categorical=["hcat"],
                      hash_buckets=",".join(f"{k}:{v}" for k, v in HASH.items()), min_count=MIN_COUNT,
                      chunk_rows=400, **kw)


# ---- the data path against the reference -------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("cap", [None, 3])
def test_csv_ids_follow_the_rules(tmp_path, stream, cap):
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    data = load_dataset(cfg(tmp_path / "d.csv", stream=stream, shard_dir=str(tmp_path / "s"), vocab_cap=cap,
                            ignore=["when"]))
    check_against_reference(data, df, from_csv=True, cap=cap, path=tmp_path / "d.csv")
    voc = data.schema.field("cat_s").vocab
    assert voc[0] == "a" and "solo1" not in voc and (cap is None or len(voc) == cap)
    # a CSV cell is its text: pandas wrote the floats with '.0'
    assert all(v.endswith(".0") for v in data.schema.field("cat_i").vocab)


def test_parquet_typed_chunked_ids_follow_the_rules(tmp_path):
    """Typed columns (float with gaps, bool, int), row groups smaller than a batch (several chunks per column), and
    the time rule; the same ids in memory and in shards."""
    df = frame()
    df.to_parquet(tmp_path / "d.parquet", index=False, row_group_size=128)
    kinds = {}
    for stream in (False, True):
        data = load_dataset(cfg(tmp_path / "d.parquet", stream=stream, shard_dir=str(tmp_path / "s"),
                                time_column="when"))
        check_against_reference(data, df, from_csv=False)
        kinds[stream] = stored(data)[1]
        # the time rule: the oldest rows train
        assert df["when"].to_numpy()[data.split_rows("train").row_numbers()].max() < \
            df["when"].to_numpy()[data.split_rows("test").row_numbers()].min()
    assert np.array_equal(kinds[False], kinds[True])
    # a table whose columns come in several chunks (the CSV reader's blocks) encodes as its combined form
    table, _ = next(read_tables(tmp_path / "d.parquet", "parquet", 1000))
    pieces = pa.Table.from_batches(table.slice(0, 333).to_batches() + table.slice(333, 400).to_batches()
                                   + table.slice(733).to_batches())
    assert pieces.column("cat_s").num_chunks == 3
    assert np.array_equal(data.schema.encode(pieces), data.schema.encode(table.combine_chunks()))


def test_dictionary_columns_with_differing_dictionaries(tmp_path):
    """Dictionary columns (a pandas Categorical in Parquet) whose chunks have different dictionaries, and integer
    dictionaries: the texts are the values'."""
    chunks = [pa.array(["p", "q", None, "p"]).dictionary_encode(), pa.array(["r", "q"]).dictionary_encode()]
    tok = tokens(pa.chunked_array(chunks))
    vals = tok.values.to_pylist() + [None]
    assert [vals[c] for c in tok.codes] == ["p", "q", None, "p", "r", "q"]
    tok = tokens(pa.array([3, 1, 3]).dictionary_encode())
    assert [tok.values[c].as_py() for c in tok.codes] == ["3", "1", "3"]
    df = pd.DataFrame({"label": [0, 1] * 50, "c": pd.Categorical(["u", "v", "w", "u"] * 25)})
    df.to_parquet(tmp_path / "d.parquet", index=False, row_group_size=30)
    data = load_dataset(DataConfig(data=str(tmp_path / "d.parquet"), label="label", min_count=1, chunk_rows=40))
    voc = data.schema.field("c").vocab
    assert sorted(voc) == ["u", "v", "w"] and voc[0] == "u"  # u is twice as frequent
    assert data.schema.encode(df)[:, 0].tolist() == [FIRST_ID + voc.index(v) for v in df["c"]]


def test_dataframe_and_arrow_encode_alike(tmp_path):
    """The in-memory frame facade and the Arrow batch give the same ids (one encoder)."""
    df = frame(300)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    data = load_dataset(cfg(tmp_path / "d.parquet", ignore=["when"]))
    table, _ = next(read_tables(tmp_path / "d.parquet", "parquet", 1000))
    frame_, _ = next(read_batches(tmp_path / "d.parquet", "parquet", 1000))
    assert np.array_equal(data.schema.encode(table), data.schema.encode(frame_))
    assert np.array_equal(data.schema.encode(table), data.schema.encode(df))


# ---- the pieces ---------------------------------------------------------------------------------------------------------
def test_text_rule_per_arrow_type():
    cases = {
        "string": (pa.array(["x", None, "", "x"]), ["x", None, "", "x"]),
        "int": (pa.array([3, -1, 3]), ["3", "-1", "3"]),
        "int with gaps": (pa.array([3, None, 2 ** 40]), ["3", None, str(2 ** 40)]),
        "ids past 2**53 with gaps": (pa.array([2 ** 53 + 1, None, 2 ** 53]), [str(2 ** 53 + 1), None, str(2 ** 53)]),
        "integral floats": (pa.array([1.0, None, float("nan"), float("-inf"), 2.0]), ["1", None, None, "-inf", "2"]),
        "floats": (pa.array([1.5, 2.0, float("inf"), None]), ["1.5", "2", "inf", None]),  # each value by itself
        "bool": (pa.array([True, False]), ["True", "False"]),
        "bool with gaps": (pa.array([True, None]), ["True", None]),
        "large string": (pa.array(["a", "b"], type=pa.large_string()), ["a", "b"]),
        "null": (pa.nulls(2), [None, None]),
        "chunked": (pa.chunked_array([pa.array(["a", None]), pa.array(["b", "a"])]), ["a", None, "b", "a"]),
    }
    for name, (arr, want) in cases.items():
        t = tokens(arr)
        vals = t.values.to_pylist() + [None]
        assert [vals[c] for c in t.codes] == want, name
        assert len(set(t.values.to_pylist())) == len(t.values) and t.values.null_count == 0, name


def test_a_float_category_has_one_text_in_every_batch(tmp_path):
    """A typed float's text depends on the value alone, not on what else its batch holds: 24.0 is '24' in a batch
    of whole numbers and in one with 24.5, so streamed batches never key one value twice."""
    for batch in ([24.0, 3.0], [24.0, 24.5], [None, 24.0]):
        t = tokens(pa.array(batch))
        assert t.values.to_pylist()[t.codes[batch.index(24.0)]] == "24", batch
    df = pd.DataFrame({"price": [24.0, 3.0] * 40 + [24.0, 24.5] * 40, "label": [0, 1] * 80})
    df.to_parquet(tmp_path / "d.parquet", index=False, row_group_size=80)
    data = load_dataset(DataConfig(data=str(tmp_path / "d.parquet"), label="label", categorical=["price"],
                                   stream=True, shard_dir=str(tmp_path / "s"), chunk_rows=80))
    assert sorted(data.schema.field("price").vocab) == ["24", "24.5", "3"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_timestamp_field_is_its_seconds_and_a_missing_one_is_missing(tmp_path, stream):
    """A Parquet timestamp is a number: its seconds since 1970 UTC, whatever unit the file stores (us or ns give the
    same edges and ids), and a missing one (NaT) takes the OOV id, not the bucket of the earliest times."""
    import pyarrow.parquet as pq
    n = 600
    when = pd.Series(pd.date_range("2024-01-01", periods=n, freq="37min"))
    when[np.arange(n) % 10 == 3] = pd.NaT
    rng = np.random.default_rng(0)
    ids = {}
    for unit in ("us", "ns"):
        table = pa.table({"when": pa.array(when).cast(pa.timestamp(unit)), "label": rng.integers(0, 2, n)})
        pq.write_table(table, tmp_path / f"{unit}.parquet")
        data = load_dataset(DataConfig(data=str(tmp_path / f"{unit}.parquet"), label="label", numeric=["when"],
                                       stream=stream, shard_dir=str(tmp_path / "s")))
        edges = np.array(data.schema.field("when").boundaries)
        assert edges.min() > when.min().timestamp() - 1 and edges.max() < when.max().timestamp() + 1, unit
        rows = data.split_rows("train").select(["when"])
        got = np.concatenate([c[0][:, 0] for c in rows.chunks()])
        at = rows.row_numbers()
        assert (got[at % 10 == 3] == OOV_ID).all() and (got[at % 10 != 3] >= FIRST_ID).all(), unit
        ids[unit] = (edges.tolist(), got.tolist())
    assert ids["us"] == ids["ns"]


def test_numbers_rule():
    assert np.allclose(numbers(pa.array(["1.5", None, " 2 ", "inf"]), "x"), [1.5, np.nan, 2.0, np.inf],
                       equal_nan=True)
    assert np.array_equal(numbers(pa.array([1, None, 3]), "x"), [1.0, np.nan, 3.0], equal_nan=True)
    for marker in MISSING_TEXT + (" NA ",):  # how R, pandas and databases write a missing number: missing
        got = numbers(pa.array(["1", marker, None]), "x")
        assert got[0] == 1.0 and np.isnan(got[1:]).all(), marker
        assert np.isnan(as_float(pd.Series(["1", marker], dtype=object), "x")[1])
    for bad in ("0x10", "abc", "nana"):  # anything else that is not a number is refused
        with pytest.raises(LightFMPError, match=f"numeric column 'x' has non-numeric value '{bad}'"):
            numbers(pa.array(["1", bad, "zz"]), "x")


def test_stable_hash_on_arrow_slices():
    vals = ["", "a0", "z17", "héllo wörld", "68fd1e64" * 40, "b"]
    want = [fnv_reference(v) for v in vals]
    assert [int(h) for h in stable_hash(pa.array(vals))] == want
    assert [int(h) for h in stable_hash(pa.array(vals).slice(2, 3))] == want[2:5]
    assert [int(h) for h in stable_hash(pa.array(vals, type=pa.large_string()))] == want
    assert [int(h) for h in stable_hash(vals)] == want


def test_vocab_index_is_exact_on_both_paths():
    voc = [f"v{i}" for i in range(500)] + ["héllo"]
    queries = pa.array(["v3", "nope", "héllo", "v499", "", "v500"])
    index = VocabIndex(voc)
    assert index.unique and index.positions(queries).tolist() == [3, -1, 500, 499, -1, -1]
    index.unique = False  # the fallback taken when two entries share a hash
    assert index.positions(queries).tolist() == [3, -1, 500, 499, -1, -1]
    assert VocabIndex([]).positions(queries).tolist() == [-1] * 6
    assert VocabIndex(["1", 1]).positions(pa.array(["1"])).tolist() == [0]  # a non-text entry matches nothing


def test_token_counter_equals_eager_lossy_counting():
    """Lazy merging prunes at the same batches, with the same counts, as pruning after every batch."""
    rng = np.random.default_rng(3)
    limit = 40
    counter, eager, prunes = TokenCounter(limit), Counter(), 0
    for _ in range(30):
        batch = [f"t{v}" for v in np.minimum(rng.zipf(1.3, 200), 400)]
        counter.add(pd.Series(batch))
        eager.update(batch)
        if len(eager) > limit:
            vals = np.array(list(eager.values()))
            keep = limit // 2
            threshold = int(np.partition(vals, len(vals) - keep)[len(vals) - keep])
            eager = Counter({t: n for t, n in eager.items() if n > threshold})
            prunes += 1
    assert counter.prunes == prunes > 0
    assert counter.counts.to_dict() == dict(eager)


def test_criteo_int_columns_refuse_what_pandas_refuses(tmp_path):
    cats = "\t".join(["a1b2c3d4"] * 26)
    good = "\t".join(["1", "5"] + ["3"] * 11)
    p = tmp_path / "c.txt"
    p.write_text(f"0\t{good}\t{cats}\n1\t1\t0x10\t" + "\t".join(["3"] * 11) + f"\t{cats}\n")
    with pytest.raises(LightFMPError, match=r"line 2 column I2: '0x10' is not an integer"):
        list(read_tables(p, "criteo", 10))
    p.write_text(f"0\t{good}\t{cats}\n1\t1\t007\t-0\t" + "\t".join(["3"] * 10) + f"\t{cats}\n")
    df, _ = next(read_batches(p, "criteo", 10))
    # floor(ln(5)^2) = 2, floor(ln(7)^2) = 3, floor(ln(3)^2) = 1; -0 is 0
    assert df["I2"].tolist() == ["2", "3"] and df["I3"].tolist() == ["1", "0"]
    p.write_text(f"0\t{good}\t{cats}\n1\t1\tinf\t" + "\t".join(["3"] * 11) + f"\t{cats}\n")
    with pytest.raises(LightFMPError, match=r"line 2 column I2: 'inf' is not an integer"):  # was read as int64's least
        list(read_tables(p, "criteo", 10))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("train_row", [False, True])
def test_unparsable_number_is_reported_by_the_pass_that_reads_its_row(tmp_path, stream, train_row):
    """A non-numeric cell in a training row fails the fit pass; in another row, the encode pass (from the batches the
    fit pass coded): the same one-line message either way, naming the cell's row and line in the file (past the
    first batch of rows), and no scratch files are left."""
    from lightfmp.splits import SplitRule
    n = 1000
    df = frame(n)
    split = SplitRule((0.8, 0.1, 0.1), 0).hash_codes(np.arange(n))
    row = int(np.flatnonzero(((split == 0) == train_row) & (np.arange(n) > 400))[5])
    df["num"] = df["num"].astype(object)
    df.loc[row, "num"] = "abc"
    df.loc[row + 1, "num"] = "xyz"  # a later bad cell: the first one is named
    df.loc[n - 1, "num"] = "abc"
    df.to_csv(tmp_path / "d.csv", index=False)
    shards = tmp_path / "s"
    with pytest.raises(LightFMPError) as e:
        load_dataset(cfg(tmp_path / "d.csv", stream=stream, shard_dir=str(shards), numeric=["num"],
                         ignore=["when"]))
    assert str(e.value) == (f"{tmp_path / 'd.csv'}: numeric column 'num' has non-numeric value 'abc' "
                            f"at row {row} (line {row + 2})")
    assert not shards.exists() or not [p for p in shards.rglob("*") if p.is_file()]  # nor a fit kept for later runs
    # a column whose kind was inferred: the error says how, from either pass
    with pytest.raises(LightFMPError, match=rf"at row {row} \(line {row + 2}\) \(column 'num' was inferred numeric "
                                            rf"\(floats\) from the first rows; --categorical or --numeric names its "
                                            rf"kind\)$"):
        load_dataset(cfg(tmp_path / "d.csv", stream=stream, shard_dir=str(shards), ignore=["when"]))
    df["num"] = [None if isinstance(v, float) and np.isnan(v) else str(v) for v in df["num"]]
    df.to_parquet(tmp_path / "d.parquet")  # a text column; no lines in a Parquet file: the row alone
    with pytest.raises(LightFMPError, match=rf"non-numeric value 'abc' at row {row}$"):
        load_dataset(cfg(tmp_path / "d.parquet", stream=stream, numeric=["num"], ignore=["when"]))


def test_streamed_encode_reads_the_coded_batches_not_the_file(tmp_path, monkeypatch):
    """With a fit pass, the file is read once; without one (a fitted schema), the encode pass reads it."""
    import lightfmp.dataset as dataset
    df = frame(900)
    df.to_csv(tmp_path / "d.csv", index=False)
    reads = []
    real = dataset.read_tables

    def counted(*a, **k):
        reads.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dataset, "read_tables", counted)
    c = cfg(tmp_path / "d.csv", stream=True, shard_dir=str(tmp_path / "s"), ignore=["when"])
    data = load_dataset(c)
    assert len(reads) == 1 and not list((tmp_path / "s").glob(".coded-*"))
    again = load_dataset(c.__class__(**{**c.__dict__, "shard_dir": str(tmp_path / "s2")}), schema=data.schema)
    assert len(reads) == 2 and np.array_equal(stored(again)[1], stored(data)[1])


def test_kind_inference_on_arrow_text_equals_the_series_rule():
    from lightfmp.vocab import infer_kind
    rng = np.random.default_rng(0)
    cols = {"ints": [str(v) for v in rng.integers(0, 50, 3000)],
            "many ints": [str(v) for v in rng.integers(0, 10 ** 6, 3000)],
            "floats": [f"{v:.3f}" for v in rng.normal(size=3000)],
            "integral floats": [f"{v}.0" for v in rng.integers(0, 30, 3000)],
            "nan written out": ["1.5", "nan"] * 1500, "R's NA": ["2.5", " NA"] * 1500, "text": ["a", "1"] * 1500,
            "text late": ["1"] * 2000 + ["x"] * 1000, "spaces": [" 1", "2"] * 1500, "inf": ["inf", "2"] * 1500,
            "gaps": ["3", None] * 1500, "blanks": ["2.5", " "] * 1500, "tabs": ["2.5", "\t"] * 1500}
    kinds = {}
    for name, v in cols.items():
        arr = pa.chunked_array([pa.array(v[:1000]), pa.array(v[1000:])])
        kinds[name] = infer_kind(arr, 3000)
        assert kinds[name] == infer_kind(arr.to_pandas(), 3000), name
    assert kinds["ints"] == ("categorical", "integers, 50 distinct") and kinds["floats"] == ("numeric", "floats")
    assert kinds["nan written out"] == kinds["R's NA"] == ("numeric", "floats")  # a missing number's spellings
    assert kinds["blanks"] == kinds["tabs"] == ("numeric", "floats")  # as the numeric rule reads a cell of blanks
    assert kinds["text late"] == kinds["text"] == ("categorical", "text")


def _coded_batch(i: int) -> Coded:
    n = 5 + i
    tokens = Tokens(np.arange(n, dtype=np.int32) % 3 - (i % 2), pa.array(["a", "b", f"c{i}"]))
    fields = {"t": tokens, "x": np.arange(n, dtype=np.float64) * i, "bad": Unparsed(f"row {i}: 'z' is no number")}
    return Coded(n, fields, np.full(n, i % 2, np.float32))


def test_coded_batches_on_disk_come_back_in_order(tmp_path):
    """Streaming keeps each coded batch on disk: every batch comes back whole and in order, as the in-memory store
    gives it, and the scratch directory goes."""
    with CodedStore(tmp_path / "s") as disk, CodedStore() as memory:
        for i in range(7):
            disk.add(_coded_batch(i))
            memory.add(_coded_batch(i))
        for _ in range(2):  # read twice: the second pass is the same
            for a, b in zip(list(disk), list(memory), strict=True):
                assert a.rows == b.rows and np.array_equal(a.labels, b.labels)
                assert np.array_equal(a.fields["t"].codes, b.fields["t"].codes)
                assert a.fields["t"].values.equals(b.fields["t"].values)
                assert np.array_equal(a.fields["x"], b.fields["x"]) and a.fields["bad"].error == b.fields["bad"].error
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("stream", [False, True])
def test_a_column_inferred_as_integers_that_later_holds_fractions_is_refused(tmp_path, stream):
    """The kind of an unnamed column comes from the first batch: integers there, numbers with a fraction in a later
    part would each become a rare category (read as unknown), so the pass stops naming the column, the first such
    row and the flags that name its kind; named, the same file reads."""
    rng = np.random.default_rng(0)
    d = tmp_path / "parts"
    d.mkdir()
    pd.DataFrame({"q": rng.integers(0, 10, 600), "label": rng.integers(0, 2, 600)}).to_parquet(d / "part-0.parquet")
    pd.DataFrame({"q": rng.normal(5, 2, 600), "label": rng.integers(0, 2, 600)}).to_parquet(d / "part-1.parquet")
    extra = {"stream": True, "shard_dir": str(tmp_path / "s")} if stream else {}
    with pytest.raises(LightFMPError, match=r"column 'q' holds [0-9.]+, a number that is not an integer, at row "
                                            r"600 \(column 'q' was inferred categorical \(integers") as e:
        load_dataset(DataConfig(data=str(d), label="label", **extra))
    assert "\n" not in str(e.value)
    for kind in ("categorical", "numeric"):
        data = load_dataset(DataConfig(data=str(d), label="label", **{kind: ["q"]}, **extra))
        assert data.schema.fields[0].kind == kind


@pytest.mark.parametrize("marker", ["NA", "nan", "NULL"])
def test_a_csv_number_column_with_missing_written_out_reads_as_numeric(tmp_path, marker):
    """R's write.csv writes a missing number as NA, pandas' to_csv with na_rep as nan or NaN: the column is still
    numeric (inferred or named), those cells missing, and a categorical column keeps 'NA' as a category."""
    rng = np.random.default_rng(0)
    price = [f"{v:.2f}" if i % 5 else marker for i, v in enumerate(rng.normal(10, 3, 800))]
    code = ["NA" if i % 3 == 0 else "x" for i in range(800)]
    df = pd.DataFrame({"price": price, "code": code, "label": rng.integers(0, 2, 800)})
    df.to_csv(tmp_path / "d.csv", index=False)
    for named in ({}, {"numeric": ["price"]}):
        data = load_dataset(DataConfig(data=str(tmp_path / "d.csv"), label="label", **named))
        kinds = {f.name: f.kind for f in data.schema.fields}
        assert kinds == {"price": "numeric", "code": "categorical"}, named
        assert "NA" in data.schema.fields[1].vocab


@pytest.mark.parametrize("stream", [False, True])
def test_a_fit_with_a_hashed_field_records_its_text_rule_so_binary_columns_read_again(tmp_path, stream):
    """A hashed field counts as fitted before the pass, but its spelling is fitted in it: the schema is of this
    text rule, and reading the data again with it (prune, export) must not refuse a binary column as fitted by
    an older lightfmp."""
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    n = 400
    pq.write_table(pa.table({"b": pa.array([f"k{i % 4}".encode() for i in range(n)], type=pa.binary()),
                             "h": pa.array([f"h{v}" for v in rng.integers(0, 30, n)]),
                             "label": pa.array((rng.random(n) < 0.5).astype(np.int64))}), tmp_path / "d.parquet")
    c = DataConfig(data=str(tmp_path / "d.parquet"), label="label", categorical=["b", "h"], hash_buckets="h:50",
                   stream=stream, shard_dir=str(tmp_path / "shards"))
    first = load_dataset(c)
    assert first.schema.meta.get("text_rule") is not None
    again = load_dataset(c, schema=first.schema)  # as prune and export read the run's rows
    assert np.array_equal(again.store.array(0, "ids"), first.store.array(0, "ids"))

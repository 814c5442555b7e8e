"""Streaming ingestion: record-batch readers, the streaming schema fit, encoded shards and ShardRows."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import fnv_reference, make_frame, write_csv
from lightfmp.config import RunConfig
from lightfmp.dataset import load_dataset
from lightfmp.errors import LightFMPError
from lightfmp.formats import read_batches, resolve_format
from lightfmp.rows import MemoryStore, StoredRows
from lightfmp.splits import SALT_HOLDOUT, SALT_SUBSET, SplitRule, row_uniform
from lightfmp.schema import FIRST_ID, OOV_ID, FeatureSchema, Field, stable_hash
from lightfmp.shards import load_fit, save_fit, shard_home
from lightfmp.vocab import Reservoir, StreamFitter, TokenCounter, apply_options, fit_schema, initial_schema

N, CHUNK = 200, 37
KINDS = dict(label="label", categorical="a,b,noise", numeric="x", multi_hot="tags:|")


class Log:
    def __init__(self):
        self.msgs = []

    def log(self, msg):
        self.msgs.append(str(msg))

    def has(self, text):
        return any(text in m for m in self.msgs)


def cfg_for(data, shard_dir, **kw):
    return RunConfig.of(data=str(data), shard_dir=str(shard_dir) if shard_dir is not None else None, chunk_rows=CHUNK,
                        stream=True, **{**KINDS, **kw})


def prepare_stream(cfg, log, schema=None):
    """The data path with shards on disk."""
    return load_dataset(cfg.but(stream=True).data, log, schema)


def split_codes(rows, fractions, seed):
    return SplitRule(tuple(fractions), seed).hash_codes(rows)


def read_table(p):
    return pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    p = write_csv(d, n=N)
    cfg = cfg_for(p, d / "shards")
    return {"dir": d, "csv": p, "cfg": cfg, "data": prepare_stream(cfg, Log())}


def in_memory(p, cfg, **schema_kw):
    """The in-memory fit on the same training rows, as a reference."""
    df = read_table(p)
    train = split_codes(np.arange(len(df)), (0.8, 0.1, 0.1), cfg.data.seed) == 0
    fields = [Field("a", "categorical"), Field("b", "categorical"), Field("noise", "categorical"),
              Field("x", "numeric"), Field("tags", "multi_hot", separator="|")]
    s = FeatureSchema("label", fields, **schema_kw)
    return fit_schema(s, df[train]), df


def all_shard_rows(data):
    """Every stored row: (row numbers, ids, labels) over all splits, from the shard files."""
    m = data.store.manifest
    arr = lambda i, k: np.load(data.location / m["shards"][i]["files"][k]["file"])
    n = len(m["shards"])
    return (np.concatenate([arr(i, "rows") for i in range(n)]), np.concatenate([arr(i, "ids") for i in range(n)]),
            np.concatenate([arr(i, "labels") for i in range(n)]))


# ---- the fit and the shards ---------------------------------------------------------------------------------------
def test_stream_fit_and_ids_equal_in_memory(built):
    ref, df = in_memory(built["csv"], built["cfg"])
    assert built["data"].schema.to_dict() == ref.to_dict()
    rows, ids, labels = all_shard_rows(built["data"])
    assert np.array_equal(rows, np.arange(N))  # stored in file order, each row once
    assert np.array_equal(ids, ref.encode(df))
    assert np.array_equal(labels, df["label"].astype(float).to_numpy(np.float32))


def test_many_shards_with_a_partial_last_one(built):
    m = built["data"].store.manifest
    sizes = [s["rows"] for s in m["shards"]]
    assert len(sizes) == math.ceil(N / CHUNK) and sizes[:-1] == [CHUNK] * (len(sizes) - 1)
    assert sizes[-1] == N - CHUNK * (len(sizes) - 1) and built["data"].rows == N
    codes = split_codes(np.arange(N), (0.8, 0.1, 0.1), 0)
    assert built["data"].split_sizes() == {k: int((codes == i).sum()) for i, k in enumerate(("train", "valid", "test"))}
    assert np.array_equal(built["data"].split_rows("valid").labels(), all_shard_rows(built["data"])[2][codes == 1])


def test_subset_and_rest_partition_the_training_split(built):
    data = built["data"]
    train = set(data.split_rows("train").row_numbers())
    sub, rest = data.subset(0.3, 5)
    a, b = set(sub.row_numbers()), set(rest.row_numbers())
    assert a | b == train and not a & b and len(sub) == len(a) and len(rest) == len(b)
    assert a == {r for r in train if row_uniform(np.array([r]), 5, SALT_SUBSET)[0] < 0.3}
    assert set(data.subset(0.3, 5)[0].row_numbers()) == a  # deterministic
    assert set(data.subset(0.3, 6)[0].row_numbers()) != a  # changes with the seed
    full, empty = data.subset(1.0, 5)
    assert len(full) == len(train) and len(empty) == 0 and list(empty.chunks(0)) == []
    with pytest.raises(LightFMPError, match="--subset"):
        data.subset(0.0, 1)


def test_chunks_visit_every_row_once_within_the_bound(built):
    train = built["data"].split_rows("train")
    stored = list(train.chunks(None))
    shuffled = list(train.chunks(3))
    assert all(len(y) <= CHUNK for _, y in shuffled) and len(stored) == len(shuffled)
    for ids, y in shuffled:
        assert ids.dtype == np.int32 and ids.flags.c_contiguous and y.dtype == np.float32
    key = lambda chunks: np.column_stack([np.concatenate([c[0] for c in chunks]),
                                          np.concatenate([c[1] for c in chunks])])
    a, b = key(stored), key(shuffled)
    assert len(a) == len(train) and not np.array_equal(a, b)
    assert np.array_equal(a[np.lexsort(a.T)], b[np.lexsort(b.T)])  # same rows, another order
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(shuffled, train.chunks(3)))  # seeded
    assert np.array_equal(np.concatenate([c[1] for c in stored]), train.labels())


def chunked_rows(chunks=5, size=10):
    """A hand-built store of `chunks` chunks of `size` training rows whose first id column is the row number."""
    store = MemoryStore(2)
    for c in range(chunks):
        rows = np.arange(c * size, (c + 1) * size)
        store.append(ids=np.column_stack([rows, rows % 3]).astype(np.int32), labels=(rows % 2).astype(np.float32),
                     rows=rows, split=np.zeros(size, dtype=np.int8))
    return StoredRows(store, {"r": (0, 1), "m": (1, 2)}, (0,))


def test_an_epoch_shuffles_rows_across_a_window_of_chunks():
    rows, size, row_bytes = chunked_rows(), 10, 2 * 4
    chunk_sets = lambda parts: [set((p[0][:, 0] // size).tolist()) for p in parts]  # noqa: E731
    alone = list(rows.chunks(3))  # no window: each chunk's rows stay together (the order before windows)
    assert [len(s) for s in chunk_sets(alone)] == [1] * 5
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(alone, rows.chunks(3, size * row_bytes)))
    pairs = list(rows.chunks(3, 2 * size * row_bytes))  # windows of two chunks, in the shuffled chunk order
    assert [len(p[1]) for p in pairs] == [20, 20, 10] and [len(s) for s in chunk_sets(pairs)] == [2, 2, 1]
    whole = list(rows.chunks(3, 1 << 20))  # every chunk in one window: one shuffle of all the rows
    assert len(whole) == 1 and len(chunk_sets([(whole[0][0][:10],)])[0]) > 1  # the first rows mix chunks
    for parts in (pairs, whole):
        ids = np.concatenate([p[0] for p in parts])
        assert sorted(ids[:, 0].tolist()) == list(range(50))  # every row once
        assert np.array_equal(np.concatenate([p[1] for p in parts]), (ids[:, 0] % 2).astype(np.float32))
        assert np.array_equal(ids[:, 1], ids[:, 0] % 3)  # rows stay whole
        assert all(p[0].dtype == np.int32 and p[0].flags.c_contiguous for p in parts)
    again = list(rows.chunks(3, 2 * size * row_bytes))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(pairs, again))  # seeded
    assert not np.array_equal(np.concatenate([p[0] for p in pairs]),
                              np.concatenate([p[0] for p in rows.chunks(4, 2 * size * row_bytes)]))


def test_select_and_split_views(built):
    train = built["data"].split_rows("train")
    a, b = train.slots["tags"]
    cols = np.array([*range(a, b), 0])
    sel = train.select(["tags", "a"])  # by field name, in the order given
    assert sel.num_slots == len(cols) and len(sel) == len(train) and sel.fields == ["tags", "a"]
    assert sel.slots == {"tags": (0, b - a), "a": (b - a, b - a + 1)}
    full = np.concatenate([c[0] for c in train.chunks()])
    assert np.array_equal(np.concatenate([c[0] for c in sel.chunks()]), full[:, cols])
    assert np.array_equal(np.concatenate([c[0] for c in sel.select(["a"]).chunks()]), full[:, [0]])
    with pytest.raises(LightFMPError, match="no field"):
        sel.select(["b"])  # not in the view any more
    weights, hold = sel.split(0.25, 0, SALT_HOLDOUT)
    assert len(weights) + len(hold) == len(train) and len(hold) > 0
    u = row_uniform(hold.row_numbers(), 0, SALT_HOLDOUT)
    assert (u < 0.25).all() and sum(len(y) for _, y in hold.chunks(1)) == len(hold)


def test_reuse_then_rebuild_on_damage(built, tmp_path):
    shutil.copytree(built["dir"] / "shards", tmp_path / "sh")  # damage a copy, not the shared shards
    cfg = cfg_for(built["csv"], tmp_path / "sh")
    first = prepare_stream(cfg, Log())
    files = sorted(first.location.glob("*.npy"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    log = Log()
    again = prepare_stream(cfg, log)
    assert again.location == first.location and log.has("reusing") and not log.has("encode:")
    assert log.has("fit pass skipped")  # the fitted schema is cached too
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    victim = first.location / first.store.manifest["shards"][2]["files"]["ids"]["file"]
    with open(victim, "r+b") as fh:
        fh.truncate(victim.stat().st_size - 8)
    log = Log()
    rebuilt = prepare_stream(cfg, log)
    assert log.has("rebuilding shards:") and log.has(victim.name) and log.has("bytes") and log.has("encode:")
    assert np.array_equal(all_shard_rows(rebuilt)[1], all_shard_rows(first)[1])

    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF  # same size, one byte differs
    victim.write_bytes(bytes(raw))
    log = Log()
    prepare_stream(cfg, log)
    assert log.has("rebuilding shards:") and log.has("checksum")
    log = Log()
    prepare_stream(cfg, log)
    assert log.has("reusing")

    mf = first.location / "manifest.json"  # valid JSON of the wrong shape: rebuilt, never a traceback
    doc = json.loads(mf.read_text())
    doc["shards"][0]["files"] = None
    mf.write_text(json.dumps(doc))
    log = Log()
    assert np.array_equal(all_shard_rows(prepare_stream(cfg, log))[1], all_shard_rows(first)[1])
    assert log.has("rebuilding shards:") and log.has("unreadable")

    # the shard list has no checksum of its own: one shard's entry taken out (the totals as they were, or fixed to
    # match) would read fewer rows as if they were the data; the totals and the files beside it give it away
    for fix_totals in (False, True):
        doc = json.loads(mf.read_text())
        gone = doc["shards"].pop()
        if fix_totals:
            doc["rows"] -= gone["rows"]
            doc["split_rows"] = {k: v - c for (k, v), c in zip(doc["split_rows"].items(), gone["splits"])}
        mf.write_text(json.dumps(doc))
        log = Log()
        assert np.array_equal(all_shard_rows(prepare_stream(cfg, log))[1], all_shard_rows(first)[1])
        assert log.has("rebuilding shards:") and log.has("its totals say" if not fix_totals else "is no shard")
    victim.unlink()  # a shard file deleted: named as missing
    log = Log()
    assert np.array_equal(all_shard_rows(prepare_stream(cfg, log))[1], all_shard_rows(first)[1])
    assert log.has("rebuilding shards:") and log.has(f"{victim.name} is missing")
    doc = json.loads(mf.read_text())
    doc["num_slots"] -= 1  # rows of another width than the files hold: rebuilt, never a shape error in training
    mf.write_text(json.dumps(doc))
    log = Log()
    assert np.array_equal(all_shard_rows(prepare_stream(cfg, log))[1], all_shard_rows(first)[1])
    assert log.has("rebuilding shards:") and log.has("slots, the schema's have")
    doc = json.loads(mf.read_text())
    doc["rows"] = str(doc["rows"])  # a total of the wrong type: rebuilt, never a traceback
    mf.write_text(json.dumps(doc))
    log = Log()
    assert np.array_equal(all_shard_rows(prepare_stream(cfg, log))[1], all_shard_rows(first)[1])
    assert log.has("rebuilding shards:") and log.has("its totals say")



def test_a_fit_copied_under_another_fits_name_is_not_used(tmp_path):
    """A cached fit is named by the digest of what it was fitted for (data hash, options, code); a file of another
    data set's fit under that name would give this data another data set's vocabularies: it is fitted again."""
    schema = FeatureSchema("y", [Field("a", "categorical", vocab=["x", "y"])])
    own = tmp_path / ("1" * 64 + ".json")
    save_fit(own, schema, {})
    assert load_fit(own) is not None
    other = tmp_path / ("2" * 64 + ".json")
    shutil.copy(own, other)
    assert load_fit(other) is None


def test_a_damaged_fit_is_fitted_again_not_used(tmp_path):
    """A cached fit decides every encoded id: a digit changed in a bucket edge or two values swapped in a vocabulary
    still read as a valid fit, so the fit records the sha256 of what it holds and one that no longer matches (or
    has none) is fitted again; a NaN written as null still reads back."""
    schema = FeatureSchema("y", [Field("a", "categorical", vocab=["x", "y"]),
                                 Field("n", "numeric", boundaries=[0.5, 4.367956, 9.0])])
    path = tmp_path / ("1" * 64 + ".json")
    save_fit(path, schema, {"share": float("nan")})
    assert load_fit(path) is not None
    text = path.read_text()
    for damaged in (text.replace("4.367956", "4.367957"), text.replace('["x", "y"]', '["y", "x"]')):
        assert damaged != text
        path.write_text(damaged)
        assert load_fit(path) is None
    doc = json.loads(text)
    del doc["sha256"]
    path.write_text(json.dumps(doc))
    assert load_fit(path) is None


def test_changed_code_refits_and_reencodes(built, tmp_path, monkeypatch):
    """Cached fits and shards are keyed by the source of the modules that decide them: code that reads, fits,
    encodes or splits differently (an upgrade) never reuses what the old code wrote."""
    from lightfmp import shards
    shutil.copytree(built["dir"] / "shards", tmp_path / "sh")
    cfg = cfg_for(built["csv"], tmp_path / "sh")
    log = Log()
    first = prepare_stream(cfg, log)
    assert log.has("reusing") and log.has("fit pass skipped")
    for name in shards.DECIDING_MODULES:  # each named module is one of the package's files
        assert (Path(shards.__file__).parent / f"{name}.py").is_file(), name
    monkeypatch.setattr(shards, "code_digest", lambda: "0" * 64)  # as if one of them had changed
    log = Log()
    again = prepare_stream(cfg, log)
    assert not log.has("reusing") and not log.has("fit pass skipped") and log.has("encode:")
    assert again.location != first.location
    assert np.array_equal(all_shard_rows(again)[1], all_shard_rows(first)[1])  # the same code: the same rows

def _shard_arrays(n: int, start: int) -> dict:
    return dict(ids=np.arange(2 * n, dtype=np.int32).reshape(n, 2), labels=np.ones(n, np.float32),
                rows=np.arange(start, start + n, dtype=np.int64), split=(np.arange(n) % 3).astype(np.uint8))


def test_a_shard_manifest_lists_each_file_with_its_size_and_checksum(tmp_path):
    """The manifest's sizes and checksums are those of the files read back, so the shards are reused, and each shard
    reads back what was added."""
    from lightfmp import shards
    d = tmp_path / "k"
    with shards.ShardWriter(d, "k", 2) as w:
        w.add(**_shard_arrays(5, 0))
        w.add(**_shard_arrays(3, 5))
        manifest = w.finish()
    entries = [e for shard in manifest["shards"] for e in shard["files"].values()]
    assert len(entries) == 8
    for e in entries:
        assert e["blake2b"] == shards.file_checksum(d / e["file"]) and e["bytes"] == (d / e["file"]).stat().st_size
    assert shards.check_shards(d, "k") == (manifest, None)
    store = shards.ShardStore(d, manifest)
    assert np.array_equal(store.array(1, "rows"), np.arange(5, 8)) and store.array(0, "ids").shape == (5, 2)


def test_new_shards_when_schema_or_data_change(built, tmp_path):
    cfg, base = built["cfg"], built["data"]
    log = Log()
    other_schema = prepare_stream(cfg_for(built["csv"], built["dir"] / "shards", min_count=10), log)
    assert other_schema.schema.field("noise").vocab != base.schema.field("noise").vocab
    assert other_schema.location != base.location and log.has("encode:")
    p2 = write_csv(tmp_path, n=N, seed=1, name="other.csv")
    log = Log()
    other_data = prepare_stream(cfg_for(p2, built["dir"] / "shards"), log)
    assert other_data.location != base.location and other_data.sha256 != base.sha256 and log.has("fit: read")
    # a fitted schema given: no pass 1, and the same shards as the run that fitted it
    log = Log()
    again = prepare_stream(cfg, log, schema=base.schema)
    assert again.location == base.location and not log.has("fit: read")


def test_default_shard_dir_is_under_lightfmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFMP_HOME", str(tmp_path / "home"))
    assert shard_home(None) == tmp_path / "home" / "shards"
    assert shard_home(str(tmp_path / "x")) == tmp_path / "x"


# ---- options: vocab cap, hashing ------------------------------------------------------------------------------------
def stream_fit(p, cfg):
    """Pass 1 alone, as prepare_stream runs it."""
    batches = list(read_batches(p, "csv", CHUNK))
    schema, _ = initial_schema(batches[0][0], cfg.data, "csv", str(p))
    fitter = StreamFitter(apply_options(schema, cfg.data.hash_buckets, cfg.data.vocab_cap), cfg.data.seed)
    for df, start in batches:
        fitter.add(df[split_codes(np.arange(start, start + len(df)), (0.8, 0.1, 0.1), cfg.data.seed) == 0])
    return fitter.finish()


def test_vocab_cap_keeps_the_most_frequent(built):
    schema = stream_fit(built["csv"], cfg_for(built["csv"], None, vocab_cap=3))
    ref, df = in_memory(built["csv"], built["cfg"], vocab_cap=3)
    assert schema.to_dict() == ref.to_dict()
    noise = schema.field("noise").vocab
    assert noise == ref.field("noise").vocab and len(noise) == 3
    train = df[split_codes(np.arange(len(df)), (0.8, 0.1, 0.1), 0) == 0]
    counts = train["noise"].value_counts()
    assert sorted(counts[noise]) == sorted(counts.sort_values(ascending=False)[:3])
    assert schema.to_dict()["vocab_cap"] == 3 and FeatureSchema.from_dict(schema.to_dict()).vocab_cap == 3


@pytest.fixture(scope="module")
def hashed(built):
    return prepare_stream(cfg_for(built["csv"], built["dir"] / "shards", hash_buckets="8"), Log())


def test_stable_hash_is_the_documented_function():
    vals = ["", "a0", "z17", "héllo wörld", "68fd1e64" * 40]
    assert [int(v) for v in stable_hash(vals)] == [fnv_reference(v) for v in vals]
    assert fnv_reference("a0") == 0xCEDF31614AF633C6  # pinned: ids of hashed fields depend on it


def test_hashed_fields(built, hashed):
    s = hashed.schema
    assert [f.name for f in s.fields if f.hashed] == ["a", "b", "noise", "tags"]
    a = s.field("a")
    assert a.vocab is None and a.vocab_size == FIRST_ID + 8 and a.fitted and s.field("tags").max_len >= 1
    ids = all_shard_rows(hashed)[1]
    cat = ids[:, :3]
    assert cat.min() >= FIRST_ID and cat.max() < FIRST_ID + 8
    _, df = in_memory(built["csv"], built["cfg"])
    assert np.array_equal(s.encode(df), ids)  # in-memory encoding agrees
    want = [FIRST_ID + fnv_reference(v) % 8 for v in df["noise"]]
    assert ids[:, 2].tolist() == want
    back = FeatureSchema.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.field("a").hash_buckets == 8 and np.array_equal(back.encode(df), ids)
    missing = s.encode(pd.DataFrame({"a": [None], "b": ["3"], "noise": ["z1"], "x": [0.0], "tags": [""]}))
    assert missing[0, 0] == OOV_ID
    only = stream_fit(built["csv"], cfg_for(built["csv"], None, hash_buckets="a:8"))
    assert [f.name for f in only.fields if f.hashed] == ["a"] and only.field("noise").vocab


def test_hashed_ids_equal_predictor_encoding(built, hashed, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    from lightfmp.export import input_spec
    from lightfmp.serving import Predictor
    kept = hashed.schema.subset(["noise"])
    # a stand-in model whose output is its input id, so the encoding is visible end to end
    g = helper.make_graph([helper.make_node("Cast", ["noise"], ["probability"], to=TensorProto.FLOAT)], "ids",
                          [helper.make_tensor_value_info("noise", TensorProto.INT64, ["batch"])],
                          [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "model.onnx"))
    doc = {"model_file": "model.onnx", "label": "label", "output": {"name": "probability"}, "input_mode": "ids",
           "inputs": [input_spec(f, False) for f in kept.fields]}
    (tmp_path / "feature_schema.json").write_text(json.dumps(doc))
    got = Predictor(tmp_path).predict(make_frame(N))
    assert np.array_equal(got.astype(np.int32), all_shard_rows(hashed)[1][:, 2])


@pytest.mark.parametrize("spec,msg", [("x", "expected N or field:N"), ("a:0", "at least 1 bucket"),
                                      ("zz:4", "no field 'zz'"), ("x:4", "numeric"), ("a:b", "expected N"),
                                      (str(10 ** 23), "from 1 to 2,147,483,645"),
                                      (f"a:{2 ** 31 - 2}", "at most 2,147,483,645 buckets")])
def test_bad_hash_buckets(built, spec, msg):
    schema = FeatureSchema.from_dict(built["data"].schema.to_dict())
    for f in schema.fields:
        f.vocab, f.boundaries, f.max_len = None, None, 0
    with pytest.raises(LightFMPError, match=msg) as e:
        apply_options(schema, hash_buckets=spec)
    assert "\n" not in str(e.value) and spec in str(e.value)


def test_the_most_hash_buckets_keep_every_id_an_int32():
    """The largest bucket count accepted: every id, FIRST_ID + bucket, is a non-negative int32 (rows hold int32 ids;
    a larger count wrapped ids into other buckets and below zero)."""
    import pyarrow as pa
    from lightfmp.schema import MAX_HASH_BUCKETS, encode_field
    f = Field(name="c", kind="categorical", hash_buckets=MAX_HASH_BUCKETS)
    values = [f"v{i}" for i in range(2000)]
    ids = encode_field(f, pa.array(values)).ravel()
    want = (stable_hash(pa.array(values)) % np.uint64(MAX_HASH_BUCKETS)).astype(np.int64) + FIRST_ID
    assert ids.dtype == np.int32 and np.array_equal(ids.astype(np.int64), want)
    assert FIRST_ID <= ids.min() and int(ids.max()) <= np.iinfo(np.int32).max
    assert int(want.max()) > np.iinfo(np.int32).max // 2  # the test reaches the upper half of the range
    with pytest.raises(LightFMPError, match="from 1 to 2,147,483,645"):
        Field(name="c", kind="categorical", hash_buckets=MAX_HASH_BUCKETS + 1)


# ---- the streaming fit in pieces ------------------------------------------------------------------------------------
def test_token_counter_prunes_rare_values():
    c = TokenCounter(limit=10)
    c.add(pd.Series(["hot"] * 50 + ["warm"] * 20))
    c.add(pd.Series([f"rare{i}" for i in range(30)]))
    assert c.prunes == 1 and set(c.counts.index) == {"hot", "warm"} and c.counts["hot"] == 50


def test_reservoir_exact_below_size_and_uniformish_above():
    r = Reservoir(100, np.random.default_rng(0))
    r.add(np.arange(60.0))
    r.add(np.array([np.nan, np.inf, 60.0]))
    assert sorted(r.values()) == list(np.arange(61.0))
    r.add(np.arange(61.0, 10_000.0))
    assert len(r.values()) == 100 and r.seen == 10_000 and 3000 < np.median(r.values()) < 7000


def test_first_batch_inference_and_whole_file_empty_column(tmp_path):
    df = make_frame(120)
    df["late"] = [None] * 100 + ["v"] * 20  # empty in the first batch only
    df.to_csv(tmp_path / "d.csv", index=False)
    data = prepare_stream(RunConfig.of(data=str(tmp_path / "d.csv"), label="label", multi_hot="tags:|",
                                    chunk_rows=50, shard_dir=str(tmp_path / "s"), min_count=1), Log())
    assert data.schema.field("late").kind == "categorical" and data.schema.field("x").kind == "numeric"
    df["late"] = None
    df.to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(LightFMPError, match="'late' is entirely empty"):
        prepare_stream(RunConfig.of(data=str(tmp_path / "e.csv"), label="label", chunk_rows=50,
                                 shard_dir=str(tmp_path / "s")), Log())


# ---- formats ---------------------------------------------------------------------------------------------------------
def criteo_lines(n=50, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for r in range(n):
        ints = [str(v) for v in rng.integers(-3, 3000, 13)]
        for j in rng.choice(13, 3, replace=False):
            ints[j] = ""
        cats = [f"{v:08x}" for v in rng.integers(0, 40, 26)]
        cats[r % 26] = ""
        lines.append("\t".join([str(r % 2)] + ints + cats))
    return lines


def test_criteo_tsv(tmp_path):
    p = tmp_path / "train.txt"
    lines = criteo_lines()
    p.write_text("\n".join(lines) + "\n")
    batches = list(read_batches(p, "criteo", CHUNK))
    assert [s for _, s in batches] == [0, CHUNK]
    df = pd.concat([b for b, _ in batches], ignore_index=True)
    raw = [ln.split("\t") for ln in lines]
    for r in range(len(lines)):
        for j in range(13):
            v = raw[r][1 + j]
            want = None if v == "" else str(int(math.floor(math.log(int(v)) ** 2)) if int(v) > 2 else int(v))
            got = df[f"I{j + 1}"][r]
            assert (got is None or got != got) if want is None else got == want
    assert df["C1"][1] == raw[1][14] and pd.isna(df["C1"][0])
    data = prepare_stream(RunConfig.of(data=str(p), format="criteo", chunk_rows=CHUNK, split="0.6,0.2,0.2",
                                    shard_dir=str(tmp_path / "s"), min_count=1), Log())
    s = data.schema
    assert s.label == "label" and len(s.fields) == 39 and {f.kind for f in s.fields} == {"categorical"}
    assert np.array_equal(all_shard_rows(data)[2], [r % 2 for r in range(50)])
    with pytest.raises(LightFMPError, match=r"--format criteo \(Criteo TSV, no header\)"):
        resolve_format(p, "auto")


def test_criteo_wrong_field_count_names_file_and_line(tmp_path):
    lines = criteo_lines()
    lines[41] = "\t".join(lines[41].split("\t")[:-2])
    p = tmp_path / "bad.txt"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(LightFMPError) as e:
        prepare_stream(RunConfig.of(data=str(p), format="criteo", chunk_rows=CHUNK, shard_dir=str(tmp_path)), Log())
    msg = str(e.value)
    assert str(p) in msg and "line 42" in msg and "38" in msg and "\n" not in msg


AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
                "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")


def test_tsv_with_a_header_reads_and_encodes_as_the_same_table_in_csv(tmp_path):
    """`--format tsv`: tab-separated with a header row; a comma is data, a cell holding a tab is quoted as in CSV.
    The same table written as CSV and as TSV gives the same batches and the same encoded rows."""
    df = make_frame(120, 3)
    df.loc[5, "a"], df.loc[7, "a"] = "a1,a2", "a\tb"
    csv_path, tsv_path = tmp_path / "t.csv", tmp_path / "t.tsv"
    df.to_csv(csv_path, index=False)
    df.to_csv(tsv_path, index=False, sep="\t")
    got = pd.concat([b for b, _ in read_batches(tsv_path, "tsv", CHUNK)], ignore_index=True)
    want = pd.concat([b for b, _ in read_batches(csv_path, "csv", CHUNK)], ignore_index=True)
    pd.testing.assert_frame_equal(got, want)
    assert got["a"][5] == "a1,a2" and got["a"][7] == "a\tb"
    cfg = RunConfig.of(data=str(csv_path), label="label", multi_hot="tags:|", min_count=1)
    a = load_dataset(cfg.data)
    b = load_dataset(cfg.but(data=str(tsv_path), format="tsv").data)
    assert a.schema.to_dict() == b.schema.to_dict()
    for split in ("train", "valid", "test"):
        assert all(np.array_equal(x, y) for x, y in zip(a.split_rows(split).arrays(), b.split_rows(split).arrays()))
    with pytest.raises(LightFMPError, match="pass --format tsv"):
        resolve_format(tsv_path, "auto")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tlabel\n1\t2\t0\n1\t2\n")
    with pytest.raises(LightFMPError, match=r"bad.tsv: line 3 has 2 fields, the header has 3"):
        list(read_batches(bad, "tsv", CHUNK))
    bad = tmp_path / "bad.csv"  # a file that fails in its first block names the line too
    bad.write_text("a,b,label\n1,2,0\n1,2\n")
    with pytest.raises(LightFMPError, match=r"bad.csv: line 3 has 2 fields, the header has 3"):
        list(read_batches(bad, "csv", CHUNK))


def test_text_files_xz_and_the_lines_a_bad_record_is_on(tmp_path):
    import lzma
    plain, packed = tmp_path / "d.csv", tmp_path / "d.csv.xz"
    make_frame(50, 4).to_csv(plain, index=False)
    packed.write_bytes(lzma.compress(plain.read_bytes()))
    read = lambda p, fmt="csv": pd.concat([b for b, _ in read_batches(p, fmt, CHUNK)], ignore_index=True)  # noqa: E731
    pd.testing.assert_frame_equal(read(packed), read(plain))  # pyarrow has no xz codec: read through lzma
    for suffix, pack in ((".GZ", "gzip"), (".BZ2", "bz2"), (".XZ", "lzma")):  # a suffix in capitals: the same rows
        upper = tmp_path / f"D.CSV{suffix}"  # (pyarrow's own .gz check is case-sensitive: it parsed the bytes)
        upper.write_bytes(__import__(pack).compress(plain.read_bytes()))
        pd.testing.assert_frame_equal(read(upper), read(plain))
    fake = tmp_path / "fake.csv.xz"
    fake.write_text("a,b,label\n1,2,0\n")
    with pytest.raises(LightFMPError, match=r"fake.csv.xz: cannot read \(LZMAError"):
        read(fake)
    cases = {"bom.tsv": ('\ufeff"a\tx"\tb\tlabel\n1\t2\t0\n5\t6\n', "line 3 has 2 fields, the header has 3"),
             "span.tsv": ('a\tb\tlabel\n1\t2\t0\n"m\nl"\t2\n', "the record on lines 3-4 has 2 fields"),
             "blank.tsv": ("\n\na\tb\tlabel\n1\t2\t0\n1\t2\n", "line 5 has 2 fields, the header has 3")}
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(LightFMPError, match=f"{name}: {msg}"):
            read(tmp_path / name, "tsv")


def test_avazu_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for r in range(50):
        hour = f"1410{21 + r % 9:02d}{r % 24:02d}"
        rest = [f"{v:x}" for v in rng.integers(0, 30, 21)]
        rows.append(",".join([str(10 ** 18 + r), str(r % 3 == 0 and 1 or 0), hour] + rest))
    p = tmp_path / "avazu.csv"
    p.write_text(AVAZU_HEADER + "\n" + "\n".join(rows) + "\n")
    df = next(read_batches(p, "avazu", 100))[0]
    assert "id" not in df.columns and "hour" not in df.columns
    assert list(df.columns[:4]) == ["click", "hour_of_day", "weekday", "C1"]
    assert df["hour_of_day"][5] == "5" and df["weekday"][0] == "1"  # 2014-10-21 was a Tuesday
    data = prepare_stream(RunConfig.of(data=str(p), format="avazu", chunk_rows=CHUNK, shard_dir=str(tmp_path / "s"),
                                    split="0.6,0.2,0.2"), Log())
    assert data.schema.label == "click" and {f.kind for f in data.schema.fields} == {"categorical"}
    assert len(data.schema.fields) == 23
    assert np.array_equal(all_shard_rows(data)[2], [float(r % 3 == 0) for r in range(50)])


@pytest.mark.parametrize("hour", ["141021", "1410212", "141021011", "14102a01"])
def test_an_avazu_hour_that_is_not_eight_digits_is_refused(tmp_path, hour):
    """YYMMDDHH: pandas' format also takes one-digit months, days and hours, so '141021' (no hour) read as
    2014-10-02 01:00, silently."""
    p = tmp_path / "a.csv"
    p.write_text(f"id,click,hour,C1\n1,0,14102100,a\n2,1,{hour},b\n")
    for chunk in (100, 1):  # the bad row in the first record batch, and in the second: the file's line either way
        with pytest.raises(LightFMPError, match=f"a.csv: line 3 column hour: '?{hour}'? is not YYMMDDHH"):
            list(read_batches(p, "avazu", chunk))


def test_a_blank_avazu_hour_is_called_missing(tmp_path):
    """A blank hour was shown as pandas' nan ("nan is not YYMMDDHH"), a value the file does not hold."""
    p = tmp_path / "a.csv"
    p.write_text("id,click,hour,C1\n1,0,14102100,a\n2,1,,b\n")
    for chunk in (100, 1):
        with pytest.raises(LightFMPError, match="a.csv: line 3 column hour: missing value"):
            list(read_batches(p, "avazu", chunk))


@pytest.mark.parametrize("taken", ["hour_of_day", "weekday"])
def test_an_avazu_column_named_as_a_derived_one_is_refused(tmp_path, taken):
    """The hour is read into hour_of_day and weekday: a column already so named was a KeyError traceback."""
    p = tmp_path / "a.csv"
    p.write_text(f"id,click,hour,C1,{taken}\n1,0,14102100,a,3\n2,1,14102101,b,4\n")
    with pytest.raises(LightFMPError, match=f"column '{taken}' clashes with the column lightfmp derives from 'hour'"):
        next(read_batches(p, "avazu", 100))


def test_parquet_parts_and_bad_label(tmp_path):
    df = make_frame(300)
    (tmp_path / "pq").mkdir()
    df.iloc[:100].to_parquet(tmp_path / "pq" / "part-0.parquet")
    df.iloc[100:].to_parquet(tmp_path / "pq" / "part-1.parquet")
    (tmp_path / "pq" / "_SUCCESS").write_text("")
    got = list(read_batches(tmp_path / "pq", "auto", 64))
    assert [s for _, s in got] == [0, 64, 100, 164, 228, 292]
    back = pd.concat([b for b, _ in got], ignore_index=True)
    assert back["label"].tolist() == df["label"].tolist() and back["a"].tolist() == df["a"].tolist()
    df.loc[77, "label"] = 2
    write = tmp_path / "bad.csv"
    df.to_csv(write, index=False)
    with pytest.raises(LightFMPError, match=r"value '2' at row 77 \(line 79\)"):
        prepare_stream(cfg_for(write, tmp_path / "s"), Log())
    lines = write.read_text().splitlines(keepends=True)  # blank lines, which the reader skips, still count as lines
    (tmp_path / "blank.csv").write_text("".join(["\n"] + lines[:4] + ["\n", "\r\n"] + lines[4:]))
    with pytest.raises(LightFMPError, match=r"value '2' at row 77 \(line 82\)"):
        prepare_stream(cfg_for(tmp_path / "blank.csv", tmp_path / "s"), Log())


def test_export_of_hashed_fields_needs_id_inputs(built, hashed, tmp_path):
    import torch
    from lightfmp.export import export_run
    from lightfmp.models import build_model
    from lightfmp.rundir import write_run_files
    from lightfmp.serving import Predictor
    cfg = built["cfg"].but(backbone="mlp", hidden="8", embed_dim=4)
    torch.manual_seed(0)
    model = build_model("mlp", hashed.schema, cfg.model)
    run = tmp_path / "run"
    run.mkdir()
    write_run_files(run, info={"state": "complete", "select": False}, config=cfg, schema=hashed.schema,
                    metrics={"fields": {"all": hashed.schema.names, "kept": hashed.schema.names, "dropped": []}},
                    checkpoints={"model.safetensors": model})
    with pytest.raises(LightFMPError, match="--inputs raw: field 'a' is hashed.*--inputs ids") as e:
        export_run(run, tmp_path / "raw", inputs="raw", validate_rows=64)
    assert "\n" not in str(e.value) and not (tmp_path / "raw").exists()
    doc = export_run(run, tmp_path / "ids", inputs="ids", validate_rows=64)
    spec = next(s for s in doc["inputs"] if s["name"] == "a")
    assert spec["hash"]["buckets"] == 8 and "vocab_file" not in spec
    assert list((tmp_path / "ids" / "vocab").iterdir()) == []  # every non-numeric field is hashed: no vocab files
    df = make_frame(N)
    with torch.no_grad():
        want = torch.sigmoid(model.eval()(torch.from_numpy(hashed.schema.encode(df).astype(np.int64)))).numpy()
    assert np.abs(Predictor(tmp_path / "ids").predict(df) - want).max() <= 1e-5


def test_cli_criteo_end_to_end_then_train_reuses_the_shards(tmp_path):
    """`lightfmp run --format criteo` (streaming implied) writes a complete run; a second command on the same data
    reads the encoded shards instead of encoding again."""
    from typer.testing import CliRunner
    from lightfmp.cli.app import app
    p = tmp_path / "day_0.txt"
    p.write_text("\n".join(criteo_lines(300)) + "\n")
    common = ["--format", "criteo", "--shard-dir", str(tmp_path / "s"), "--chunk-rows", "64", "--min-count", "1",
              "--embed-dim", "4", "--hidden", "8", "--pretrain-epochs", "1", "--epochs", "1", "--subset", "0.5"]
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--data", str(p), "--out", str(tmp_path / "run"), "--keep", "5"] + common)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(m["fields"]["kept"]) == 5 and len(m["fields"]["all"]) == 39
    assert m["test"]["rows"] + m["valid"]["rows"] + sum(m["data"]["split"][k] for k in ("train",)) == 300
    assert 0.0 <= m["test"]["auc"] <= 1.0
    res = runner.invoke(app, ["train", "--data", str(p), "--out", str(tmp_path / "again")] + common)
    assert res.exit_code == 0, res.output
    assert "reusing encoded shards" in res.output and "encode:" not in res.output


def test_small_views_are_read_into_memory_with_their_row_numbers(built):
    from lightfmp.rows import ArrayRows, in_memory
    sub, _ = built["data"].subset(0.5, 0)
    held = in_memory(sub, 1 << 20)
    assert isinstance(held, ArrayRows) and len(held) == len(sub)
    assert np.array_equal(held.row_numbers(), sub.row_numbers()) and np.array_equal(held.labels(), sub.labels())
    # hash splits of the in-memory copy pick the same global rows as the sharded view's
    for a, b in zip(held.split(0.2, 0, SALT_HOLDOUT), sub.split(0.2, 0, SALT_HOLDOUT)):
        assert np.array_equal(a.row_numbers(), b.row_numbers())
    assert in_memory(sub, 16) is sub  # over the budget: left on disk


def test_fit_cache_round_trips_compact_and_with_a_nan(tmp_path):
    """The fit cache is written compact (one line) and reads back the same schema; a NaN in what it records is
    written as null, never as a bare NaN that strict JSON readers refuse."""
    schema = FeatureSchema("y", [Field("a", "categorical", vocab=["x", "y", "é"]),
                                 Field("n", "numeric", boundaries=[0.5, 1.25, 1e300])])
    save_fit(tmp_path / "fit.json", schema, {"a": "categorical (text)"})
    assert len((tmp_path / "fit.json").read_text().splitlines()) == 1
    back, inferred = load_fit(tmp_path / "fit.json")
    assert back.to_dict() == schema.to_dict() and inferred == {"a": "categorical (text)"}
    save_fit(tmp_path / "nan.json", schema, {"a": "categorical (text)", "share": float("nan")})
    text = (tmp_path / "nan.json").read_text()
    assert "NaN" not in text and json.loads(text)["inferred"]["share"] is None

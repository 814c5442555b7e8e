import json
import warnings

import numpy as np
import pandas as pd
import pytest

from lightfmp.vocab import SchemaSpec, fit_schema, infer_schema
from lightfmp.config import RunConfig
from lightfmp.dataset import load_dataset
from lightfmp.errors import LightFMPError
from lightfmp.schema import COUNTED_EDGES, FIRST_ID, OOV_ID, PAD_ID, FeatureSchema, Field, bucket_ids, quantile_edges


def fitted_schema(min_count=1):
    df = pd.DataFrame({"c": ["x", "y", "x", "z", "x"], "n": [1.0, 2.0, 3.0, np.nan, 5.0],
                       "m": ["a|b", "b", "", "a|b|c", None], "label": [0, 1, 0, 1, 1]})
    s = FeatureSchema("label", [Field("c", "categorical"), Field("n", "numeric"),
                                Field("m", "multi_hot", separator="|")], min_count=min_count, num_buckets=4)
    return fit_schema(s, df), df


def test_vocab_ids_reserved_and_ordered_by_frequency():
    s, df = fitted_schema()
    c = s.field("c")
    assert c.vocab[0] == "x"  # most frequent first
    assert c.token_ids()["x"] == FIRST_ID
    ids = s.encode(pd.DataFrame({"c": ["x", "never-seen", None], "n": [1.0, 2.0, 3.0], "m": ["a", "b", "q"]}))
    assert ids[0, 0] == FIRST_ID and ids[1, 0] == OOV_ID and ids[2, 0] == OOV_ID


def test_min_count_sends_rare_values_to_oov():
    s, df = fitted_schema(min_count=2)
    assert s.field("c").vocab == ["x"]
    ids = s.encode(df)
    assert list(ids[:, 0]) == [FIRST_ID, OOV_ID, FIRST_ID, OOV_ID, FIRST_ID]


def test_numeric_buckets_and_missing():
    s, df = fitted_schema()
    f = s.field("n")
    ids = s.encode(df)[:, 1]
    assert ids[3] == OOV_ID  # NaN
    expected = np.searchsorted(np.array(f.boundaries), [1.0, 2.0, 3.0, 5.0], side="right") + FIRST_ID
    assert list(ids[[0, 1, 2, 4]]) == list(expected)
    assert ids[4] == f.vocab_size - 1  # the largest value lands in the last bucket


@pytest.mark.parametrize("n_edges", [3, COUNTED_EDGES, COUNTED_EDGES + 1])  # counted, and searched beyond the cap
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("precision", [np.float64, np.float32])  # float32: the exported graph's comparisons
def test_bucket_ids_count_the_edges_at_or_below_each_value(n_edges, dtype, precision):
    rng = np.random.default_rng(n_edges)
    edges = sorted(set(rng.normal(size=n_edges).round(3).tolist()))
    x = np.concatenate([rng.normal(size=500), np.asarray(edges), [np.inf, -np.inf, np.nan]]).astype(dtype)
    ids = bucket_ids(x, edges, precision)
    assert ids.dtype == np.int32
    at = [float(precision(e)) for e in edges]  # each edge rounded to the precision compared at
    want = [OOV_ID if np.isnan(v) else FIRST_ID + sum(float(v) >= e for e in at) for v in x]
    assert ids.tolist() == want
    assert ids[-3] == FIRST_ID + len(edges) and ids[-2] == FIRST_ID and ids[-1] == OOV_ID


@pytest.mark.parametrize("edges, says", [([3.0, 1.0, 2.0], "ascending order"), ([float("nan"), 1.0], "numbers"),
                                         (["1", 2.0], "numbers"), ("0,1", "numbers"),
                                         ([float("-inf"), 1.0], "finite numbers")])
def test_a_schema_file_with_edges_out_of_order_is_refused(tmp_path, edges, says):
    """Bucket ids count the edges at or below a value, which means something only for numbers in order."""
    s, _ = fitted_schema()
    d = s.to_dict()
    next(f for f in d["fields"] if f["name"] == "n")["boundaries"] = edges
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(d))
    with pytest.raises(LightFMPError, match=f"{path}: schema field 'n': boundaries must be .*{says}"):
        FeatureSchema.load(path)


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["fields"].append(dict(d["fields"][0])), "field 'c' is listed twice"),
    (lambda d: d["fields"][0]["vocab"].append(d["fields"][0]["vocab"][0]), "vocab lists 'x' twice"),
    (lambda d: d["fields"][0]["vocab"].append(None), "vocab holds None; it is a list of strings"),
    (lambda d: d["fields"][0].__setitem__("vocab", "x,y"), "vocab holds 'x,y'; it is a list of strings"),
    (lambda d: d["fields"][0].update(spelling={"whole": "16.00", "bool": "true"}),
     "spelling .* must give whole as '16' or '16.0' and bool as 'True' or 'true'"),
    (lambda d: d["fields"][0].update(spelling={"whole": "16", "bool": "true", "empty": "value", "fraction": "0.3"}),
     "spelling .* and fraction as '0.2' or '0.20000000298023224'"),
    (lambda d: d["fields"][0].update(spelling={"whole": "16", "bool": "true", "fraction": "0.2"}),
     "spelling .* must give whole")])
def test_a_schema_file_with_a_field_or_token_twice_is_refused(tmp_path, edit, says):
    """A field's place is its column, a token's place its id: either twice would train and export two things under
    one name."""
    s, _ = fitted_schema()
    d = s.to_dict()
    assert d["fields"][0]["name"] == "c" and d["fields"][0]["vocab"][0] == "x"
    edit(d)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(d))
    with pytest.raises(LightFMPError, match=f"{path}: .*{says}"):
        FeatureSchema.load(path)


def test_multi_hot_padding_and_truncation():
    s, df = fitted_schema()
    m = s.field("m")
    assert m.max_len == 3 and m.slots == 3
    ids = s.encode(df)[:, 2:5]
    tok = m.token_ids()
    assert list(ids[0]) == [tok["a"], tok["b"], PAD_ID]
    assert list(ids[2]) == [PAD_ID] * 3 and list(ids[4]) == [PAD_ID] * 3
    assert list(ids[3]) == [tok["a"], tok["b"], tok["c"]]


def test_lists_longer_than_the_slots_are_said_to_be_cut():
    """A multi-hot field reads at most 32 tokens a row: a longer list's tail was dropped without a word."""
    from lightfmp.vocab import StreamFitter
    df = pd.DataFrame({"m": ["|".join(f"t{i}" for i in range(40)), "t1|t2"], "label": [0, 1]})
    said = []
    fitter = StreamFitter(FeatureSchema("label", [Field("m", "multi_hot", separator="|")], min_count=1), 0,
                          log=said.append)
    fitter.add(df)
    assert fitter.finish().field("m").max_len == 32
    assert any("lists of up to 40 tokens; each row's first 32 are read, the rest dropped" in line for line in said)


def test_json_round_trip(tmp_path):
    s, df = fitted_schema()
    s.save(tmp_path / "schema.json")
    back = FeatureSchema.load(tmp_path / "schema.json")
    assert back.to_dict() == s.to_dict()
    assert np.array_equal(back.encode(df), s.encode(df))


def test_newer_schema_version_rejected(tmp_path):
    s, _ = fitted_schema()
    d = s.to_dict()
    d["schema_version"] = 99
    (tmp_path / "s.json").write_text(json.dumps(d))
    with pytest.raises(LightFMPError, match="newer"):
        FeatureSchema.load(tmp_path / "s.json")


def test_inference_rules():
    n = 3000
    df = pd.DataFrame({"s": ["u"] * n, "small_int": [str(i % 7) for i in range(n)],
                       "big_int": [str(i * 13) for i in range(n)], "f": [str(i / 3) for i in range(n)],
                       "label": ["0", "1"] * (n // 2)})
    schema, inferred = infer_schema(df, SchemaSpec("label", [], [], {}, []), "t.csv")
    kinds = {f.name: f.kind for f in schema.fields}
    assert kinds == {"s": "categorical", "small_int": "categorical", "big_int": "numeric", "f": "numeric"}
    assert set(inferred) == {"s", "small_int", "big_int", "f"}


def test_all_nan_column_rejected(tmp_path):
    # checked once, over every batch, by the one data path (a column empty in the first batch only is fine)
    df = pd.DataFrame({"a": [str(i % 3) for i in range(40)], "empty": [None] * 40, "label": ["0", "1"] * 20})
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(LightFMPError, match="'empty' is entirely empty"):
        load_dataset(RunConfig.of(data=str(tmp_path / "t.csv"), label="label", chunk_rows=7).data)


def test_duplicate_index_and_nullable_booleans():
    s = FeatureSchema("label", [Field("m", "multi_hot", separator="|"), Field("flag", "categorical")], min_count=1)
    df = pd.DataFrame({"m": ["x|y", "z|x"], "flag": pd.array([True, None], dtype="boolean")}, index=[5, 5])
    fit_schema(s, df)
    tok = s.field("m").token_ids()
    ids = s.encode(df)
    assert list(ids[0, :2]) == [tok["x"], tok["y"]] and list(ids[1, :2]) == [tok["z"], tok["x"]]
    assert s.field("flag").vocab == ["True"]  # the missing value is not a category
    assert ids[1, 2] == OOV_ID


def test_a_float32_columns_fractions_are_told_from_short_texts():
    """`widened_single`: a text is a float32 value's float64 text where it has more digits than that float32 value
    needs: exactly, against Python's own float32 round trip."""
    import pyarrow as pa
    from lightfmp.schema import long_single
    from lightfmp.vocab import widened_single
    texts = ["0.20000000298023224", "0.2", "0.5", "16", "16.0", "1e-05", "9.999999747378752e-06", "abc", "",
             "-0.10000000149011612", "0.30000001192092896", "3.4e+38", "1.7976931348623157e+308", ".5", "1.5e3"]
    numbers = [t for t in texts if t not in ("abc", "", "16")]  # the filter keeps number texts that are not whole
    want = [long_single(t) for t in numbers]
    assert want == [True, False, False, False, False, True, True, True, False, False, False, False]
    assert widened_single(pa.array(texts)) == (len(numbers), sum(want))
    # a float32 value written short is a value as written, though float32 writes it shorter still ('1234567.2')
    assert not long_single("1234567.25") and widened_single(pa.array(["1234567.25"])) == (1, 0)


def test_a_fields_fractions_are_a_float32_columns_where_most_are_so():
    """One short decimal that happens to be a float32 value (1234567.25: float32 writes it '1234567.2') does not
    make a float64 column's fractions a float32 column's texts; a float32 column's short dyadic values (0.5) do not
    hide its spelling."""
    import pyarrow as pa
    from lightfmp.vocab import Spellings

    def fraction(values):
        s = Spellings()
        s.add(pa.array(values))
        return s.spelling()["fraction"]
    assert fraction(["0.2", "10.1", "1234567.25", "3.7"]) == "0.2"
    assert fraction(["0.20000000298023224", "0.5", "0.10000000149011612", "0.25"]) == "0.2"  # two of four: not most
    assert fraction(["0.20000000298023224", "0.5", "0.10000000149011612"]) == "0.20000000298023224"


def test_edges_of_values_spanning_more_than_the_largest_float_are_finite_and_survive_the_schema_file(tmp_path):
    """np.quantile interpolates a + (b - a) t, and b - a overflows for -1e308 and 1e308: the edges came out -inf,
    which a schema file cannot hold (a run's schema.json then failed to load in prune). Edges are the same
    quantiles, finite; and ordinary values give np.quantile's edges unchanged."""
    x = np.array([-1e308, 1e308] * 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning is not the user's to read
        edges = quantile_edges(x, 4)
    assert all(np.isfinite(edges)) and edges == sorted(edges)
    assert edges == [-1e308, 0.0, 1e308]  # the quartiles of half -1e308, half 1e308: the lower, the middle, the upper
    s = FeatureSchema("y", [Field("x", "numeric", boundaries=edges)], None, 2, 16)
    s.save(tmp_path / "schema.json")
    assert FeatureSchema.load(tmp_path / "schema.json").fields[0].boundaries == edges
    y = np.random.default_rng(0).normal(size=1000)
    assert quantile_edges(y, 16) == [float(v) for v in np.unique(np.quantile(y, np.linspace(0, 1, 17)[1:-1]))]


def test_a_schema_key_lightfmp_does_not_know_is_refused_after_the_version_says_it_is_newer():
    """A key lightfmp never writes is refused naming it (a misspelt one would be ignored and the field fitted from
    the data); a schema of a newer lightfmp, which may add keys, says so first."""
    fields = [{"name": "a", "kind": "categorical", "vocab": ["x"]}]
    with pytest.raises(LightFMPError, match=r"^s\.json: unknown key 'extra' \(known: schema_version, label,"):
        FeatureSchema.from_dict({"label": "y", "fields": fields, "extra": 1}, source="s.json")
    with pytest.raises(LightFMPError, match=r"schema field 'a': unknown key 'edges'"):
        FeatureSchema.from_dict({"label": "y", "fields": [{**fields[0], "edges": [1.0]}]}, source="s.json")
    with pytest.raises(LightFMPError, match="schema_version 99 is newer than this lightfmp supports"):
        FeatureSchema.from_dict({"label": "y", "fields": fields, "extra": 1, "schema_version": 99}, source="s.json")
    written = FeatureSchema.from_dict({"label": "y", "fields": fields}).to_dict()  # every key lightfmp writes
    assert FeatureSchema.from_dict(written).fields[0].vocab == ["x"]

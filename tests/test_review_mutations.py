"""Behaviour a mutation audit found untested: each test fails under the one-token change named in its docstring."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_frame, one_line_error, write_csv
from lightfmp import keep_rule
from lightfmp.averaging import tie
from lightfmp.cli.app import app
from lightfmp.config import DataConfig
from lightfmp.dataset import load_dataset
from lightfmp.errors import LightFMPError
from lightfmp.models import ModelConfig, build_model
from lightfmp.schema import FeatureSchema, Field
from lightfmp.shards import check_shards
from lightfmp.splits import parse_split
from lightfmp.vocab import apply_options, fit_schema
from typer.testing import CliRunner


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_screen_sends_the_most_promising_candidate_to_the_exact_passes(monkeypatch):
    """A screen sorted the wrong way (the least promising first) evaluated only fields that carry nothing: with
    the screen always on and one candidate passed on, the planted field must still be picked first."""
    rng = np.random.default_rng(0)
    n = 4000
    s = FeatureSchema("label", [Field(f"f{i}", "categorical", vocab=[str(v) for v in range(6)]) for i in range(5)])
    ids = rng.integers(2, 8, size=(n, 5)).astype(np.int64)
    eff = np.array([0, 0, -2, -1, 0, 1, 2, 2.5])
    y = (rng.random(n) < 1 / (1 + np.exp(-eff[ids[:, 3]]))).astype(np.float32)
    torch.manual_seed(0)
    m = build_model("mlp", s, ModelConfig(embed_dim=1, hidden=[]), gated=True)
    with torch.no_grad():
        m.embedding.weight.zero_()
        m.embedding.weight[3 * 8:4 * 8, 0] = torch.tensor(eff, dtype=torch.float32)  # only f3 carries anything
        m.out.weight.fill_(1.0)
        m.out.bias.zero_()
        m.gate.log_alpha.fill_(5.0)
    monkeypatch.setattr(keep_rule, "EXACT_CANDIDATES", 0)
    monkeypatch.setattr(keep_rule, "SCREENED", 1)
    assert keep_rule.forward_order(m.eval(), ids, y, steps=1)[0] == 3


def test_shards_copied_under_another_key_are_not_reused(tmp_path):
    """(The key check removed: a copy under another directory name read as that key's data.)"""
    p = write_csv(tmp_path, n=300)
    cfg = DataConfig(data=str(p), label="label", categorical=["a", "b", "noise"], multi_hot=["tags:|"],
                     numeric=["x"], stream=True, shard_dir=str(tmp_path / "sh"))
    data = load_dataset(cfg)
    copy = data.location.parent / ("0" * len(data.location.name))
    shutil.copytree(data.location, copy)
    manifest, why = check_shards(copy, copy.name)
    assert manifest is None and "key differs from the directory name" in why
    assert check_shards(data.location, data.location.name)[0] is not None


def test_vocab_cap_below_one_is_refused():
    with pytest.raises(LightFMPError, match="--vocab-cap 0: must be >= 1"):
        apply_options(FeatureSchema("y", [Field("a", "categorical")]), vocab_cap=0)


def test_every_field_hashed_skips_the_fields_a_schema_file_fitted():
    """'N' hashes the fields still to fit and leaves a fitted vocabulary as it is (named, such a field is refused)."""
    s = FeatureSchema("y", [Field("a", "categorical", vocab=["x", "y"]), Field("b", "categorical")])
    apply_options(s, "7")
    assert s.field("a").vocab == ["x", "y"] and s.field("a").hash_buckets is None and s.field("b").hash_buckets == 7
    with pytest.raises(LightFMPError, match="field 'a' already has a vocabulary"):
        apply_options(FeatureSchema.from_dict(s.to_dict()), "a:7")


def test_a_partly_fitted_schema_fitted_again_records_no_text_rule_of_its_own(tmp_path):
    """(all -> any: the rule was stamped on a schema whose other vocabularies an older lightfmp may have fitted.)"""
    df = make_frame(300)
    p = tmp_path / "d.csv"
    df.to_csv(p, index=False)
    fitted = fit_schema(FeatureSchema("label", [Field("a", "categorical"), Field("noise", "categorical")]), df)
    d = fitted.to_dict()
    d["meta"] = {}
    d["fields"][1]["vocab"] = None  # noise left to fit; a keeps the file's vocabulary
    (tmp_path / "s.json").write_text(json.dumps(d))
    data = load_dataset(DataConfig(data=str(p), label="label", schema=str(tmp_path / "s.json"), ignore=[]))
    assert "text_rule" not in data.schema.meta and data.schema.field("noise").vocab


def test_label_flag_wins_over_the_schema_files_label(tmp_path):
    df = make_frame(300).rename(columns={"label": "y2"}).assign(label=0)
    p = tmp_path / "d.csv"
    df.to_csv(p, index=False)
    s = fit_schema(FeatureSchema("label", [Field("a", "categorical"), Field("noise", "categorical")]), df)
    s.save(tmp_path / "s.json")
    data = load_dataset(DataConfig(data=str(p), label="y2", schema=str(tmp_path / "s.json")))
    assert data.schema.label == "y2"


def test_a_limit_of_zero_keeps_one_tied_epoch():
    low = np.random.default_rng(0).exponential(0.5, 1000)
    tied = tie({}, 0, low, low, 0, lambda: {"w": torch.zeros(1)})
    assert sorted(tied) == [0]


def test_split_fractions_must_sum_to_one_closely():
    with pytest.raises(LightFMPError, match=r"they sum to 1.005"):
        parse_split("0.8,0.1,0.105")
    assert parse_split("0.8,0.1,0.1") == (0.8, 0.1, 0.1)


def test_an_error_of_a_config_files_value_names_the_file_once(tmp_path):
    """(The startswith clause removed: the file named at the start was named again at the end.)"""
    p = write_csv(tmp_path, n=100)
    (tmp_path / "c.yaml").write_text("batch_size: 0\n")
    r = cli("run", "--data", p, "--label", "label", "--config", tmp_path / "c.yaml", "--out", tmp_path / "r")
    one_line_error(r, "c.yaml")
    assert r.output.count("c.yaml") == 1, r.output


def _feeds_export(tmp_path_factory):
    from lightfmp import RunConfig
    import lightfmp
    from lightfmp.export import export_run
    t = tmp_path_factory.mktemp("feeds")
    cfg = RunConfig.of(data=str(write_csv(t, n=500)), label="label", multi_hot="tags:|", numeric="x",
                       categorical="a,b,noise", epochs=1, embed_dim=4, hidden=[8], no_select=True)
    lightfmp.run(cfg, t / "run", quiet=True)
    export_run(t / "run", t / "exp", inputs="raw")
    return t / "exp"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from lightfmp.serving import Predictor
    return Predictor(_feeds_export(tmp_path_factory))


def test_feeds_are_checked_for_width_and_take_integers_for_numbers(predictor):
    df = make_frame(20).drop(columns="label")
    feeds = predictor.encode(df)
    tags = feeds["tags"]
    with pytest.raises(LightFMPError, match=r"input 'tags' has shape \[20, \d+\], expected \['rows', \d+\]"):
        predictor.run({**feeds, "tags": np.concatenate([tags, tags[:, :1]], axis=1)})  # one slot too many
    whole = {**feeds, "x": np.round(feeds["x"]).astype(np.int64)}
    assert np.array_equal(predictor.run(whole), predictor.run({**whole, "x": whole["x"].astype(np.float32)}))
    with pytest.raises(LightFMPError, match=re.escape("input 'a' holds None, not text")):
        predictor.run({**feeds, "a": np.array(["a1"] * 19 + [None], dtype=object)})



# ---- a third mutation audit: labels, splits, groupings, closed fields --------------------------------------------
def test_a_null_label_cell_is_refused_with_positive_too():
    """A null in an Arrow label column is a missing label (refused), not a negative, under --positive as without."""
    import pyarrow as pa
    from lightfmp.labels import parse_labels
    with pytest.raises(LightFMPError, match="missing value at row 1"):
        parse_labels(pa.table({"y": pa.array(["click", None, "no"])}), "y", "click", "d.parquet")


def test_labels_written_as_one_point_zero_read_as_binary():
    from lightfmp.labels import parse_labels
    got = parse_labels(pd.DataFrame({"y": ["1.0", "0.0", "1", "0"]}), "y", None, "d.csv", fmt="csv")
    assert got.tolist() == [1, 0, 1, 0]


def test_label_counts_name_the_values_of_every_batch():
    from lightfmp.labels import LabelCounts
    c = LabelCounts("y", "click")
    c.add(pd.DataFrame({"y": ["no"] * 3}), np.zeros(3, np.float32))
    c.add(pd.DataFrame({"y": ["skip"] * 2}), np.zeros(2, np.float32))
    with pytest.raises(LightFMPError, match="'no': 3, 'skip': 2"):
        c.check("d.csv")


def test_the_time_split_rounds_its_shares():
    """round(f * n) rows per share, oldest first: 0.7 / 0.15 / 0.15 of 5 rows is 4 / 1 / 0 (flooring gave 3 / 0 / 2);
    a share that rounds to no row gets none (the split's size check then names it)."""
    from lightfmp.splits import time_codes
    assert time_codes(pd.Series(range(5)), (0.7, 0.15, 0.15), "t", "d.csv").tolist() == [0, 0, 0, 0, 1]
    assert (time_codes(pd.Series(range(20)), (0.02, 0.49, 0.49), "t", "d.csv") == 0).sum() == 0


def test_a_relation_that_holds_by_chance_over_the_fields_is_not_taken():
    """The function check is corrected for the number of fields (Bonferroni): a grouping whose chance is 0.038 lies
    between 0.05 / 2 and 0.05, so with two fields it is not taken as a relation."""
    from lightfmp.groupings import Groupings
    a = np.repeat(np.arange(5), 2) + 1
    b = np.array([0, 0, 0, 1, 1]).repeat(2) + 100
    assert not Groupings(np.stack([a, b], 1), [0, 1]).is_function_of(1, 0)


def test_a_finer_field_exactly_at_the_density_bound_stands_for_its_function():
    from lightfmp.groupings import Groupings
    a = np.arange(400) // 2 + 1
    b = (np.arange(400) // 2) % 4 + 1000
    g = Groupings(np.stack([a, b], 1), [0, 1], field_ids=[200, 4], rows_ratio=50.0)
    assert g.stands_for(1, 0)  # 200 ids <= 50 x 4: at the bound, it stands for it


# ---- a mutation audit of export, serving and encoding -----------------------------------------------------------
def test_a_served_number_finds_a_float32_columns_ten_digit_text():
    """A categorical field fitted on a float32 column keys 4.095703 by its float64 text '4.095703125' (exactly ten
    significant digits, the long-text bound): a client's 4.095703 finds it, not the OOV id."""
    import pyarrow as pa
    from lightfmp.encoding import tokens
    from lightfmp.export.feeds import feeds_from_frame
    from lightfmp.schema import FIRST_ID
    from lightfmp.serving import _value_rule
    tok = tokens(pa.array(np.array([4.095703], dtype=np.float32))).values.to_pylist()
    assert tok == ["4.095703125"]
    f = Field("v", "categorical", vocab=tok)
    served = _value_rule(f)(4.095703)
    ids = feeds_from_frame(pd.DataFrame({"v": pd.Series([served], dtype=object)}), FeatureSchema("y", [f]))["v"]
    assert ids.tolist() == [FIRST_ID], (served, ids)


def test_a_nullable_integer_columns_gaps_are_missing_not_a_category():
    from lightfmp.encoding import tokens
    t = tokens(pd.Series([7, None, 7, None], dtype="Int64"))
    assert t.values.to_pylist() == ["7"] and t.codes.tolist() == [0, -1, 0, -1]


def test_float32_buckets_that_cost_the_auc_refuse_the_export():
    """Every test row read in the other bucket in float32: the logloss moves by 5e-4 (under the tolerance), the AUC
    by 1.0: refused, naming the field."""
    from lightfmp.export import validate as V

    class M(torch.nn.Module):
        def forward(self, ids):  # logit +-0.0005: id 3 scores above id 2
            return ((ids[:, 0] == 3).double() * 2 - 1) * 0.0005
    kept = FeatureSchema("label", [Field("x", "numeric", boundaries=[0.5])])
    n = 400
    ids64 = np.where(np.arange(n) % 2 == 0, 3, 2).astype(np.int64)[:, None]
    labels = (ids64[:, 0] == 3).astype(np.float32)
    served = 5 - ids64
    rows = V.ValidationRows({}, {}, "test split", True, ids_f64=ids64, labels=labels)
    enc = torch.sigmoid(M()(torch.from_numpy(ids64))).numpy().astype(np.float64)
    with pytest.raises(LightFMPError, match="numeric field 'x'"):
        V._float32_bucket_check(M(), kept, rows, enc, served, served != ids64)


# ---- a mutation audit of shards, vocabularies, schemas and checkpoints --------------------------------------------
def _stored(data, name):
    """One stored array of a Dataset (split codes, labels) over all its chunks, in file row order."""
    rows = np.concatenate([np.asarray(data.store.array(i, "rows")) for i in range(len(data.store))])
    vals = np.concatenate([np.asarray(data.store.array(i, name)) for i in range(len(data.store))])
    return vals[np.argsort(rows, kind="stable")]


def test_shards_of_another_seed_are_not_reused(tmp_path):
    """Streamed runs sharing a shard folder with another --seed split the rows anew: with every field hashed (the
    schema is then the same for both seeds) each seed's split codes are the ones the in-memory path gives."""
    from lightfmp.shards import shard_key
    from lightfmp.splits import SplitRule
    p = tmp_path / "d.csv"
    make_frame(400)[["a", "b", "noise", "label"]].to_csv(p, index=False)
    codes, places = {}, []
    for seed in (0, 1):
        base = dict(data=str(p), label="label", hash_buckets="8", seed=seed)
        streamed = load_dataset(DataConfig(**base, stream=True, shard_dir=str(tmp_path / "sh")))
        codes[seed] = _stored(streamed, "split")
        places.append(streamed.location)
        assert np.array_equal(codes[seed], _stored(load_dataset(DataConfig(**base)), "split")), seed
    assert places[0] != places[1] and not np.array_equal(codes[0], codes[1])
    schema = FeatureSchema("label", [Field("a", "categorical", hash_buckets=8)])
    keys = {shard_key("0" * 64, schema, SplitRule((0.8, 0.1, 0.1), seed), "csv", 200) for seed in (0, 1)}
    assert len(keys) == 2


def test_shards_encoded_with_another_positive_value_are_not_reused(tmp_path):
    """A rerun with another --positive over the same shard folder reads its own labels, not the first run's."""
    df = make_frame(300)
    df["label"] = np.where(df["label"] == 1, "click", "skip")
    p = tmp_path / "d.csv"
    df.to_csv(p, index=False)
    got = [load_dataset(DataConfig(data=str(p), label="label", positive=pos, categorical=["a", "b", "noise"],
                                   ignore=["x", "tags"], stream=True, shard_dir=str(tmp_path / "sh")))
           for pos in ("click", "skip")]
    assert got[0].location != got[1].location
    labels0, labels1 = (_stored(d, "labels") for d in got)
    assert np.array_equal(labels0, (df["label"] == "click").to_numpy(np.float32))
    assert np.array_equal(labels1, 1 - labels0)


def test_a_multi_hot_fields_width_is_fitted_on_training_rows_only():
    """A long list in a validation or test row does not widen the field (its slots per row)."""
    from lightfmp.vocab import StreamFitter
    fitter = StreamFitter(FeatureSchema("y", [Field("m", "multi_hot", separator="|")], min_count=1))
    fitter.add(pd.DataFrame({"m": ["a|b", "a", "a|b|c|d|e"]}), np.array([True, True, False]))
    assert fitter.finish().field("m").max_len == 2


def test_a_hashed_fields_whole_numbers_keep_the_integer_spelling_when_both_appear():
    """Text holding both '16' and '16.0' keeps '16' as its spelling of whole numbers (a served 7 hashes as '7'),
    as text holding both 'True' and 'true' keeps 'True'; '16.0' alone is spelled so."""
    import pyarrow as pa
    from lightfmp.vocab import Spellings

    def spelling(*texts):
        s = Spellings()
        s.add(pa.array(list(texts)))
        return s.spelling()
    assert spelling("16", "16.0")["whole"] == "16" and spelling("16.0", "3.0")["whole"] == "16.0"
    assert spelling("true", "True")["bool"] == "True" and spelling("true", "false")["bool"] == "true"


def test_removing_the_checkpoints_leaves_a_users_json_file(tmp_path):
    """The clean-up of <out>.ckpt deletes lightfmp's checkpoint files only: a JSON file of the user's there (and its
    .safetensors namesake) stays."""
    from lightfmp import checkpoint as ckpt_files
    from lightfmp.checkpoint import Checkpoint, TrainState
    out = tmp_path / "r"
    d = ckpt_files.checkpoint_dir(out)
    d.mkdir()
    try:
        Checkpoint(d, "p", {}).save(torch.nn.Linear(2, 1), {}, TrainState(epoch=1, history=[]))
        assert (d / "p.json").is_file() and (d / "p.safetensors").is_file()
        (d / "notes.json").write_text(json.dumps({"mine": 1}))
        (d / "notes.safetensors").write_bytes(b"mine")
        ckpt_files.remove(out)
    finally:
        ckpt_files.reset_hint()
    assert (d / "notes.json").is_file() and (d / "notes.safetensors").is_file()
    assert not (d / "p.json").exists() and not (d / "p.safetensors").exists()


def test_an_integer_column_is_categorical_up_to_one_twentieth_of_the_rows_distinct():
    """Above the floor of 1000, an integer column of 40,000 rows is categorical with 2,000 distinct values and
    numeric with 2,001."""
    from lightfmp.vocab import infer_kind
    assert infer_kind(pd.Series(np.arange(40000) % 2000), 40000)[0] == "categorical"
    assert infer_kind(pd.Series(np.arange(40000) % 2001), 40000)[0] == "numeric"


def test_a_replaced_vocabulary_encodes_by_the_new_list():
    """Encoding after a field's vocabulary was replaced looks values up in the new list, not the one used before."""
    s = FeatureSchema("y", [Field("c", "categorical", vocab=["a", "b"])])
    df = pd.DataFrame({"c": ["a", "b", "z"]})
    assert s.encode(df).ravel().tolist() == [2, 3, 1]
    s.field("c").vocab = ["z", "a"]
    assert s.encode(df).ravel().tolist() == [3, 1, 2]


def test_a_schema_from_a_newer_lightfmp_is_refused():
    from lightfmp.schema import SCHEMA_VERSION
    d = FeatureSchema("y", [Field("a", "categorical", vocab=["x"])]).to_dict()
    FeatureSchema.from_dict(d)
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(LightFMPError, match=f"schema_version {SCHEMA_VERSION + 1} is newer"):
        FeatureSchema.from_dict(d)


def test_zero_hash_buckets_are_refused():
    with pytest.raises(LightFMPError, match="hash_buckets 0 must be an integer from 1"):
        Field("c", "categorical", hash_buckets=0)
    assert Field("c", "categorical", hash_buckets=1).hash_buckets == 1


def test_a_shard_folder_inside_the_data_directory_is_refused(tmp_path):
    """A --shard-dir nested in a Parquet directory given as --data (its shards would be read as data) is refused."""
    from lightfmp.shards import check_home
    (tmp_path / "data").mkdir()
    with pytest.raises(LightFMPError, match="lies inside --data"):
        check_home(str(tmp_path / "data" / "sub" / "shards"), str(tmp_path / "data"))
    check_home(str(tmp_path / "shards"), str(tmp_path / "data"))


def test_a_pruned_schema_keeps_its_vocab_cap():
    s = FeatureSchema("y", [Field("a", "categorical"), Field("b", "categorical")], vocab_cap=5)
    assert s.subset(["a"]).vocab_cap == 5


def test_a_manifest_whose_shards_were_reordered_is_not_reused(tmp_path):
    """Shards listed in another order than their files (each file intact, the totals unchanged) are refused, so
    rows are not read out of order."""
    p = write_csv(tmp_path, n=600)
    data = load_dataset(DataConfig(data=str(p), label="label", categorical=["a", "b", "noise"], ignore=["x", "tags"],
                                   stream=True, chunk_rows=200, shard_dir=str(tmp_path / "sh")))
    root, slots = data.location, data.schema.num_slots
    assert check_shards(root, root.name, slots)[0] is not None
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 2
    manifest["shards"][0], manifest["shards"][1] = manifest["shards"][1], manifest["shards"][0]
    (root / "manifest.json").write_text(json.dumps(manifest))
    got, why = check_shards(root, root.name, slots)
    assert got is None and "its list of shards is not the shard files" in why

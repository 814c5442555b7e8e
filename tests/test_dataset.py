"""The one data path: the same file gives the same rows, split, schema and results in memory and in shards; the
split rule and its record in run.json; degenerate labels and bad splits refused."""
import json
import os
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from helpers import cli, make_frame, one_line_error, rewrite_metrics, write_csv
from lightfmp import pipeline
from lightfmp.config import RunConfig
from lightfmp.dataset import load_dataset
from lightfmp.errors import LightFMPError
from lightfmp.io import file_sha256
from lightfmp.rows import ArrayRows
from lightfmp.encoding import stable_hash
from lightfmp.splits import SALT_SPLIT, SplitRule, parse_split, row_uniform, time_codes

KINDS = dict(label="label", multi_hot="tags:|")
FAST = dict(pretrain_epochs=2, epochs=2, batch_size=64, hidden="16", embed_dim=4)


def cfg_for(p, tmp_path, **kw):
    return RunConfig.of(data=str(p), shard_dir=str(tmp_path / "shards"), chunk_rows=97, **{**KINDS, **kw})


@pytest.mark.parametrize("stream", [False, True])
def test_a_file_replaced_after_it_was_hashed_is_refused(tmp_path, monkeypatch, stream):
    """A file renamed over the data path between its hash and its read: the run would record the first file's hash
    (and, streamed, file the shards and the fitted schema under it) for the second file's rows. Refused in one
    line, with nothing cached; a clean read afterwards works."""
    import lightfmp.dataset as dataset_mod
    p = write_csv(tmp_path, n=500)
    other = tmp_path / "other.csv"
    other.write_text(p.read_text().replace(",1\n", ",x\n").replace(",0\n", ",1\n").replace(",x\n", ",0\n"))
    real = dataset_mod.file_sha256

    def hash_then_replace(path, *a):
        digest = real(path, *a)
        os.replace(other, path)
        return digest
    monkeypatch.setattr(dataset_mod, "file_sha256", hash_then_replace)
    with pytest.raises(LightFMPError, match=f"{p}: changed while lightfmp read it"):
        load_dataset(cfg_for(p, tmp_path, stream=stream).data)
    monkeypatch.undo()
    shards = tmp_path / "shards"
    assert not shards.exists() or not [q for q in shards.rglob("*") if q.is_file()]
    assert load_dataset(cfg_for(p, tmp_path, stream=stream).data).rows == 500


def test_memory_and_shards_hold_the_same_rows(tmp_path):
    p = write_csv(tmp_path, n=500)
    mem = load_dataset(cfg_for(p, tmp_path).data)
    disk = load_dataset(cfg_for(p, tmp_path, stream=True).data)
    assert mem.location is None and disk.location is not None
    assert mem.schema.to_dict() == disk.schema.to_dict()
    assert mem.split_sizes() == disk.split_sizes() and sum(mem.split_sizes().values()) == 500
    for name in ("train", "valid", "test"):
        a, b = mem.split_rows(name), disk.split_rows(name)
        assert np.array_equal(a.row_numbers(), b.row_numbers())
        assert all(np.array_equal(x, y) for x, y in zip(a.arrays(), b.arrays()))
        # the same epoch order, chunk by chunk
        for (xa, ya), (xb, yb) in zip(a.chunks(7), b.chunks(7)):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    sub_m, rest_m = mem.subset(0.3, 0)
    sub_d, rest_d = disk.subset(0.3, 0)
    assert np.array_equal(sub_m.row_numbers(), sub_d.row_numbers())
    assert np.array_equal(rest_m.row_numbers(), rest_d.row_numbers())


def test_split_is_the_row_hash(tmp_path):
    p = write_csv(tmp_path, n=400)
    data = load_dataset(cfg_for(p, tmp_path, seed=3).data)
    u = row_uniform(np.arange(400), 3, SALT_SPLIT)
    assert np.array_equal(data.split_rows("train").row_numbers(), np.flatnonzero(u < 0.8))
    assert np.array_equal(data.split_rows("test").row_numbers(), np.flatnonzero(u >= 0.9))
    assert data.split == {"rule": "hash", "fractions": [0.8, 0.1, 0.1], "seed": 3, "time_column": None,
                          "salts": {"split": 1, "subset": 2, "holdout": 3}}


def test_time_column_assigns_by_rank_in_both_stores(tmp_path):
    df = make_frame(300)
    df["ts"] = np.random.default_rng(1).permutation(300)
    df.to_csv(tmp_path / "t.csv", index=False)
    for stream in (False, True):
        data = load_dataset(cfg_for(tmp_path / "t.csv", tmp_path, time_column="ts", stream=stream).data)
        assert "ts" not in data.schema.names  # the split key is no feature unless named
        ts = df["ts"].to_numpy()
        assert ts[data.split_rows("train").row_numbers()].max() < ts[data.split_rows("valid").row_numbers()].min()
        assert ts[data.split_rows("valid").row_numbers()].max() < ts[data.split_rows("test").row_numbers()].min()
        assert data.split_sizes() == {"train": 240, "valid": 30, "test": 30}


def _grouped(tmp_path, n=600, groups=60):
    df = make_frame(n)
    df["user"] = [f"u{v}" for v in np.random.default_rng(2).integers(0, groups, n)]  # groups spread over the file
    df.to_csv(tmp_path / "g.csv", index=False)
    return df


def test_group_column_puts_every_group_in_one_split_in_both_stores(tmp_path):
    """Every row of one group lands in one split, the split of its value's hash (closed form), the same in memory
    and streamed in chunks that cut groups apart; the key is no feature unless named; run.json records the rule."""
    df = _grouped(tmp_path)
    u = row_uniform(stable_hash([f"u{g}" for g in range(60)]), 5, SALT_SPLIT)
    want = {f"u{g}": 0 if u[g] < 0.8 else 1 if u[g] < 0.9 else 2 for g in range(60)}
    got = []
    for stream in (False, True):
        data = load_dataset(cfg_for(tmp_path / "g.csv", tmp_path, group_column="user", seed=5, stream=stream).data)
        assert "user" not in data.schema.names
        codes = np.empty(len(df), dtype=int)
        for code, name in enumerate(("train", "valid", "test")):
            codes[data.split_rows(name).row_numbers()] = code
        assert codes.tolist() == [want[v] for v in df["user"]]
        got.append(codes)
        assert data.split == SplitRule((0.8, 0.1, 0.1), 5, group_column="user").to_dict()
        assert data.split["rule"] == "group" and data.split["group_column"] == "user"
    assert np.array_equal(*got)
    assert SplitRule.from_dict(SplitRule((0.8, 0.1, 0.1), 5, group_column="user").to_dict()).group_column == "user"
    named = load_dataset(cfg_for(tmp_path / "g.csv", tmp_path, group_column="user", categorical="user").data)
    assert "user" in named.schema.names  # named: a feature too


def test_group_column_refusals(tmp_path):
    df = _grouped(tmp_path)
    with pytest.raises(LightFMPError, match="--group-column 'who' not found"):
        load_dataset(cfg_for(tmp_path / "g.csv", tmp_path, group_column="who").data)
    with pytest.raises(LightFMPError, match="--group-column label: 'label' is the label column"):
        load_dataset(cfg_for(tmp_path / "g.csv", tmp_path, group_column="label").data)
    with pytest.raises(LightFMPError, match="--time-column x and --group-column user: give one split rule"):
        cfg_for(tmp_path / "g.csv", tmp_path, group_column="user", time_column="x")
    changed = cfg_for(tmp_path / "g.csv", tmp_path, group_column="user")
    changed.data.time_column = "x"  # in place, past the flags' check: the rule refuses it too
    with pytest.raises(LightFMPError, match="--time-column x and --group-column user: give one split rule"):
        load_dataset(changed.data)
    df.loc[123, "user"] = None
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(LightFMPError, match="--group-column 'user' is missing at row 123: every row needs a group"):
        load_dataset(cfg_for(tmp_path / "m.csv", tmp_path, group_column="user").data)
    for k in (1, 2):  # too few groups for three splits: said so, whatever --split or --seed
        df.assign(user=[f"u{i % k}" for i in range(len(df))]).to_csv(tmp_path / "o.csv", index=False)
        with pytest.raises(LightFMPError, match=rf"--group-column 'user' holds {k} group\(s\); a split by group puts "
                                                rf"each group in one of train, valid and test whole, so it needs at "
                                                rf"least 3 \(split by row hash without it\)$"):
            load_dataset(cfg_for(tmp_path / "o.csv", tmp_path, group_column="user").data)
    # three groups that leave a split empty: refused before the passes read the file (no shards, no fitted schema)
    df.assign(user=[f"u{i % 3}" for i in range(len(df))]).to_csv(tmp_path / "three.csv", index=False)
    for stream in (False, True):
        with pytest.raises(LightFMPError, match=r"leaves the \w+ split empty with 600 rows \(--group-column 'user': "
                                                r"each group goes to one split whole"):
            load_dataset(cfg_for(tmp_path / "three.csv", tmp_path, group_column="user", stream=stream).data)
        assert not (tmp_path / "shards").exists()


def test_the_group_flag_leaves_checkpoint_keys_of_runs_without_it_as_they_were():
    """A run checkpointed by a version without --group-column resumes after an upgrade: the flag's default is not
    part of the configuration's hash (as --init-seed's is not)."""
    import hashlib
    from lightfmp.checkpoint import config_sha256
    cfg = RunConfig.of(data="d.csv", label="label")
    before = {k: v for k, v in cfg.flat().items() if k not in ("shard_dir", "init_seed", "group_column")}
    assert config_sha256(cfg) == hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()
    assert config_sha256(cfg.but(group_column="user")) != config_sha256(cfg)


def test_time_codes_closed_form():
    codes = time_codes(pd.Series(["2024-01-03", "2024-01-01", "2024-01-02", "2024-01-05", "2024-01-04"]),
                       (0.6, 0.2, 0.2), "day", "f.csv")
    assert codes.tolist() == [0, 0, 0, 2, 1]
    with pytest.raises(LightFMPError, match="'day': value 'soon' at row 1 is neither a number nor a date$"):
        time_codes(pd.Series(["2024-01-01", "soon"]), (0.6, 0.2, 0.2), "day", "f.csv")
    # numbers with a date among them, or dates with a number: both kinds named, with their rows
    with pytest.raises(LightFMPError, match=r"--time-column 'day' mixes numbers and dates \('619200' at row 0, "
                                            r"'2024-01-05' at row 2\); write every time one way$"):
        time_codes(pd.Series(["619200", "700000", "2024-01-05"]), (0.6, 0.2, 0.2), "day", "f.csv")
    with pytest.raises(LightFMPError, match=r"mixes numbers and dates \('1700000000' at row 1, '2024-01-05' at row "
                                            r"0\)"):
        time_codes(pd.Series(["2024-01-05", "1700000000", "2024-01-06"]), (0.6, 0.2, 0.2), "day", "f.csv")


def test_rows_of_one_time_stay_in_one_split(tmp_path):
    """A boundary that falls among rows of one time puts them all in the earlier split: no time is both trained (or
    validated) on and held out later. A time column of one value leaves the later splits empty: refused, saying
    why."""
    times = pd.Series([5, 1, 5, 2, 8, 3, 5, 6, 4, 7])  # ranks 6 and 7 are the three 5s
    codes = time_codes(times, (0.6, 0.2, 0.2), "t", "f.csv")
    assert codes.tolist() == [0, 0, 0, 0, 2, 0, 0, 1, 0, 2]
    for a in (0, 1):  # every row of a split is older than every row of the next
        assert times[codes == a].max() < times[codes > a].min()
    # a run recorded before this rule (no "time_ties") is read back with its ties split by file order, as it was
    old = SplitRule.from_dict({"fractions": [0.6, 0.2, 0.2], "seed": 0, "time_column": "t"})
    assert old.time_ties == "rank" and "time_ties" not in SplitRule((0.6, 0.2, 0.2), 0).to_dict()
    assert SplitRule.from_dict(SplitRule((0.6, 0.2, 0.2), 0, "t").to_dict()).time_ties == "together"
    assert time_codes(times, (0.6, 0.2, 0.2), "t", "f.csv", old.time_ties).tolist() == [0, 0, 0, 0, 2, 0, 1, 1, 0, 2]
    df = make_frame(100)
    df["t"] = 7
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(LightFMPError, match=r"leaves the valid split empty with 100 rows \(--time-column 't': rows "
                                            r"of one time stay in one split"):
        load_dataset(RunConfig.of(data=str(tmp_path / "d.csv"), label="label", time_column="t").data)


def test_time_codes_read_every_date_format_and_order_zones_on_one_timeline():
    # pandas infers one format from the first value: a date without the time after it is a date all the same
    days = ["2024-01-03 10:00", "2024-01-01", "2024-01-02 08:30", "Jan 5 2024", "2024-01-04"]
    assert time_codes(pd.Series(days), (0.6, 0.2, 0.2), "day", "f.csv").tolist() == [0, 0, 0, 2, 1]
    # 10:00 at +02:00 is 08:00 UTC: before 09:00 at +00:00, whatever the wall clocks say
    zoned = ["2024-01-01T10:00+02:00", "2024-01-01T09:00+00:00", "2024-01-01T07:00+00:00", "2024-01-01T12:00+00:00",
             "2024-01-01T11:00+00:00"]
    assert time_codes(pd.Series(zoned), (0.6, 0.2, 0.2), "t", "f.csv").tolist() == [0, 0, 0, 2, 1]
    # the value named is the one that is no date, not one in another format
    with pytest.raises(LightFMPError, match="value '2024-13-45' at row 2 is neither"):
        time_codes(pd.Series(["2024-01-01 10:00", "2024-01-02", "2024-13-45"]), (0.6, 0.2, 0.2), "t", "f.csv")


def test_day_first_dates_are_read_day_first_throughout_or_refused_where_the_order_would_vary():
    # the first value reads either way (5 March or 3 May); 13/03/2024 shows the column is day first: every value is
    # read so, as its ISO spelling orders it (not 05/03 as May and 13/03 as March)
    days = [(d, m) for m in range(1, 13) for d in (1, 5, 13, 20)]
    rng = np.random.default_rng(0)
    days = [days[i] for i in rng.permutation(len(days))]
    days.insert(0, (5, 3))
    dmy = pd.Series([f"{d:02d}/{m:02d}/2024" for d, m in days])
    iso = pd.Series([f"2024-{m:02d}-{d:02d}" for d, m in days])
    fractions = (0.6, 0.2, 0.2)
    assert time_codes(dmy, fractions, "t", "f.csv").tolist() == time_codes(iso, fractions, "t", "f.csv").tolist()
    # in another format than the first value, one by one, still in the column's order: 05/03 is 5 March here
    mixed = ["2024-03-07", "13/03/2024", "05/03/2024 10:00", "2024-03-01", "2024-03-06"]
    assert time_codes(pd.Series(mixed), (0.6, 0.2, 0.2), "t", "f.csv").tolist() == [1, 2, 0, 0, 0]
    # month first (pandas' reading) where no part passes 12, with and without a time of day
    us = ["03/05/2024 10:00", "03/06/2024", "03/07/2024", "03/08/2024 11:00"]
    assert time_codes(pd.Series(us), (0.5, 0.25, 0.25), "t", "f.csv").tolist() == [0, 0, 1, 2]
    # day first by one value, month first by another: refused, naming both
    with pytest.raises(LightFMPError, match="'13/03/2024' reads day first and '03/14/2024' month first"):
        time_codes(pd.Series(["2024-01-05", "13/03/2024", "03/14/2024", "2024-01-07"]), (0.5, 0.25, 0.25), "t",
                   "f.csv")



@pytest.mark.parametrize("fmt", ["%d/%m/%y", "%d.%m.%y", "%d/%m/%y %H:%M", "%d/%m/%Y %I:%M %p", "%m/%d/%y",
                                 "%m/%d/%Y %I:%M %p"])
def test_dates_pandas_reads_value_by_value_are_read_in_one_order(fmt):
    """Formats pandas infers no format for (two-digit years, AM/PM) it reads value by value, each in the order that
    fits it (03/05/24 as March, 24/01/24 as January): read here in the column's one order, as ISO times order them."""
    rng = np.random.default_rng(1)
    times = [pd.Timestamp("2023-01-01") + pd.Timedelta(minutes=int(m)) for m in rng.integers(0, 700 * 1440, 300)]
    fractions = (0.6, 0.2, 0.2)
    want = time_codes(pd.Series([t.isoformat() for t in times]), fractions, "t", "f.csv").tolist()
    assert time_codes(pd.Series([t.strftime(fmt) for t in times]), fractions, "t", "f.csv").tolist() == want

@pytest.mark.parametrize("text", ["0.5,0.5,0.5", "0.8,0.2", "a,b,c", "0,0.5,0.5", "0.9,0.1,0", "0.9,0,0.1", "-0.1,0.6,0.5",
                                  "0.5,0.2,0.1"])  # short of 1 too: the test split would not take the rest quietly
def test_bad_split_refused_not_normalised(text):
    with pytest.raises(LightFMPError, match="--split"):
        parse_split(text)


def test_row_uniform_is_splitmix64_of_row_seed_and_salt():
    """Every run's split, subset and hold-out rest on these values: a changed constant would re-split the rows of a
    run written before it (its training rows read as validation rows by prune and export). Against splitmix64
    written out in Python integers (mod 2**64), the top 53 bits as the fraction."""
    m = (1 << 64) - 1

    def reference(row: int, seed: int, salt: int) -> float:
        x = (row * 0x9E3779B97F4A7C15 + ((seed * 0x632BE59BD9B4E019 + salt * 0xD6E8FEB86659FD93) & m)) & m
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & m
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & m
        x ^= x >> 31
        return (x >> 11) / float(1 << 53)
    rows = [0, 1, 2, 7, 1000, 2**31 + 5, 2**40 + 3]
    for seed, salt in ((0, SALT_SPLIT), (3, SALT_SPLIT), (2**32 - 1, SALT_SPLIT + 1)):
        assert row_uniform(np.array(rows), seed, salt).tolist() == [reference(r, seed, salt) for r in rows]


def test_nine_rows_are_too_few_to_split(tmp_path):
    p = tmp_path / "nine.csv"
    pd.DataFrame({"a": list("xyzxyzxyz"), "label": [0, 1] * 4 + [0]}).to_csv(p, index=False)
    with pytest.raises(LightFMPError, match="9 rows is too few to split"):
        load_dataset(RunConfig.of(data=str(p), label="label", min_count=1).data)


def test_rule_round_trips():
    rule = SplitRule((0.7, 0.2, 0.1), 5, "ts")
    assert SplitRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(LightFMPError, match="run.json"):
        SplitRule.from_dict({"seed": 1})
    with pytest.raises(LightFMPError, match="run.json: split.time_ties must be 'together' or 'rank', not 'apart'"):
        SplitRule.from_dict({**rule.to_dict(), "time_ties": "apart"})


def test_one_class_training_rows_refused(tmp_path):
    df = make_frame(200)
    df["label"] = 1
    df.to_csv(tmp_path / "ones.csv", index=False)
    with pytest.raises(LightFMPError, match=r"every training row of label column 'label' is 1 .*values seen: '1': \d+"):
        load_dataset(cfg_for(tmp_path / "ones.csv", tmp_path).data)


def test_a_split_that_leaves_no_training_row_says_so(tmp_path):
    make_frame(200).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(LightFMPError, match=r"d.csv: the training split holds no rows; give it a larger share in "
                                            r"--split"):
        load_dataset(cfg_for(tmp_path / "d.csv", tmp_path, split=[0.0001, 0.5, 0.4999]).data)


def test_positive_that_matches_nothing_lists_the_values(tmp_path):
    df = make_frame(200)
    df["label"] = np.where(df["label"] == 1, "click", "noclick")
    df.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(LightFMPError, match=r"--positive 'CLICK' matches no training row.*'noclick'"):
        load_dataset(cfg_for(tmp_path / "c.csv", tmp_path, positive="CLICK").data)


def test_rows_select_by_name_and_take():
    ids = np.arange(20, dtype=np.int32).reshape(5, 4)
    rows = ArrayRows(ids, np.arange(5) % 2, slots={"a": (0, 1), "m": (1, 3), "z": (3, 4)})
    sel = rows.select(["z", "m"])
    assert sel.fields == ["z", "m"] and sel.slots == {"z": (0, 1), "m": (1, 3)}
    assert np.array_equal(sel.arrays()[0], ids[:, [3, 1, 2]])
    part = sel.take(np.array([4, 1]))
    assert np.array_equal(part.arrays()[0], ids[[4, 1]][:, [3, 1, 2]]) and part.row_numbers().tolist() == [4, 1]


def test_stored_rows_take_reads_the_positions_across_chunks(tmp_path):
    p = write_csv(tmp_path, n=300)
    data = load_dataset(cfg_for(p, tmp_path, stream=True).data)
    train = data.split_rows("train").select(["tags", "a"])
    ids, labels = train.arrays()
    pos = np.array([len(train) - 1, 0, 150, 97])
    got = train.take(pos)
    assert np.array_equal(got.arrays()[0], ids[pos]) and np.array_equal(got.labels(), labels[pos])
    assert np.array_equal(got.row_numbers(), train.row_numbers()[pos]) and got.slots == train.slots


def test_run_with_and_without_stream_gives_the_same_result(tmp_path):
    p = write_csv(tmp_path, n=800)
    out = {}
    for stream in (False, True):
        cfg = cfg_for(p, tmp_path, stream=stream, keep=3, subset=0.5, **FAST)
        out[stream] = pipeline.run(cfg, tmp_path / f"run-{stream}", quiet=True)
    assert out[False]["fields"]["kept"] == out[True]["fields"]["kept"]
    assert abs(out[False]["test"]["auc"] - out[True]["test"]["auc"]) <= 1e-6
    assert out[False]["gates"] == pytest.approx(out[True]["gates"], abs=1e-6)


def test_stored_in_shards_or_in_memory_the_predictions_and_aucs_are_the_same(tmp_path):
    """One kept field: ~80 distinct inputs, so most rows' predictions tie. A prediction's last bits can depend on the
    batch it is computed in; scored chunk by chunk, rows read in 450-row chunks tied differently than rows read in
    the default chunks, and the test AUC moved by 4e-4 with the same weights (0.674094 against 0.674513 here).
    Scored in the same consecutive batches whatever the chunks, they agree exactly."""
    from lightfmp import training
    assert cli("data", "synth", "--rows", "4000", "--fields", "8", "--informative", "3", "--out", tmp_path / "syn",
               "--seed", "0").exit_code == 0
    data = str(tmp_path / "syn" / "data.parquet")
    flags = dict(data=data, label="label", shard_dir=str(tmp_path / "shards"), keep=1, subset=0.3,
                 pretrain_epochs=3, epochs=4, batch_size=64, hidden="32", embed_dim=8)
    small = dict(stream=True, chunk_rows=450)  # shards of 450 rows; in memory, the default chunks
    out = {stream: pipeline.run(RunConfig.of(**flags, **(small if stream else {})), tmp_path / f"run-{stream}",
                                quiet=True) for stream in (False, True)}
    assert out[False]["fields"]["kept"] == out[True]["fields"]["kept"]
    for part in ("valid", "test"):
        assert out[False][part]["auc"] == out[True][part]["auc"], part
    run = pipeline.open_run(tmp_path / "run-False")
    model, kept = run.load_final()
    memory = pipeline.run_data(run).split_rows("test").select(kept.names)
    shards = load_dataset(RunConfig.of(**flags, **small).data, schema=run.schema).split_rows("test") \
        .select(kept.names)
    assert len(list(shards.chunks(None))) > 1
    for batch in (64, 8192):  # batches smaller than a shard, and larger
        assert np.array_equal(training.predict(model, memory, batch_size=batch),
                              training.predict(model, shards, batch_size=batch))


def test_run_records_its_split_and_an_absolute_data_path(tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    write_csv(tmp_path / "b", n=400, name="base.csv")
    monkeypatch.chdir(tmp_path / "b")
    cfg = RunConfig.of(data="base.csv", shard_dir=str(tmp_path / "shards"), **KINDS, **FAST)
    pipeline.train(cfg, "r/x", quiet=True)
    info = json.loads((tmp_path / "b" / "r" / "x" / "run.json").read_text())
    assert info["split"]["rule"] == "hash" and info["split"]["fractions"] == [0.8, 0.1, 0.1]
    monkeypatch.chdir(tmp_path)  # prune from another directory finds the data
    m = pipeline.prune("b/r/x", keep=2, continue_epochs=1, quiet=True)
    assert len(m["fields"]["kept"]) == 2
    assert os.path.isabs(pipeline.open_run("b/r/x").config.data.data)


def test_prune_reads_the_recorded_split_rule(tmp_path):
    p = write_csv(tmp_path, n=400)
    pipeline.train(cfg_for(p, tmp_path, **FAST), tmp_path / "r", quiet=True)
    run = pipeline.open_run(tmp_path / "r")
    run.info["split"]["seed"] = 9  # what run.json says wins over a derivation from the config
    data = pipeline.run_data(run)
    assert data.rule.seed == 9 and run.config.data.seed == 0


@pytest.mark.parametrize("edit,where,key", [
    (lambda info, cfg: info["split"].update(seed=9), "run.json", "split"),
    (lambda info, cfg: info["split"].update(fractions=[0.7, 0.2, 0.1]), "run.json", "split"),
    (lambda info, cfg: cfg["data"].update(seed=9), "config.yaml", "data.seed"),
    (lambda info, cfg: cfg["train"].update(subset=0.5), "config.yaml", "train.subset"),
    (lambda info, cfg: cfg["train"].update(gate_holdout=0.5), "config.yaml", "train.gate_holdout"),
    (lambda info, cfg: cfg["data"].update(positive="0"), "config.yaml", "data.positive"),
    (lambda info, cfg: cfg["train"].update(init_seed=3), "config.yaml", "train.init_seed"),
])
def test_a_config_or_split_edited_after_training_is_refused(tmp_path, edit, where, key):
    """prune (and every reader) would split the rows again by an edited seed or fractions (the phase-1 model's
    training rows read as validation rows), or flip the labels by an edited `positive`; an edited init seed is what
    weights swapped in from another run look like. The weights record what they were trained with; the edit is
    refused, the run left as it was."""
    import yaml
    p = write_csv(tmp_path, n=400)
    run = tmp_path / "r"
    pipeline.train(cfg_for(p, tmp_path, **FAST), run, quiet=True)
    info, cfg = json.loads((run / "run.json").read_text()), yaml.safe_load((run / "config.yaml").read_text())
    edit(info, cfg)
    (run / "run.json").write_text(json.dumps(info))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    line = one_line_error(cli("prune", run, "--keep", "2"), str(run / where), key, "pretrain.safetensors")
    assert "read as it was trained" in line
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before


@pytest.mark.parametrize("edit", [
    lambda h: h["pretrain"]["gates_alone"].update(log_alpha=[1.0] * 2),
    lambda h: h["pretrain"]["gates_alone"].update(log_alpha=None),
    lambda h: h["pretrain"]["gates_alone"].update(log_alpha=["x"] * len(h["pretrain"]["gates_alone"]["log_alpha"])),
    lambda h: h["pretrain"].update(gates_alone=5),
    lambda h: h.update(pretrain=[]),
])
def test_an_edited_gates_alone_record_is_one_line(tmp_path, edit):
    p = write_csv(tmp_path, n=400)
    run = tmp_path / "r"
    pipeline.train(cfg_for(p, tmp_path, **FAST), run, quiet=True)
    h = json.loads((run / "history.json").read_text())
    assert len(h["pretrain"]["gates_alone"]["log_alpha"]) == 5  # the default rule reads it
    edit(h)
    rewrite_metrics(run, h, "history")  # as if written so: the record's own checks, past the file's sha256
    one_line_error(cli("prune", run), str(run / "history.json"), "pretrain")


def test_a_run_json_without_its_schema_hash_is_refused(tmp_path):
    """The schema's sha256 is what catches an edited schema.json: removing it must not turn the check off."""
    p = write_csv(tmp_path, n=400)
    run = tmp_path / "r"
    pipeline.train(cfg_for(p, tmp_path, **FAST), run, quiet=True)
    info = json.loads((run / "run.json").read_text())
    del info["schema_sha256"]
    (run / "run.json").write_text(json.dumps(info))
    one_line_error(cli("prune", run, "--keep", "2"), str(run / "run.json"), "missing key 'schema_sha256'")


def test_prune_from_python_converts_and_checks_its_rule(tmp_path):
    """A numpy integer is an int, as a flag's text is; a value of the wrong kind is one LightFMPError before any
    work (it was a TypeError from deep inside, or after phases 2-3 had run)."""
    p = write_csv(tmp_path, n=400)
    run = tmp_path / "r"
    pipeline.train(cfg_for(p, tmp_path, **FAST), run, quiet=True)
    assert len(pipeline.prune(run, keep=np.int64(2), continue_epochs=1, quiet=True)["fields"]["kept"]) == 2
    for kw, text in ((dict(keep=2.5), "--keep 2.5"), (dict(keep="three"), "--keep 'three'"), (dict(continue_epochs=-1),
                                                                                   "--continue-epochs -1")):
        with pytest.raises(LightFMPError, match=re.escape(text)):
            pipeline.prune(run, quiet=True, **kw)


def test_a_damaged_weights_record_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file
    p = write_csv(tmp_path, n=400)
    run = tmp_path / "r"
    pipeline.train(cfg_for(p, tmp_path, **FAST), run, quiet=True)
    weights = run / "pretrain.safetensors"
    for record in ("{not json", json.dumps({"fields": json.dumps({"a": 1})}), json.dumps({"fields": "[1"})):
        save_file(load_file(str(weights)), str(weights), metadata={"lightfmp": record})
        one_line_error(cli("prune", run, "--keep", "2"), str(weights), "record is not what lightfmp writes")


def test_a_moved_data_file_and_another_device_still_open(tmp_path):
    import yaml
    p = write_csv(tmp_path, n=400)
    run = tmp_path / "r"
    pipeline.train(cfg_for(p, tmp_path, **FAST), run, quiet=True)
    moved = tmp_path / "moved.csv"
    p.rename(moved)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["data"], cfg["data"]["shard_dir"], cfg["train"]["device"] = str(moved), str(tmp_path / "s2"), "cpu"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    m = pipeline.prune(run, keep=2, continue_epochs=1, quiet=True)
    assert len(m["fields"]["kept"]) == 2
    assert pipeline.open_run(run).state == "complete"  # the pruned model carries the same record


@pytest.mark.parametrize("edit,words", [
    (lambda kept: kept.reverse(), ["field 1 is"]),
    (lambda kept: kept.pop(), ["names 1 fields where model.safetensors was trained on 2"]),
])
def test_an_edited_kept_list_is_refused_by_name(tmp_path, edit, words):
    """metrics.json's fields.kept says which fields the final model reads: edited, it is named (not the checkpoint),
    and a reordering, which loads without a shape error where the fields' sizes agree, is refused too."""
    p = write_csv(tmp_path, n=400)
    run = tmp_path / "r"
    pipeline.train(cfg_for(p, tmp_path, **FAST), run, quiet=True)
    pipeline.prune(run, keep=2, continue_epochs=1, quiet=True)
    m = json.loads((run / "metrics.json").read_text())
    edit(m["fields"]["kept"])
    (run / "metrics.json").write_text(json.dumps(m))
    one_line_error(cli("export", run, "--out", tmp_path / "e"), f"{run / 'metrics.json'}: fields.kept", *words)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("kw,match", [
    (dict(categorical="a", numeric="a"), "'a' is named by both --categorical and --numeric"),
    (dict(categorical="b", ignore="b"), "'b' is named by both --categorical and --ignore"),
    (dict(ignore="label"), "--ignore label: 'label' is the label column"),
    (dict(time_column="label"), "--time-column label: 'label' is the label column"),
])
def test_contradicting_column_flags_refused(tmp_path, kw, match):
    p = write_csv(tmp_path, n=100)
    with pytest.raises(LightFMPError, match=match):
        load_dataset(cfg_for(p, tmp_path, **kw).data)


def test_time_column_with_a_missing_value_refused(tmp_path):
    df = make_frame(100)
    df["ts"] = np.arange(100.0)
    df.loc[7, "ts"] = np.nan
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(LightFMPError, match="--time-column 'ts' is missing at row 7"):
        load_dataset(cfg_for(tmp_path / "t.csv", tmp_path, time_column="ts").data)


def test_tampered_schema_and_older_runs_refused(tmp_path):
    p = write_csv(tmp_path, n=400)
    pipeline.train(cfg_for(p, tmp_path, **FAST), tmp_path / "r", quiet=True)
    info_path = tmp_path / "r" / "run.json"
    info = json.loads(info_path.read_text())
    assert info["format_version"] == 3 and len(info["schema_sha256"]) == 64
    # a run from before the one split rule: no split recorded, so its rows cannot be told apart again
    old = dict(info, format_version=1)
    del old["split"]
    info_path.write_text(json.dumps(old))
    with pytest.raises(LightFMPError, match="older lightfmp .*train it again"):
        pipeline.prune(tmp_path / "r", keep=2, continue_epochs=1, quiet=True)
    # a run of format 2 or later records the schema's sha256: without it, it is an edit
    info_path.write_text(json.dumps({**{k: v for k, v in info.items() if k != "schema_sha256"}, "format_version": 2}))
    with pytest.raises(LightFMPError, match="run.json: missing key 'schema_sha256'"):
        pipeline.open_run(tmp_path / "r")
    info_path.write_text(json.dumps(info))
    schema = json.loads((tmp_path / "r" / "schema.json").read_text())
    schema["fields"][0]["vocab"] = schema["fields"][0]["vocab"][::-1]  # ids no longer mean what they meant
    (tmp_path / "r" / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(LightFMPError, match="schema.json: changed since the run wrote it"):
        pipeline.open_run(tmp_path / "r")
    # a categorical field turned numeric by hand, with run.json's hash made to match: no bucket boundaries
    schema["fields"][0]["vocab"] = schema["fields"][0]["vocab"][::-1]
    schema["fields"][0]["kind"] = "numeric"
    (tmp_path / "r" / "schema.json").write_text(json.dumps(schema))
    info_path.write_text(json.dumps(dict(info, schema_sha256=file_sha256(tmp_path / "r" / "schema.json"))))
    with pytest.raises(LightFMPError, match=f"schema.json: field '{schema['fields'][0]['name']}' \\(numeric\\) has "
                                            f"no bucket boundaries"):
        pipeline.open_run(tmp_path / "r")


@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_with_the_label_as_a_field_or_with_no_field_is_refused(tmp_path, stream):
    """A --schema field named as the label column would feed the label to the model (test AUC 1.0): refused as
    --categorical LABEL is; a schema of no fields would train a model of nothing."""
    p = write_csv(tmp_path, n=400)
    fitted = load_dataset(cfg_for(p, tmp_path).data).schema.to_dict()
    leak = {**fitted, "fields": [{"name": "label", "kind": "categorical"}] + fitted["fields"][1:]}
    (tmp_path / "leak.json").write_text(json.dumps(leak))
    base = {k: v for k, v in cfg_for(p, tmp_path).flat().items() if k not in KINDS}
    with pytest.raises(LightFMPError, match="leak.json: field 'label' is the label column"):
        load_dataset(RunConfig.of(**{**base, "schema": str(tmp_path / "leak.json"), "stream": stream}).data)
    (tmp_path / "none.json").write_text(json.dumps({**fitted, "fields": []}))
    with pytest.raises(LightFMPError, match="none.json: it lists no fields"):
        load_dataset(RunConfig.of(**{**base, "schema": str(tmp_path / "none.json"), "stream": stream}).data)



def _edited(fitted: dict, where: str, key: str, value) -> dict:
    """The fitted schema with one key set: at the top (where 'schema') or in the field named `where`."""
    if where == "schema":
        return {**fitted, key: value}
    return {**fitted, "fields": [{**f, key: value} if f["name"] == where else f for f in fitted["fields"]]}


@pytest.mark.parametrize("where, key, value, message", [
    ("schema", "min_count", "two", "min_count 'two' must be an integer >= 1"),
    ("schema", "min_count", -5, "min_count -5 must be an integer >= 1"),
    ("schema", "num_buckets", 0, "num_buckets 0 must be an integer >= 1"),
    ("schema", "num_buckets", 10 ** 9, "num_buckets 1000000000 must be at most 200,000"),
    ("schema", "schema_version", "1", "schema_version '1' must be an integer >= 1"),
    ("schema", "vocab_cap", 2.5, "vocab_cap 2.5 must be an integer >= 1"),
    ("schema", "meta", [1], "meta [1] must be an object"),
    ("schema", "fields", "a", "fields 'a' must be a list of field entries"),
    ("schema", "label", ["label"], "label ['label'] must be text"),
    ("tags", "max_len", -1, "schema field 'tags': max_len -1 must be an integer >= 0"),
    ("tags", "max_len", 0, "schema field 'tags': a multi_hot field with a vocab needs max_len >= 1"),
    ("a", "hash_buckets", "7", "schema field 'a': hash_buckets '7' must be an integer >= 1"),
    ("a", "hash_buckets", 2 ** 31 - 2, "hash_buckets 2147483646 must be an integer from 1 to 2,147,483,645"),
    ("tags", "separator", 1, "schema field 'tags': separator 1 must be text"),
    # a misspelt key would be ignored and the field fitted from the data instead, quietly
    ("a", "vocabulary", ["x"], "schema field 'a': unknown key 'vocabulary' (known: name, kind, vocab,"),
    ("schema", "min_counts", 3, "unknown key 'min_counts' (known: schema_version, label,"),
])
def test_a_hand_edited_schema_with_a_bad_value_is_refused_in_one_line(tmp_path, where, key, value, message):
    p = write_csv(tmp_path, n=400)
    fitted = load_dataset(cfg_for(p, tmp_path).data).schema.to_dict()
    (tmp_path / "s.json").write_text(json.dumps(_edited(fitted, where, key, value)))
    r = cli("run", "--data", p, "--label", "label", "--schema", tmp_path / "s.json", "--out", tmp_path / "r", "-q")
    one_line_error(r, "s.json", message)
    (tmp_path / "f.json").write_text(json.dumps({**fitted, "fields": ["name kind"]}))
    one_line_error(cli("run", "--data", p, "--label", "label", "--schema", tmp_path / "f.json", "--out",
                       tmp_path / "r", "-q"), "f.json", "schema field entry 'name kind' needs 'name' and 'kind'")

@pytest.mark.parametrize("stream", [False, True])
def test_a_fitted_schema_whose_vocabulary_holds_none_of_a_columns_values_is_refused(tmp_path, stream):
    """A schema fitted on Parquet floats (vocabulary '1'..'5') given with the same data as CSV text ('1.0'..'5.0'):
    every value read as unknown, the field trained on nothing and exported with keys serving would match
    differently, with exit 0 and no word. Refused in one line naming the column and a value; the data it was fitted
    on (and a column some of whose values it knows) still trains."""
    rng = np.random.default_rng(0)
    c = rng.integers(1, 6, 600).astype(float)
    frame = pd.DataFrame({"c": c, "d": rng.choice(list("abc"), 600), "label": (rng.random(600) < 0.1 * c).astype(int)})
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = RunConfig.from_dict({"data": str(tmp_path / "t.parquet"), "label": "label", "categorical": ["c"]}).data
    (tmp_path / "s.json").write_text(json.dumps(load_dataset(cfg).schema.to_dict()))
    flags = ["--stream", "--shard-dir", tmp_path / "sh"] if stream else []
    run = ["--label", "label", "--schema", tmp_path / "s.json", "--no-select", "--epochs", "1", "-q", *flags]
    one_line_error(cli("run", "--data", tmp_path / "t.csv", *run, "--out", tmp_path / "r"), "t.csv",
                   "column 'c': none of its training values is in the fitted vocabulary", "'5.0'")
    assert not (tmp_path / "r").exists()
    mixed = frame.assign(c=np.where(np.arange(600) % 2 == 0, c.astype(int).astype(str), c.astype(str)))
    mixed.to_csv(tmp_path / "m.csv", index=False)  # half of the cells '3', half '3.0': some values known
    for data in (tmp_path / "t.parquet", tmp_path / "m.csv"):
        r = cli("run", "--data", data, *run, "--out", tmp_path / data.stem)
        assert r.exit_code == 0, r.output


def test_the_known_values_check_holds_on_the_fit_pass_too_and_names_a_present_value(tmp_path):
    """A given schema with a hashed field (or one still to fit) goes through the fit pass: there too a vocabulary
    that knows none of a column's training values is refused, as `prune` or `export` would refuse the run when they
    read its data back (a run that trains must prune). The value named is one present and unknown, as the text the
    vocabulary is compared with (not a missing first cell: None); a column missing on every training row (logged
    only later: a time split) is left to the rules for missing values, as the fit pass leaves it."""
    rng = np.random.default_rng(0)
    n = 600
    c = rng.integers(1, 6, n).astype(float)
    frame = pd.DataFrame({"t": np.arange(n), "c": c, "d": rng.choice(list("abc"), n),
                          "label": (rng.random(n) < 0.1 * c).astype(int)})
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    cfg = RunConfig.from_dict({"data": str(tmp_path / "t.parquet"), "label": "label", "categorical": ["c"],
                               "ignore": ["t"]}).data
    fitted = load_dataset(cfg).schema.to_dict()
    hashed = {**fitted, "fields": [{**f, "hash_buckets": 8} if f["name"] == "d" else f for f in fitted["fields"]]}
    (tmp_path / "h.json").write_text(json.dumps(hashed))
    odd = frame.assign(c=np.where(np.arange(n) == 0, None, c.astype(str)))  # the first cell missing, then '3.0'...
    odd.to_csv(tmp_path / "odd.csv", index=False)
    given = replace(cfg, data=str(tmp_path / "odd.csv"), schema=str(tmp_path / "h.json"), categorical=[],
                    ignore=[])
    with pytest.raises(LightFMPError, match=r"column 'c': none of its training values .*a value here: '\d\.0'"):
        load_dataset(given)
    (tmp_path / "f.json").write_text(json.dumps(fitted))
    late = frame.assign(c=np.where(frame.t < 500, None, c.astype(int).astype(str)))  # c logged from row 500 on
    late.to_csv(tmp_path / "late.csv", index=False)
    timed = replace(cfg, data=str(tmp_path / "late.csv"), schema=str(tmp_path / "f.json"), categorical=[], ignore=[],
                    time_column="t")
    assert "c" in load_dataset(timed).schema.names  # trains: c's rows before 500 are missing, not unknown


@pytest.mark.parametrize("stream", [False, True])
def test_a_fitted_schema_still_refuses_training_rows_of_one_class(tmp_path, stream):
    """A fitted --schema skips the fit pass, which counts the training rows' classes: the encoding pass counts them
    instead, and a label column of one class is refused before anything is written."""
    p = write_csv(tmp_path, n=400)
    (tmp_path / "s.json").write_text(json.dumps(load_dataset(cfg_for(p, tmp_path).data).schema.to_dict()))
    one = tmp_path / "one.csv"
    pd.read_csv(p).assign(label=1).to_csv(one, index=False)
    flags = ["--stream"] if stream else []
    one_line_error(cli("run", "--data", one, "--label", "label", "--schema", tmp_path / "s.json", "--no-select",
                       "--out", tmp_path / "r", "-q", *flags), "one.csv",
                   "every training row of label column 'label' is 1 (positive)")
    assert not (tmp_path / "r").exists()
    one_line_error(cli("run", "--data", p, "--label", "label", "--schema", tmp_path / "s.json", "--positive", "7",
                       "--no-select", "--out", tmp_path / "r", "-q", *flags), "--positive '7' matches no training row")
    r = cli("run", "--data", p, "--label", "label", "--schema", tmp_path / "s.json", "--no-select", "--epochs", "1",
            "--out", tmp_path / "r", "-q", *flags)  # both classes: the same schema trains
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("flags, message", [
    (["--min-count", "50"], "its fields are fitted with min_count 2; drop --min-count 50"),
    (["--num-buckets", "3"], "its fields are fitted with num_buckets 16; drop --num-buckets 3"),
    (["--hash-buckets", "noise:7"], "--hash-buckets: field 'noise' already has a vocabulary in the schema file"),
    (["--hash-buckets", "nosuch:7"], "nosuch"),
    (["--vocab-cap", "1"], "every vocabulary there is fitted already, so --vocab-cap 1 would cap none; drop it"),
    (["--hash-buckets", "7"], "every field there has a vocabulary, so --hash-buckets 7 would hash none; drop it"),
])
def test_fit_options_a_fitted_schema_decides_are_refused_not_recorded(tmp_path, flags, message):
    """They would change nothing, while config.yaml recorded them as applied."""
    p = write_csv(tmp_path, n=400)
    (tmp_path / "s.json").write_text(json.dumps(load_dataset(cfg_for(p, tmp_path).data).schema.to_dict()))
    one_line_error(cli("run", "--data", p, "--label", "label", "--schema", tmp_path / "s.json", *flags,
                       "--out", tmp_path / "r", "-q"), "s.json", message)
    assert not (tmp_path / "r").exists()



def test_vocab_cap_beside_a_schema_whose_vocabularies_are_all_fitted_is_refused_even_with_a_numeric_to_fit(tmp_path):
    """Only the numeric field left to fit: --vocab-cap would cap nothing (it was recorded as applied)."""
    p = write_csv(tmp_path, n=400)
    d = load_dataset(cfg_for(p, tmp_path).data).schema.to_dict()
    for f in d["fields"]:
        if f["kind"] == "numeric":
            f["boundaries"] = None
    (tmp_path / "s.json").write_text(json.dumps(d))
    one_line_error(cli("run", "--data", p, "--label", "label", "--schema", tmp_path / "s.json", "--vocab-cap", "5",
                       "--out", tmp_path / "r", "-q"), "s.json", "so --vocab-cap 5 would cap none")
    assert not (tmp_path / "r").exists()


def test_a_schema_fitted_with_other_fit_options_is_used_as_it_is_without_the_flags(tmp_path):
    """The flags' defaults ask for nothing: a schema fitted with --min-count 3 --num-buckets 8 is read again without
    them (and with them)."""
    p = write_csv(tmp_path, n=400)
    fitted = load_dataset(cfg_for(p, tmp_path, min_count=3, num_buckets=8).data).schema
    fitted.save(tmp_path / "s.json")
    for options in ({}, {"min_count": 3, "num_buckets": 8}):
        again = load_dataset(replace(cfg_for(p, tmp_path, **options).data, schema=str(tmp_path / "s.json"),
                                     categorical=[], numeric=[], multi_hot=[], ignore=[]))
        assert again.schema.to_dict()["fields"] == fitted.to_dict()["fields"]


def test_prune_flag_wins_over_the_recorded_rule(tmp_path):
    p = write_csv(tmp_path, n=400)
    pipeline.train(cfg_for(p, tmp_path, target_k=3, **FAST), tmp_path / "r", quiet=True)
    m = pipeline.prune(tmp_path / "r", threshold=0.0, continue_epochs=1, quiet=True)
    assert m["selection"]["rule"].startswith("deterministic gate >= 0.0") and len(m["fields"]["kept"]) == 5


def test_a_prune_records_its_rule_and_closing_test_brings_the_default_back(tmp_path):
    """A bare prune repeats the rule the run recorded (the last prune's: config.yaml reproduces the run as it now
    is); --closing-test asks for the default rule whatever was recorded, and goes with no other rule."""
    p = write_csv(tmp_path, n=400)
    pipeline.train(cfg_for(p, tmp_path, **FAST), tmp_path / "r", quiet=True)
    pipeline.prune(tmp_path / "r", threshold=0.0, continue_epochs=1, quiet=True)
    again = pipeline.prune(tmp_path / "r", continue_epochs=1, quiet=True)
    assert again["selection"]["rule"].startswith("deterministic gate >= 0.0")
    m = pipeline.prune(tmp_path / "r", continue_epochs=1, quiet=True, default_rule=True)
    assert m["selection"]["score"] == "closing cost in standard errors" and "tests" in m["selection"]["search"]
    assert pipeline.open_run(tmp_path / "r").config.prune.threshold is None  # recorded: the default again
    with pytest.raises(LightFMPError, match=r"^--keep 2 and --closing-test: give one keep rule, not both$"):
        pipeline.prune(tmp_path / "r", keep=2, default_rule=True, quiet=True)
    # a run trained toward K fields: its config.yaml cannot record the closing test (--target-k K means --keep K)
    pipeline.train(cfg_for(p, tmp_path, target_k=3, **FAST), tmp_path / "t", quiet=True)
    before = sorted(q.name for q in (tmp_path / "t").iterdir())
    with pytest.raises(LightFMPError, match=r"--closing-test: .*t was trained with --target-k 3, its rule "
                                            r"--keep 3; give --keep K or --threshold T"):
        pipeline.prune(tmp_path / "t", default_rule=True, quiet=True)
    assert sorted(q.name for q in (tmp_path / "t").iterdir()) == before
    # toward K fields, cut by a threshold: the rule named is the one the run records
    pipeline.train(cfg_for(p, tmp_path, target_k=3, threshold=0.9, **FAST), tmp_path / "tt", quiet=True)
    with pytest.raises(LightFMPError, match=r"trained with --target-k 3, its rule --threshold 0.9; give"):
        pipeline.prune(tmp_path / "tt", default_rule=True, quiet=True)


def test_the_label_flag_wins_over_the_label_a_schema_file_names(tmp_path):
    """--schema s.json --label label, where s.json names another column as the label: the run trains on the column
    --label names, not quietly on the schema's."""
    df = make_frame(400)
    df["label2"] = 1 - df["label"]
    p = tmp_path / "data.csv"
    df.to_csv(p, index=False)
    d = load_dataset(cfg_for(p, tmp_path, ignore=["label2"]).data).schema.to_dict()
    d["label"] = "label2"
    (tmp_path / "s.json").write_text(json.dumps(d))
    data = load_dataset(replace(cfg_for(p, tmp_path).data, schema=str(tmp_path / "s.json"), multi_hot=[]))
    assert data.schema.label == "label"
    rows = [data.split_rows(s) for s in ("train", "valid", "test")]
    assert sum(len(r) for r in rows) == 400
    assert sum(float(r.labels().sum()) for r in rows) == df["label"].sum() != df["label2"].sum()


def test_a_file_rewritten_in_place_after_it_was_hashed_is_refused(tmp_path, monkeypatch):
    """The same file (same inode) rewritten with other rows of the same size between its hash and its read: its
    modification time tells, and the read is refused in one line."""
    import lightfmp.dataset as dataset_mod
    p = write_csv(tmp_path, n=500)
    text = p.read_text()
    swapped = text.replace(",1\n", ",x\n").replace(",0\n", ",1\n").replace(",x\n", ",0\n")
    assert len(swapped) == len(text) and swapped != text
    real = dataset_mod.file_sha256

    def hash_then_rewrite(path, *a):
        digest = real(path, *a)
        st = os.stat(path)
        with open(path, "r+") as f:  # in place: the inode and the size stay
            f.write(swapped)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # a second later, whatever the clock's step
        return digest
    monkeypatch.setattr(dataset_mod, "file_sha256", hash_then_rewrite)
    with pytest.raises(LightFMPError, match=f"{p}: changed while lightfmp read it"):
        load_dataset(cfg_for(p, tmp_path).data)

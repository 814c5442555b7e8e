"""lightfmp/datasets/synthetic.py (`lightfmp data synth`): decisions a mutation audit found no other test pinned."""
import hashlib
import json
import re
from collections import namedtuple

import pandas as pd
import pytest

from lightfmp.datasets import synthesize
from lightfmp.datasets import synthetic as syn
from lightfmp.errors import LightFMPError


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_seed_0_gives_the_same_table_as_before(tmp_path):
    """The documented benchmark sets are `data synth ... --seed 0`: what a seed draws is part of the published
    numbers. Pinned on a small table by its calibrated bias, label rate and roles (a change of the calibration's rows
    or random stream moves the bias; the bytes themselves would also move with the CSV writer's version)."""
    t = synthesize(3000, 8, 3, tmp_path / "s", seed=0, fmt="csv")
    assert t["bias"] == pytest.approx(-1.5240318129, abs=1e-8)
    assert t["ctr"] == pytest.approx(0.2776666667)
    assert t["informative"] == ["f04", "f05", "n1"]


def test_the_label_mean_is_the_target_ctr(tmp_path):
    t = synthesize(20_000, 10, 3, tmp_path / "s", seed=3)
    assert abs(t["ctr"] - 0.27) < 0.015


def test_one_informative_field_is_categorical(tmp_path):
    """A numeric field is informative only when informative >= 2 (module docstring): with one, it is categorical."""
    for fields in (5, 2):
        t = synthesize(200, fields, 1, tmp_path / f"s{fields}")
        assert t["numeric_informative"] == [] and t["informative"][0].startswith("f"), t["informative"]
        assert t["interactions"] == [] and t["numeric_effect"] is None


def test_copies_without_a_categorical_informative_field_are_refused_in_one_line(tmp_path):
    with pytest.raises(LightFMPError, match=re.escape("--redundant 1: copies need at least one categorical "
                                                      "informative field (--informative 0)")):
        synthesize(100, 4, 0, tmp_path / "s", redundant=1)
    assert not (tmp_path / "s").exists()


def test_no_informative_field_gives_pure_noise(tmp_path):
    t = synthesize(200, 4, 0, tmp_path / "s")
    assert t["informative"] == [] and t["redundant"] == {} and len(t["noise"]) == 4


def test_the_first_two_noise_fields_are_the_high_cardinality_traps(tmp_path):
    t = synthesize(500, 14, 5, tmp_path / "s", seed=7)
    noise_cat = [n for n in t["noise"] if n.startswith("f")]
    assert len(noise_cat) >= 3
    sizes = sorted((t["vocab_sizes"][n] for n in noise_cat), reverse=True)
    assert sizes[:2] == [100_000, 50_000] and max(sizes[2:]) <= 20_000


def test_some_copies_merge_the_rare_tail_of_their_source(tmp_path):
    """Redundant copies: a relabelling of the source's ids, 'with the rare tail sometimes merged in pairs'."""
    t = synthesize(200, 30, 8, tmp_path / "s", seed=0, redundant=8)
    v = t["vocab_sizes"]
    merged = [c for c, s in t["redundant"].items() if v[c] < v[s]]
    same = [c for c, s in t["redundant"].items() if v[c] == v[s]]
    assert merged and same
    for c in merged:
        s = t["redundant"][c]
        assert v[c] == (v[s] + 1) // 2 + (v[s] - (v[s] + 1) // 2 + 1) // 2


def test_roles_are_shuffled_over_the_column_positions(tmp_path):
    """The column index carries no information: the informative categorical fields are not always the first ones,
    and the informative numeric field is not always n0."""
    prefix, n0 = [], []
    for seed in range(6):
        t = synthesize(100, 10, 3, tmp_path / f"s{seed}", seed=seed)
        cat = sorted(n for n in t["informative"] if n.startswith("f"))
        prefix.append(cat == [f"f{i:02d}" for i in range(len(cat))])
        n0.append(t["numeric_informative"] == ["n0"])
    assert not all(prefix) and not all(n0)


def test_value_ids_say_nothing_about_frequency(tmp_path):
    """Ids are Zipf ranks relabelled: the most frequent value of an informative field is not always v0."""
    t = synthesize(3000, 10, 4, tmp_path / "s", seed=1)
    df = pd.read_parquet(t["data_file"])
    modes = [df[c].value_counts().index[0] for c in t["informative"] if c.startswith("f")]
    assert len(modes) >= 2 and any(m != "v0" for m in modes), modes


def test_an_older_output_without_a_recorded_sha256_is_replaced(tmp_path):
    """truth.json files of older outputs record no data_sha256: their data file is still synth's to replace."""
    out = tmp_path / "o"
    synthesize(200, 5, 2, out, seed=1)
    truth = json.loads((out / "truth.json").read_text())
    del truth["data_sha256"]
    (out / "truth.json").write_text(json.dumps(truth))
    (out / "data.parquet").write_bytes((out / "data.parquet").read_bytes() + b"")  # unchanged bytes
    t = synthesize(200, 5, 2, out, seed=2)
    assert t["seed"] == 2 and t["data_sha256"] == _sha(out / "data.parquet")


def test_a_csv_that_cannot_fit_the_free_space_is_refused_before_any_work(tmp_path, monkeypatch):
    """The least a CSV cell takes is 3 bytes ("v1,"): free space for 2 bytes a cell is refused for CSV only."""
    rows, fields = 1000, 5
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(syn.shutil, "disk_usage", lambda p: usage(10 ** 12, 0, 2 * rows * (fields + 1)))
    with pytest.raises(LightFMPError, match=r"--rows 1,000 x --fields 5: at least .* of csv, more than"):
        synthesize(rows, fields, 2, tmp_path / "c", fmt="csv")
    assert not (tmp_path / "c").exists()
    assert synthesize(rows, fields, 2, tmp_path / "p")["rows"] == rows

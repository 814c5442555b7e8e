"""Copies of a field (the same groups of rows under other values) and functions of a field: found exactly; a --keep K
search never keeps two copies and opens the finer field in place of a coarser function of it."""
import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lightfmp.datasets import synthesize
from lightfmp.groupings import Groupings
from lightfmp.keep_rule import closing_test, forward_order, keep_order, select_fields, selection_rule
from lightfmp.models import ModelConfig, build_model
from lightfmp.schema import FeatureSchema, Field
from lightfmp.vocab import fit_schema

from helpers import cli, make_frame


def test_a_relabelled_column_is_a_copy_and_a_coarser_one_is_not():
    rng = np.random.default_rng(0)
    n = 2000
    a = rng.integers(0, 50, n)
    relabel = rng.permutation(50)
    ids = np.stack([a, relabel[a], a // 2, rng.integers(0, 50, n), np.arange(n), np.arange(n) * 3, np.zeros(n, int),
                    np.zeros(n, int)], axis=1)
    # 0 and 1 are copies; a // 2 (a function of a, but grouping what a keeps apart) is not, nor an independent draw
    # with the same number of values; fields distinct on every row (4, 5) or constant (6, 7) show no grouping
    assert Groupings(ids, np.arange(8)).copies() == {0: [1], 1: [0]}


def test_a_multi_hot_field_is_compared_on_all_its_slots_in_any_order():
    """The model pools a multi-hot field's slots (mean of the tokens' embeddings): "p|q" and "q|p" are one value."""
    rng = np.random.default_rng(1)
    n = 500
    tags = rng.integers(1, 5, (n, 2))  # ids 1-4 (0 is padding)
    bag = np.sort(tags, axis=1)
    code = bag[:, 0] * 5 + bag[:, 1]  # the pair of tags, whichever slot holds which
    first_slot_only = tags[:, 0]
    ids = np.column_stack([tags, tags[:, ::-1], code, first_slot_only])
    g = Groupings(ids, np.array([0, 0, 1, 1, 2, 3]))
    assert g.copies() == {0: [1, 2], 1: [0, 2], 2: [0, 1]}
    # the tag in the first slot is no function of the tags as the model reads them
    assert not g.is_function_of(3, 0) and not g.is_function_of(3, 2)


def test_a_multi_hot_field_is_grouped_as_its_mean_pooling_reads_it():
    """Mean pooling reads the shares of a list's ids, padding (0) left out: "p" and "p|p" are one value, and so are
    two lists whose tags all became the OOV id, whatever their lengths; an empty list is a value of its own. A
    categorical field that tells exactly those values apart is then a copy of the multi-hot one, not a coarser
    function of it."""
    p, q, oov = 3, 4, 1
    lists = [[p, 0, 0], [p, p, 0], [p, p, p], [q, 0, 0], [q, q, 0], [oov, 0, 0], [oov, oov, oov], [p, q, 0],
             [q, p, 0], [p, p, q], [0, 0, 0]]
    value = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5]  # what the model reads: p, q, OOV, p+q evenly, 2p+q, nothing
    rows = np.arange(400) % len(lists)
    ids = np.column_stack([np.array(lists)[rows], np.array(value)[rows] + 7])
    g = Groupings(ids, np.array([0, 0, 0, 1]))
    assert g.distinct[0] == 6
    assert g.copies() == {0: [1], 1: [0]}
    assert not g.is_function_of(1, 0)


def test_copies_on_a_wide_table_of_few_valued_fields():
    """2000 binary fields, all with as many values as each other (the case a pairwise pass is slowest on: it took
    26 s on 4096 rows; copies are now classed in one pass over the fields): only the real copies are found."""
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 2, (4096, 2000)).astype(np.int32)
    ids[:, 7] = 1 - ids[:, 3]
    ids[:, 1999] = ids[:, 3] + 5
    assert Groupings(ids, np.arange(2000)).copies() == {3: [7, 1999], 7: [3, 1999], 1999: [3, 7]}


def test_copies_match_a_pairwise_comparison_of_the_row_partitions():
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(0, 30))
        base = rng.integers(0, int(rng.integers(1, 6)), n)
        cols = [rng.permutation(8)[base], base // 2, rng.integers(0, 3, n), base, np.zeros(n, int)]
        ids = np.stack([cols[k] for k in rng.integers(0, 5, 6)], axis=1).reshape(n, 6)
        slot_field = np.array([0, 1, 1, 2, 3, 4])

        def partition(f):
            groups = {}
            for i, row in enumerate(ids[:, slot_field == f]):
                groups.setdefault(tuple(sorted(row)), []).append(i)
            return sorted(groups.values()) if 1 < len(groups) < n else None

        expected = {}
        for a in range(5):
            for b in range(5):
                if a != b and partition(a) is not None and partition(a) == partition(b):
                    expected.setdefault(a, []).append(b)
        assert Groupings(ids, slot_field).copies() == expected


def test_copies_form_classes_of_three():
    a = np.repeat(np.arange(10), 5)
    ids = np.stack([a, 9 - a, a + 100], axis=1)
    assert Groupings(ids, np.arange(3)).copies() == {0: [1, 2], 1: [0, 2], 2: [0, 1]}


def _two_copies_and_a_weak_signal(seed: int = 0):
    """a decides the label, c only nudges it; a_copy is a relabelled a. A model trained with every field reads both
    copies, so with a open, opening a_copy still lowers its loss more than opening c does."""
    rng = np.random.default_rng(seed)
    n = 4000
    a, c = rng.integers(0, 8, n), rng.integers(0, 2, n)
    logit = np.where(a >= 4, 2.0, -2.0) + 0.4 * (2 * c - 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    df = pd.DataFrame({"a": a.astype(str), "a_copy": ["v" + str(7 - v) for v in a], "c": c.astype(str), "label": y})
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in ("a", "a_copy", "c")], min_count=1), df)
    ids = torch.from_numpy(s.encode(df)).long()
    torch.manual_seed(seed)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[16]), gated=True)
    opt = torch.optim.Adam(model.backbone_parameters(), lr=0.02)
    yt = torch.from_numpy(y)
    for _ in range(300):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(ids, torch.ones(3)), yt).backward()
        opt.step()
    return model, s, ids.numpy(), y


def test_forward_search_never_keeps_both_copies():
    model, s, ids, y = _two_copies_and_a_weak_signal()
    # the masked evaluation alone would open the copy second: the case the rule is for
    assert set(forward_order(model, ids, y, steps=2)[:2]) == {0, 1}
    order = keep_order(model, s, ids, y, 2)
    assert order["copies"] == {"a": ["a_copy"], "a_copy": ["a"]}
    assert set(order["order"][:2]) in ({"a", "c"}, {"a_copy", "c"}), order
    assert order["order"][2] in ("a", "a_copy")  # the copy comes last
    kept = select_fields(s.names, model.gate.log_alpha.detach(), model.gate.deterministic(), keep=2, search=order)
    dropped = ({"a", "a_copy"} - set(kept)).pop()
    assert selection_rule(kept, {}, 2, None, order)["copies"] == {dropped: ({"a", "a_copy"} & set(kept)).pop()}


def test_closing_test_has_no_budget_and_keeps_both_copies_the_model_reads():
    model, s, ids, y = _two_copies_and_a_weak_signal()
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([3.0, 1.0, 2.0]))  # a_copy is the least open: tested first
    out = closing_test(model, s, ids, y)
    first = out["tests"][0]
    assert first["field"] == "a_copy" and first["cost"] > 2 * first["se"] and not first["closed"]
    assert {"a", "a_copy"} <= set(out["kept"])
    assert "copies" not in selection_rule(out["kept"], {}, None, None, out)


@pytest.mark.parametrize("name", ["a_copy", "a[/x]"])
def test_keep_k_run_never_keeps_a_column_and_its_copy_and_inspect_says_so(tmp_path, name):
    """End to end: the small planted table plus a relabelled copy of its strongest field `a`; with --keep 3 (the
    number of informative fields) the run keeps at most one of the two, and inspect names the dropped copy. Field
    names are text, not rich markup: a column "a[/x]" neither vanishes nor breaks the table."""
    df = make_frame(2000)
    df[name] = "z" + df["a"].astype(str)
    path = tmp_path / "copy.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "run"
    r = cli("run", "--data", path, "--label", "label", "--multi-hot", "tags:|", "--keep", "3", "--out", out,
            "--subset", "0.5", "--pretrain-epochs", "3", "--epochs", "1", "--batch-size", "128", "--hidden", "16",
            "--embed-dim", "4", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["selection"]["search"]["copies"] == {"a": [name], name: ["a"]}
    kept = set(m["fields"]["kept"])
    assert len(kept) == 3 and len(kept & {"a", name}) <= 1, kept
    r = cli("inspect", out)
    flat = re.sub(r"[│\s]+", " ", r.output)  # a narrow table wraps the kept column's words
    assert r.exit_code == 0 and f" {name} " in flat, r.output
    if kept & {"a", name}:
        dropped = ({"a", name} - kept).pop()
        assert m["selection"]["copies"] == {dropped: (kept & {"a", name}).pop()}
        assert f"no (copy of {m['selection']['copies'][dropped]})" in flat, r.output


def test_a_function_of_a_finer_field_is_found_and_chance_is_not():
    rng = np.random.default_rng(2)
    n = 3000
    user = rng.integers(0, 300, n)
    zip_of_user = rng.integers(0, 120, 300)
    near_unique = np.arange(n)
    near_unique[[1, 3, 5]] = near_unique[[0, 2, 4]]  # three repeated pairs only
    coin = rng.integers(0, 2, n)
    coin[[1, 3, 5]] = coin[[0, 2, 4]]  # constant on near_unique's three pairs, by construction
    ids = np.stack([user, zip_of_user[user], rng.integers(0, 120, n), near_unique, coin], axis=1)
    g = Groupings(ids, np.arange(5))
    assert g.is_function_of(1, 0)  # the zip code of a user: a function of the user
    assert not g.is_function_of(0, 1)  # ... not the other way round
    assert not g.is_function_of(2, 0)  # an independent field with as many values
    # coin is constant on each of near_unique's three pairs, but a fair coin is with probability 1/8: chance
    assert not g.is_function_of(4, 3)
    assert not g.is_function_of(1, 1)


def test_the_search_opens_the_finer_field_instead_of_a_coarser_function_of_it_and_then_drops_that_function():
    """`a_coarse` merges a's values in pairs, `c` nudges the label. The phase-1 model here learnt mostly through the
    coarse field, so on masked losses alone the search opens a_coarse and then a (the weight split between them).
    a carries everything a_coarse does: the search opens a in a_coarse's place, and a_coarse, a function of the
    open a, is no longer a candidate, so the second place goes to c."""
    rng = np.random.default_rng(3)
    n = 4000
    a, c = rng.integers(0, 16, n), rng.integers(0, 2, n)
    eff = rng.normal(size=16) * 2
    y = (rng.random(n) < 1 / (1 + np.exp(-(eff[a] + 0.3 * (2 * c - 1))))).astype(np.float32)
    df = pd.DataFrame({"a": a.astype(str), "a_coarse": (a // 2).astype(str), "c": c.astype(str), "label": y})
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in ("a", "a_coarse", "c")], min_count=1), df)
    ids = torch.from_numpy(s.encode(df)).long()
    torch.manual_seed(0)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[16]), gated=True)
    opt = torch.optim.Adam(model.backbone_parameters(), lr=0.02)
    for step in range(300):
        opt.zero_grad()
        # trained mostly through the coarse field: a's embedding reads noise in two steps of three
        x = ids.clone()
        if step % 3:
            x[:, 0] = x[torch.randperm(n), 0]
        F.binary_cross_entropy_with_logits(model(x, torch.ones(3)), torch.from_numpy(y)).backward()
        opt.step()
    ids, groupings = ids.numpy(), Groupings(ids.numpy(), np.arange(3))
    assert forward_order(model, ids, y, steps=2)[:2] == [1, 0]  # on masked losses alone: a_coarse, then a
    assert forward_order(model, ids, y, steps=2, groupings=groupings)[:2] == [0, 2]
    out = keep_order(model, s, ids, y, 2)
    assert out["order"][:2] == ["a", "c"] and out["finer"] == {"a_coarse": "a"}
    assert out["shadowed"] == {"a_coarse": ["a", "function"]}
    sel = selection_rule(["a", "c"], {}, 2, None, out)
    assert sel["functions"] == {"a_coarse": "a"} and sel["copies"] == {}


@pytest.mark.parametrize("seed", range(4))
def test_keep_k_on_a_planted_set_never_holds_a_field_and_its_copy(tmp_path, seed):
    """The planted generator's redundant fields are relabelled copies (as many values as their source) or merged
    copies (the rare half of the values joined in pairs) of an informative field. With K = the number of
    informative fields, the kept set never holds two fields of one relabelled-copy class. (A merged copy is left out
    at this size: on 20,000 rows the encoding gives the source's rarest values one shared id, the merged copy tells
    some of them apart, so it is no function of its source's ids and may rightly stay a candidate.)"""
    truth = synthesize(20_000, 14, 5, tmp_path / "data", seed=seed)
    out = tmp_path / "run"
    r = cli("run", "--data", truth["data_file"], "--label", "label", "--keep", "5", "--out", out, "--seed", seed,
            "--pretrain-epochs", "3", "--epochs", "1", "--batch-size", "256", "--hidden", "16", "--embed-dim", "4",
            "--quiet")
    assert r.exit_code == 0, r.output
    kept = set(json.loads((out / "metrics.json").read_text())["fields"]["kept"])
    sizes = truth["vocab_sizes"]
    classes = {}
    for copy, source in truth["redundant"].items():
        if sizes[copy] == sizes[source]:  # a relabelled copy
            classes.setdefault(source, {source}).add(copy)
    assert classes, truth["redundant"]
    for source, members in classes.items():
        assert len(kept & members) <= 1, (source, members, kept)


def test_a_swap_opens_the_finest_field_of_a_chain_and_never_a_field_with_its_function(monkeypatch):
    """a > b = a // 2 > c = a // 6: c is picked first; of the finer fields a and b, b lowers the (stubbed) phase-1 loss
    more, but b is itself a function of the closed a, so a opens, and b and c leave the candidates as functions of a.
    (Before, b opened, c left, and the next step opened a: a field and its coarser function, both kept at K = 2.)"""
    Model = _stubbed_search(monkeypatch, [0.1, 0.4, 0.5, 0.05])  # how much opening a, b, c, d lowers the loss
    rng = np.random.default_rng(0)
    a = rng.integers(0, 24, 400)
    ids = np.stack([a, a // 2, a // 6, rng.integers(0, 3, 400)], axis=1)
    g = Groupings(ids, np.arange(4))
    assert g.is_function_of(1, 0) and g.is_function_of(2, 1) and g.is_function_of(2, 0)
    swaps, shadowed = {}, {}
    order = forward_order(Model(), ids, np.zeros(400), steps=2, groupings=g, swaps=swaps,
                          shadowed_by=shadowed)
    assert order[:2] == [0, 3] and sorted(order) == [0, 1, 2, 3]
    assert swaps == {2: 0} and shadowed == {1: (0, "function"), 2: (0, "function")}
    assert forward_order(Model(), ids, np.zeros(400), groupings=g) == [0, 3, 1, 2]


def test_the_groupings_read_rows_spread_over_the_split_not_its_first_window(monkeypatch):
    """A file sorted by time: in its first rows a column repeats `day` exactly, later it holds the week. On the first
    window alone the two are copies; the search's copies and functions come from rows spread over all the rows
    given, where they are not."""
    import lightfmp.keep_rule as keep_rule

    n = 3 * keep_rule.SEARCH_ROWS
    day = np.arange(n) // 100
    week = day // 7
    ids = np.stack([day, np.where(np.arange(n) < keep_rule.SEARCH_ROWS, day, week), np.arange(n) % 5], axis=1)
    first = Groupings(ids[:keep_rule.SEARCH_ROWS], np.arange(3))
    assert first.copies() == {0: [1], 1: [0]}  # what the first window alone shows
    seen = {}

    def record(model, ids, labels, device, k, groupings, *outputs):
        seen["copies"] = groupings.copies()
        return list(range(3))

    monkeypatch.setattr(keep_rule, "forward_order", record)
    monkeypatch.setattr(keep_rule, "costliest_set", lambda model, ids, labels, k, *rest: list(range(k)))
    model = type("M", (), {"embedding": type("E", (), {"slot_field": torch.arange(3)})()})()
    schema = type("S", (), {"names": ["day", "day_then_week", "other"]})()
    out = keep_rule.keep_order(model, schema, ids, np.zeros(n), 1)
    assert seen["copies"] == {} and out["copies"] == {}


def test_a_sparse_finer_field_neither_replaces_nor_shadows_its_coarser_function(monkeypatch):
    """category is a function of site. Where site has more than rows_ratio ids per category id, the final model
    would see each site less often than the phase-1 model saw each category: the site is not swapped in for the
    category, and an opened site leaves the category a candidate. Dense enough, both hold as before."""
    value = [0.2, 0.3, 0.1]  # how much opening site, category, x lowers the stubbed phase-1 loss
    Model = _stubbed_search(monkeypatch, value)
    rng = np.random.default_rng(0)
    site = rng.integers(0, 500, 4000)
    ids = np.stack([site, site % 10, rng.integers(0, 3, 4000)], axis=1)
    sparse, dense = (Groupings(ids, np.arange(3), field_ids=[500, 10, 3], rows_ratio=r) for r in (9.0, 60.0))
    assert not sparse.stands_for(1, 0) and dense.stands_for(1, 0) and sparse.is_function_of(1, 0)
    # the category first
    swaps = {}
    assert forward_order(Model(), ids, np.zeros(4), steps=2, groupings=sparse, swaps=swaps)[:2] == [1, 0]
    assert swaps == {}
    assert forward_order(Model(), ids, np.zeros(4), steps=2, groupings=dense, swaps=swaps)[:2] == [0, 2]
    assert swaps == {1: 0}
    value[0] = 0.5  # the site first
    assert forward_order(Model(), ids, np.zeros(4), steps=2, groupings=sparse)[:2] == [0, 1]
    assert forward_order(Model(), ids, np.zeros(4), steps=2, groupings=dense)[:2] == [0, 2]


def _stubbed_search(monkeypatch, value: list[float]):
    """The search's passes stubbed: opening field f lowers the loss by value[f] (read at each pass, so a test may
    change it); returns a model class with len(value) fields."""

    class Passes:
        def __init__(self, model, ids, labels, kept, device, weights=None, donors=None):
            self.open = set(kept)

        def losses(self, f=None):
            return torch.full((4,), 1.0 - sum(value[g] for g in self.open ^ ({f} if f is not None else set())))

        def toggle(self, f):
            self.open ^= {f}

    class Model:
        gate = type("Gate", (), {"num_fields": len(value), "log_alpha": torch.zeros(len(value))})()
        embedding = type("Embedding", (), {"num_fields": len(value)})()

        @staticmethod
        def gate_values():  # every gate open: every field a candidate
            return torch.ones(len(value))

    monkeypatch.setattr("lightfmp.keep_rule.ClosedFields", Passes)
    return Model


def test_the_density_check_needs_both_of_its_inputs():
    """`stands_for` applies the density check only given both each field's number of ids and the rows ratio; with
    one of them alone it is `is_function_of`."""
    a = np.arange(600) % 60
    ids = np.column_stack([a, a % 6])
    for kw in ({"field_ids": [60, 6]}, {"rows_ratio": 2.0}, {}):
        g = Groupings(ids, np.array([0, 1]), **kw)
        assert g.stands_for(1, 0) and g.is_function_of(1, 0)
    assert not Groupings(ids, np.array([0, 1]), field_ids=[60, 6], rows_ratio=2.0).stands_for(1, 0)


def test_pooled_values_match_a_plain_reference():
    """The vectorised grouping of multi-hot rows against the rule written plainly (per row: the ids other than
    padding with their counts divided by the counts' gcd), on random blocks with padding, repeats and empty rows:
    the same partition of the rows."""
    from lightfmp.groupings import pooled_values

    def plain(block):
        keys = {}
        for row in block:
            ids, counts = np.unique(row[row != 0], return_counts=True)
            counts = counts // np.gcd.reduce(counts) if len(counts) else counts
            keys.setdefault((tuple(ids), tuple(counts)), len(keys))
        return [keys[(tuple(i), tuple(c // np.gcd.reduce(c) if len(c) else c))]
                for i, c in (np.unique(r[r != 0], return_counts=True) for r in block)]
    rng = np.random.default_rng(3)
    for _ in range(300):
        block = rng.integers(0, 5, (int(rng.integers(0, 40)), int(rng.integers(1, 6))))
        got, want = pooled_values(block), np.array(plain(block), dtype=np.int64)
        assert len(got) == len(want)
        pairs = set(zip(got.tolist(), want.tolist()))  # a bijection between the two labellings
        assert len(pairs) == len(set(got.tolist())) == len(set(want.tolist()))

def _partition(col):
    return {v: set(np.flatnonzero(col == v).tolist()) for v in np.unique(col)}


def _reference_is_function_of(cols, b, a, alpha=0.05):
    """By brute force on tiny arrays: b is constant on each group of a; a groups the rows more finely than b, both
    grouping the rows (neither constant nor distinct on every row); and a field with b's value frequencies drawn
    independently of a would be constant on all of a's groups with probability below alpha / number of fields."""
    n, fields = len(cols[0]), len(cols)
    ga, gb = _partition(cols[a]), _partition(cols[b])
    if not (1 < len(gb) < len(ga) < n):
        return False
    if any(len({cols[b][r] for r in rows}) > 1 for rows in ga.values()):
        return False
    p = np.array([len(r) / n for r in gb.values()])
    chance = 1.0
    for rows in ga.values():
        chance *= float(np.sum(p ** len(rows)))
    return chance < alpha / fields


def _tiny_tables(count=300):
    rng = np.random.default_rng(7)
    for _ in range(count):
        n = int(rng.integers(6, 40))
        fine = rng.integers(1, int(rng.integers(2, n + 1)) + 1, n)
        mapping = rng.integers(1, int(rng.integers(2, 5)) + 1, fine.max() + 1)
        skew = rng.choice([1, 1, 1, 2, 3], size=fine.max() + 1)  # unequal value frequencies for the coarse field
        coarse = np.where(skew == 1, mapping, 1)[fine]
        noise = rng.integers(1, int(rng.integers(2, 4)) + 1, n)
        yield np.stack([fine, coarse, noise, np.where(rng.random(n) < 0.8, coarse, noise)], axis=1)


def test_is_function_of_matches_a_brute_force_reference_with_the_default_alpha():
    """On many tiny tables (a fine field, a coarse function of it with skewed value frequencies, noise, and a
    near-function), `is_function_of` with the default alpha says what the brute-force definition says, for every
    ordered pair of fields; both answers occur."""
    seen = set()
    for ids in _tiny_tables():
        g = Groupings(ids, np.arange(ids.shape[1]))
        cols = [ids[:, f] for f in range(ids.shape[1])]
        for b, a in itertools.permutations(range(ids.shape[1]), 2):
            expect = _reference_is_function_of(cols, b, a)
            assert g.is_function_of(b, a) == expect, (ids.tolist(), b, a)
            seen.add(expect)
    assert seen == {True, False}


def test_the_chance_check_reads_the_coarse_fields_own_value_frequencies():
    """b takes value 1 on 80% of the rows: its constancy on a's six pairs of rows is likely by chance
    (0.66^6 ~ 0.08 > 0.05 / 2), though it would not be for a field with three equally frequent values
    ((1/3)^6 ~ 0.0014). b is not a function of a; nor, by the same count, under alpha = 0.01 a balanced field on
    the same pairs that 0.05 takes ((1/2)^6 ~ 0.016: between 0.01 / 2 and 0.05 / 2)."""
    a = np.r_[np.repeat(np.arange(1, 7), 2), np.arange(7, 15)]  # six pairs, eight singletons: 14 values, 20 rows
    skewed = np.r_[np.ones(12, int), [1, 1, 1, 1, 2, 2, 3, 3]]  # 16 x value 1, 2 x 2, 2 x 3
    g = Groupings(np.stack([a, skewed], 1), [0, 1])
    assert not g.is_function_of(1, 0)
    balanced = np.r_[[1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2], [1, 1, 1, 1, 2, 2, 2, 2]]  # 10 x 1, 10 x 2
    assert Groupings(np.stack([a, balanced], 1), [0, 1]).is_function_of(1, 0)  # the default alpha, 0.05
    assert not Groupings(np.stack([a, balanced], 1), [0, 1], alpha=0.01).is_function_of(1, 0)

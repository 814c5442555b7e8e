"""Review of the closing test, its inspect output and the gate steps' pass over the hold-out: edge cases."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import make_frame, record_steps, rewrite_metrics, write_csv
from lightfmp import training
from lightfmp.cli.app import app
from lightfmp.config import RunConfig
from lightfmp.dataset import load_dataset
from lightfmp.inspection import plot_gates
from lightfmp.closed_fields import ClosedFields, by_label, donor_rows, measured_sample
from lightfmp.keep_rule import (closing_scores, closing_test, costliest_set, forward_order, keep_order, search_rows,
                                select_fields, selection_rule)
from lightfmp.models import ModelConfig, build_model
from lightfmp.rows import ArrayRows
from lightfmp.schema import FeatureSchema, Field
from lightfmp.splits import SALT_HOLDOUT
from lightfmp.training import TrainConfig, fit
from lightfmp.vocab import fit_schema


def _model(fields=("a", "b", "noise"), n=300, seed=0):
    df = make_frame(n)
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in fields], min_count=1), df)
    torch.manual_seed(seed)
    m = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    with torch.no_grad():
        for p in m.backbone_parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m, s, s.encode(df), df["label"].to_numpy(np.float32)


# ---- the forward search's rows -------------------------------------------------------------------------------------
def test_search_rows_keep_every_rare_label_row_and_as_many_of_the_other_spread_over_the_rows():
    """At 1% positives every positive row is searched (not the ~1% of the first rows) and as many negatives, spread
    over the negatives (not the first of them)."""
    y = (np.random.default_rng(0).random(20_000) < 0.01).astype(np.float32)
    rows = search_rows(y, 1000)
    assert np.all(np.diff(rows) > 0)
    assert y[rows].sum() == y.sum() and len(rows) == 2 * y.sum()  # ~200 positives, all of them, and as many
    negatives = np.flatnonzero(y == 0)
    assert rows[y[rows] == 0].max() > negatives[-200] and rows[y[rows] == 0].min() < negatives[200]


def test_search_rows_split_evenly_between_common_labels_and_take_all_of_few_rows():
    y = np.r_[np.ones(6000), np.zeros(4000)].astype(np.float32)
    rows = search_rows(y, 1000)
    assert y[rows].sum() == 500 and len(rows) == 1000
    assert np.array_equal(search_rows(y[:800], 1000), np.arange(800))
    one = search_rows(np.ones(1500), 1000)  # one label: n of its rows, spread from the first to the last
    assert len(one) == 1000 and one[0] == 0 and one[-1] == 1499


def test_weighted_closed_field_losses_with_every_field_open_are_the_row_losses_times_the_weights():
    m, s, ids, y = _model()
    w = np.random.default_rng(1).uniform(0.5, 1.5, len(y))
    plain, weighted = ClosedFields(m, ids, y, [0, 1, 2]), ClosedFields(m, ids, y, [0, 1, 2], weights=w)
    np.testing.assert_allclose(weighted.losses(), plain.losses() * w, rtol=1e-5)


def test_a_stratified_sample_estimates_the_closed_fields_logloss_of_every_row():
    """At 1% positives the search rows (each label's rows weighing the same) estimate the same mean over every row
    of a state with closed fields too (a closed field reads a donor row of every row, so positives' values do not
    leak into negatives' rows at the sample's half-and-half)."""
    rng = np.random.default_rng(0)
    n = 40_000
    y = (rng.random(n) < 0.01).astype(np.float32)
    pos = y == 1
    marker = np.where(pos & (rng.random(n) < 0.9), 2, rng.integers(3, 22, n))  # marks most positives
    ids = np.stack([marker, rng.integers(2, 22, n), rng.integers(2, 22, n)], 1).astype(np.int64)
    schema = FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(20)])
                                 for i in range(3)])
    torch.manual_seed(0)
    m = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    fit(m, ArrayRows(ids, y), None, TrainConfig(epochs=2, batch_size=512), seed=0, select_best=False)
    rows = search_rows(y, 4096)
    assert y[rows].sum() == y.sum()
    donors = ids[donor_rows(n, rows, np.random.default_rng(0))]
    for open_fields in ([1, 2], []):
        every = ClosedFields(m, ids, y, open_fields, balanced=True).losses().mean()
        sampled = ClosedFields(m, ids[rows], y[rows], open_fields, weights=by_label(y[rows]),
                               donors=donors).losses().mean()
        assert sampled == pytest.approx(every, rel=0.1), (open_fields, sampled, every)


# ---- the closing test ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 4])
def test_a_closed_field_reads_another_rows_values(n):
    """A closed field reads another row's values on every row, even on 2 or 4 rows where a plain seeded permutation
    leaves rows in place (then closing would cost exactly 0 there and, on 2 rows, the default rule would drop every
    field but one)."""
    m, s, ids, y = _model()
    ids, y = ids[:n].copy(), y[:n]
    ids[:] = (np.arange(n)[:, None] + 2) % np.array([len(f.vocab) for f in s.fields])[None, :] + 2  # rows differ
    open_all = ClosedFields(m, ids, y, range(len(s.names))).losses()
    closed_all = ClosedFields(m, ids, y, []).losses()
    assert np.all(np.abs(closed_all - open_all) > 0), (open_all, closed_all)  # every row reads another row
    assert any(t["cost"] != 0.0 for t in closing_test(m, s, ids, y)["tests"])


def test_closing_test_with_every_gate_shut_keeps_the_most_open_field_without_nan():
    m, s, ids, y = _model()
    with torch.no_grad():
        m.gate.log_alpha.copy_(torch.tensor([-20.0, -15.0, -25.0]))  # every deterministic gate exactly 0
    assert float(m.gate.deterministic().detach().max()) == 0.0
    out = closing_test(m, s, ids, y)
    assert out["kept"] == ["b"] and out["order"] == ["b", "a", "noise"]
    assert [t["field"] for t in out["tests"]] == ["noise", "a"]
    assert all(t == {"field": t["field"], "cost": 0.0, "se": 0.0, "set_cost": 0.0, "set_se": 0.0, "closed": True}
               for t in out["tests"])
    assert closing_scores(out) == {"noise": 0.0, "a": 0.0}
    assert select_fields(s.names, m.gate.log_alpha, m.gate.deterministic(), search=out) == ["b"]


def _one_shut(gate_f2: float):
    """f0 carries the label, f1 (open) is read against it, f2's gate is `gate_f2` (log_alpha) with rows of its own."""
    rng = np.random.default_rng(0)
    n = 3000
    s = FeatureSchema("label", [Field(f"f{i}", "categorical", vocab=[str(v) for v in range(4)]) for i in range(3)])
    ids = rng.integers(2, 6, size=(n, 3)).astype(np.int64)
    ids[:, 1] = np.where(rng.random(n) < 0.7, ids[:, 0], rng.integers(2, 6, n))
    eff = np.array([0, 0, -2, -1, 1, 2.0])
    y = (rng.random(n) < 1 / (1 + np.exp(-eff[ids[:, 0]]))).astype(np.float32)
    m = build_model("mlp", s, ModelConfig(embed_dim=1, hidden=[]), gated=True)
    with torch.no_grad():
        m.embedding.weight.zero_()
        m.embedding.weight[0:6, 0] = torch.tensor(eff, dtype=torch.float32)
        m.embedding.weight[6:12, 0] = -0.6 * torch.tensor(eff, dtype=torch.float32)
        m.embedding.weight[12:18, 0] = torch.tensor([0, 0, 1, -1, 2, -2.0])
        m.out.weight.fill_(1.0)
        m.out.bias.zero_()
        m.gate.log_alpha.copy_(torch.tensor([5.0, 5.0, gate_f2]))
    return m.eval(), s, ids, y


def test_keep_k_on_the_phase1_model_takes_no_shut_field_while_k_are_open():
    """A shut gate's field costs and gains exactly nothing: it must not take a place by schema order."""
    m, s, ids, y = _one_shut(-10.0)
    assert float(m.gate_values()[2]) == 0.0
    assert forward_order(m, ids, y) == [0, 1, 2]
    assert costliest_set(m, ids, y, 2) == [0, 1]
    search = keep_order(m, s, ids, y, 2)
    assert select_fields(s.names, m.gate.log_alpha.detach(), m.gate_values(), keep=2, search=search) == ["f0", "f1"]


def test_with_every_gate_shut_the_forward_order_is_log_alpha_not_schema_order():
    m, s, ids, y = _one_shut(-10.0)
    with torch.no_grad():
        m.gate.log_alpha.copy_(torch.tensor([-12.0, -11.0, -10.0]))  # all shut: f2 the most open
    assert float(m.gate_values().max()) == 0.0
    assert forward_order(m, ids, y) == [2, 1, 0]
    assert costliest_set(m, ids, y, 2) == [2, 1]


def test_closing_test_with_one_field_tests_nothing_and_keeps_it():
    m, s, ids, y = _model(fields=("a",))
    out = closing_test(m, s, ids, y)
    measured = len(measured_sample(np.asarray(y))[0])  # every row of the rarer label and as many of the other's
    assert out == {"order": ["a"], "tests": [], "rows": len(y), "measured": measured, "kept": ["a"]}
    sel = selection_rule(["a"], {"a": 1.0}, None, None, out)
    assert sel["scores"] == {} and sel["cut"] == 2.0


def test_a_score_cut_is_not_drawn_on_the_gate_axis(tmp_path, monkeypatch):
    """With no scored row (a one-field default run: its only field is never tested), the single panel is the gate
    axis: the closing test's cut (2 standard errors) must not be drawn on it."""
    import matplotlib.axes
    drawn = []
    real = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                        lambda self, y=0, *a, **k: (drawn.append((self.get_ylabel(), y)), real(self, y, *a, **k))[1])
    m, s, ids, y = _model(fields=("a",))
    out = closing_test(m, s, ids, y)
    cut = selection_rule(out["kept"], {"a": 0.97}, None, None, out)
    rows = [{"field": "a", "kind": "categorical", "gate": 0.97, "l0_probability": 0.97, "kept": True}]
    plot_gates(rows, tmp_path / "g.png", cut=cut)
    assert ("deterministic gate", 2.0) not in drawn, drawn


def test_long_field_names_keep_their_ends_on_the_chart_and_a_bar_each(tmp_path, monkeypatch):
    """Names longer than the axis holds keep their start and end around an ellipsis; two that shorten alike are
    still two bars (bars go by position, not by label)."""
    import matplotlib.axes
    drawn = []
    real = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda self, x, h, *a, **k: (drawn.append((list(x), k.get("tick_label"))),
                                                     real(self, x, h, *a, **k))[1])
    long = "user_" + "x" * 300
    rows = [{"field": long + "_a", "gate": 0.9, "l0_probability": 0.9, "kept": True},
            {"field": "user_" + "x" * 150 + "z" + "x" * 149 + "_a", "gate": 0.5, "l0_probability": 0.5, "kept": True},
            {"field": "age", "gate": 0.1, "l0_probability": 0.1, "kept": False}]
    plot_gates(rows, tmp_path / "g.png")
    (positions, labels), = drawn
    assert positions == [0, 1, 2] and labels[2] == "age"
    assert labels[0] == labels[1] == "user_xxxxxx\u2026xxxxxxxxxx_a" and len(labels[0]) == 24
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


# ---- the gate steps' pass over the hold-out -----------------------------------------------------------------------
def _fit_recording(rows, holdout, batch_size, epochs=2, **fit_kw):
    schema = FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(20)]) for i in range(3)])
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    with pytest.MonkeyPatch.context() as mp:
        seen, steps = record_steps(mp)
        fit(model, rows, None, TrainConfig(epochs=epochs, batch_size=batch_size, gate_holdout=holdout), seed=3,
            select_best=False, **fit_kw)
    assert np.isfinite(model.gate.log_alpha.detach().numpy()).all()
    return seen, steps


def _rows(n):
    ids = np.stack([np.arange(n) % 20 + 2, np.arange(n) // 20 % 20 + 2, np.arange(n) // 400 + 2], 1).astype(np.int32)
    return ArrayRows(ids, (np.arange(n) % 3 == 0).astype(np.float32))  # every row distinct


@pytest.mark.parametrize("holdout,batch_size", [(0.03, 1), (0.05, 4), (0.5, 10_000), (0.9, 10_000), (0.9, 3)])
def test_gate_steps_read_every_held_out_row_once_an_epoch_even_with_empty_shares(holdout, batch_size):
    """Fewer held-out rows than weight steps (empty shares are skipped), and a batch larger than every row."""
    rows = _rows(400)
    w, hold = rows.split(holdout, 3, SALT_HOLDOUT)
    seen, steps = _fit_recording(rows, holdout, batch_size)
    assert len(steps) == 2 * -(-len(w) // batch_size)
    assert len(seen) == (2 * len(hold) if len(hold) < len(steps) // 2 else len(steps))
    got = np.concatenate(seen)
    key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731
    assert key(got) == key(np.concatenate([hold.arrays()[0]] * 2))  # each epoch reads each held-out row once


def test_a_streamed_hold_out_is_not_read_whole_before_the_first_gate_step(tmp_path):
    """A hold-out that stays on disk (a --stream run beyond --in-memory-mb) is read share by share as the gate
    steps take it, not whole before the first one."""
    csv = write_csv(tmp_path, n=1500)
    cfg = RunConfig.of(data=str(csv), label="label", categorical="a,b,noise", numeric="x", multi_hot="tags:|",
                       shard_dir=str(tmp_path / "shards"), chunk_rows=50, stream=True)
    data = load_dataset(cfg.data, None)
    rows = data.split_rows("train")
    read = {}
    cls = type(rows)
    real_chunks = cls.chunks

    def chunks(self, seed=None, window_bytes=0):
        for c in real_chunks(self, seed, window_bytes):
            read[id(self)] = read.get(id(self), 0) + len(c[1])
            yield c
    at_first = []
    real_gate = training.Trainer.gate_step

    def gate_step(self, ids, y, progress, noise):
        if not at_first:
            at_first.append((read.get(id(self.hold), 0), len(self.hold), type(self.hold)))
        return real_gate(self, ids, y, progress, noise)
    mp = pytest.MonkeyPatch()
    mp.setattr(cls, "chunks", chunks)
    mp.setattr(training.Trainer, "gate_step", gate_step)
    try:
        torch.manual_seed(0)
        model = build_model("deepfm", data.schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
        fit(model, rows, None, TrainConfig(epochs=1, batch_size=64, gate_holdout=0.5), select_best=False,
            in_memory_mb=0)
    finally:
        mp.undo()
    done, total, kind = at_first[0]
    assert kind is cls and total > 300
    assert done < total / 2, f"read {done} of {total} held-out rows before the first gate step"


# ---- inspect across the rules and an older metrics.json -----------------------------------------------------------
def test_inspect_follows_each_re_prune_and_reads_an_older_selection(tmp_path):
    runner = CliRunner()
    cli = lambda *a: runner.invoke(app, [str(x) for x in a])  # noqa: E731
    csv, run = write_csv(tmp_path, n=600), tmp_path / "run"
    r = cli("train", "--data", csv, "--label", "label", "--multi-hot", "tags:|", "--out", run, "--subset", "1.0",
            "--pretrain-epochs", "2", "--batch-size", "128", "--hidden", "8", "--embed-dim", "4", "-q")
    assert r.exit_code == 0, r.output
    text = lambda r: " ".join(r.output.split())  # noqa: E731
    for args, column, suffix in [((), "closing cost (SE)", "(cut at 2: closing cost in standard errors)"),
                                 (("--keep", "2"), "forward order", "(cut at 2: forward order position)"),
                                 (("--threshold", "0.5"), None, "(cut at gate 0.500)")]:
        assert cli("prune", run, *args, "--continue-epochs", "0", "-q").exit_code == 0
        r = cli("inspect", run)
        assert r.exit_code == 0 and suffix in text(r), text(r)
        for other in ("closing cost (SE)", "forward order"):
            assert (other in text(r).split("kept by")[0]) == (other == column), text(r)
    m = json.loads((run / "metrics.json").read_text())
    m["selection"] = {"rule": "fewest fields of the forward order within one standard error of the best validation "
                              "logloss", "score": "forward order", "cut": None,
                      "curve": {"order": m["fields"]["all"], "logloss": [0.6] * 5, "se": [0.01] * 5}}
    rewrite_metrics(run, m)  # as the older lightfmp that decided so wrote it
    r = cli("inspect", run)
    assert r.exit_code == 0 and "within one standard error" in text(r) and "(cut at" not in text(r), r.output
    assert (run / "gates.png").read_bytes()[:4] == b"\x89PNG"

"""Phase 1's gates alone after its best epoch, and the default rule's early cut of what they shut."""
import numpy as np
import pytest
import torch

from lightfmp.keep_rule import gates_alone_cut, gates_alone_note
from lightfmp.closed_fields import ClosedFields, measured_sample
from lightfmp.metrics import paired_difference
from lightfmp.models import ModelConfig, build_model
from lightfmp.rows import ArrayRows
from lightfmp.schema import FeatureSchema, Field
from lightfmp.training import Plan, TrainConfig, Trainer, _gates_alone, fit


def _data(n=600, seed=0):
    """4 fields of ids 2..11; the label leans on f0 alone."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 12, size=(n, 4)).astype(np.int32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(ids[:, 0] - 7) / 1.0))).astype(np.float32)
    schema = FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(10)]) for i in range(4)])
    return schema, ArrayRows(ids[:400], y[:400]), ArrayRows(ids[400:], y[400:])


def _model(schema):
    torch.manual_seed(0)
    return build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("gate.")}


def test_the_gates_alone_step_the_planned_epochs_on_frozen_weights_and_give_back_the_best_gates(monkeypatch):
    schema, rows, _ = _data()
    model = _model(schema)
    cfg = TrainConfig(epochs=5, batch_size=64, gate_holdout=0.25, gate_lr=0.5)
    trainer = Trainer(model, rows, cfg, Plan(5, seed=3), "cpu", "test")
    weights, gates = _weights(model), model.gate.log_alpha.detach().clone()
    steps = []
    monkeypatch.setattr(Trainer, "gate_step", lambda self, *a, _s=Trainer.gate_step: (steps.append(1), _s(self, *a)))
    out = _gates_alone(trainer, model, 2)
    assert out["epochs"] == 3 and len(steps) == 3 * trainer.batches
    assert all(torch.equal(v, weights[k]) for k, v in _weights(model).items())  # the weights never moved
    assert torch.equal(model.gate.log_alpha.detach(), gates)  # the model keeps the gates it came with
    assert not np.allclose(out["log_alpha"], gates.tolist())  # the gates alone went somewhere


def test_a_fit_with_the_gates_alone_leaves_the_same_model_and_records_where_they_ended():
    schema, rows, valid = _data()
    # a learning rate at which the best epoch is the second of six: four epochs of gates alone
    cfg = TrainConfig(epochs=6, batch_size=32, gate_holdout=0.25, gate_lr=0.5, lr=0.05)
    plain, alone = _model(schema), _model(schema)
    h0 = fit(plain, rows, valid, cfg, seed=3)
    h1 = fit(alone, rows, valid, cfg, seed=3, gates_alone=True)
    assert "gates_alone" not in h0 and h0["best_epoch"] == h1["best_epoch"] == 2
    for (k, a), b in zip(plain.state_dict().items(), alone.state_dict().values()):
        assert torch.equal(a, b), k  # phase 1's model is the same, gates included
    assert h1["gates_alone"]["epochs"] == 4
    assert not np.allclose(h1["gates_alone"]["log_alpha"], alone.gate.log_alpha.tolist())


def test_no_gates_alone_without_a_hold_out():
    schema, rows, valid = _data()
    h = fit(_model(schema), rows, valid, TrainConfig(epochs=2, batch_size=64, gate_holdout=0.0), seed=3,
            gates_alone=True)
    assert "gates_alone" not in h


def _trained():
    schema, rows, valid = _data(2000)
    model = _model(schema)
    fit(model, rows, None, TrainConfig(epochs=6, batch_size=64, gate_holdout=0.0), seed=1, select_best=False)
    with torch.no_grad():
        model.gate.log_alpha.fill_(3.0)  # every gate open
    ids, y = valid.arrays()
    return model, ids, y


def _cost(model, ids, y, fields):
    """Closing `fields` together against every field open, as the closing test's set test measures it (on the rows
    it measures, each label's rows weighing the same)."""
    rows, donors = measured_sample(y)
    passes = ClosedFields(model, ids[rows], y[rows], list(range(4)), balanced=True,
                          donors=None if donors is None else ids[donors])
    every_open = passes.losses()
    for f in fields:
        passes.toggle(f)
    return paired_difference(passes.losses(), every_open)


def test_a_shut_field_the_model_needs_is_not_cut_and_the_gates_stay_as_they_were():
    model, ids, y = _trained()
    alone = [-8.0, 3.0, 3.0, -8.0]  # the gates alone shut f0, the field the label leans on, and f3
    cost, se = _cost(model, ids, y, [0, 3])
    assert cost > 0
    out = gates_alone_cut(model, ids, y, alone)
    assert out["fields"] == [0, 3] and out["open"] == 4 and not out["cut"]
    assert out["cost"] == pytest.approx(cost) and out["se"] == pytest.approx(se)
    assert torch.equal(model.gate.log_alpha.detach(), torch.full((4,), 3.0))


def _reading_nothing(model, first):
    """`model` with the fields from `first` on reading nothing: their rows of the tables (which end the tables) 0, so
    shutting them costs exactly 0."""
    emb = model.embedding
    with torch.no_grad():
        for t in emb.table_parameters():
            t[int(emb.field_offsets[first]):] = 0.0
    return model


def test_shut_fields_that_cost_nothing_are_cut_with_the_gates_the_gates_alone_gave_them():
    model, ids, y = _trained()
    _reading_nothing(model, 2)
    out = gates_alone_cut(model, ids, y, [3.0, 3.0, -7.0, -8.0])  # half of the open fields
    assert out["fields"] == [2, 3] and out["cut"] and out["cost"] == pytest.approx(0.0, abs=1e-12)
    z = model.gate_values()
    assert float(z[2]) == float(z[3]) == 0.0 and bool((z[:2] > 0).all())
    assert model.gate.log_alpha[2:].tolist() == [-7.0, -8.0] and model.gate.log_alpha[:2].tolist() == [3.0] * 2


def test_fewer_than_half_of_the_open_fields_are_left_to_the_closing_test_even_where_they_cost_nothing(monkeypatch):
    """The subset's model cannot tell a weak field from noise: a minority of the open fields is not worth the bet."""
    import lightfmp.keep_rule as kr
    model, ids, y = _trained()
    _reading_nothing(model, 3)
    measured = []
    monkeypatch.setattr(kr, "paired_difference", lambda new, old: measured.append(1) or (0.0, 0.001))
    out = gates_alone_cut(model, ids, y, [3.0, 3.0, 3.0, -8.0])
    assert out == {"fields": [3], "open": 4, "cost": None, "se": None, "cut": False} and not measured
    assert torch.equal(model.gate.log_alpha.detach(), torch.full((4,), 3.0))
    with torch.no_grad():
        model.gate.log_alpha[0] = -8.0  # shut at the best epoch already: f3 is now one of the three open fields
    out = gates_alone_cut(model, ids, y, [-8.0, 3.0, 3.0, -8.0])
    assert out["fields"] == [3] and out["open"] == 3 and not out["cut"] and not measured


def test_the_gates_alone_never_cut_every_open_field_and_ignore_fields_shut_before():
    model, ids, y = _trained()
    out = gates_alone_cut(model, ids, y, [-8.0] * 4)
    assert out == {"fields": [0, 1, 2, 3], "open": 4, "cost": None, "se": None, "cut": False}
    with torch.no_grad():
        model.gate.log_alpha[2] = -8.0  # shut at the best epoch already: not the gates alone's
    out = gates_alone_cut(model, ids, y, [3.0, 3.0, -9.0, 3.0])
    assert out["fields"] == [] and not out["cut"]


@pytest.mark.parametrize("cost, cut", [(0.0004, False), (0.0, True), (-0.0004, True)])
def test_the_cut_asks_for_no_estimated_value_at_all(cost, cut, monkeypatch):
    """A set whose closing costs anything, even well inside two standard errors, waits for the closing test."""
    import lightfmp.keep_rule as kr
    monkeypatch.setattr(kr, "paired_difference", lambda new, old: (cost, 0.001))
    model, ids, y = _trained()
    out = gates_alone_cut(model, ids, y, [3.0, 3.0, -8.0, -8.0])
    assert out["cut"] is cut and (float(model.gate_values()[3]) == 0.0) is cut


def _run(tmp_path, name, **rule):
    from helpers import write_csv
    from lightfmp import RunConfig, run
    from lightfmp.rundir import open_run
    csv = write_csv(tmp_path, n=3000, seed=2)
    # a penalty under which phase 1 stops at epoch 3 of 8 and its gates alone shut the noise field and more (4 of 5)
    cfg = RunConfig.of(data=str(csv), label="label", categorical="a,b,noise", numeric="x", multi_hot="tags:|",
                       subset=0.5, pretrain_epochs=8, gate_lr=0.5, l0_lambda=0.014, **rule)
    metrics = run(cfg, tmp_path / name, quiet=True)
    return metrics, open_run(tmp_path / name).history()["pretrain"]


def test_a_default_run_records_the_gates_alone_and_what_it_cut(tmp_path):
    metrics, pre = _run(tmp_path, "d")
    alone = pre["gates_alone"]
    assert alone["epochs"] == 8 - pre["best_epoch"] > 0 and len(alone["log_alpha"]) == len(metrics["fields"]["all"])
    assert metrics["phases"]["pretrain"]["gates_alone_epochs"] == alone["epochs"]
    record = metrics["selection"]["gates_alone"]
    measured = 2 * len(record["fields"]) >= record["open"]  # at least half of the fields open at the best epoch
    assert "noise" in record["fields"] and (record["cost"] is not None) is measured
    assert record["cut"] is (measured and record["cost"] <= 0)
    tested = {t["field"] for t in metrics["selection"]["search"]["tests"]}
    if record["cut"]:  # what was cut is dropped and never tested after the first epoch
        assert not set(record["fields"]) & (set(metrics["fields"]["kept"]) | tested)
    else:  # the closing test decided on each of them
        assert set(record["fields"]) <= tested | set(metrics["fields"]["kept"])
    from helpers import cli
    r = cli("inspect", str(tmp_path / "d"), "--plot", str(tmp_path / "g.png"))
    assert r.exit_code == 0 and "shut by phase 1's gates alone after its best epoch" in " ".join(r.output.split())


def test_a_cut_set_is_dropped_before_the_first_epoch_never_tested_and_shown(tmp_path, monkeypatch):
    import lightfmp.keep_rule as kr
    import lightfmp.pipeline as pipeline
    real = kr.gates_alone_cut

    def free(model, *args, **kwargs):  # the same step with every set's closing costing nothing
        best = model.gate.log_alpha.detach().clone()
        with monkeypatch.context() as m:
            m.setattr(kr, "paired_difference", lambda new, old: (-0.001, 0.001))
            out = real(model, *args, **kwargs)
        with torch.no_grad():  # the shut gates the cut set in the model, in the opposite order to the best epoch's
            for i, f in enumerate(sorted(out["fields"], key=lambda f: -float(best[f]))):
                model.gate.log_alpha[f] = -20.0 - len(out["fields"]) + i
        return out
    monkeypatch.setattr(pipeline, "gates_alone_cut", free)
    metrics, _ = _run(tmp_path, "d")
    record = metrics["selection"]["gates_alone"]
    assert record["cut"] and "noise" in record["fields"] and len(record["fields"]) >= 2
    tested = {t["field"] for t in metrics["selection"]["search"]["tests"]}
    assert not set(record["fields"]) & (set(metrics["fields"]["kept"]) | tested)
    # the order names the fields cut before the first epoch last, by the gates metrics.json reports (phase 1's best
    # epoch's), not by the shut gates the cut set in the model
    order, la, names = metrics["selection"]["search"]["order"], metrics["log_alpha"], metrics["fields"]["all"]
    tail = order[len(order) - len(record["fields"]):] if all(metrics["gates"][n] > 0 for n in names) else \
        [n for n in order if n in record["fields"] or metrics["gates"][n] == 0]
    assert set(record["fields"]) <= set(tail)
    assert tail == sorted(tail, key=lambda n: (-la[n], names.index(n)))
    assert set(record["fields"]) <= set(metrics["fields"]["dropped"])
    assert "gates alone shut after its best epoch were cut" in metrics["selection"]["rule"]
    from helpers import cli
    r = cli("inspect", str(tmp_path / "d"), "--plot", str(tmp_path / "g.png"))
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "cut (closing them together cost the phase-1 model -0.00100 logloss)" in text
    assert text.split("kept by:")[0].count("no (shut by") == len(record["fields"])  # the table says why they went


def test_a_default_prune_of_a_run_trained_for_keep_k_says_there_is_no_early_cut(tmp_path):
    from lightfmp.pipeline import prune
    _run(tmp_path, "k", keep=2)
    metrics = prune(tmp_path / "k", default_rule=True, quiet=True)
    assert metrics["selection"]["gates_alone"]["recorded"] is False and not metrics["selection"]["gates_alone"]["cut"]


@pytest.mark.parametrize("rule", [{"keep": 2}, {"threshold": 0.5}, {"continue_epochs": 1}])
def test_keep_k_and_threshold_runs_skip_the_gates_alone(tmp_path, rule):
    metrics, pre = _run(tmp_path, "k", **rule)
    assert "gates_alone" not in pre and "gates_alone" not in metrics["selection"]
    assert metrics["phases"]["pretrain"]["gates_alone_epochs"] == 0


@pytest.mark.parametrize("record, said", [
    (dict(fields=["a", "b", "c"], open=5, cost=-0.0001, se=0.001, cut=True),
     "3 field(s) shut by phase 1's gates alone after its best epoch: cut (closing them together cost the phase-1 "
     "model -0.00010 logloss)"),
    (dict(fields=["a", "b", "c"], open=5, cost=0.0002, se=0.001, cut=False),
     "3 field(s) shut by phase 1's gates alone after its best epoch: left to the rule (closing them together cost "
     "the phase-1 model +0.00020 logloss)"),
    (dict(fields=["a", "b"], open=5, cost=None, se=None, cut=False),
     "2 field(s) shut by phase 1's gates alone after its best epoch: left to the rule (fewer than half of the 5 "
     "fields open at phase 1's best epoch)"),
    (dict(fields=list("abcde"), open=5, cost=None, se=None, cut=False),
     "5 field(s) shut by phase 1's gates alone after its best epoch: left to the rule (every open field)"),
    (dict(fields=list("abcde"), cost=None, se=None, cut=False),  # a run of an older lightfmp: no "open"
     "5 field(s) shut by phase 1's gates alone after its best epoch: left to the rule (every open field)"),
])
def test_inspect_says_what_the_first_step_did_and_why(record, said):
    assert gates_alone_note(record) == said

"""The decisions of the keep rules and of early stopping, each pinned by exact losses a fake gives (a mutation audit
found these conditions untested: a test here fails on each mutant)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lightfmp.keep_rule as kr
from helpers import fake_passes
from lightfmp import distributed as dist
from lightfmp import training
from lightfmp.checkpoint import TrainState
from lightfmp.gates import HardConcreteGate
from lightfmp.metrics import row_log_loss


def test_a_field_whose_own_closing_costs_beyond_noise_stays_whatever_the_set_cost(monkeypatch):
    """Closing field 2 (noise) lowers the loss by 0.10; closing field 1 as well raises it by 0.05 against that: the
    set's cost against every field open is negative, but field 1's own cost is ~25 standard errors: it stays."""
    n, rng = 2000, np.random.default_rng(0)
    base, noise2, noise1 = 0.6 + 0.05 * rng.standard_normal(n), 0.01 * rng.standard_normal(n), \
        0.01 * rng.standard_normal(n)

    def loss(closed):
        out = base.copy()
        if 2 in closed:
            out = out - 0.10 + noise2
        if 1 in closed:
            out = out + 0.05 + noise1
        return out + (0.5 if 0 in closed else 0.0)
    monkeypatch.setattr(kr, "ClosedFields", fake_passes(loss))
    model = SimpleNamespace(gate_values=lambda: torch.ones(3))
    kept, tests = kr.backward_sweep(model, np.zeros((n, 3)), np.zeros(n), [0, 1, 2])
    t1 = next(t for t in tests if t["field"] == 1)
    assert t1["cost"] > 2 * t1["se"] and not t1["closed"] and 1 in kept


def test_no_best_alone_choice_is_recorded_where_every_rival_gate_was_shut(monkeypatch):
    n = 500

    def loss(closed):
        return np.full(n, 0.69) + (0.3 if 0 in closed else 0.0) + np.linspace(0, 0.01, n)
    monkeypatch.setattr(kr, "ClosedFields", fake_passes(loss))
    model = SimpleNamespace(gate_values=lambda: torch.tensor([0.9, 0.0, 0.0]))
    kept, tests = kr.backward_sweep(model, np.zeros((n, 3)), np.zeros(n), [0, 1, 2])
    assert kept == [0] and len(tests) == 2 and all("alone" not in t for t in tests)


def _forward(monkeypatch, n_fields, gain, grad=None, groupings=None, steps=1, log_alpha=None):
    """forward_order on fake passes where opening field g lowers every row's loss by gain[g]."""
    class Passes:
        def __init__(self, *a, **k):
            self.open = set()

        def losses(self, f=None):
            o = self.open ^ ({f} if f is not None else set())
            return np.full(10, 1.0 - sum(gain[g] for g in o))

        def screen(self):
            return torch.tensor(grad, dtype=torch.float64)

        def toggle(self, f):
            self.open ^= {f}
    monkeypatch.setattr(kr, "ClosedFields", Passes)
    model = SimpleNamespace(gate=SimpleNamespace(log_alpha=torch.zeros(n_fields) if log_alpha is None else log_alpha),
                            embedding=SimpleNamespace(num_fields=n_fields),
                            gate_values=lambda: torch.ones(n_fields))
    swaps, shadowed = {}, {}
    order = kr.forward_order(model, np.zeros((10, n_fields)), np.zeros(10), steps=steps, groupings=groupings,
                             swaps=swaps, shadowed_by=shadowed)
    return order, swaps, shadowed


def test_up_to_twelve_candidates_are_each_evaluated_exactly_and_ties_go_to_schema_order(monkeypatch):
    """With 12 closed candidates no screen runs: the field lowering the loss most opens even where a first-order
    screen would rank it last; equal losses open the first field in schema order."""
    order, _, _ = _forward(monkeypatch, 12, [0.01] * 11 + [0.2], grad=[-1.0] * 11 + [0.0])
    assert order[0] == 11
    order, _, _ = _forward(monkeypatch, 3, [0.1, 0.1, 0.1], grad=[0, 0, 0])
    assert order[0] == 0


def _groupings(stands, copies):
    return SimpleNamespace(copies=lambda: copies, stands_for=lambda b, a: (b, a) in stands)


def test_the_forward_search_swaps_passes_over_and_orders_as_documented(monkeypatch):
    la = torch.linspace(1, 0, 4)  # schema order is the gates' order
    # of two finer fields of the picked one, the one lowering the loss most opens
    _, swaps, _ = _forward(monkeypatch, 4, [0.5, 0.1, 0.3, 0.05], groupings=_groupings({(0, 1), (0, 2)}, {}),
                           log_alpha=la)
    assert swaps == {0: 2}
    # a field passed over on the way (0 -> 1 -> 2) leaves the candidates, where stands_for is not transitive
    order, _, shadowed = _forward(monkeypatch, 4, [0.5, 0.1, 0.2, 0.05], groupings=_groupings({(0, 1), (1, 2)}, {}),
                                  steps=2, log_alpha=la)
    assert shadowed.get(0) == (2, "function") and order[1] == 3
    # after the K steps: the fields still candidates by gate, then the copies and functions, last
    order, _, _ = _forward(monkeypatch, 4, [0.5, 0.5, 0.1, 0.05], groupings=_groupings(set(), {0: [1], 1: [0]}),
                           log_alpha=la)
    assert order == [0, 2, 3, 1]


def test_a_chosen_second_answer_leads_the_order_and_the_forward_order_follows(monkeypatch):
    class Field:
        def __init__(self, n):
            self.name, self.vocab_size = n, 5
    schema = SimpleNamespace(fields=[Field(n) for n in "abcdef"], names=list("abcdef"))
    model = SimpleNamespace(embedding=SimpleNamespace(num_fields=6, slot_field=torch.arange(6)))
    rng = np.random.default_rng(0)
    monkeypatch.setattr(kr, "Groupings", lambda *a, **k: SimpleNamespace(copies=lambda: {}))
    monkeypatch.setattr(kr, "forward_order", lambda *a, **k: [0, 1, 2, 3, 4, 5])
    monkeypatch.setattr(kr, "costliest_set", lambda *a, **k: [4, 5])
    monkeypatch.setattr(kr, "compare_sets", lambda *a, **k: (np.full(3000, 0.7) + 0.01 * rng.standard_normal(3000),
                                                             np.full(3000, 0.5)))
    labels = (np.arange(10000) % 3 == 0).astype(np.float32)
    out = kr.keep_order(model, schema, np.zeros((10000, 6), np.int64), labels, 2)
    assert out["alternative"]["chosen"] and out["order"] == list("efabcd")


def test_threshold_keeps_a_gate_equal_to_it_and_keep_k_cuts_at_the_lowest_kept_gate():
    g = HardConcreteGate(3, init_log_alpha=0.0)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([8.0, 0.0, -8.0]))
    z = g.deterministic().detach()
    assert float(z[0]) == 1.0  # a fully open hard-concrete gate is exactly 1
    assert kr.select_fields(["a", "b", "c"], g.log_alpha.detach(), z, threshold=1.0) == ["a"]
    assert kr.selection_rule(["a", "b"], {"a": 0.9, "b": 0.5, "c": 0.1}, keep=2, threshold=None)["cut"] == 0.5


def test_the_gates_alone_cut_takes_only_gates_shut_exactly(monkeypatch):
    gate = HardConcreteGate(3)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([3.0, 3.0, 3.0]))
    model = SimpleNamespace(gate=gate, gate_values=lambda: gate.deterministic().detach())
    monkeypatch.setattr(kr, "ClosedFields", fake_passes(lambda closed: np.linspace(0.5, 0.6, 100)))
    monkeypatch.setattr(kr, "closing_rows", lambda m: 100)
    out = kr.gates_alone_cut(model, np.zeros((100, 3)), np.zeros(100), [-2.1, -8.0, 3.0])  # gates 0.03, 0, open
    assert out["fields"] == [1]


def test_early_stopping_edges():
    plan = training.Plan(epochs=5, select_best=False)
    rng = np.random.default_rng(0)
    # a one-class validation split (AUC undefined) ranks epochs by their logloss: the lower wins
    a = 0.5 + 0.3 * rng.standard_normal(200)
    b = a - 0.01 + 0.3 * rng.standard_normal(200)
    s = TrainState(epoch=0, history=[])
    for e, losses in enumerate([a, b]):
        training.track_best(s, {"valid": {"auc": float("nan"), "logloss": float(losses.mean())}}, losses, e, None,
                            plan)
    assert s.best_epoch == 1
    # an exact tie in mean logloss keeps the earlier epoch as the lowest: a later epoch measurably worse than the
    # tied second but not than the first may still be the best by AUC
    n = 1000
    A, B = np.tile([0.5, 1.0], n // 2), np.tile([1.0, 0.5], n // 2)
    C = B + 0.01
    s = TrainState(epoch=0, history=[])
    for e, (auc, losses) in enumerate([(0.7, A), (0.6, B), (0.8, C)]):
        training.track_best(s, {"valid": {"auc": auc, "logloss": float(losses.mean())}}, losses, e, None, plan)
    assert s.best_epoch == 2
    # one validation row cannot show 'worse beyond noise': patience alone stops the fit
    s = TrainState(epoch=0, history=[], best_epoch=0, best_score=0.7, best_losses=np.array([0.3]),
                   least_losses=np.array([0.3]))
    assert training.stop_early(s, {"valid": {}}, np.array([0.9]), 2, SimpleNamespace(patience=1),
                               training.Plan(epochs=5)) is True


def test_a_ranks_loss_weight_makes_the_ranks_mean_the_global_batch_mean(monkeypatch):
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "world", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 0)
    _, _, weight, _ = training._my_slice(np.zeros((8, 3), np.int64), np.ones(8, np.float32), "cpu")
    assert weight == pytest.approx(2 / 8)


def test_the_per_row_logloss_clips_at_1e_7():
    assert float(row_log_loss([1.0], [0.0])[0]) == pytest.approx(-np.log(1e-7), abs=1e-9)

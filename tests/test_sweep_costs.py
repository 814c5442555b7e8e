"""The closing test's evidence from the rows phase 3's first epoch reads (lightfmp.progressive): the sweep's step
costs on each batch before its step, their pooling with the validation rows' estimates, and their path through
fit, checkpoints and the default run."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lightfmp
import lightfmp.keep_rule as kr
from helpers import fake_passes, fitted_frame, write_csv
from lightfmp import training
from lightfmp.checkpoint import Checkpoint
from lightfmp.closed_fields import by_label, donor_rows, measured_rows, measured_sample, other_rows, rarest_label
from lightfmp.config import TrainConfig
from lightfmp.errors import LightFMPError
from lightfmp.metrics import SIGNIFICANT_SE
from lightfmp.models import ModelConfig, build_model
from lightfmp.progressive import SweepCosts, epoch_share, pooled
from lightfmp.rows import ArrayRows

ORDER = [3, 0, 4, 2, 1]  # most open first: the sweep tests b, noise, tags, a, x


@pytest.fixture
def setting():
    schema, ids = fitted_frame(300)
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        model.gate.log_alpha.copy_(torch.tensor([2.0, -6.0, 0.5, 3.0, 1.0]))  # b's gate is shut (exactly 0)
    y = (ids[:, 0] % 2 == 0).float()
    return schema, ids, y, model


def _steps(model, schema, ids, y, donors=None):
    """The definition on one batch: per row, the logloss with the first i fields of the sweep closed (reading row
    perm[r]'s values, `other_rows`, or the ids `donors` give) minus that with the first i - 1 closed; columns in the
    sweep's order."""
    read = ids[torch.from_numpy(other_rows(len(y)))] if donors is None else donors
    x, out = ids.clone(), []
    with torch.no_grad():
        before = F.binary_cross_entropy_with_logits(model(x, model.gate.deterministic()), y, reduction="none")
        for f in reversed(ORDER):
            a, b = schema.field_slot_ranges()[schema.names[f]]
            x[:, a:b] = read[:, a:b]
            after = F.binary_cross_entropy_with_logits(model(x, model.gate.deterministic()), y, reduction="none")
            out.append((after - before).double().numpy())
            before = after
    return np.stack(out, 1)


def _balanced(y):
    """Each label's rows weighing the same in total within a batch, mean 1, by hand: n / (2 x that label's rows)."""
    return np.where(y == 1, len(y) / (2 * np.sum(y == 1)), len(y) / (2 * np.sum(y == 0)))


def test_the_epochs_evidence_is_the_mean_and_standard_error_of_the_sweeps_steps_over_the_batches(setting):
    """Each row's steps weighted as the closing test weighs its rows (each label the same in total, per batch).
    Mutants: the steps measured against every field open instead of the last state; the products' cross terms
    dropped (a set's error as if its steps were independent); a batch counted twice by combine; the rows' plain
    mean (every row weighing 1)."""
    schema, ids, y, model = setting
    costs = SweepCosts(ORDER)
    model.train()
    batches = [slice(0, 120), slice(120, 300)]
    for s in batches:
        costs.measure(model, ids[s].numpy(), y[s].numpy())
    assert model.training  # back in training mode for the step
    assert costs.evidence([0]) is None  # nothing combined yet
    costs.combine()
    costs.combine()  # nothing new measured: the totals stay
    steps = np.concatenate([_steps(model, schema, ids[s], y[s]) * _balanced(y[s].numpy())[:, None] for s in batches])
    assert costs.rows == 300 and np.all(steps[:, 0] == 0) and costs.evidence([0]) == (0.0, 0.0)  # b: shut
    for positions in ([1], [3], [1, 2], [1, 2, 3, 4]):
        d = steps[:, positions].sum(1)
        mean, se = costs.evidence(positions)
        assert mean == pytest.approx(d.mean(), rel=1e-5, abs=1e-9)
        assert se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-5), positions


def test_a_batch_is_measured_on_every_row_of_the_rarer_label_and_as_many_of_the_others():
    y = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=np.float32)
    rows = measured_rows(y, 1.0, np.random.default_rng(0))
    assert list(rows) == sorted(rows) and len(set(rows)) == 6
    assert set(np.flatnonzero(y == 1)) <= set(rows) and np.sum(y[rows] == 0) == 3
    assert np.array_equal(rows, measured_rows(y, 1.0, np.random.default_rng(0)))  # seeded
    draws = {tuple(measured_rows(y, 1.0, np.random.default_rng(seed))) for seed in range(20)}
    assert len(draws) > 1  # the other label's rows drawn at random, not the first ones
    # the rarer label of the epoch may be the commoner one in a batch: each other label gives all it has
    assert list(measured_rows(np.array([0, 1, 0, 0, 0]), 0.0, np.random.default_rng(0))) == [0, 1, 2, 3, 4]
    rows = measured_rows(np.array([1, 0, 1, 1, 0, 1]), 0.0, np.random.default_rng(0))
    assert len(rows) == 4 and {1, 4} <= set(rows)
    assert len(measured_rows(np.zeros(8), 1.0, np.random.default_rng(0))) == 0  # none of the rarer label: none
    assert rarest_label(np.array([0] * 97 + [1] * 3)) == (1.0, pytest.approx(0.06))
    assert rarest_label(np.array([1, 1, 0, 0, 0])) == (1.0, pytest.approx(0.8))
    assert rarest_label(np.array([1, 0])) == (0.0, 1.0)  # a tie: the smaller label
    assert rarest_label(np.ones(4)) == (1.0, 1.0)


def test_the_epochs_evidence_on_the_rows_measured_weighs_each_label_alike_and_reads_the_whole_batch(setting):
    """With the rarer label given, each batch's steps are those of its rows `measured_rows` takes (drawn by the
    batch's position in the epoch), each label's rows weighing the same in total, a closed field reading a row of
    the whole batch (`donor_rows`: a different one for each, so the rows' own standard error holds). Mutants: the
    measured rows' losses weighed by the whole batch's labels; closed fields reading the measured rows (the
    sample's label mix); the draw not seeded by the batch; the standard error as if donors repeated."""
    schema, ids, _, model = setting
    y = torch.from_numpy((np.arange(300) % 7 == 0).astype(np.float32))  # 43 of 300
    costs = SweepCosts(ORDER, rare=1.0)
    batches = [slice(0, 150), slice(150, 300)]
    for s in batches:
        costs.measure(model, ids[s].numpy(), y[s].numpy())
    costs.combine()
    parts = []
    for b, s in enumerate(batches):
        yb = y[s].numpy()
        rows, donors = measured_sample(yb, 1.0, seed=b)
        assert np.array_equal(rows, measured_rows(yb, 1.0, np.random.default_rng(b)))
        steps = _steps(model, schema, ids[s][rows], y[s][rows], ids[s][donors])
        parts.append(steps * by_label(yb[rows])[:, None])
    steps = np.concatenate(parts)
    assert costs.rows == len(steps) == 2 * 43
    for positions in ([1], [3], [1, 2, 3, 4]):
        d = steps[:, positions].sum(1)
        mean, se = costs.evidence(positions)
        assert mean == pytest.approx(d.mean(), rel=1e-5, abs=1e-9)
        assert se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-5), positions


def test_donors_are_distinct_other_rows_of_the_whole_set_drawn_alike():
    """`donor_rows`: each measured row reads a row of all n, never its own, no two the same (so the rows'
    differences stay independent, as under a permutation); seeded; every row of the n equally likely, so the donors'
    label mix is the whole set's, not the sample's. `measured_sample` measures every row (donors None, a permutation
    of them) where the labels are balanced. Mutants: donors drawn from the sample; with replacement; a row reading
    itself."""
    rng = np.random.default_rng(0)
    for n, k in ((10, 9), (100, 6), (2, 1), (500, 200)):
        rows = np.sort(rng.choice(n, size=k, replace=False))
        for seed in range(20):
            donors = donor_rows(n, rows, np.random.default_rng(seed))
            assert len(donors) == k and len(set(donors)) == k and np.all(donors != rows)
            assert donors.min() >= 0 and donors.max() < n
    assert np.array_equal(donor_rows(50, np.arange(5), np.random.default_rng(3)),
                          donor_rows(50, np.arange(5), np.random.default_rng(3)))
    counts = np.zeros(20)
    for seed in range(4000):
        np.add.at(counts, donor_rows(20, np.array([0, 1]), np.random.default_rng(seed)), 1)
    assert counts[:2].sum() == pytest.approx(8000 * 1 / 19, rel=0.15)  # each other row ~1/19 of a row's draws
    assert counts[2:].min() > 0.8 * counts[2:].mean()
    y = (np.arange(1000) % 50 == 0).astype(np.float32)  # 20 positives
    rows, donors = measured_sample(y)
    assert len(rows) == 40 and np.mean(y[donors]) < 0.2  # the set's 2%, not the sample's 50%
    assert measured_sample(np.array([0, 1, 1, 0]))[1] is None and measured_sample(np.zeros(5))[1] is None
    with pytest.raises(ValueError, match="fewer rows than it is drawn from"):
        donor_rows(3, np.arange(3), np.random.default_rng(0))


def test_pooled_weighs_each_estimate_by_its_inverse_variance():
    mean, se = pooled((1.0, 1.0), (4.0, 2.0))  # weights 1 and 1/4
    assert (mean, se) == pytest.approx(((1.0 + 4.0 / 4) / 1.25, 1 / np.sqrt(1.25)))
    # no spread (a field constant on those rows): that estimate says nothing of the error and the other stands
    assert pooled((0.0, 0.0), (0.01, 0.001)) == (0.01, 0.001)
    assert pooled((0.01, 0.001), (0.0, 0.0)) == (0.01, 0.001)
    assert pooled((0.0, 0.0), (0.5, 0.0)) == (0.0, 0.0)
    assert pooled((0.5, 0.1), None) == (0.5, 0.1)


def test_the_epochs_share_fills_the_tests_bound_on_its_rows_beside_the_validation_rows(setting):
    assert epoch_share(100_000, 14_000, 86_000) == 1.0
    assert epoch_share(100_000, 20_000, 160_000) == 0.5
    assert epoch_share(100_000, 100_000, 900_000) == 0.0
    schema, ids, y, model = setting
    batches = [slice(i, i + 30) for i in range(0, 300, 30)]
    costs = SweepCosts(ORDER, share=0.3)
    for s in batches:
        costs.measure(model, ids[s].numpy(), y[s].numpy())
    costs.combine()
    taken = SweepCosts(ORDER)  # whole batches, spread: b = 3, 6, 9 (floor((b + 1) x 0.3) > floor(b x 0.3))
    for b in (3, 6, 9):
        taken.measure(model, ids[batches[b]].numpy(), y[batches[b]].numpy())
    taken.combine()
    assert costs.rows == taken.rows == 90
    assert np.allclose(costs.sums, taken.sums) and np.allclose(costs.products, taken.products)
    costs.measure(model, ids[batches[0]].numpy(), y[batches[0]].numpy())  # the count restarts with the epoch
    costs.combine()
    assert costs.rows == 90


def test_each_rank_weighs_its_slice_of_a_batch_by_the_whole_batchs_labels(setting, monkeypatch):
    """Under torchrun each rank measures rows r::w of every batch; their weights by label are the whole batch's
    (as one process weighs them), so the number of processes does not change how much each label counts. Mutant:
    each slice weighed by its own labels (a slice without a positive would weigh its rows 1)."""
    import lightfmp.progressive as progressive
    from lightfmp.closed_fields import by_label
    schema, ids, _, model = setting
    y = np.zeros(30, dtype=np.float32)
    y[[0, 2, 4]] = 1.0  # every positive on rank 0's rows
    seen, real = [], progressive.ClosedFields

    def spy(model, ids, labels, order, device="cpu", weights=None, balanced=False, donors=None):
        passes = real(model, ids, labels, order, device, weights, balanced, donors)
        seen.append((ids, passes.weights.double().numpy(), donors))
        return passes
    monkeypatch.setattr(progressive, "ClosedFields", spy)
    monkeypatch.setattr(progressive.dist, "active", lambda: True)
    monkeypatch.setattr(progressive.dist, "world", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(progressive.dist, "rank", lambda rank=rank: rank)
        SweepCosts(ORDER).measure(model, ids[:30].numpy(), y)
    whole = by_label(y)
    assert np.allclose(seen[0][1], whole[0::2], rtol=1e-6) and np.allclose(seen[1][1], whole[1::2], rtol=1e-6)
    assert np.allclose(seen[1][1], 30 / (2 * 27), rtol=1e-6)
    # the rows measured (the rarer label's and as many others) are few: one rank measures them all, the ranks
    # taking turns by batch (batch b on rank b mod 2), weighed by label, closed fields reading rows of the whole
    # batch. Mutant: each rank a slice of them
    y[[10, 11]] = 1.0  # 5 positives, 25 negatives
    for rank in (0, 1):
        seen.clear()
        monkeypatch.setattr(progressive.dist, "rank", lambda rank=rank: rank)
        costs = SweepCosts(ORDER, rare=1.0)
        for b in (0, 1):
            costs.measure(model, ids[30 * b:30 * b + 30].numpy(), y)
        assert len(seen) == 1  # its batch only
        rows, donors = measured_sample(y, 1.0, seed=rank)
        got_ids, got_weights, got_donors = seen[0]
        batch = ids[30 * rank:30 * rank + 30].numpy()
        assert np.array_equal(got_ids, batch[rows]) and np.array_equal(got_donors, batch[donors])
        assert np.allclose(got_weights, by_label(y[rows]), rtol=1e-6)


def test_combine_adds_every_ranks_sums_into_the_evidence_of_all_their_rows(setting, monkeypatch):
    """Under torchrun each rank measures its own batches and `combine` sums the ranks' numbers: the evidence is that
    of one process measuring all of them (the ranks' values differ here). Mutants: a rank's products or row count
    left out of the reduction; the local numbers kept after `combine` (counted again at the next)."""
    import lightfmp.progressive as progressive
    schema, ids, y, model = setting
    one = SweepCosts(ORDER)  # one process, both batches
    ranks = [SweepCosts(ORDER), SweepCosts(ORDER)]  # rank 0 the first batch, rank 1 the second
    for b, s in enumerate([slice(0, 140), slice(140, 300)]):
        one.measure(model, ids[s].numpy(), y[s].numpy())
        ranks[b].measure(model, ids[s].numpy(), y[s].numpy())
    one.combine()
    flats = [torch.from_numpy(np.concatenate([c.local[0], c.local[1].ravel(), [float(c.local[2])]])) for c in ranks]
    assert not torch.equal(flats[0], flats[1])
    monkeypatch.setattr(progressive.dist, "all_reduce_sum", lambda t: t.copy_(flats[0] + flats[1]))
    for c in ranks:
        c.combine()
        assert c.rows == one.rows == 300
        for positions in ([1], [2, 3], [1, 2, 3, 4]):
            assert c.evidence(positions) == pytest.approx(one.evidence(positions), rel=1e-9, abs=1e-12)
        assert c.local[2] == 0 and not c.local[0].any()


def _evidence(order, means, sds, rows=10_000):
    """A SweepCosts whose steps at each position have these means and standard deviations, independent."""
    costs = SweepCosts(order)
    m = np.asarray(means, dtype=float)
    costs.sums, costs.rows = m * rows, rows
    costs.products = rows * (np.outer(m, m) + np.diag(np.asarray(sds, dtype=float) ** 2))
    return costs


def _validation(n=2000, own=0.0):
    """Validation losses where closing field 2 (tested second, after field 3) costs `own` (per-row noise 0.05)."""
    rng = np.random.default_rng(0)
    base, noise = 0.6 + 0.05 * rng.standard_normal(n), 0.05 * rng.standard_normal(n)

    def loss(closed):
        return base + (own + noise if 2 in closed else 0.0) + (0.5 if 0 in closed else 0.0)
    return loss


def test_a_field_the_validation_rows_cannot_show_stays_where_the_epochs_rows_show_it(monkeypatch):
    """Field 2 costs 0.001 a row on 2,000 validation rows (~0.9 standard errors: closed on them alone); the epoch's
    100,000 rows show the same cost at ~6 standard errors: the pooled test keeps it. Mutant: the epoch's estimate
    read and not pooled."""
    monkeypatch.setattr(kr, "ClosedFields", fake_passes(_validation(own=0.001)))
    model = SimpleNamespace(gate_values=lambda: torch.ones(4))
    order = [0, 1, 2, 3]
    alone = kr.backward_sweep(model, np.zeros((2000, 4)), np.zeros(2000), order)
    assert 2 not in alone[0]
    kept, tests = kr.backward_sweep(model, np.zeros((2000, 4)), np.zeros(2000), order,
                                    epoch=_evidence(order, [0.0, 0.001, 0.0, 0.0], [0.05] * 4, rows=100_000))
    t2 = next(t for t in tests if t["field"] == 2)
    assert 2 in kept and not t2["closed"]
    assert (t2["pooled"]["cost"], t2["pooled"]["se"]) == pytest.approx(
        pooled((t2["cost"], t2["se"]), (t2["epoch"]["cost"], t2["epoch"]["se"])))
    assert t2["pooled"]["cost"] > SIGNIFICANT_SE * t2["pooled"]["se"]
    assert kr.closing_scores({"tests": tests})[2] == pytest.approx(t2["pooled"]["cost"] / t2["pooled"]["se"])


def test_the_set_question_pools_the_steps_of_the_fields_the_sweep_closed(monkeypatch):
    """Fields 1-8 cost nothing on the validation rows (each closing adds its own zero-mean noise); on the epoch's
    rows each step but the first (field 8's) costs 0.00025, ~1.1 standard errors. Each field's own question stays
    under the cut, but the closed set crosses it pooled once six are closed: the sixth tested (field 3) stays by
    the set question, and the next field's set is the five closed and it, not field 3's step with them. Mutants:
    the set's positions taken as the order's prefix whatever the sweep kept; the set question not pooled (field 3
    closes)."""
    n, rng = 2000, np.random.default_rng(1)
    base = 0.6 + 0.05 * rng.standard_normal(n)
    noise = 0.05 * rng.standard_normal((9, n))
    noise -= noise.mean(1, keepdims=True)
    monkeypatch.setattr(kr, "ClosedFields", fake_passes(
        lambda closed: base + sum((noise[f] for f in closed), np.zeros(n)) + (0.5 if 0 in closed else 0.0)))
    model = SimpleNamespace(gate_values=lambda: torch.ones(9))
    order = list(range(9))
    evidence = _evidence(order, [0.0] + [0.00025] * 8, [0.05] * 9, rows=50_000)  # by position
    kept, tests = kr.backward_sweep(model, np.zeros((n, 9)), np.zeros(n), order, epoch=evidence)
    assert kept == [0, 1, 2, 3] and [t["closed"] for t in tests] == [True] * 5 + [False] * 4
    for t in tests[:8]:  # field 0 (tested last) costs 0.5 a row
        p = t["pooled"]
        assert p["cost"] <= SIGNIFICANT_SE * p["se"] and t["set_cost"] <= SIGNIFICANT_SE * t["set_se"], t
    three = tests[5]
    assert three["field"] == 3 and three["pooled"]["set_cost"] > SIGNIFICANT_SE * three["pooled"]["set_se"]
    two = tests[6]  # positions 0-4 (fields 8-4) closed, 5 (field 3) kept, 6 (field 2) tested
    assert two["epoch"]["set_cost"] == pytest.approx(evidence.evidence([0, 1, 2, 3, 4, 6])[0])
    assert two["epoch"]["set_cost"] == pytest.approx(5 * 0.00025)


def test_the_sweep_refuses_evidence_measured_in_another_order(monkeypatch):
    monkeypatch.setattr(kr, "ClosedFields", fake_passes(_validation()))
    model = SimpleNamespace(gate_values=lambda: torch.ones(4))
    with pytest.raises(ValueError, match="order"):
        kr.backward_sweep(model, np.zeros((10, 4)), np.zeros(10), [0, 1, 2, 3], epoch=SweepCosts([1, 0, 2, 3]))


def test_fit_measures_each_batch_on_the_model_before_its_step(setting, monkeypatch):
    """Mutant: the batch measured after its step (on a model that has read it)."""
    schema, ids, y, _ = setting
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]))
    rows = ArrayRows(ids.numpy(), y.numpy(), slots=schema.field_slot_ranges())
    seen, real = [], training.Trainer.train_step

    def step(self, batch, labels, *a, **kw):
        seen.append((copy.deepcopy(self.model.state_dict()), np.array(batch), np.array(labels)))
        return real(self, batch, labels, *a, **kw)
    monkeypatch.setattr(training.Trainer, "train_step", step)
    order = [0, 1, 2, 3, 4]
    costs = SweepCosts(order)
    training.fit(model, rows, None, TrainConfig(batch_size=64, lr=0.05), epochs=1, evidence=costs)
    reference, clone = SweepCosts(order), copy.deepcopy(model)
    for state, batch, labels in seen:
        clone.load_state_dict(state)
        reference.measure(clone, batch, labels)
    reference.combine()
    assert len(seen) == 5 and costs.rows == reference.rows == 300
    assert np.allclose(costs.sums, reference.sums, rtol=1e-6, atol=1e-12)
    assert np.allclose(costs.products, reference.products, rtol=1e-6, atol=1e-12)


def test_a_resumed_epoch_brings_back_what_it_measured(setting, tmp_path):
    """The first epoch restored from its checkpoint (the run was stopped after it) gives the rule the same
    evidence; a checkpoint without it is refused with a line naming the file. Mutant: the evidence not saved."""
    schema, ids, y, _ = setting
    rows = ArrayRows(ids.numpy(), y.numpy(), slots=schema.field_slot_ranges())
    cfg, order = TrainConfig(batch_size=64), [4, 3, 2, 1, 0]

    def fit(costs, phase):
        torch.manual_seed(0)
        model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]))
        return training.fit(model, rows, None, cfg, epochs=1, evidence=costs,
                            checkpoint=Checkpoint(tmp_path / "ckpt", phase, {"k": 1}))
    first = SweepCosts(order)
    fit(first, "first")
    again = SweepCosts(order)
    out = fit(again, "first")
    assert out.get("resumed_from_epoch") == 1 and again.rows == first.rows == 300
    assert again.seconds == first.seconds > 0
    assert np.array_equal(again.sums, first.sums) and np.array_equal(again.products, first.products)
    first = SweepCosts(order, rare=1.0)  # on the rarer label's rows and as many of the other's
    fit(first, "sampled")
    again = SweepCosts(order, rare=1.0)
    fit(again, "sampled")
    assert 0 < again.rows == first.rows < 300
    for positions in ([0], [1, 2], [0, 1, 2, 3, 4]):
        assert again.evidence(positions) == first.evidence(positions) is not None
    fit(None, "plain")
    with pytest.raises(LightFMPError, match=r"plain\.json.*measured for the keep rule"):
        fit(SweepCosts(order), "plain")
    with pytest.raises(ValueError, match="another field order"):
        SweepCosts([0, 1, 2, 3, 4]).load(first.arrays())


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    data = write_csv(tmp_path_factory.mktemp("pooled"), n=800)
    out = tmp_path_factory.mktemp("runs") / "default"
    metrics = lightfmp.run(lightfmp.RunConfig.of(data=str(data), label="label", epochs=3, pretrain_epochs=3,
                                                 batch_size=128, hidden=[16], embed_dim=4, subset=0.5,
                                                 multi_hot=["tags:|"]), out, quiet=True)
    return metrics


def test_the_first_epoch_measures_the_share_the_tests_bound_on_its_rows_leaves(tmp_path, monkeypatch):
    """Each batch measured gives its rows of the epoch's rarer label and as many of the other's (`measured_rows`);
    with the bound 100 rows above the validation rows the test reads, whole batches, spread, so that the rows
    measured fill what the bound leaves beside the validation rows the test measures. Mutants: every row of a batch
    measured; the share sized by the rows the epoch reads, not those it measures; the validation rows counted as
    read, not measured; every batch measured whatever the bound."""
    import lightfmp.pipeline as pipeline
    import lightfmp.progressive as progressive
    data = write_csv(tmp_path, n=800)
    cfg = lightfmp.RunConfig.of(data=str(data), label="label", epochs=3, pretrain_epochs=3, batch_size=128,
                                hidden=[16], embed_dim=4, subset=0.5, multi_hot=["tags:|"])
    seen, real = [], progressive.measured

    def spy(ids, labels, rare=None, seed=0):
        out = real(ids, labels, rare, seed)
        seen.append((np.asarray(labels).copy(), rare, len(out[1])))
        return out
    monkeypatch.setattr(progressive, "measured", spy)
    monkeypatch.setattr(pipeline, "TEST_ROWS", 10**6)
    m = lightfmp.run(cfg, tmp_path / "all", quiet=True)
    n_valid, rest = m["selection"]["search"]["rows"], m["phases"]["continue"]["rows"] - m["phases"]["pretrain"]["rows"]
    labels = np.concatenate([y for y, _, _ in seen])
    counts = np.unique(labels, return_counts=True)[1]
    assert len(labels) == rest and len(counts) == 2  # every batch of the epoch, at share 1
    assert {rare for _, rare, _ in seen} == {float(np.argmin(counts))}
    measured = [k for _, _, k in seen]
    assert m["selection"]["search"]["epoch_rows"] == sum(measured) < rest
    seen.clear()  # the bound 100 rows above the validation rows read: those beside the validation rows measured
    monkeypatch.setattr(pipeline, "TEST_ROWS", n_valid + 100)
    m = lightfmp.run(cfg, tmp_path / "some", quiet=True)
    assert m["selection"]["search"]["measured"] < n_valid
    share = (n_valid + 100 - m["selection"]["search"]["measured"]) / (rest * np.minimum(counts, counts.min()).sum()
                                                                      / rest)
    taken = [k for b, k in enumerate(measured) if np.floor((b + 1) * share) > np.floor(b * share)]
    assert m["selection"]["search"]["epoch_rows"] == sum(taken) == sum(k for _, _, k in seen)
    assert 0 < len(taken) < len(measured)


def test_the_default_run_decides_on_the_pooled_estimates_of_its_first_epochs_rows(default_run):
    m = default_run
    search = m["selection"]["search"]
    assert 0 < search["epoch_rows"] <= m["phases"]["continue"]["rows"] - m["phases"]["pretrain"]["rows"]
    assert "pooled" in m["selection"]["rule"] and search["epoch_seconds"] > 0
    tested = [t for t in search["tests"] if t["se"] > 0 and "alone" not in t]
    assert tested
    for t in tested:
        own = pooled((t["cost"], t["se"]), (t["epoch"]["cost"], t["epoch"]["se"]))
        joint = pooled((t["set_cost"], t["set_se"]), (t["epoch"]["set_cost"], t["epoch"]["set_se"]))
        assert (t["pooled"]["cost"], t["pooled"]["se"]) == pytest.approx(own)
        assert (t["pooled"]["set_cost"], t["pooled"]["set_se"]) == pytest.approx(joint)
        assert t["closed"] == (own[0] <= SIGNIFICANT_SE * own[1] and joint[0] <= SIGNIFICANT_SE * joint[1])
        assert m["selection"]["scores"][t["field"]] == pytest.approx(max(own[0] / own[1], joint[0] / joint[1]))

"""lightfmp/closed_fields.py: decisions a mutation audit found no other test pinned."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import fitted_frame
from lightfmp.closed_fields import ClosedFields, by_label, other_rows
from lightfmp.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def schema_and_ids():
    return fitted_frame(120)


def _randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def _reference_losses(model, schema, ids, y, open_fields):
    """By hand: an eval-mode forward pass of the whole model on ids whose closed fields' columns are row perm[i]'s."""
    perm = torch.from_numpy(other_rows(len(y)))
    x = ids.clone()
    for f, name in enumerate(schema.names):
        if f not in open_fields:
            a, b = schema.field_slot_ranges()[name]
            x[:, a:b] = ids[perm][:, a:b]
    was = model.training
    model.eval()
    with torch.no_grad():
        out = F.binary_cross_entropy_with_logits(model(x, model.gate.deterministic()), y, reduction="none").double()
    model.train(was)
    return out.numpy()


def test_passes_read_the_model_in_eval_mode_whatever_mode_it_is_handed_in(schema_and_ids):
    """A model with dropout handed over in training mode (as phase 3's first epoch leaves it before the deferred
    keep rule reads it): the passes' losses are the eval-mode model's, deterministic, for the state and a trial."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[16, 8], dropout=0.5), gated=True)
    _randomize(model)
    model.train()
    y = (torch.arange(len(ids)) % 3 == 0).float()
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [0, 2, 4])
    passes_losses = passes.losses()
    assert np.allclose(passes_losses, _reference_losses(model, schema, ids, y, {0, 2, 4}), rtol=1e-5, atol=1e-6)
    assert np.allclose(passes.losses(1), _reference_losses(model, schema, ids, y, {0, 1, 2, 4}), rtol=1e-5,
                       atol=1e-6)


@pytest.mark.parametrize("backbone,stacks", [("deepfm", True), ("widedeep", True), ("mlp", True),
                                             ("dcnv2", False)])
def test_a_sweep_gives_every_state_of_the_walk_as_the_whole_models_passes_do(schema_and_ids, monkeypatch, backbone,
                                                                             stacks):
    """`sweep` against the definition (a whole forward pass per state, the fields toggled one by one staying so):
    stacked where the model reads the embeddings only through its first layer, FM sums and first-order terms,
    column by column for DCNv2's cross layers; rows split over several stacked calls; a field closed at the start
    toggled open; the state as it was afterwards. Mutants: the running sum restarted per field (each column one
    field's change alone), the first-order terms left at the state's, the state left toggled, DCNv2 stacked."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model(backbone, schema, ModelConfig(embed_dim=4, hidden=[16, 8]), gated=True)
    _randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float()
    monkeypatch.setattr("lightfmp.closed_fields.STACK_FLOATS", 2000)  # several calls of ~20 rows
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [0, 1, 2, 3])  # tags (4) closed
    assert passes.stacks() == stacks
    walk = [3, 4, 0, 2]
    got = passes.sweep(walk)
    open_fields, expected = {0, 1, 2, 3}, [_reference_losses(model, schema, ids, y, {0, 1, 2, 3})]
    for f in walk:
        open_fields ^= {f}
        expected.append(_reference_losses(model, schema, ids, y, open_fields))
    assert got.shape == (len(ids), 5)
    assert np.allclose(got, np.stack(expected, 1), rtol=1e-5, atol=1e-6)
    assert np.array_equal(passes.losses(), got[:, 0]) and np.array_equal(passes.losses(3), got[:, 1])
    with pytest.raises(ValueError, match="toggled twice"):
        passes.sweep([3, 0, 3])


def test_a_stacked_sweep_weighs_rows_as_the_passes_do(schema_and_ids):
    """Weighted rows (a stratified sample): each column is the weighted per-row loss `losses` gives for that
    state. Mutant: the weights of the first column's rows only."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[16, 8]), gated=True)
    _randomize(model)
    y = (torch.arange(len(ids)) % 4 == 0).float()
    weights = np.where(y.numpy() > 0, 0.4, 1.2).astype(np.float64)
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [0, 1, 2, 3, 4], weights=weights)
    assert passes.stacks()
    got = passes.sweep([1, 3])
    expected = [passes.losses(), passes.losses(1)]
    passes.toggle(1)
    expected.append(passes.losses(3))
    assert np.allclose(got, np.stack(expected, 1), rtol=1e-5, atol=1e-7)


def test_by_label_weighs_each_label_the_same_in_total_and_keeps_the_mean():
    """Closed forms: 2 positives and 6 negatives weigh 8 / (2 x 2) and 8 / (2 x 6); a sample's weights times one
    factor per label, so that each label's weighted total is the same and the sum is the sample's; one label alone
    is left as it is. Mutants: counts instead of weighted totals; the mean not kept."""
    y = np.array([1, 0, 0, 0, 0, 1, 0, 0])
    w = by_label(y)
    assert np.allclose(w[y == 1], 2.0) and np.allclose(w[y == 0], 8 / 12) and w.mean() == pytest.approx(1.0)
    sample = np.array([0.5, 2.0, 1.0, 1.0, 0.5, 1.5, 0.75, 0.75])
    b = by_label(y, sample)
    assert b[y == 1].sum() == pytest.approx(b[y == 0].sum()) and b.sum() == pytest.approx(sample.sum())
    assert np.allclose(b[y == 1] / sample[y == 1], 8.0 / (2 * 2.0))  # the total 8, 2 labels, the label's 2.0
    assert np.allclose(b[y == 0] / sample[y == 0], 8.0 / (2 * 6.0))
    assert np.array_equal(by_label(np.zeros(4)), np.ones(4)) and np.array_equal(by_label(np.ones(3), sample[:3]),
                                                                                 sample[:3])


def test_balanced_passes_weigh_each_rows_loss_by_label_and_close_fields_as_before(schema_and_ids):
    """`balanced`: every state's per-row loss is the plain one times the row's `by_label` weight; the closed fields
    read the same rows (the weights do not move the draw). Mutants: the donors drawn by the balanced weights (a
    closed field would read the rare label's values more often); the weights left out of a trial's losses."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[16, 8]), gated=True)
    _randomize(model)
    y = (torch.arange(len(ids)) % 5 == 0).float().numpy()
    w = by_label(y)
    plain = ClosedFields(model, ids.numpy(), y, [0, 1, 2, 3])
    balanced = ClosedFields(model, ids.numpy(), y, [0, 1, 2, 3], balanced=True)
    assert np.allclose(balanced.losses(), plain.losses() * w, rtol=1e-6, atol=1e-8)
    assert np.allclose(balanced.losses(2), plain.losses(2) * w, rtol=1e-6, atol=1e-8)
    assert np.allclose(balanced.sweep([1, 4]), plain.sweep([1, 4]) * w[:, None], rtol=1e-5, atol=1e-7)


def test_the_closing_test_weighs_its_rows_by_label(schema_and_ids):
    """The sweep's first question (closing the least open field, every field open) on imbalanced rows: its cost is
    the paired mean of the per-row differences with each label's rows weighing the same in total, and its standard
    error that mean's, by hand. Mutant: the rows' plain mean."""
    from lightfmp.keep_rule import backward_sweep
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[16, 8]), gated=True)
    _randomize(model)
    y = (torch.arange(len(ids)) % 5 == 0).float()
    order = [0, 1, 2, 3, 4]  # the sweep tests 4 (tags) first
    _, tests = backward_sweep(model, ids.numpy(), y.numpy(), order)
    weights = np.where(y.numpy() == 1, len(y) / (2 * 24), len(y) / (2 * 96))  # 120 rows, 24 positives
    d = weights * (_reference_losses(model, schema, ids, y, {0, 1, 2, 3}) - _reference_losses(model, schema, ids, y,
                                                                                               {0, 1, 2, 3, 4}))
    assert tests[0]["field"] == 4
    assert tests[0]["cost"] == pytest.approx(d.mean(), rel=1e-4, abs=1e-7)
    assert tests[0]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-4)


def test_by_label_of_the_whole_batch_weighs_a_slice_as_the_batch_weighs_those_rows():
    """A rank's slice of a batch (rows r::w) gets the whole batch's factors, not its own: with 2 positives in 10
    rows, a slice holding both or neither weighs them as the batch does. A label of no weight leaves the weights as
    they are (no division by 0). Mutant: the slice's own counts."""
    y = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    whole = by_label(y)
    for r in (0, 1):
        assert np.allclose(by_label(y[r::2], of=y), whole[r::2])
    assert np.allclose(by_label(y[1::2], of=y), 10 / 16)  # no positive in the slice: the batch's negatives' factor
    sample = np.where(y == 1, 0.0, 1.0)
    assert np.array_equal(by_label(y, sample), sample)

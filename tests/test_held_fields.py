"""lightfmp.held_fields: the dropped fields held at their means, folded so the pruned model computes that model."""
import copy

import numpy as np
import pytest
import torch

from helpers import make_frame
from lightfmp.held_fields import CHECK_ROWS, _reproduces, field_means, hold_at_means
from lightfmp.schema import FeatureSchema, Field
from lightfmp.vocab import fit_schema
from lightfmp.models import BACKBONES, ModelConfig, build_model
from lightfmp.pruning import prune_model

from test_pruning import kept_columns, randomize, schema_and_ids  # noqa: F401 (a fixture)


def _held_logits(model, ids, dropped):
    """The model's logits with the dropped fields' embeddings and first-order terms at their means over `ids`."""
    with torch.no_grad():
        emb, lin = model.embedding(ids, None)
        emb[:, dropped] = emb[:, dropped].double().mean(0).float()
        if lin is not None:
            lin[:, dropped] = lin[:, dropped].double().mean(0).float()
        return model.interact(emb, lin)


@pytest.mark.parametrize("backbone", ["deepfm", "mlp", "widedeep"])
@pytest.mark.parametrize("dropped", [["b", "tags"], ["x"], ["a", "b", "noise", "x"]])
def test_pruned_after_the_fold_equals_the_model_with_dropped_fields_at_their_means(schema_and_ids, backbone,
                                                                                   dropped):
    schema, ids = schema_and_ids
    model = build_model(backbone, schema, ModelConfig(embed_dim=6, hidden=[16, 8]))
    randomize(model)
    model.eval()
    idx = [schema.names.index(n) for n in dropped]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    held = hold_at_means(model, ids.numpy(), idx)
    assert held is not None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model itself is unchanged
    kept = [n for n in schema.names if n not in dropped]
    pruned, kept_schema = prune_model(held, schema, kept)
    with torch.no_grad():
        got = pruned(kept_columns(schema, ids, kept_schema))
    want = _held_logits(model, ids, idx)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    # and it is not what slicing alone gives (the dropped fields' average is not 0)
    plain, _ = prune_model(model, schema, kept)
    with torch.no_grad():
        assert (plain(kept_columns(schema, ids, kept_schema)) - want).abs().max() > 1e-3


def test_dcnv2_cannot_be_held_so_nothing_is_folded(schema_and_ids):
    schema, ids = schema_and_ids
    model = build_model("dcnv2", schema, ModelConfig(embed_dim=6, hidden=[16, 8], cross_layers=2))
    randomize(model)
    assert hold_at_means(model, ids.numpy(), [1]) is None  # its cross layers read the embeddings multiplicatively


LEFT_ALONE = {"dcnv2"}  # its cross layers read the embeddings multiplicatively: no fold holds a field at its mean


def test_every_backbone_is_either_held_exactly_or_left_alone(schema_and_ids):
    """Backbones whose only readers of the embeddings are linear in them are held (a wrong fold, which the fold's own
    check would turn into "left alone", fails here), the others are left alone."""
    schema, ids = schema_and_ids
    assert LEFT_ALONE < set(BACKBONES)
    for name in sorted(BACKBONES):
        model = build_model(name, schema, ModelConfig(embed_dim=6, hidden=[16, 8], cross_layers=2))
        randomize(model)
        model.eval()
        held = hold_at_means(model, ids.numpy(), [0, 4])
        assert (held is None) == (name in LEFT_ALONE), name
        if held is not None:
            pruned, ks = prune_model(held, schema, schema.names[1:4])
            with torch.no_grad():
                got = pruned(kept_columns(schema, ids, ks))
            torch.testing.assert_close(got, _held_logits(model, ids, [0, 4]), atol=2e-5, rtol=0)


def test_means_are_the_rows_means_and_a_gated_model_is_not_held(schema_and_ids):
    schema, ids = schema_and_ids
    model = build_model("deepfm", schema, ModelConfig(embed_dim=6, hidden=[16, 8]))
    randomize(model)
    means, lin = field_means(model, ids.numpy(), [2])
    with torch.no_grad():
        emb, first = model.embedding(ids, None)
    torch.testing.assert_close(means, emb[:, [2]].mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(lin, first[:, [2]].mean(0), atol=1e-6, rtol=0)
    gated = build_model("deepfm", schema, ModelConfig(embed_dim=6, hidden=[16, 8]), gated=True)
    assert hold_at_means(gated, ids.numpy(), [1]) is None and hold_at_means(model, ids.numpy(), []) is None


def test_the_means_are_over_the_first_mean_rows_and_a_reader_without_bias_is_left_alone(schema_and_ids,
                                                                                       monkeypatch):
    """The fold takes the means over the first MEAN_ROWS rows it is given (the rows the rule measured on), not
    fewer; and a reader layer without a bias has nowhere to hold them: nothing is folded (no error)."""
    import lightfmp.held_fields as held_fields
    schema, ids = schema_and_ids
    monkeypatch.setattr(held_fields, "MEAN_ROWS", 200)
    model = build_model("mlp", schema, ModelConfig(embed_dim=6, hidden=[16, 8]))
    randomize(model)
    model.eval()
    idx = [schema.names.index("x")]
    kept = [n for n in schema.names if n != "x"]
    pruned, kept_schema = prune_model(held_fields.hold_at_means(model, ids.numpy(), idx), schema, kept)
    with torch.no_grad():
        emb, lin = model.embedding(ids, None)
        emb[:, idx] = emb[:200, idx].double().mean(0).float()  # the first 200 rows' mean, every row
        want = model.interact(emb, lin)
        got = pruned(kept_columns(schema, ids, kept_schema))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    layer.register_parameter("bias", None)
    assert held_fields.hold_at_means(model, ids.numpy(), idx) is None


def test_inspect_names_the_kept_phase_3_model():
    from types import SimpleNamespace
    from lightfmp.inspection import final_model_line

    def run(cont, state="complete", averaged=None):
        phases = {"continue": {"averaged_epochs": averaged}} if averaged else {}
        return SimpleNamespace(state=state, history=lambda: {"continue": cont}, metrics=lambda: {"phases": phases})
    epochs = [{"valid": {}}, {"valid": {}}]
    assert final_model_line(run({"epochs": epochs, "best_epoch": 0, "first_epoch": {"held": True}})) == (
        "final model: the cut after phase 3's first epoch, its dropped fields held at their means (no later epoch "
        "of 3 beat it)")
    assert final_model_line(run({"epochs": epochs, "best_epoch": 0, "first_epoch": {"held": False}})) == (
        "final model: phase 3's first epoch (no later epoch of 3 beat it)")
    assert final_model_line(run({"epochs": epochs, "best_epoch": 2, "first_epoch": {}})) == (
        "final model: phase 3's epoch 3 of 3 (its first epoch counted)")
    assert final_model_line(run({"epochs": epochs, "best_epoch": 1})) == "final model: phase 3's epoch 1 of 2"
    assert final_model_line(run({"epochs": epochs, "best_epoch": 2, "first_epoch": {}}, averaged=[1, 2, 3])) == (
        "final model: the mean of phase 3's epochs 1, 2, 3 of 3 (tied in validation logloss)")
    for bad in (None, 5, -1, True, "1"):  # an edited or older history says nothing rather than something wrong
        assert final_model_line(run({"epochs": epochs, "best_epoch": bad, "first_epoch": {}})) is None
    assert final_model_line(run({"epochs": epochs, "best_epoch": 1}, state="pretrained")) is None


def test_the_means_are_over_every_row_when_the_rows_span_several_chunks():
    """The means are summed a chunk of rows at a time: over 10,000 rows (three chunks) they are the plain mean of
    every row's embedding and first-order term (the fold's own check reads the same means, so it cannot catch a
    wrong sum)."""
    df = make_frame(10_000)
    schema = fit_schema(FeatureSchema("label", [Field("a", "categorical"), Field("b", "categorical"),
                                                Field("x", "numeric")], min_count=1), df)
    ids = schema.encode(df)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=6, hidden=[16, 8]))
    randomize(model)
    means, lin = field_means(model, ids, [0, 2])
    with torch.no_grad():
        emb, first = model.embedding(torch.from_numpy(ids).long(), None)
    torch.testing.assert_close(means, emb[:, [0, 2]].double().mean(0).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(lin, first[:, [0, 2]].double().mean(0).float(), atol=1e-6, rtol=0)


def test_the_folds_check_refuses_a_model_a_thousandth_of_a_logit_off(schema_and_ids):
    """The check's tolerance is float32 rounding (1e-4), not a modelling error: a folded model whose logits are
    1e-3 off is not the held model; 1e-5 off is."""
    schema, ids = schema_and_ids
    model = build_model("mlp", schema, ModelConfig(embed_dim=6, hidden=[16, 8]))
    randomize(model)
    model.eval()
    rows = ids.numpy()
    held = hold_at_means(model, rows, [2])
    means, lin = field_means(model, rows, [2])
    for eps, same in ((1e-5, True), (1e-3, False)):
        off = copy.deepcopy(held)
        with torch.no_grad():
            [m for m in off.modules() if isinstance(m, torch.nn.Linear)][-1].bias += eps  # the output layer
        assert _reproduces(model, off, rows[:CHECK_ROWS], [2], means, lin) is same


def test_a_model_in_training_mode_is_held_and_stays_in_training_mode(schema_and_ids):
    """Through the Python API a model may come in training mode, dropout on: the check compares the two models
    without dropout, and the model (and its held copy) are left in the mode they came in."""
    schema, ids = schema_and_ids
    model = build_model("mlp", schema, ModelConfig(embed_dim=6, hidden=[16, 8], dropout=0.5))
    randomize(model)
    model.train()
    held = hold_at_means(model, ids.numpy(), [2])
    assert held is not None and model.training and held.training

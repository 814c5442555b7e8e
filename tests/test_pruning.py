"""Pruned == gated on the kept fields, for every backbone and every structural pattern."""
import numpy as np
import pytest
import torch

from lightfmp.errors import LightFMPError
from lightfmp.gates import AutoFieldGate, LPFSGate
from lightfmp.models import BACKBONES, ModelConfig, build_model
from lightfmp.pruning import prune_model, select_fields
from lightfmp.rows import ArrayRows
from lightfmp.schema import FeatureSchema, Field
from lightfmp.vocab import fit_schema

from helpers import make_frame


@pytest.fixture(scope="module")
def schema_and_ids():
    df = make_frame(300)
    s = fit_schema(FeatureSchema("label", [Field("a", "categorical"), Field("b", "categorical"),
                                           Field("noise", "categorical"), Field("x", "numeric"),
                                           Field("tags", "multi_hot", separator="|")], min_count=1), df)
    return s, torch.from_numpy(s.encode(df)).long()


def kept_columns(schema, ids, kept_schema):
    """The id columns of the kept fields, through the Rows API (as the pipeline reads them)."""
    rows = ArrayRows(ids.numpy(), np.zeros(len(ids), np.float32), slots=schema.field_slot_ranges())
    return torch.from_numpy(rows.select(kept_schema.names).arrays()[0]).long()


def randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("kept", [["a", "x", "tags"], ["b"], ["a", "b", "noise", "x", "tags"]])
def test_pruned_equals_gated_on_kept_fields(schema_and_ids, backbone, kept):
    schema, ids = schema_and_ids
    model = build_model(backbone, schema, ModelConfig(embed_dim=6, hidden=[16, 8], cross_layers=2), gated=True)
    randomize(model)
    model.gate.log_alpha.data = torch.tensor([0.3, -0.2, 1.5, 0.1, 3.0])  # gates strictly inside (0, 1) and at 1
    model.eval()
    pruned, kept_schema = assert_pruned_equals_gated(model, schema, ids, kept)
    assert kept_schema.names == kept
    if len(kept) < len(schema.names):
        assert pruned.num_params() < model.num_params()


def assert_pruned_equals_gated(model, schema, ids, kept):
    """The pruned model computes what the gated model computes with the dropped fields' gates at 0 (atol 1e-5)."""
    z = model.gate.deterministic()
    mask = torch.tensor([n in kept for n in schema.names], dtype=z.dtype)
    with torch.no_grad():
        expected = model(ids, gates=z * mask)
    pruned, kept_schema = prune_model(model, schema, kept)
    with torch.no_grad():
        got = pruned(kept_columns(schema, ids, kept_schema))
    assert pruned.gate is None
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    return pruned, kept_schema


@pytest.mark.parametrize("gate", ["autofield", "lpfs"])
def test_other_gate_modules_prune_like_their_deterministic_gate(schema_and_ids, gate):
    schema, ids = schema_and_ids
    g = AutoFieldGate(5) if gate == "autofield" else LPFSGate(5)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gate=g)
    randomize(model)  # the gate's parameters too: its values land strictly inside (0, 1)
    model.eval()
    z = model.gate.deterministic()
    assert bool(((z > 0) & (z < 1)).all())
    pruned, _ = assert_pruned_equals_gated(model, schema, ids, ["a", "noise", "tags"])
    assert pruned.num_params() < model.num_params()


def test_embedding_rows_are_sliced_not_masked(schema_and_ids):
    schema, _ = schema_and_ids
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    pruned, ks = prune_model(model, schema, ["a", "x"])
    rows = schema.field("a").vocab_size + schema.field("x").vocab_size
    assert tuple(pruned.embedding.weight.shape) == (rows, 4)
    assert tuple(pruned.embedding.linear.shape) == (rows, 1)
    assert pruned.deep[0].in_features == 2 * 4


def test_dcnv2_cross_layers_lose_rows_and_columns(schema_and_ids):
    schema, _ = schema_and_ids
    model = build_model("dcnv2", schema, ModelConfig(embed_dim=4, hidden=[8], cross_layers=3), gated=True)
    pruned, _ = prune_model(model, schema, ["b", "tags"])
    for layer in pruned.cross:
        assert tuple(layer.weight.shape) == (8, 8) and tuple(layer.bias.shape) == (8,)
    assert pruned.out.in_features == 8 + 8


def test_gate_values_are_folded_into_weights(schema_and_ids):
    schema, _ = schema_and_ids
    model = build_model("mlp", schema, ModelConfig(embed_dim=3, hidden=[4]), gated=True)
    model.gate.log_alpha.data = torch.tensor([-0.5, 0.0, 0.0, 0.0, 0.0])
    z_a = float(model.gate.deterministic()[0])
    assert 0 < z_a < 1
    pruned, _ = prune_model(model, schema, ["a"])
    n = schema.field("a").vocab_size
    torch.testing.assert_close(pruned.embedding.weight.data, model.embedding.weight.data[:n] * z_a)


def test_select_fields_rules():
    names = ["a", "b", "c", "d"]
    la = torch.tensor([3.0, -4.0, 5.0, 0.0])
    z = torch.tensor([1.0, 0.0, 1.0, 0.45])
    assert select_fields(names, la, z, threshold=0.5) == ["a", "c"]
    assert select_fields(names, la, z, keep=1) == ["c"]  # tie at 1.0 broken by log_alpha
    assert select_fields(names, la, z, keep=3) == ["a", "c", "d"]
    for bad in (0, 5):
        with pytest.raises(LightFMPError, match="--keep"):
            select_fields(names, la, z, keep=bad)
    with pytest.raises(LightFMPError, match="threshold"):
        select_fields(names, la, torch.zeros(4), threshold=0.5)

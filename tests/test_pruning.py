"""Pruned == gated on the kept fields, for every backbone and every structural pattern."""
import numpy as np
import pytest
import torch

from lightfmp.errors import LightFMPError
from lightfmp.gates import AutoFieldGate, LPFSGate
from lightfmp.models import BACKBONES, CTRModel, ModelConfig, build_model
from lightfmp.models.base import mlp
from lightfmp.models.dense import Linear
import torch.nn.functional as F

import lightfmp.closed_fields as closed_fields
from lightfmp.closed_fields import ClosedFields, by_label, donor_rows, measured_sample, other_rows
from lightfmp.keep_rule import (alone_note, backward_sweep, closing_scores, closing_test, forward_order, keep_order,
                                ranking, select_fields, selection_rule)
from lightfmp.metrics import paired_difference
from lightfmp.models.deepfm import FactorizationMachine
from lightfmp.pruning import prune_model
from lightfmp.rows import ArrayRows
from lightfmp.schema import FeatureSchema, Field
from lightfmp.vocab import fit_schema

from helpers import fitted_frame


@pytest.fixture(scope="module")
def schema_and_ids():
    return fitted_frame(300)


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


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_the_pruned_model_has_the_parameters_of_a_model_built_for_the_kept_fields(schema_and_ids, backbone):
    """No parameter a freshly built model of the kept fields lacks (an unused first-order table on a backbone
    without one would be exported and counted), none missing, each of the same shape."""
    schema, _ = schema_and_ids
    cfg = ModelConfig(embed_dim=6, hidden=[16, 8], cross_layers=2)
    pruned, kept_schema = prune_model(build_model(backbone, schema, cfg, gated=True), schema, ["a", "x", "tags"])
    fresh = build_model(backbone, kept_schema, cfg)
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert pruned.num_params() == fresh.num_params()


def test_the_pruned_model_keeps_the_models_mode_and_reads_an_unseen_id_as_the_gated_model_does(schema_and_ids):
    """The surgery makes a fresh embedding module (which would start in training mode) inside a copy of the model:
    it takes the model's mode, so an eval-mode pruned model reads an id past a field's range as that field's OOV row,
    as the gated model does, not as another field's row or an IndexError. Its sparse-gradient flag comes along."""
    schema, ids = schema_and_ids
    model = build_model("deepfm", schema, ModelConfig(embed_dim=6, hidden=[16, 8]), gated=True)
    randomize(model)
    model.embedding.sparse = True
    model.eval()
    ids = ids.clone()
    a = schema.field_slot_ranges()["a"]  # field a's slot
    ids[:5, a[0]] = schema.fields[0].vocab_size + 3
    pruned, _ = assert_pruned_equals_gated(model, schema, ids, ["a", "x"])
    assert not pruned.training and not pruned.embedding.training and pruned.embedding.sparse
    model.train()
    assert prune_model(model, schema, ["a"])[0].embedding.training


@pytest.mark.parametrize("kept", [[], ["a", "nosuchfield"]])
def test_pruning_to_no_field_or_an_unknown_one_is_refused(schema_and_ids, kept):
    schema, _ = schema_and_ids
    model = build_model("deepfm", schema, ModelConfig(embed_dim=6, hidden=[16, 8]), gated=True)
    with pytest.raises(LightFMPError, match="no field to keep" if not kept else "no field named nosuchfield"):
        prune_model(model, schema, kept)


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float64), ("meta", torch.float32)])
def test_a_sliced_layer_is_made_where_its_layer_lives_in_its_dtype(device, dtype):
    """The surgery's sliced layers stay on the model's device (a GPU run validates the cut before training moves the
    model; "meta" stands in for a device here) and in its dtype."""
    from lightfmp.models.base import slice_linear
    layer = torch.nn.Linear(4, 3, device=device, dtype=dtype)
    new = slice_linear(layer, cols=torch.tensor([0, 2]), rows=torch.tensor([1, 2]))
    assert new.weight.shape == (2, 2) and new.weight.device.type == device and new.weight.dtype == dtype
    assert new.bias.device.type == device and new.bias.dtype == dtype
    if device == "cpu":
        torch.testing.assert_close(new.weight, layer.weight[[1, 2]][:, [0, 2]], rtol=0, atol=0)


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


def test_kept_fields_in_any_order_prune_in_the_schemas_order(schema_and_ids):
    """The keep rules return fields in their own orders (the closing test: by gate); the surgery must not copy the
    embedding rows in that order while the pruned schema keeps the schema's."""
    schema, ids = schema_and_ids
    model = build_model("deepfm", schema, ModelConfig(embed_dim=6, hidden=[16, 8]), gated=True)
    randomize(model)
    model.eval()
    pruned, kept_schema = assert_pruned_equals_gated(model, schema, ids, ["tags", "a", "x"])
    assert kept_schema.names == ["a", "x", "tags"]
    ordered, _ = prune_model(model, schema, ["a", "x", "tags"])
    assert all(torch.equal(v, ordered.state_dict()[k]) for k, v in pruned.state_dict().items())


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


def test_the_first_cut_keeps_the_open_gates_and_at_least_k():
    """Before phase 3's first epoch only the fields whose gate phase 1 shut go, most open first; never fewer than K
    (or one) fields stay: then the K most open, shut or not."""
    from lightfmp.keep_rule import open_after_phase1
    la = torch.tensor([0.5, -3.0, 2.0, -1.0, 1.0])
    z = torch.tensor([0.4, 0.0, 1.0, 0.0, 0.9])
    assert open_after_phase1(la, z) == [2, 4, 0]
    assert open_after_phase1(la, z, keep=3) == [2, 4, 0]
    assert open_after_phase1(la, z, keep=4) == [2, 4, 0, 3]
    assert open_after_phase1(la, torch.zeros(5)) == [2]


def test_default_rule_keeps_what_the_closing_test_kept():
    names, la, z = ["a", "b", "c", "d"], torch.tensor([3.0, -4.0, 5.0, 0.0]), torch.ones(4)
    search = {"order": ["c", "a", "d", "b"], "kept": ["d", "a"],
              "tests": [{"field": "b", "cost": 0.0, "se": 0.001, "closed": True},
                        {"field": "d", "cost": 0.006, "se": 0.002, "closed": False},
                        {"field": "c", "cost": 0.001, "se": 0.002, "closed": True}]}
    assert select_fields(names, la, z, search=search) == ["a", "d"]  # schema order
    assert closing_scores(search) == pytest.approx({"b": 0.0, "d": 3.0, "c": 0.5})  # a run before the set test
    with_set = [{**t, "set_cost": c, "set_se": 0.002} for t, c in zip(search["tests"], (0.0, 0.003, 0.005))]
    assert closing_scores({**search, "tests": with_set}) == pytest.approx({"b": 0.0, "d": 3.0, "c": 2.5})  # the larger
    no_spread = [{**with_set[0], "set_cost": 0.001, "set_se": 0.0}]
    assert closing_scores({**search, "tests": no_spread}) == {"b": None}  # a positive cost with no spread
    nan_cost, nan_se = paired_difference([np.nan, 0.1, 0.2], [0.1, 0.1, 0.1])  # a diverged loss: both NaN
    diverged = [{**with_set[0], "cost": nan_cost, "se": nan_se}, {**with_set[1], "set_cost": nan_cost,
                                                                   "set_se": nan_se}]
    assert all(np.isnan(v) for v in closing_scores({**search, "tests": diverged}).values())  # NaN, not "no spread"
    with pytest.raises(LightFMPError, match="closing test"):
        select_fields(names, la, z)
    with pytest.raises(LightFMPError, match="closing test"):
        select_fields(names, la, z, search={"order": ["c", "a", "d", "b"]})  # a --keep search has no kept set


@pytest.mark.parametrize("n", [2, 3, 4, 5, 100, 4096])
def test_other_rows_is_a_seeded_shuffle_with_no_row_in_place(n):
    """A permutation; no row reads itself; the same on every call; it differs from the seed-0 draw only where that
    draw left a row in place (and at the partner each such row swapped with)."""
    perm = other_rows(n)
    assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))
    assert np.array_equal(perm, other_rows(n))
    draw = np.random.default_rng(0).permutation(n)
    fixed = set(np.flatnonzero(draw == np.arange(n)).tolist())
    moved = set(np.flatnonzero(perm != draw).tolist())
    assert moved <= fixed | {(i + 1) % n for i in fixed}


def _mean_se(d: torch.Tensor) -> tuple[float, float]:
    return float(d.mean()), float(d.std(correction=1)) / len(d) ** 0.5


def _measured(ids, y):
    """The rows the closing test measures (`measured_sample`: every row of the rarer label, as many of the other's),
    their labels, the ids their closed fields read, and their weights by label."""
    rows, donors = measured_sample(np.asarray(y))
    rows_t = torch.from_numpy(rows)
    read = ids[rows_t] if donors is None else ids[torch.from_numpy(donors)]
    if donors is None:
        read = read[torch.from_numpy(other_rows(len(rows)))]
    y = torch.as_tensor(np.asarray(y)[rows])
    return ids[rows_t], y, read, torch.from_numpy(by_label(y.numpy())).double()


def _direct_losses(model, schema, ids, y, open_fields, donor=None, read=None):
    """The definition: closed fields read the values of row perm[i] (`other_rows`: the fixed shuffle; or `donor`),
    or the ids `read` gives."""
    perm = torch.from_numpy(other_rows(len(y)) if donor is None else donor)
    read = ids[perm] if read is None else read
    x = ids.clone()
    for f, name in enumerate(schema.names):
        if f not in open_fields:
            a, b = schema.field_slot_ranges()[name]
            x[:, a:b] = read[:, a:b]
    with torch.no_grad():
        return F.binary_cross_entropy_with_logits(model(x, model.gate.deterministic()), y, reduction="none").double()


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("backbone,hidden", [(b, [16, 8]) for b in sorted(BACKBONES)] + [("mlp", []), ("deepfm", [])])
def test_closed_field_passes_equal_the_direct_evaluation(schema_and_ids, backbone, hidden, cached, chunked,
                                                         monkeypatch):
    """`ClosedFields` (embeddings looked up once; where only the tower's first layer reads the flattened
    embeddings, that layer updated by the toggled field's columns; DeepFM's FM term from the state's sums over
    fields changed by the toggled field's terms; or, beyond its memory budget, the ids looked up on every pass)
    gives the per-row losses of the definition, for the state and for one field toggled either way,
    after a sequence of toggles, on every backbone; `chunked`: a few rows a pass (the last chunk shorter)."""
    if not cached:
        monkeypatch.setattr(closed_fields, "STATE_BYTES", 0)
    if chunked:
        monkeypatch.setattr(closed_fields, "CHUNK_FLOATS", 7 * 5 * 4)  # 5 fields x embed_dim 4: 7 rows a chunk
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model(backbone, schema, ModelConfig(embed_dim=4, hidden=hidden, cross_layers=2), gated=True)
    randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float()
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [0, 2, 4])
    # the layers answered from kept pre-activations: the tower's first (the output layer where there is no tower),
    # and DCNv2's first cross layer beside it
    readers = {"dcnv2": ["cross.0", "deep.0"]}.get(backbone, ["deep.0" if hidden else "out"]) if cached else []
    names = {m: n for n, m in model.named_modules()}
    assert passes.cached == cached and sorted(names[layer] for *_, layer in passes.readers) == readers
    assert (passes.fm is not None) == (backbone == "deepfm" and cached)
    assert not chunked or 1 < passes.pass_chunk < len(ids) and len(ids) % passes.pass_chunk != 0
    open_fields = {0, 2, 4}
    for step in [None, 1, 0, 3, 0, 2]:
        if step is not None:
            passes.toggle(step)
            open_fields ^= {step}
        expect = _direct_losses(model, schema, ids, y, open_fields).numpy()
        assert np.allclose(passes.losses(), expect, rtol=1e-5, atol=1e-6)
        for f in range(5):
            toggled = _direct_losses(model, schema, ids, y, open_fields ^ {f}).numpy()
            assert np.allclose(passes.losses(f), toggled, rtol=1e-5, atol=1e-6), (step, f)
        assert np.allclose(passes.losses(), expect, rtol=1e-5, atol=1e-6)  # a trial leaves the state as it was


def _check_passes(passes, model, schema, ids, y, open_fields, steps):
    """The passes give the definition's losses, for the state and each field toggled, through `steps` toggles."""
    open_fields = set(open_fields)
    for step in steps:
        if step is not None:
            passes.toggle(step)
            open_fields ^= {step}
        expect = _direct_losses(model, schema, ids, y, open_fields).numpy()
        assert np.allclose(passes.losses(), expect, rtol=1e-5, atol=1e-6), step
        for f in range(len(schema.names)):
            toggled = _direct_losses(model, schema, ids, y, open_fields ^ {f}).numpy()
            assert np.allclose(passes.losses(f), toggled, rtol=1e-5, atol=1e-6), (step, f)


def test_the_readers_pre_activations_take_at_most_the_state_budget_narrowest_first(schema_and_ids, monkeypatch):
    """DCNv2 reads the flattened embeddings in two layers (its tower's first, 16 wide here, and its first cross
    layer, 5 fields x 4 = 20 wide); a budget that holds the state (20 floats a row) and the narrower pre-activation
    but not both keeps the tower's alone, and the passes still give the definition's losses."""
    schema, ids = schema_and_ids
    monkeypatch.setattr(closed_fields, "STATE_BYTES", 100 * len(ids))  # the state 80, the two 64 + 80 bytes a row
    torch.manual_seed(0)
    model = build_model("dcnv2", schema, ModelConfig(embed_dim=4, hidden=[16, 8], cross_layers=2), gated=True)
    randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float()
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [0, 2, 4])
    names = {m: n for n, m in model.named_modules()}
    assert passes.cached and [names[layer] for *_, layer in passes.readers] == ["deep.0"]
    _check_passes(passes, model, schema, ids, y, {0, 2, 4}, [None, 1, 0])


class _SharedLayer(CTRModel):
    """A backbone that runs one linear layer twice a pass: on the flattened embeddings, then on its own output."""
    name = "shared"

    def build(self, num_fields, embed_dim, cfg):
        self.deep = mlp(num_fields * embed_dim, [num_fields * embed_dim], 0.0)
        self.out = Linear(num_fields * embed_dim, 1)

    def interact(self, emb, lin):
        return self.out(self.deep(self.deep(emb.flatten(1)))).squeeze(-1)


class _KeywordInput(CTRModel):
    """A backbone whose only layer takes the flattened embeddings as a keyword argument."""
    name = "keyword"

    def build(self, num_fields, embed_dim, cfg):
        self.out = Linear(num_fields * embed_dim, 1)

    def interact(self, emb, lin):
        return self.out(x=emb.flatten(1)).squeeze(-1)


def test_a_layer_given_its_input_by_keyword_is_run_as_it_is(schema_and_ids):
    """The probe sees no positional input: the layer is not taken for a reader, and the passes stay the
    definition's."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = _KeywordInput(schema, ModelConfig(embed_dim=4), gated=True)
    randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float()
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [0, 2, 4])
    assert passes.readers == []
    _check_passes(passes, model, schema, ids, y, {0, 2, 4}, [None, 1])


def test_a_layer_that_runs_twice_a_pass_is_never_answered_from_a_kept_pre_activation(schema_and_ids):
    """Its second call reads its own output, not the embeddings: no layer is a reader, and the passes (plain
    forward passes of the model) give the definition's losses."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = _SharedLayer(schema, ModelConfig(embed_dim=4), gated=True)
    randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float()
    assert closed_fields.readers(model) == []
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [0, 2, 4])
    assert passes.readers == []
    _check_passes(passes, model, schema, ids, y, {0, 2, 4}, [None, 1])


@pytest.mark.parametrize("hidden", [[16, 8], []])
def test_the_passes_answer_deepfms_fm_term_from_their_sums(schema_and_ids, hidden, monkeypatch):
    """With the embeddings kept, no pass runs DeepFM's FM module (its term comes from the kept sums), and the
    module is back in place after every pass; the screen, which differentiates the model, runs it."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=hidden), gated=True)
    randomize(model)
    passes = ClosedFields(model, ids.numpy(), (torch.arange(len(ids)) % 3 == 0).float().numpy(), [0, 2, 4])
    calls, real = [], FactorizationMachine.forward
    monkeypatch.setattr(FactorizationMachine, "forward", lambda self, emb: calls.append(1) or real(self, emb))
    passes.losses(), passes.losses(1), passes.toggle(0), passes.losses(3), passes.losses(0)
    assert not calls and type(model.fm) is FactorizationMachine
    passes.screen()
    assert calls and type(model.fm) is FactorizationMachine


def _small_deepfm(schema_and_ids, cached, monkeypatch):
    """A randomised small DeepFM over the fixture's rows, labels every third row; `cached` False: the id state."""
    if not cached:
        monkeypatch.setattr(closed_fields, "STATE_BYTES", 0)
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    randomize(model)
    return schema, ids, model, (torch.arange(len(ids)) % 3 == 0).float()


@pytest.mark.parametrize("cached", [True, False])
def test_weighted_rows_with_donors_give_the_definitions_losses_times_the_weights(schema_and_ids, cached,
                                                                                 monkeypatch):
    """The forward search's rows: a weighted sample whose closed fields read donor rows of the whole set. The
    passes' losses are the definition's (each closed field's columns the row's donor's) times the weights, for the
    state and one field toggled, through toggles either way, and the screen is the gradient of the weighted mean
    over the mix of own and donor values. Mutants: the weights dropped from a trial; a closed field reading another
    row of the sample."""
    schema, ids, model, y = _small_deepfm(schema_and_ids, cached, monkeypatch)
    sample, read, ys = ids[:60], ids[torch.arange(60, 120).flip(0)], y[:60]
    w = np.where(ys.numpy() == 1, 0.4, 1.3)
    w = w / w.mean()
    passes = ClosedFields(model, sample.numpy(), ys.numpy(), [0, 2, 4], weights=w, donors=read.numpy())
    open_fields = {0, 2, 4}
    for step in [None, 1, 0, 3, 0]:
        if step is not None:
            passes.toggle(step)
            open_fields ^= {step}
        expect = _direct_losses(model, schema, sample, ys, open_fields, read=read).numpy() * w
        assert np.allclose(passes.losses(), expect, rtol=1e-5, atol=1e-6), step
        for f in range(5):
            toggled = _direct_losses(model, schema, sample, ys, open_fields ^ {f}, read=read).numpy() * w
            assert np.allclose(passes.losses(f), toggled, rtol=1e-5, atol=1e-6), (step, f)
        assert torch.allclose(passes.screen(), _mix_gradient(model, sample, ys, open_fields, read, w), rtol=1e-4,
                              atol=1e-6), step


def _mix_gradient(model, ids, y, open_fields, read, weights=None):
    """The screen's definition: the gradient in s of the mean BCE (times `weights`, given) when field f reads s_f of
    its own rows' embedding and 1 - s_f of the embedding of the ids `read` gives (the donors' or another row's), at
    s = 1 on open fields and 0 on closed ones."""
    with torch.no_grad():
        own = [t for t in model.embedding(ids, model.gate_values()) if t is not None]
        other = [t for t in model.embedding(read, model.gate_values()) if t is not None]
    s = torch.zeros(model.embedding.num_fields)
    s[sorted(open_fields)] = 1.0
    s.requires_grad_(True)
    mixed = [d + s.view((1, -1) + (1,) * (t.dim() - 2)) * (t - d) for t, d in zip(own, other)]
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    loss = F.binary_cross_entropy_with_logits(model.interact(mixed[0], mixed[1] if len(mixed) > 1 else None), y, w)
    return torch.autograd.grad(loss, s)[0]


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("backbone,hidden", [(b, [16, 8]) for b in sorted(BACKBONES)] + [("mlp", [])])
def test_the_screen_is_the_gradient_of_the_mix_at_the_state(schema_and_ids, backbone, hidden, cached, monkeypatch):
    """`screen` (the forward search's first-order estimate; where the tower's first layer reads the flattened
    embeddings, that layer's kept pre-activation stands in for its forward) is the gradient of the definition's
    mix at the state, after toggles either way, on every backbone, summed over chunks of 7 rows (the last one
    shorter); it leaves the state and the model as they were."""
    if not cached:
        monkeypatch.setattr(closed_fields, "STATE_BYTES", 0)
    monkeypatch.setattr(closed_fields, "CHUNK_FLOATS", 7 * 5 * 4)  # 5 fields x embed_dim 4: 7 rows a chunk
    schema, ids = schema_and_ids
    assert len(ids) % 7 != 0
    torch.manual_seed(0)
    model = build_model(backbone, schema, ModelConfig(embed_dim=4, hidden=hidden, cross_layers=2), gated=True)
    randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float()
    passes = ClosedFields(model, ids.numpy(), y.numpy(), [1, 3])
    assert passes.chunk == 7
    layers = list(getattr(model, "deep", []))
    donor = torch.from_numpy(other_rows(len(y)))
    open_fields = {1, 3}
    for f in [None, 0, 3, 2]:
        if f is not None:
            passes.toggle(f)
            open_fields ^= {f}
        before = passes.losses()
        got = passes.screen()
        assert got.shape == (5,) and torch.allclose(got, _mix_gradient(model, ids, y, open_fields, ids[donor]),
                                                    rtol=1e-4, atol=1e-6), f
        assert np.array_equal(passes.losses(), before) and list(getattr(model, "deep", [])) == layers


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("backbone,hidden", [(b, [16, 8]) for b in sorted(BACKBONES)] + [("deepfm", [])])
def test_closed_fields_reading_donor_rows_give_the_definitions_losses_sweeps_and_screen(schema_and_ids, backbone,
                                                                                        hidden, cached, monkeypatch):
    """With `donors` (the ids of other rows, one per row: a sample's closed fields reading rows of the whole set),
    every pass is the definition's with each closed field's columns taken from the row's donor: the state and each
    field toggled either way after toggles, a walk's stacked or column-by-column sweep, and the screen's gradient of
    the mix between the own and the donor's values; on every backbone, with the embeddings kept or the ids looked
    up again. Mutants: a closed field reading another row of the sample; an opened field keeping the donor's
    values; the screen's difference against the sample's shuffle."""
    if not cached:
        monkeypatch.setattr(closed_fields, "STATE_BYTES", 0)
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model(backbone, schema, ModelConfig(embed_dim=4, hidden=hidden, cross_layers=2), gated=True)
    randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float()
    sample, read = ids[:40], ids[torch.arange(40, 80).flip(0)]  # other rows of the set, one for each
    ys = y[:40]
    passes = ClosedFields(model, sample.numpy(), ys.numpy(), [0, 2, 4], donors=read.numpy())
    assert passes.cached == cached
    open_fields = {0, 2, 4}
    for step in [None, 1, 0, 3, 0]:
        if step is not None:
            passes.toggle(step)
            open_fields ^= {step}
        expect = _direct_losses(model, schema, sample, ys, open_fields, read=read).numpy()
        assert np.allclose(passes.losses(), expect, rtol=1e-5, atol=1e-6), step
        for f in range(5):
            toggled = _direct_losses(model, schema, sample, ys, open_fields ^ {f}, read=read).numpy()
            assert np.allclose(passes.losses(f), toggled, rtol=1e-5, atol=1e-6), (step, f)
    walk, states, columns = [4, 1, 2], set(open_fields), []
    for f in [None] + walk:
        states ^= {f} if f is not None else set()
        columns.append(_direct_losses(model, schema, sample, ys, states, read=read).numpy())
    assert np.allclose(passes.sweep(walk), np.stack(columns, 1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(passes.screen(), _mix_gradient(model, sample, ys, open_fields, read), rtol=1e-4, atol=1e-6)


def test_forward_order_against_a_direct_evaluation(schema_and_ids):
    """The order is greedy forward selection (each step opens the field that lowers the mean BCE most, each label's
    rows weighing the same in total; closed fields read another row's values), computed here from its definition."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    randomize(model)
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0]))
    y = (torch.arange(len(ids)) % 3 == 0).float()
    w = by_label(y.numpy())  # a third of the rows positive: each weighs 1.5, each negative 0.75
    assert w.max() == pytest.approx(1.5) and w.min() == pytest.approx(0.75)
    chosen, rest = [], list(range(5))
    while rest:
        best = min(rest, key=lambda f: (float((_direct_losses(model, schema, ids, y, chosen + [f]).numpy() * w).mean()),
                                        f))
        chosen.append(best)
        rest.remove(best)
    assert keep_order(model, schema, ids.numpy(), y.numpy(), 5)["order"] == [schema.names[i] for i in chosen]
    # --keep K searches only K steps; the rest follow by log_alpha
    short = keep_order(model, schema, ids.numpy(), y.numpy(), 2)
    rest = [i for i in ranking(model.gate.log_alpha.detach()) if i not in chosen[:2]]
    # the other set: the 2 fields costliest to close from every field open; weighed against the forward order's on
    # the rows the comparison reads (`held_out_rows`: the search read every row, so of each label as many as the
    # fewer has, spread: every positive and as many negatives), their closed fields reading donors of every row,
    # it replaces it only if the forward set is worse by 2 standard errors
    every = set(range(5))
    base = _direct_losses(model, schema, ids, y, every)
    cost = [float(((_direct_losses(model, schema, ids, y, every - {f}) - base).numpy() * w).mean()) for f in range(5)]
    second = sorted(range(5), key=lambda f: (-cost[f], f))[:2]
    pos, neg = np.flatnonzero(y.numpy() == 1), np.flatnonzero(y.numpy() == 0)
    held = torch.from_numpy(np.sort(np.r_[pos, neg[np.linspace(0, len(neg) - 1, len(pos)).round().astype(int)]]))
    assert len(held.unique()) == 2 * len(pos) < len(y)
    read = ids[donor_rows(len(y), held.numpy(), np.random.default_rng(0))]
    d = (_direct_losses(model, schema, ids[held], y[held], set(second), read=read)
         - _direct_losses(model, schema, ids[held], y[held], set(chosen[:2]), read=read))
    d = d.numpy() * by_label(y[held].numpy()) if set(second) != set(chosen[:2]) else np.zeros(2)
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    switch = bool(d.mean() < -2 * se)
    order = second + [i for i in chosen[:2] + rest if i not in second] if switch else chosen[:2] + rest
    alternative = short.pop("alternative")
    assert short == {"order": [schema.names[i] for i in order], "rows": len(y), "copies": {}, "finer": {}, "shadowed": {}}
    assert alternative == {"order": [schema.names[i] for i in second], "rows": len(held), "held_out": False,
                           "difference": pytest.approx(float(d.mean()), rel=1e-3, abs=1e-8),
                           "se": pytest.approx(se, rel=1e-3, abs=1e-8),
                           "chosen": switch}


def _fit_ungated(model, x, y, steps: int):
    """Train the backbone with every gate at 1 (full batch Adam), leaving the gates to the test."""
    opt = torch.optim.Adam(model.backbone_parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x, torch.ones(model.gate.num_fields)), y).backward()
        opt.step()


def test_keep_k_keeps_fields_that_matter_only_together():
    """x1, x2 and x3 drive the label together (the parity of their halves), no two of them alone; m alone; four
    noise fields. Opening one or two of the three while the others are closed gains nothing, so the forward order's
    first 4 miss them; the 4 fields costliest to close from every field open are m and the three, measurably better
    on the validation rows, and --keep 4 keeps them."""
    rng = np.random.default_rng(0)
    n = 12000
    cols = {name: rng.integers(0, 6, n) for name in ("x1", "n1", "m", "x2", "n2", "x3", "n3", "n4")}
    half = {k: np.where(v < 3, 1.0, -1.0) for k, v in cols.items()}
    logit = 1.5 * half["x1"] * half["x2"] * half["x3"] + 0.8 * half["m"]
    df = __import__("pandas").DataFrame(cols).astype(str)
    df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    names = list(cols)
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in names], min_count=1), df)
    ids = torch.from_numpy(s.encode(df)).long()
    y = torch.from_numpy(df["label"].to_numpy(np.float32))
    torch.manual_seed(0)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[16]), gated=True)
    train, valid = slice(0, 6000), slice(6000, n)
    _fit_ungated(model, ids[train], y[train], 300)
    together = {"m", "x1", "x2", "x3"}
    forward = forward_order(model, ids[valid].numpy(), y[valid].numpy(), steps=4)
    assert {names[i] for i in forward[:4]} != together, "the forward order found them: no blind spot tested"
    out = keep_order(model, s, ids[valid].numpy(), y[valid].numpy(), 4)
    assert set(out["order"][:4]) == together
    alt = out["alternative"]
    # 6,000 rows of about half each label: the search read most of each, so the sets are compared on every row of
    # the fewer label and as many of the other's
    fewer = int(min(np.bincount(y[valid].numpy().astype(int))))
    assert alt["chosen"] and alt["rows"] == 2 * fewer < 6000 and not alt["held_out"]
    assert alt["difference"] < -2 * alt["se"]


def test_forward_order_puts_a_redundant_copy_after_a_new_signal():
    """Two copies of one informative field and a field that matters only with it (label = (a >= 4) xor (c >= 6)):
    the first step opens a copy (c alone tells nothing), the second the other field, not the second copy: the copies
    of an opened field leave the candidates (the model that read both may still value the second), although the
    copy's gate is the larger."""
    rng = np.random.default_rng(0)
    n = 4000
    a, c = rng.integers(0, 8, n), rng.integers(0, 8, n)
    df = __import__("pandas").DataFrame({"a": a.astype(str), "a_copy": a.astype(str), "c": c.astype(str),
                                         "label": ((a >= 4) ^ (c >= 6)).astype(int)})
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in ("a", "a_copy", "c")], min_count=1), df)
    ids = torch.from_numpy(s.encode(df)).long()
    y = torch.from_numpy(df["label"].to_numpy(np.float32))
    torch.manual_seed(0)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[16]), gated=True)
    _fit_ungated(model, ids, y, 300)
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([1.0, 3.0, 0.5]))  # the copy has the largest gate
    search = keep_order(model, s, ids.numpy(), y.numpy(), 2)
    order = search["order"]
    assert order[0] in ("a", "a_copy") and order[1] == "c", order
    other = "a_copy" if order[0] == "a" else "a"
    assert search["shadowed"] == {other: [order[0], "copy"]}, search["shadowed"]


def test_closing_test_against_its_definition(schema_and_ids):
    """Every field open; in the gates' order, least open first, a field is closed for good unless closing it raises
    the mean BCE, each label's rows weighing the same in total, by more than 2 standard errors of the per-row
    difference (a field costing exactly nothing closes); where every field but the most open closes, the one kept is
    the field (of those tested, with a gate above 0, and the untested one) that alone gives the lowest such mean
    BCE; measured on every row of the rarer label and as many of the other's (`measured_sample`), their closed
    fields reading other rows of all those given. Computed here from that definition, on an untrained model and a
    label planted on field a."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    randomize(model)
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([2.0, -6.0, 0.5, 3.0, 1.0]))  # b's gate is shut (exactly 0)
    y_all = (ids[:, 0] % 3 == 0).float()  # planted on field a's ids
    assert 0.1 < float(y_all.mean()) < 0.45  # not balanced: a sample is measured
    all_ids = ids
    ids, y, read, w = _measured(all_ids, y_all)
    assert len(y) == 2 * int(y_all.sum()) and float(y.mean()) == 0.5
    order = ranking(model.gate.log_alpha.detach())
    assert order == [3, 0, 4, 2, 1]
    kept, tests = list(order), []
    base = every_open = _direct_losses(model, schema, ids, y, order, read=read)
    for f in reversed(order):
        if len(kept) == 1:
            break
        trial = [g for g in kept if g != f]
        loss = _direct_losses(model, schema, ids, y, trial, read=read)
        (cost, se), (set_cost, set_se) = _mean_se(w * (loss - base)), _mean_se(w * (loss - every_open))
        closed = cost <= 2 * se and set_cost <= 2 * set_se
        tests.append((schema.names[f], cost, se, set_cost, set_se, closed))
        if closed:
            kept, base = trial, loss
    last = None
    if len(kept) == 1:  # the sweep closed every field it tested: the best alone, the untested one first on ties
        last, none = kept[0], _direct_losses(model, schema, ids, y, [], read=read)
        alone = [last] + [schema.names.index(n) for n, *_ in reversed(tests) if n != "b"]
        kept = [min(alone, key=lambda g: float((w * _direct_losses(model, schema, ids, y, [g], read=read)).mean()))]
        cost, se = _mean_se(w * (none - _direct_losses(model, schema, ids, y, [last], read=read)))
    out = closing_test(model, schema, all_ids.numpy(), y_all.numpy())
    with pytest.MonkeyPatch.context() as mp:  # the ids state (beyond the memory budget) decides the same
        mp.setattr(closed_fields, "STATE_BYTES", 0)
        assert backward_sweep(model, ids.numpy(), y.numpy(), order, donors=read.numpy())[0] == kept
    assert out["order"] == [schema.names[i] for i in order] and out["rows"] == len(y_all)
    assert out["measured"] == len(y) < len(y_all)
    assert float(model.gate.deterministic()[1]) == 0.0 and out["tests"][0] == {
        "field": "b", "cost": 0.0, "se": 0.0, "set_cost": 0.0, "set_se": 0.0, "closed": True}
    assert out["kept"] == [schema.names[i] for i in kept]
    assert [(t["field"], t["closed"]) for t in out["tests"]][:len(tests)] == \
        [(n, c and schema.names.index(n) not in kept) for n, *_, c in tests]
    for t, (_, *numbers, _) in zip(out["tests"], tests):
        for key, value in zip(("cost", "se", "set_cost", "set_se"), numbers):
            assert t[key] == pytest.approx(value, rel=1e-4, abs=1e-9), (key, t)
    if last is not None:  # the untested field's record: closing it where it alone was open
        record = out["tests"][len(tests)]
        assert record["field"] == schema.names[last] and record["closed"] == (last not in kept)
        assert (record["cost"], record["se"]) == pytest.approx((cost, se), rel=1e-4, abs=1e-9)
        assert record["alone"] == {"cost": record["cost"], "se": record["se"]}
    assert backward_sweep(model, ids.numpy(), y.numpy(), order, donors=read.numpy())[0] == kept


@pytest.mark.parametrize("budget_rows,floor,read,cached", [(100, 50, 100, True), (10, 50, 50, False)])
def test_closing_test_reads_the_rows_its_state_holds(schema_and_ids, budget_rows, floor, read, cached, monkeypatch):
    """Beyond the rows whose embeddings fit the state's memory budget the closing test reads no more (the ids
    state would cost ~25x a pass on a wide table), but never fewer than SEARCH_ROWS (those through the ids state):
    with a budget of 100 rows (5 fields x 4 dims x 4 bytes a row) and a floor of 50 it decides on the first 100
    rows, as it does given those rows alone, its passes keeping the embeddings; with a budget of 10 rows, on the
    first 50, through the ids state."""
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    randomize(model)
    y = (ids[:, 0] % 2 == 0).float().numpy()
    alone = closing_test(model, schema, ids.numpy()[:read], y[:read])
    built = []
    monkeypatch.setattr(closed_fields, "STATE_BYTES", budget_rows * 5 * 4 * 4)
    monkeypatch.setattr("lightfmp.keep_rule.SEARCH_ROWS", floor)
    monkeypatch.setattr("lightfmp.keep_rule.ClosedFields",
                        lambda *a, **k: built.append(ClosedFields(*a, **k)) or built[-1])
    assert closed_fields.state_rows(model) == budget_rows < len(y)
    out = closing_test(model, schema, ids.numpy(), y)
    assert out["rows"] == read and out["kept"] == alone["kept"]
    assert [t["field"] for t in out["tests"]] == [t["field"] for t in alone["tests"]]
    for t, u in zip(out["tests"], alone["tests"]):
        assert t["closed"] == u["closed"] and t["cost"] == pytest.approx(u["cost"], rel=1e-4, abs=1e-9)
    assert built and all(p.cached == cached and p.n == out["measured"] for p in built)
    assert out["measured"] == len(measured_sample(y[:read])[0])


def _parity_model():
    """A DeepFM trained on a table whose label is field a's parity (10% flipped); b (6 values) and c (40) are noise.
    Returns the model, its schema and fresh validation rows (ids, labels)."""
    rng = np.random.default_rng(0)
    pd = __import__("pandas")

    def frame(n):
        df = pd.DataFrame({"a": rng.integers(0, 6, n).astype(str), "b": rng.integers(0, 6, n).astype(str),
                           "c": rng.integers(0, 40, n).astype(str)})
        df["label"] = (df["a"].astype(int) % 2) ^ (rng.random(n) < 0.1)
        return df
    train, valid = frame(3000), frame(3000)
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in ("a", "b", "c")], min_count=1), train)
    x, y = torch.from_numpy(s.encode(train)).long(), torch.from_numpy(train["label"].to_numpy(np.float32))
    torch.manual_seed(0)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[16]), gated=True)
    _fit_ungated(model, x, y, 200)
    return model, s, s.encode(valid), valid["label"].to_numpy(np.float32)


def test_closing_test_drops_noise_fields_and_keeps_the_signal():
    """The label is field a's parity; b and c (40 values) are noise. On fresh validation rows closing a noise field
    costs nothing (or helps: c's memorised values only add noise), so both go, though their gates are the most
    open; closing a costs far more than two standard errors, although its gate is the least open."""
    model, s, ids, labels = _parity_model()
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([0.0, 3.0, 2.0]))  # a's gate is the least open
    out = closing_test(model, s, ids, labels)
    assert out["kept"] == ["a"], out
    assert closing_scores(out)["a"] > 10.0, out
    assert [t["field"] for t in out["tests"]] == ["a", "c", "b"]  # least open gate first
    assert [t["closed"] for t in out["tests"]] == [False, True, True]


def test_where_every_other_field_closes_the_one_kept_is_the_best_alone(monkeypatch):
    """On validation rows too few to show any field's value (here: a test no cost passes), the sweep closes every
    field but the most open gate's, which it never tests. The one kept is then the field that alone gives the
    lowest logloss: a (the label is its parity), not the noise field b whose gate is the most open."""
    import lightfmp.keep_rule as keep_rule
    model, s, ids, labels = _parity_model()
    with torch.no_grad():
        model.gate.log_alpha.copy_(torch.tensor([0.0, 3.0, 2.0]))  # b's gate the most open, a's the least
    monkeypatch.setattr(keep_rule, "SIGNIFICANT_SE", float("inf"))  # no cost shows: every tested field closes
    out = closing_test(model, s, ids, labels)
    assert out["kept"] == ["a"], out
    tests = {t["field"]: t for t in out["tests"]}
    assert tests["b"]["closed"] and not tests["a"]["closed"] and tests["c"]["closed"]
    assert tests["a"]["alone"]["cost"] > 10 * tests["a"]["alone"]["se"] > 0  # closing a, alone open, costs
    assert abs(tests["b"]["alone"]["cost"]) < 3 * tests["b"]["alone"]["se"] + 1e-9  # b alone does nothing
    assert [t["field"] for t in out["tests"]] == ["a", "c", "b"]  # b last: the sweep never reached it
    sel = selection_rule(out["kept"], dict(zip(s.names, [1.0, 1.0, 1.0])), None, None, out)
    assert sel["kept_alone"] == {"field": "a", **tests["a"]["alone"]}  # metrics.json and inspect say why
    assert alone_note(sel["kept_alone"]).startswith("no tested field's closing cost passed the cut: a is kept as")
    assert set(closing_scores(out)) == {"c"}  # the choice's records are not scored against the cut
    monkeypatch.undo()
    assert closing_test(model, s, ids, labels)["kept"] == ["a"]


def _additive_model(seed: int):
    """A gated tower-less MLP whose logit is the sum of per-value effects of 2-4 fields (embed_dim 1), on 4-60 rows
    labelled by it, the gates in a random order: small tables on which the sweep often closes every field it
    tests."""
    rng = np.random.default_rng(seed)
    fields, n = int(rng.integers(2, 5)), int(rng.integers(4, 60))
    effects = [rng.normal(0, rng.choice([0.0, 0.2, 1.0]), 4) for _ in range(fields)]
    log_alpha = rng.permutation(fields).astype(np.float32) + 1.0
    rng = np.random.default_rng(seed)
    s = FeatureSchema("label", [Field(f"f{i}", "categorical", vocab=[str(v) for v in range(4)])
                                for i in range(fields)])
    ids = rng.integers(2, 6, size=(n, fields)).astype(np.int64)
    m = build_model("mlp", s, ModelConfig(embed_dim=1, hidden=[]), gated=True)
    with torch.no_grad():
        m.embedding.weight.zero_()
        for f in range(fields):
            off = int(m.embedding.field_offsets[f])
            m.embedding.weight[off + 2: off + 6, 0] = torch.tensor(effects[f], dtype=torch.float32)
        m.out.weight.fill_(1.0)
        m.out.bias.zero_()
        m.gate.log_alpha.copy_(torch.from_numpy(log_alpha))
    logit = sum(effects[f][ids[:, f] - 2] for f in range(fields))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return m.eval(), s, ids, y


@pytest.mark.parametrize("seed", [953, 1009, 1192])
def test_the_field_kept_alone_leaves_a_closed_set_within_two_standard_errors_of_every_field(seed):
    """Where the sweep closes every field it tests, the one kept is the best alone among the fields whose state (it
    alone open) is within two standard errors of every field open, as each closing of the sweep had to be; the
    sweep's last state always is. The records of that choice get no score against the cut (before: the field it
    replaced showed "closed" above the cut), and every scored record is closed exactly when its score is at most
    the cut. On these seeds' tables (the rows the test measures: `measured_sample`) the choice without the bar keeps
    a field whose state costs 2.2-2.6 standard errors."""
    model, s, ids, y = _additive_model(seed)
    out = closing_test(model, s, ids, y)
    assert any("alone" in t for t in out["tests"]), "not the case this test is about"
    rows, donors = measured_sample(y)  # the rows the test measures
    read = None if donors is None else ids[donors]
    every = ClosedFields(model, ids[rows], y[rows], list(range(len(s.names))), balanced=True, donors=read).losses()
    final = ClosedFields(model, ids[rows], y[rows], [s.names.index(out["kept"][0])], balanced=True,
                         donors=read).losses()
    cost, se = paired_difference(final, every)
    assert cost <= 2 * se
    sel = selection_rule(out["kept"], dict(zip(s.names, model.gate_values().tolist())), None, None, out)
    for t in out["tests"]:
        score = sel["scores"].get(t["field"], "none")
        if "alone" in t:
            assert score == "none"
        else:
            assert t["closed"] == (score is not None and score <= sel["cut"]), t


def test_screened_search_with_every_candidate_screened_is_the_exact_search(schema_and_ids, monkeypatch):
    """Beyond EXACT_CANDIDATES closed fields a step evaluates only the SCREENED most promising by gradient; with
    SCREENED as large as the field count it must give exactly the exhaustive order."""
    import lightfmp.keep_rule as keep_rule
    schema, ids = schema_and_ids
    torch.manual_seed(0)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    randomize(model)
    y = (torch.arange(len(ids)) % 3 == 0).float().numpy()
    exact = keep_order(model, schema, ids.numpy(), y, 5)["order"]
    monkeypatch.setattr(keep_rule, "EXACT_CANDIDATES", 0)
    monkeypatch.setattr(keep_rule, "SCREENED", 5)
    assert keep_order(model, schema, ids.numpy(), y, 5)["order"] == exact
    monkeypatch.setattr(keep_rule, "SCREENED", 1)  # one candidate a step: still a complete order of all fields
    assert sorted(keep_order(model, schema, ids.numpy(), y, 5)["order"]) == sorted(schema.names)


def test_closing_test_keeps_weak_fields_that_matter_together():
    """Eight binary fields, each adding 0.2 to the label's logit, judged on 400 validation rows: closed one at a
    time, each costs under two standard errors given the others, and the per-field test alone (its definition,
    computed here) would close a set the same rows show the model needs (more than two standard errors against
    every field open). The closing test also tests each closing with the fields closed before it, so the set it
    closes is not measurably needed, and it keeps more fields."""
    rng = np.random.default_rng(1)
    pd = __import__("pandas")
    names = [f"w{i}" for i in range(8)]

    def frame(n):
        df = pd.DataFrame({f: rng.integers(0, 2, n).astype(str) for f in names})
        logit = 0.2 * sum(2 * df[f].astype(int) - 1 for f in names)
        df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        return df
    train, valid = frame(20000), frame(400)
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in names], min_count=1), train)
    x, y = torch.from_numpy(s.encode(train)).long(), torch.from_numpy(train["label"].to_numpy(np.float32))
    torch.manual_seed(0)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[16]), gated=True)
    _fit_ungated(model, x, y, 200)
    all_ids, all_y = torch.from_numpy(s.encode(valid)).long(), torch.from_numpy(valid["label"].to_numpy(np.float32))
    ids, vy, read, w = _measured(all_ids, all_y)  # the rows the closing test measures
    order = ranking(model.gate.log_alpha.detach())
    every_open = _direct_losses(model, s, ids, vy, order, read=read)

    def set_cost_in_se(open_fields):
        cost, se = _mean_se(w * (_direct_losses(model, s, ids, vy, open_fields, read=read) - every_open))
        return cost / se

    alone, base = list(order), every_open  # the per-field test alone
    for f in reversed(order):
        loss = _direct_losses(model, s, ids, vy, [g for g in alone if g != f], read=read)
        cost, se = _mean_se(w * (loss - base))
        if len(alone) > 1 and cost <= 2 * se:
            alone, base = [g for g in alone if g != f], loss
    assert set_cost_in_se(alone) > 2.0, alone  # the situation the set test is for

    out = closing_test(model, s, all_ids.numpy(), all_y.numpy())
    kept = [s.names.index(n) for n in out["kept"]]
    assert set_cost_in_se(kept) <= 2.0, out
    assert len(kept) > len(alone), (out["kept"], alone)
    own_only = [t for t in out["tests"] if not t["closed"] and t["cost"] <= 2 * t["se"]]
    assert own_only and all(t["set_cost"] > 2 * t["set_se"] for t in own_only), out  # kept by the set test alone
    scores = closing_scores(out)
    assert all(scores[t["field"]] > 2.0 for t in own_only)  # inspect shows them above the cut


def test_the_sets_are_compared_on_rows_the_search_did_not_read_as_many_of_each_label():
    """Of each label the rows the search did not read (every row of a label where the search read more of its rows
    than it left), as many of each label as the fewer has, spread evenly; every row where that leaves fewer than
    2."""
    from lightfmp.keep_rule import held_out_rows, search_rows
    labels = (np.arange(10_000) % 50 == 0).astype(np.float32)  # 2% positives: the search reads all 200
    rows = search_rows(labels)
    held = held_out_rows(labels, rows)
    pos, neg = held[labels[held] == 1], held[labels[held] == 0]
    assert np.array_equal(pos, np.flatnonzero(labels == 1)) and len(neg) == 200  # every positive, 200 negatives
    assert not np.isin(neg, rows).any() and neg[0] < 100 and neg[-1] > 9_900  # not searched, spread over all
    labels = (np.arange(20_000) % 4 == 0).astype(np.float32)  # 25%: 2,048 of 5,000 positives searched
    rows = search_rows(labels)
    held = held_out_rows(labels, rows)
    assert not np.isin(held, rows).any() and np.count_nonzero(labels[held] == 1) == 5_000 - 2_048
    assert np.count_nonzero(labels[held] == 0) == 5_000 - 2_048
    labels = np.zeros(100_000, np.float32)
    labels[:2100] = 1  # the search reads 2,048 of 2,100: the 52 left would carry every positive's weight
    held = held_out_rows(labels, search_rows(labels))
    assert np.array_equal(held[:2100], np.arange(2100)) and len(held) == 4200 and held[-1] > 99_000
    assert np.array_equal(held_out_rows(np.r_[np.ones(3), np.zeros(3)], np.arange(5)), np.arange(6))  # 1 left
    assert np.array_equal(held_out_rows(np.ones(2), np.arange(1)), np.arange(2))  # 1 row would be held: every row


def test_the_costliest_set_fills_k_with_what_the_copy_rule_passed_over():
    """Two copies and two other fields, K = 4: the copy rule leaves 3; the fourth place goes to the passed-over copy
    (as the forward order's last places go to copies), so two K-sets are compared."""
    from lightfmp.groupings import Groupings
    from lightfmp.keep_rule import costliest_set
    rng = np.random.default_rng(0)
    n = 3000
    a, b, c = rng.integers(0, 6, n), rng.integers(0, 6, n), rng.integers(0, 6, n)
    df = __import__("pandas").DataFrame({"a": a, "a2": a, "b": b, "c": c}).astype(str)
    df["label"] = (rng.random(n) < 1 / (1 + np.exp(-(a - 2.5) * 0.6 - (b - 2.5) * 0.3))).astype(int)
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in ("a", "a2", "b", "c")], min_count=1), df)
    ids = s.encode(df)
    torch.manual_seed(0)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    _fit_ungated(model, torch.from_numpy(ids).long(), torch.from_numpy(df["label"].to_numpy(np.float32)), 100)
    g = Groupings(ids, model.embedding.slot_field.numpy())
    assert g.copies() == {0: [1], 1: [0]}
    got = costliest_set(model, ids, df["label"].to_numpy(np.float32), 4, groupings=g)
    assert sorted(got) == [0, 1, 2, 3] and len(got) == 4
    three = costliest_set(model, ids, df["label"].to_numpy(np.float32), 3, groupings=g)
    assert len(three) == 3 and not {0, 1} <= set(three)  # within K the copy rule holds


def test_keep_k_compares_the_sets_on_label_weighted_held_out_rows(monkeypatch):
    """20,000 rows at 25% positives: the comparison reads rows the search did not read, as many of each label, each
    label's rows weighing the same in total there as in the search (`by_label`), and a NaN loss of the second set
    never chooses it. Both the search and the comparison read closed fields from donors of every row given
    (`donor_rows`, seeded: the search's rows' first, then the held-out rows'), not from the sample's own rows."""
    import lightfmp.keep_rule as keep_rule
    rng = np.random.default_rng(0)
    n = 20000
    df = __import__("pandas").DataFrame({f: rng.integers(0, 4, n) for f in ("a", "b", "c")}).astype(str)
    df["label"] = (np.arange(n) % 4 == 0).astype(int)
    s = fit_schema(FeatureSchema("label", [Field(f, "categorical") for f in ("a", "b", "c")], min_count=1), df)
    torch.manual_seed(0)
    model = build_model("deepfm", s, ModelConfig(embed_dim=4, hidden=[8]), gated=True)
    seen = {}
    real = keep_rule.compare_sets

    def spy(model, ids, labels, first, second, device="cpu", weights=None, donors=None):
        seen.update(labels=labels, weights=weights, donors=donors)
        one, two = real(model, ids, labels, first, second, device, weights, donors)
        return one, np.full_like(two, np.nan)
    monkeypatch.setattr(keep_rule, "forward_order",
                        lambda *a, **k: seen.update(search=a[-1], search_weights=a[-2]) or [0, 1, 2])
    monkeypatch.setattr(keep_rule, "costliest_set",
                        lambda *a, **k: seen.update(costliest=a[-1], costliest_weights=a[-2]) or [2])
    y = df["label"].to_numpy(np.float32)
    monkeypatch.setattr(keep_rule, "compare_sets", spy)
    ids = s.encode(df)
    out = keep_rule.keep_order(model, s, ids, y, 1)
    rows = keep_rule.search_rows(y)
    held = np.sort(np.r_[np.setdiff1d(np.flatnonzero(y == 1), rows),
                         np.setdiff1d(np.flatnonzero(y == 0), rows)[keep_rule.spread(15_000 - 2048, 5_000 - 2048)]])
    assert len(rows) == 4096 and np.array_equal(seen["labels"], y[held])
    for labels, w in [(y[rows], seen["search_weights"]), (y[rows], seen["costliest_weights"]),
                      (seen["labels"], seen["weights"])]:  # each label half of the weight, the mean 1
        assert w is not None and len(w) == len(labels) and np.mean(w) == pytest.approx(1.0)
        assert np.sum(w[labels == 1]) == pytest.approx(np.sum(w[labels == 0]))
    draw = np.random.default_rng(0)
    searched = donor_rows(n, rows, draw)
    assert np.array_equal(seen["search"], ids[searched]) and np.array_equal(seen["costliest"], ids[searched])
    assert np.array_equal(seen["donors"], ids[donor_rows(n, held, draw)])
    assert out["alternative"]["held_out"] and not out["alternative"]["chosen"] and out["order"][0] == "a"


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_a_pruned_model_in_float64_computes_what_it_does_in_float32(schema_and_ids, backbone):
    """The multi-hot pooling's stand-in gates of an ungated (pruned) model take the table's dtype: in float64 it
    raised a dtype mismatch; and it computes the float32 model's output to float32's precision."""
    schema, ids = schema_and_ids
    model = build_model(backbone, schema, ModelConfig(embed_dim=6, hidden=[16, 8], cross_layers=2), gated=True)
    randomize(model)
    model.eval()
    pruned, kept_schema = prune_model(model, schema, ["a", "x", "tags"])
    cols = kept_columns(schema, ids, kept_schema)
    with torch.no_grad():
        single = pruned(cols)
        double = pruned.double()(cols)
    assert double.dtype == torch.float64
    assert torch.allclose(double.float(), single, atol=1e-5)

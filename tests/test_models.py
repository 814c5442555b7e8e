"""lightfmp/models, lightfmp/embedding.py and kernels/op.py: decisions a mutation audit found no other test pinned."""
import pytest
import torch

import lightfmp.models.base as model_base
from lightfmp.errors import LightFMPError
from lightfmp.models import ModelConfig, build_model
from lightfmp.schema import FeatureSchema, Field


def _schema(n_vocab: int = 1000, fields: int = 2) -> FeatureSchema:
    return FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(n_vocab)])
                               for i in range(fields)])


def _machine_of(monkeypatch, nbytes: int) -> None:
    """A machine whose physical memory is `nbytes` bytes (page size 1)."""
    monkeypatch.setattr(model_base.os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else nbytes)


# -- check_fits: the bytes a parameter costs, the boundary, the parts that are counted --------------------------------

@pytest.mark.parametrize("backbone,linear", [("deepfm", 1), ("widedeep", 1), ("mlp", 0)])
def test_the_embedding_tables_need_sixteen_bytes_a_parameter_on_the_cpu_first_order_rows_included(
        monkeypatch, backbone, linear):
    """Kills: HOST_BYTES cpu 16 -> 4; `>` -> `>=` (a model that exactly fits is refused); the first-order table
    (`+ self.uses_linear`) left out of the embedding's count."""
    schema = _schema()
    rows = sum(f.vocab_size for f in schema.fields)
    D = 8
    need = rows * (D + linear) * 16
    cfg = ModelConfig(embed_dim=D, hidden=[4])
    _machine_of(monkeypatch, need)  # exactly enough: built
    build_model(backbone, schema, cfg, trains_on="cpu")
    _machine_of(monkeypatch, need - 1)  # one byte short: refused, naming the embedding
    with pytest.raises(LightFMPError, match=rf"^--embed-dim {D} over {rows:,} table rows: {rows * (D + linear):,} "
                                            r"parameters, .* GiB to train \(weights, gradients, Adam's moments\)"):
        build_model(backbone, schema, cfg, trains_on="cpu")


def test_a_model_for_the_gpu_needs_four_bytes_a_parameter_of_host_memory(monkeypatch):
    """Kills: the device read as the CPU (per = 16 for "cuda"), and HOST_BYTES cuda 4 -> 16."""
    schema = _schema()
    rows = sum(f.vocab_size for f in schema.fields)
    need = rows * 9 * 4
    cfg = ModelConfig(embed_dim=8, hidden=[4])
    _machine_of(monkeypatch, need)
    build_model("deepfm", schema, cfg, trains_on="cuda")
    _machine_of(monkeypatch, need - 1)
    with pytest.raises(LightFMPError, match=r"the weights, before the GPU"):
        build_model("deepfm", schema, cfg, trains_on="cuda")


def test_the_tower_is_refused_before_its_layers_are_built(monkeypatch):
    """Kills: mlp()'s check_fits dropped (or its count): a tower too large for the machine is built layer by layer."""
    schema = _schema(n_vocab=10)
    rows = sum(f.vocab_size for f in schema.fields)
    cfg = ModelConfig(embed_dim=4, hidden=[10_000, 10_000])
    tower = (8 + 1) * 10_000 + (10_000 + 1) * 10_000
    _machine_of(monkeypatch, tower * 16 - 1)  # the embedding fits easily, the tower by one byte not
    assert rows * 4 * 16 < tower * 16
    with pytest.raises(LightFMPError, match=rf"^--hidden 10000,10000 over 8 inputs: {tower:,} parameters"):
        build_model("mlp", schema, cfg, trains_on="cpu")


def test_a_tower_of_many_layers_is_named_by_its_first_eight(monkeypatch):
    """The refusal's `--hidden` text: the first eight sizes, then the count."""
    _machine_of(monkeypatch, 10_000)
    cfg = ModelConfig(embed_dim=2, hidden=[64] * 10)
    with pytest.raises(LightFMPError, match=r"^--hidden 64,64,64,64,64,64,64,64,\.\.\. \(10 layers\) over 4 inputs"):
        build_model("mlp", _schema(n_vocab=3), cfg, trains_on="cpu")


def test_dcnv2s_cross_layers_are_counted(monkeypatch):
    """Kills: DCNv2.build's check_fits dropped (or its count): L full-rank dim x dim cross layers."""
    schema = _schema(n_vocab=10, fields=4)
    cfg = ModelConfig(embed_dim=8, hidden=[4], cross_layers=50)
    dim = 32
    cross = 50 * (dim + 1) * dim
    _machine_of(monkeypatch, cross * 16 - 1)
    with pytest.raises(LightFMPError, match=rf"^--cross-layers 50 over 4 fields x 8 dims: {cross:,} parameters"):
        build_model("dcnv2", schema, cfg, trains_on="cpu")
    _machine_of(monkeypatch, cross * 16)
    build_model("dcnv2", schema, cfg, trains_on="cpu")



# -- kernels/op.py --------------------------------------------------------------------------------------------------

from lightfmp.kernels import gated_embedding  # noqa: E402


def test_vocab_sizes_of_the_wrong_shape_are_refused_not_broadcast():
    """Kills: _validate's vocab_sizes shape check dropped: a [1] vocab_sizes broadcasts over every field, so the
    other fields' ids read the OOV row (field 1's id 4 < its vocab 5 but >= 3) silently."""
    ids = torch.tensor([[2, 4]])
    w = torch.arange(10.0).unsqueeze(1)
    offs = torch.tensor([0, 5])
    with pytest.raises(ValueError, match=r"vocab_sizes must be \[F=2\], got \(1,\)"):
        gated_embedding(ids, w, offs, None, vocab_sizes=torch.tensor([3]))
    with pytest.raises(ValueError, match=r"vocab_sizes must be \[F=2\], got \(3,\)"):
        gated_embedding(ids, w, offs, torch.ones(2), vocab_sizes=torch.tensor([5, 5, 5]))
    assert gated_embedding(ids, w, offs, None, vocab_sizes=torch.tensor([5, 5])).flatten().tolist() == [2.0, 9.0]


def test_sparse_grad_without_gates_gives_a_sparse_weight_gradient():
    """Kills: the gate-less plain gather taking F.embedding(sparse=False) under sparse_grad=True (a dense [R, D]
    gradient where the caller asked for the touched rows: an ungated model's --sparse-embeddings)."""
    ids = torch.tensor([[0, 1], [2, 1]])
    w = torch.randn(6, 3, requires_grad=True)
    out = gated_embedding(ids, w, torch.tensor([0, 3]), None, sparse_grad=True)
    out.sum().backward()
    assert w.grad.is_sparse
    want = torch.zeros(6, 3)
    want[[0, 2, 4]] = torch.tensor([1.0, 1.0, 2.0]).unsqueeze(1)  # row 4 = field 1's id 1, read twice
    assert torch.equal(w.grad.to_dense(), want)


def test_an_ungated_models_sparse_table_gradient_is_sparse():
    """The same through the model front end: no gates and no multi-hot field is the gate-less path."""
    model = build_model("mlp", _schema(n_vocab=5), ModelConfig(embed_dim=2, hidden=[4]))
    model.embedding.sparse = True
    model(torch.tensor([[2, 3], [4, 2]])).sum().backward()
    assert model.embedding.weight.grad.is_sparse


def test_the_gradient_of_a_leaf_table_alone_through_autograd_grad():
    """Kills: needed() answering False where torch cannot say whether a leaf's node will run (autograd.grad for the
    table itself, a leaf passed straight in): the fused CPU path would give no weight gradient and autograd.grad
    fails with 'appears to not have been used in the graph'."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 3, (5, 2), generator=g)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gates = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    offs = torch.tensor([0, 3])
    up = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    (gw,) = torch.autograd.grad((gated_embedding(ids, w, offs, gates, backend="torch") * up).sum(), [w])
    (ref,) = torch.autograd.grad((gated_embedding(ids, w, offs, gates, backend="reference") * up).sum(), [w])
    torch.testing.assert_close(gw, ref, rtol=1e-12, atol=1e-12)
    (gg,) = torch.autograd.grad((gated_embedding(ids, w, offs, gates, backend="torch") * up).sum(), [gates])
    (ref_g,) = torch.autograd.grad((gated_embedding(ids, w, offs, gates, backend="reference") * up).sum(), [gates])
    torch.testing.assert_close(gg, ref_g, rtol=1e-12, atol=1e-12)


# -- embedding.py / base.py -----------------------------------------------------------------------------------------

def test_tables_start_at_the_documented_scale():
    """docs/benchmarks.md: 'its embeddings start at std 0.01'; the first-order table starts at 0 (a fresh DeepFM /
    Wide & Deep scores its first-order part as 0). Kills: the std constant changed; the first-order init changed."""
    torch.manual_seed(0)
    model = build_model("deepfm", _schema(n_vocab=2000, fields=2), ModelConfig(embed_dim=16, hidden=[4]))
    w = model.embedding.weight.detach()
    assert abs(float(w.mean())) < 1e-3 and 0.0095 < float(w.std()) < 0.0105
    assert torch.count_nonzero(model.embedding.linear) == 0
    _, lin = model.embedding(torch.tensor([[2, 3], [5, 7]]))
    assert torch.equal(lin, torch.zeros(2, 2))


def test_a_categorical_fields_id_zero_reads_its_row_beside_a_multi_hot_field():
    """Only multi-hot slots treat PAD_ID as padding: a categorical field's id 0 reads its row 0, with or without a
    multi-hot field in the schema. Kills: `valid` ignoring `slot_is_multi` (id 0 of every field zeroed)."""
    cat = Field("a", "categorical", vocab=["x", "y"])
    with_multi = FeatureSchema("y", [cat, Field("t", "multi_hot", vocab=list("pq"), separator="|", max_len=2)])
    torch.manual_seed(0)
    model = build_model("mlp", with_multi, ModelConfig(embed_dim=3, hidden=[4])).eval()
    emb, _ = model.embedding(torch.tensor([[0, 2, 3]]))
    assert torch.equal(emb[0, 0], model.embedding.weight[0].detach())


def test_num_params_leaves_the_gate_out():
    """What the metrics' params.before/after and the bench's params report: serving parameters, not the gate's.
    Kills: num_params counting the gate's log_alpha."""
    schema, cfg = _schema(n_vocab=5, fields=3), ModelConfig(embed_dim=4, hidden=[8])
    gated, plain = build_model("deepfm", schema, cfg, gated=True), build_model("deepfm", schema, cfg)
    assert gated.num_params() == plain.num_params() == sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in gated.parameters()) == gated.num_params() + 3



@pytest.mark.parametrize("backbone", ["mlp", "deepfm", "widedeep"])
def test_a_model_without_hidden_layers_prunes_its_output_layer(backbone):
    """No hidden layers: the output layer is the reader of the flattened embeddings, so pruning slices its columns.
    Kills: prune_inputs' `else` branch dropped (the pruned model then fails on its narrower input)."""
    from lightfmp.pruning import prune_model
    schema = _schema(n_vocab=4, fields=3)
    torch.manual_seed(0)
    model = build_model(backbone, schema, ModelConfig(embed_dim=2, hidden=[]), gated=True)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    model.eval()
    pruned, kept = prune_model(model, schema, ["f0", "f2"])
    assert pruned.out.in_features == 4
    ids = torch.tensor([[2, 3, 4], [5, 2, 3]])
    z = model.gate_values()
    want = model(ids, torch.tensor([float(z[0]), 0.0, float(z[2])]))
    torch.testing.assert_close(pruned.eval()(ids[:, [0, 2]]), want, rtol=1e-5, atol=1e-6)


def test_an_ungated_models_gate_values_are_ones():
    """Kills: gate_values() of a model without a gate answering anything but ones (the docstring's '1 without a
    gate'): passing them back must score as the model alone does."""
    model = build_model("deepfm", _schema(n_vocab=4, fields=3), ModelConfig(embed_dim=2, hidden=[4])).eval()
    assert torch.equal(model.gate_values(), torch.ones(3))
    ids = torch.tensor([[2, 3, 4]])
    assert torch.equal(model(ids, model.gate_values()), model(ids))


def test_backbone_names_are_case_insensitive_and_an_unknown_one_lists_the_choices():
    """Kills: build_model looking the name up without .lower() ("DeepFM" refused)."""
    from lightfmp.models import DeepFM
    assert isinstance(build_model("DeepFM", _schema(n_vocab=3), ModelConfig(embed_dim=2, hidden=[4])), DeepFM)
    with pytest.raises(LightFMPError, match=r"^unknown backbone 'resnet' \(choose from mlp, deepfm, dcnv2, widedeep\)$"):
        build_model("resnet", _schema(n_vocab=3), ModelConfig(embed_dim=2, hidden=[4]))


def test_the_fm_term_is_the_sum_over_field_pairs_of_their_inner_products():
    """Rendle's FM: sum_{i<j} <e_i, e_j>, against the explicit pair loop in float64.
    Kills: the 0.5 of FactorizationMachine.from_sums dropped (every pair counted twice)."""
    from lightfmp.models.deepfm import FactorizationMachine
    emb = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = sum((emb[:, i] * emb[:, j]).sum(1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(FactorizationMachine()(emb), want, rtol=1e-12, atol=1e-12)

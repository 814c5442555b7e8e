"""lightfmp/models/{dense,dcnv2,deepfm,widedeep}.py and lightfmp/embedding.py: decisions a second mutation audit
found no other test pinned (tests/test_models.py holds the first audit's). Closed forms in float64 where numbers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightfmp.models import ModelConfig, build_model
from lightfmp.models import dense
from lightfmp.models.dense import MIN_MACS, MIN_OUT, Linear, Tower, _onednn_linear, _use_onednn, linear
from lightfmp.schema import FeatureSchema, Field

needs_onednn = pytest.mark.skipif(_onednn_linear() is None, reason="this torch has no oneDNN linear op")


def _schema(n_vocab: int = 5, fields: int = 3) -> FeatureSchema:
    return FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(n_vocab)])
                               for i in range(fields)])


def _randomised(model, seed=0, scale=0.5):
    """Every parameter (biases included, which start at zero) drawn at random, in float64."""
    g = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def _tower_ref(tower, x):
    """An mlp() tower by hand: relu(x W^T + b) per Linear (dropout 0)."""
    for m in tower:
        if isinstance(m, nn.Linear):
            x = torch.relu(x @ m.weight.T + m.bias)
    return x


# -- dense.py -----------------------------------------------------------------------------------------------------

@needs_onednn
def test_the_fast_path_thresholds_are_exact(monkeypatch):
    """oneDNN takes a layer from MIN_OUT outputs and MIN_MACS multiply-adds, not below: a one-logit output layer
    never goes there however large the batch. Kills: the MIN_OUT test dropped / MIN_OUT lowered; MIN_MACS lowered;
    either `>=` turned into `>`."""
    assert (MIN_OUT, MIN_MACS) == (16, 1 << 20)
    z = torch.zeros
    assert not _use_onednn(z(1 << 16, 256), z(1, 256))                  # 16M MACs, one output: plain
    assert not _use_onednn(z(4096, 256), z(MIN_OUT - 1, 256))           # 15.7M MACs, 15 outputs: plain
    assert _use_onednn(z(4096, 256), z(MIN_OUT, 256))                   # exactly MIN_OUT outputs: oneDNN
    assert _use_onednn(z(64, 128), z(128, 128))                         # exactly 1 << 20 MACs: oneDNN
    assert not _use_onednn(z(63, 128), z(128, 128))                     # one row fewer: plain
    # and the model's output layer scores through F.linear even with the fast path preferred
    monkeypatch.setattr(dense, "onednn_preferred", lambda: True)
    calls = []
    monkeypatch.setattr(dense._OneDNNLinear, "apply", lambda *a: calls.append(a[1].shape) or F.linear(*a[:3]))
    Linear(256, 1)(torch.randn(1 << 13, 256))
    assert calls == []


def test_tower_fuses_a_relu_only_where_an_nn_relu_follows():
    """A Linear followed by anything but nn.ReLU (or by nothing) runs without a ReLU. Kills: the `type(...) is
    nn.ReLU` test loosened (a ReLU applied before an Identity / Sigmoid / Dropout); the bounds check dropped (a
    trailing Linear)."""
    torch.manual_seed(0)
    x = torch.randn(7, 4, dtype=torch.float64)
    lin = Linear(4, 5, dtype=torch.float64)
    want = x @ lin.weight.T + lin.bias
    assert (want < 0).any()
    for follower in (nn.Identity(), nn.Sigmoid(), nn.Dropout(0.0)):
        out = Tower(lin, follower)(x)
        torch.testing.assert_close(out, follower(want), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Tower(lin)(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Tower(lin, nn.ReLU())(x), torch.relu(want), rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # the graph ONNX export traces is what is compared
def test_a_traced_tower_is_the_plain_sequentials_graph():
    """Under a tracer the Tower runs module by module: the traced graph is the nn.Sequential's (an out-of-place
    aten::relu, as export expects), not the eager fused call's in-place relu_. Kills: Tower.forward's tracing()
    branch dropped."""
    torch.manual_seed(0)
    tower = Tower(Linear(6, 5), nn.ReLU(), Linear(5, 3), nn.ReLU())
    plain = nn.Sequential(*tower)
    x = torch.randn(2, 6)

    def kinds(m):
        return [n.kind() for n in torch.jit.trace(m, x).inlined_graph.nodes() if n.kind().startswith("aten::")]
    assert kinds(tower) == kinds(plain)
    assert "aten::relu_" not in kinds(tower)


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
def test_the_onednn_layer_against_float64(relu, monkeypatch):
    """The fused layer's output and all three gradients against F.linear (+ F.relu) in float64: the ReLU mask in
    the backward, the bias gradient a sum over the batch (not a mean)."""
    monkeypatch.setattr(dense, "onednn_preferred", lambda: True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 64, generator=g)
    w = torch.randn(64, 64, generator=g) / 8
    b = torch.randn(64, generator=g)
    up = torch.randn(256, 64, generator=g)
    assert _use_onednn(x, w)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = linear(*leaves, relu=relu)
    out.backward(up)
    ref_leaves = [t.double().requires_grad_() for t in (x, w, b)]
    ref = F.linear(*ref_leaves)
    ref = F.relu(ref) if relu else ref
    ref.backward(up.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-3)


# -- dcnv2.py -----------------------------------------------------------------------------------------------------

def test_dcnv2_is_its_cross_layers_and_tower_by_hand():
    """x_{l+1} = x0 * (W_l x_l + b_l) + x_l for each cross layer, a tower over x0, one output layer over
    [x_L, tower]: against the formula in float64. Kills: the residual `+ x` dropped; `x0 -> x` in the product;
    the layer reading x0 instead of x_l; the tower reading x_L instead of x0; the parts' order swapped."""
    model = _randomised(build_model("dcnv2", _schema(fields=3), ModelConfig(embed_dim=2, hidden=[4], cross_layers=2)))
    emb = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0 = emb.flatten(1)
    x = x0
    for layer in model.cross:
        x = x0 * (x @ layer.weight.T + layer.bias) + x
    deep = _tower_ref(model.deep, x0)
    want = (torch.cat([x, deep], 1) @ model.out.weight.T + model.out.bias).squeeze(-1)
    torch.testing.assert_close(model.interact(emb, None), want, rtol=1e-12, atol=1e-12)


# -- deepfm.py / widedeep.py --------------------------------------------------------------------------------------

def test_deepfm_is_first_order_plus_bias_plus_fm_plus_tower_by_hand():
    """logit = sum_f w_f + b + sum_{i<j} <e_i, e_j> + out(tower(e)), in float64. Kills: the first-order
    `lin.sum(1)` dropped; the bias dropped."""
    model = _randomised(build_model("deepfm", _schema(fields=3), ModelConfig(embed_dim=2, hidden=[4])))
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    lin = torch.randn(5, 3, generator=g, dtype=torch.float64)
    fm = sum((emb[:, i] * emb[:, j]).sum(1) for i in range(3) for j in range(i + 1, 3))
    deep = (_tower_ref(model.deep, emb.flatten(1)) @ model.out.weight.T + model.out.bias).squeeze(-1)
    want = lin.sum(1) + model.bias + fm + deep
    torch.testing.assert_close(model.interact(emb, lin), want, rtol=1e-12, atol=1e-12)


def test_the_fm_sums_assembled_from_field_terms_are_the_fm():
    """What lightfmp.closed_fields relies on: a field's terms of the two sums are its block and its block
    squared, so summing them over fields and calling from_sums gives the FM term. Kills: `pow(2) -> abs()` in
    field_terms."""
    from lightfmp.models.deepfm import FactorizationMachine
    fm = FactorizationMachine()
    emb = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    terms = [fm.field_terms(emb[:, f]) for f in range(3)]
    total, squares = (sum(t[k] for t in terms) for k in range(2))
    torch.testing.assert_close(fm.from_sums(total, squares), fm(emb), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms[0][1], emb[:, 0] * emb[:, 0], rtol=0, atol=0)


def test_widedeep_is_first_order_plus_bias_plus_tower_by_hand():
    """logit = sum_f w_f + b + out(tower(e)), in float64. Kills: the bias dropped; the first-order sum dropped."""
    model = _randomised(build_model("widedeep", _schema(fields=3), ModelConfig(embed_dim=2, hidden=[4])))
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    lin = torch.randn(5, 3, generator=g, dtype=torch.float64)
    deep = (_tower_ref(model.deep, emb.flatten(1)) @ model.out.weight.T + model.out.bias).squeeze(-1)
    torch.testing.assert_close(model.interact(emb, lin), lin.sum(1) + model.bias + deep, rtol=1e-12, atol=1e-12)


# -- embedding.py -------------------------------------------------------------------------------------------------

def test_the_oov_clamp_is_for_scoring_only(monkeypatch):
    """Training reads encoded rows, always in range: its lookups skip the clamp (no vocab_sizes, one torch.where
    per lookup less); an eval-mode model clamps ids given from outside. Kills: the clamp applied while training."""
    import lightfmp.embedding as embedding
    seen = []
    real = embedding.gated_embedding
    monkeypatch.setattr(embedding, "gated_embedding",
                        lambda *a, **k: seen.append(k.get("vocab_sizes")) or real(*a, **k))
    model = build_model("deepfm", _schema(fields=3), ModelConfig(embed_dim=2, hidden=[4]), gated=True)
    ids = torch.tensor([[2, 3, 4], [5, 6, 2]])
    model.train()(ids)
    assert len(seen) == 2 and all(v is None for v in seen)   # the embedding and the first-order table
    seen.clear()
    model.eval()(ids)
    assert len(seen) == 2 and all(v is not None for v in seen)


@needs_onednn
def test_a_layer_whose_input_needs_no_gradient_runs_no_input_gradient_gemm(monkeypatch):
    """The backward runs the input-gradient GEMM only where that gradient is used: for an input that needs none,
    the forward and the weight gradient alone. Kills: `if needed(ctx, 0)` dropped (a wasted GEMM)."""
    monkeypatch.setattr(dense, "onednn_preferred", lambda: True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    w = torch.randn(64, 64, generator=g).requires_grad_()
    b = torch.randn(64, generator=g).requires_grad_()
    calls = []
    op = _onednn_linear()
    monkeypatch.setattr(dense, "_onednn_linear", lambda: lambda *a: calls.append(1) or op(*a))
    linear(x, w, b, relu=True).sum().backward()
    assert len(calls) == 2 and w.grad is not None and b.grad is not None


@needs_onednn
def test_a_three_dimensional_input_takes_the_plain_path_and_trains(monkeypatch):
    """oneDNN takes 2-d inputs only (its backward transposes them): a [B, T, in] input runs through F.linear,
    forward and backward. Kills: the `x.dim() == 2` test dropped (the backward then fails on grad.t())."""
    monkeypatch.setattr(dense, "onednn_preferred", lambda: True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, 64, generator=g, requires_grad=True)   # 256 x 64 x 64 = MIN_MACS by its first dim
    w = torch.randn(64, 64, generator=g, requires_grad=True)
    b = torch.randn(64, generator=g, requires_grad=True)
    assert not _use_onednn(x, w)
    linear(x, w, b, relu=True).sum().backward()
    gx, gw, gb = x.grad, w.grad, b.grad
    for t in (x, w, b):
        t.grad = None
    F.relu(F.linear(x, w, b)).sum().backward()
    torch.testing.assert_close((gx, gw, gb), (x.grad, w.grad, b.grad), rtol=1e-5, atol=1e-4)


def test_only_cpu_tensors_take_the_onednn_path():
    """Kills: the `x.device.type == "cpu"` test dropped (a CUDA / meta tensor handed to a CPU-only op)."""
    assert not _use_onednn(torch.zeros(4096, 256, device="meta"), torch.zeros(256, 256, device="meta"))

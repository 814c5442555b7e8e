"""The CPU training fast paths compute what the plain paths compute: oneDNN dense layers (lightfmp.models.dense),
the gather without gates (gated_embedding with gates=None), the fused Adam step; training through them is
reproducible run to run; and the dense layers' library is chosen by the CPU's vendor."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightfmp.kernels import gated_embedding
from lightfmp.models import ModelConfig, build_model
from lightfmp.models.base import mlp, slice_linear
from lightfmp.models import dense
from lightfmp.models.dense import Linear, Tower, _onednn_linear, _use_onednn, linear
from lightfmp.rows import ArrayRows
from lightfmp.schema import FeatureSchema, Field
from lightfmp.training import TrainConfig, _weight_optimizers, fit

needs_onednn = pytest.mark.skipif(_onednn_linear() is None, reason="this torch has no oneDNN linear op")


@pytest.fixture
def onednn(monkeypatch):
    """The oneDNN path wherever this torch has it, whatever this CPU's vendor would choose."""
    monkeypatch.setattr(dense, "onednn_preferred", lambda: True)


def _leaves(b=512, i=192, o=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, i, generator=g).requires_grad_()
    w = (torch.randn(o, i, generator=g) / i ** 0.5).requires_grad_()
    bias = torch.randn(o, generator=g).requires_grad_()
    return x, w, bias


def _grads(fn, leaves, seed=1):
    out = fn(*leaves)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    return out.detach(), grads


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
def test_onednn_linear_matches_the_plain_linear(relu, onednn):
    leaves = _leaves()
    assert _use_onednn(leaves[0], leaves[1])
    fast, fast_g = _grads(lambda x, w, b: linear(x, w, b, relu=relu), leaves)
    plain, plain_g = _grads(lambda x, w, b: F.relu(F.linear(x, w, b)) if relu else F.linear(x, w, b), leaves)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_g, plain_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    if relu:
        assert (fast >= 0).all() and (fast == 0).any()


@needs_onednn
def test_the_input_gradient_alone_skips_the_weight_gemm(monkeypatch, onednn):
    """A gate step asks autograd.grad for the gates' gradient only: no weight-gradient GEMM is run for it."""
    x, w, b = _leaves()
    calls = []
    op = _onednn_linear()
    monkeypatch.setattr(dense, "_onednn_linear", lambda: lambda *a: calls.append(1) or op(*a))
    (gx,) = torch.autograd.grad(linear(x * 1.0, w, b, relu=True).sum(), [x])
    assert len(calls) == 2 and w.grad is None and b.grad is None   # the forward and the input gradient
    (ref,) = torch.autograd.grad(F.relu(F.linear(x * 1.0, w, b)).sum(), [x])
    torch.testing.assert_close(gx, ref, rtol=1e-5, atol=1e-5)
    linear(x, w, b, relu=True).sum().backward()   # a full backward: all three GEMMs
    assert len(calls) == 5 and w.grad is not None and b.grad is not None


def test_gate_gradient_alone_matches_the_full_backward():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (64, 3), generator=g)
    offs = torch.tensor([0, 6, 12])
    w = torch.randn(18, 5, generator=g).requires_grad_()
    gates = torch.rand(3, generator=g).requires_grad_()
    scatters, index_add = [], torch.Tensor.index_add_

    def counted(self, *a, **k):
        scatters.append(1)
        return index_add(self, *a, **k)
    torch.Tensor.index_add_ = counted
    try:
        (alone,) = torch.autograd.grad(gated_embedding(ids, w, offs, gates).pow(2).sum(), [gates])
        assert not scatters  # the gates' gradient alone runs no scatter into the table's gradient
        gated_embedding(ids, w, offs, gates).pow(2).sum().backward()
        assert len(scatters) == 1  # the full backward runs it
    finally:
        torch.Tensor.index_add_ = index_add
    assert torch.equal(alone, gates.grad) and w.grad is not None


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n\nprocessor\t: 1\n"
                    "vendor_id\t: AuthenticAMD\n")
    assert dense.cpu_vendor(str(info)) == "AuthenticAMD"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")   # an ARM cpuinfo: no vendor_id line
    assert dense.cpu_vendor(str(info)) == ""
    assert dense.cpu_vendor(str(tmp_path / "missing")) == ""


@pytest.mark.parametrize("vendor, mkl, preferred", [("GenuineIntel", True, False), ("AuthenticAMD", True, True),
                                                     ("GenuineIntel", False, True), ("", True, True)])
def test_intel_cpus_with_mkl_keep_the_plain_path(vendor, mkl, preferred, monkeypatch):
    """MKL is Intel's GEMM library and the faster one on Intel CPUs; everywhere else oneDNN is taken."""
    monkeypatch.setattr(dense, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    dense.onednn_preferred.cache_clear()
    try:
        assert dense.onednn_preferred() is preferred
        x, w, b = _leaves()
        calls = []
        monkeypatch.setattr(dense._OneDNNLinear, "apply", lambda *a: calls.append(1) or F.linear(*a[:3]))
        linear(x, w, b)
        assert len(calls) == (1 if preferred and _use_onednn(x, w) else 0)
        # what run metadata records (metrics.json's runtime.cpu_gemm_<phase>)
        assert dense.cpu_gemm_library() == ("oneDNN" if preferred and _onednn_linear() is not None else
                                            "MKL" if mkl else "torch")
        with torch.backends.mkldnn.flags(enabled=False):  # every layer then takes the plain path
            assert dense.cpu_gemm_library() == ("MKL" if mkl else "torch")
    finally:
        dense.onednn_preferred.cache_clear()


def test_small_layers_and_disabled_onednn_take_the_plain_path():
    x, w, b = _leaves(b=4, i=8, o=3)
    assert not _use_onednn(x, w)
    assert torch.equal(linear(x, w, b, relu=True), F.relu(F.linear(x, w, b)))
    x, w, b = _leaves()
    with torch.backends.mkldnn.flags(enabled=False):
        assert not _use_onednn(x, w)
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    assert not _use_onednn(x.double(), w.double())


def test_tower_keeps_the_sequential_layout_and_fuses_linear_relu():
    torch.manual_seed(0)
    tower = mlp(192, [256, 128], dropout=0.0)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(192, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
    assert isinstance(tower, Tower) and isinstance(tower[0], Linear) and type(tower[1]) is nn.ReLU
    # same names, shapes and initial values as the plain Sequential: checkpoints and pruning see no difference
    assert {k: v.shape for k, v in tower.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert all(torch.equal(tower.state_dict()[k], v) for k, v in plain.state_dict().items())
    x = torch.randn(512, 192)
    one_by_one = x
    for m in tower:   # each module alone: the ReLU module after a Linear that did not fuse it
        one_by_one = m(one_by_one)
    assert torch.equal(tower(x), one_by_one)
    torch.testing.assert_close(tower(x), plain(x), rtol=1e-5, atol=1e-5)
    assert type(slice_linear(tower[0], cols=torch.arange(10))) is Linear


@needs_onednn
def test_export_tracing_sees_plain_ops(onednn):
    schema = _schema(12, 50)
    model = build_model("deepfm", schema, ModelConfig(embed_dim=16, hidden=[256, 128])).eval()
    x = torch.randint(0, 50, (1024, 12))
    assert _use_onednn(torch.zeros(1024, 192), model.deep[0].weight)  # big enough for the fast path when eager
    graph = str(torch.jit.trace(model, x).inlined_graph)
    assert "PythonOp" not in graph and "mkldnn" not in graph and "aten::linear" in graph


def test_a_compiler_traces_the_dense_layers_without_graph_breaks():
    """torch.compile / torch.export see plain ops: the fast-path checks never run under a tracer (the CPU's choice of
    library reads a file and asks torch for its build, which a compiler cannot trace)."""
    dense.onednn_preferred.cache_clear()
    model = build_model("deepfm", _schema(12, 50), ModelConfig(embed_dim=16, hidden=[256, 128])).eval()
    x = torch.randint(0, 50, (1024, 12))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.parametrize("sparse", [False, True])
def test_gather_without_gates_is_exactly_the_gate_of_ones(sparse):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (64, 3), generator=g, dtype=torch.int32)
    offs = torch.tensor([0, 6, 12])
    base = torch.randn(18, 5, generator=g)
    grad = torch.randn(64, 3, 5, generator=g)
    results = []
    for gates in (None, torch.ones(3)):
        w = base.clone().requires_grad_()
        out = gated_embedding(ids, w, offs, gates, sparse_grad=sparse)
        out.backward(grad)
        results.append((out.detach(), w.grad.to_dense()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    ref = gated_embedding(ids, base, offs, None, backend="reference")
    assert torch.equal(ref, results[0][0])


def _schema(fields: int, vocab: int) -> FeatureSchema:
    return FeatureSchema("y", [Field(f"f{i}", "categorical", vocab=[f"v{j}" for j in range(vocab)])
                               for i in range(fields)])


def _rows(n=3000, fields=8, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab + 2, size=(n, fields)).astype(np.int32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(ids[:, 0] - vocab / 2) / 5))).astype(np.float32)
    return ArrayRows(ids, y)


def _train(seed: int):
    torch.manual_seed(seed)
    # 8 fields x 16 dims into 64 units, batch 512: the tower's first layer is large enough for the oneDNN path
    model = build_model("deepfm", _schema(8, 40), ModelConfig(embed_dim=16, hidden=[64, 32]))
    hist = fit(model, _rows(), None, TrainConfig(epochs=2, batch_size=512, lr=3e-3), seed=seed, select_best=False)
    return model, hist


@pytest.mark.parametrize("prefer_onednn", [True, False])
def test_training_through_the_fast_paths_is_reproducible(prefer_onednn, monkeypatch):
    monkeypatch.setattr(dense, "onednn_preferred", lambda: prefer_onednn)
    a, ha = _train(0)
    b, hb = _train(0)
    c, _ = _train(1)
    assert [e["train_logloss"] for e in ha["epochs"]] == [e["train_logloss"] for e in hb["epochs"]]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.embedding.weight, c.embedding.weight)
    assert ha["epochs"][-1]["train_logloss"] < ha["epochs"][0]["train_logloss"] < 0.7


@pytest.mark.parametrize("sparse", [False, True])
def test_weight_optimizer_is_the_fused_adam_where_torch_has_it(sparse):
    try:
        torch.optim.Adam([nn.Parameter(torch.zeros(1))], fused=True)
        has_fused = True
    except RuntimeError:
        has_fused = False
    model = build_model("deepfm", _schema(3, 5), ModelConfig(embed_dim=4, hidden=[8]))
    opt, tables = _weight_optimizers(model, TrainConfig(lr=0.1, sparse_embeddings=sparse))
    assert bool(opt.defaults["fused"]) == has_fused and (tables is not None) == sparse
    p = model.deep[0].bias
    before = p.detach().clone()
    for q in opt.param_groups[0]["params"]:
        q.grad = torch.ones_like(q)
    opt.step()
    # Adam's first step moves every coordinate by lr against the gradient's sign
    torch.testing.assert_close(p.detach(), before - 0.1)

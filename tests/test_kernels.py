"""Gated embedding op: every backend against an independent float64 numpy oracle.

On CPU the Triton backend runs under TRITON_INTERPRET=1 (set by conftest.py), so shapes stay small.
With LIGHTFMP_GPU_TESTS=1 on a CUDA machine the same tests run the compiled kernels on the GPU.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lightfmp.kernels import gated_embedding
from lightfmp.kernels import op as op_mod

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
# Triton runs on CPU tensors only under the interpreter, otherwise on CUDA tensors.
TRITON_DEVICES = ["cpu"] if INTERPRET else (["cuda"] if HAS_CUDA else [])
TORCH_DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
CASES = ([("triton", d) for d in TRITON_DEVICES] + [("torch", d) for d in TORCH_DEVICES]
         + [("reference", "cpu")])
CASE_IDS = [f"{b}-{d}" for b, d in CASES]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def make_problem(B, F, D, *, seed=0, zipf=True, per_sample=False, id_dtype=torch.int64,
                 vocab=None, slots=1):
    """Flat table with F fields (each repeated `slots` times as multi-valued slots)."""
    rng = np.random.default_rng(seed)
    vocab = np.asarray(vocab if vocab is not None else rng.integers(3, 60, size=F), dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(vocab)[:-1]])
    vocab, offs = np.repeat(vocab, slots), np.repeat(offs, slots)
    Fs = F * slots
    if zipf:  # heavy duplicates: most draws hit the first few rows of each field
        ids = (rng.zipf(1.3, size=(B, Fs)) - 1) % vocab
    else:
        ids = rng.integers(0, vocab, size=(B, Fs))
    R = int(vocab[::slots].sum())
    weight = rng.standard_normal((R, D))
    gates = rng.uniform(0.1, 1.5, size=(B, Fs) if per_sample else (Fs,))
    grad_out = rng.standard_normal((B, Fs, D))
    return dict(ids=torch.from_numpy(ids).to(id_dtype), weight=weight, offs=torch.from_numpy(offs),
                vocab=torch.from_numpy(vocab), gates=gates, grad_out=grad_out)


def oracle(ids, weight, offs, gates, grad_out, vocab=None):
    """float64 forward, weight grad and gate grad by explicit gather / np.add.at."""
    local = ids.numpy().astype(np.int64)
    if vocab is not None:
        v = vocab.numpy()[None, :]
        local = np.where((local >= 0) & (local < v), local, 1)
    rows = local + offs.numpy()[None, :]
    g = gates if gates.ndim == 2 else np.broadcast_to(gates, rows.shape)
    out = weight[rows] * g[..., None]
    gw = np.zeros_like(weight)
    np.add.at(gw, rows.reshape(-1), (grad_out * g[..., None]).reshape(-1, weight.shape[1]))
    gg = (grad_out * weight[rows]).sum(-1)
    if gates.ndim == 1:
        gg = gg.sum(0)
    return out, gw, gg, rows


def run_op(p, backend, device, dtype, *, vocab=None, **kw):
    w = torch.tensor(p["weight"], dtype=dtype, device=device, requires_grad=True)
    g = torch.tensor(p["gates"], dtype=torch.float32, device=device, requires_grad=True)
    out = gated_embedding(p["ids"].to(device), w, p["offs"].to(device), g, backend=backend,
                          vocab_sizes=None if vocab is None else vocab.to(device), **kw)
    out.backward(torch.tensor(p["grad_out"], dtype=dtype, device=device))
    return out, w.grad, g.grad


def rel_err(a, b):
    a = a.to_dense() if a.is_sparse else a
    a = a.detach().double().cpu().numpy()
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def check_against_oracle(p, res, dtype, vocab=None):
    out, gw, gg = res
    ref_out, ref_gw, ref_gg, rows = oracle(p["ids"], p["weight"], p["offs"], p["gates"], p["grad_out"], vocab)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert rel_err(out, ref_out) <= tol
    assert rel_err(gw, ref_gw) <= tol
    # the gate gradient is a sum of B*D (or D) products that can cancel: its rounding error is bounded relative to
    # the sum of the terms' magnitudes, not to the (possibly tiny) result, so it is checked entry by entry that way
    terms = np.abs(p["grad_out"] * p["weight"][rows]).sum(-1)
    scale = terms.sum(0) if p["gates"].ndim == 1 else terms
    err = np.abs(gg.detach().double().cpu().numpy() - ref_gg)
    assert np.all(err <= tol * scale + 1e-12), float((err / np.maximum(scale, 1e-12)).max())
    # Only rows that were looked up may carry gradient.
    untouched = np.ones(p["weight"].shape[0], dtype=bool)
    untouched[rows.reshape(-1)] = False
    gw_dense = gw.to_dense() if gw.is_sparse else gw
    assert torch.count_nonzero(gw_dense[torch.from_numpy(untouched).to(gw_dense.device)]) == 0


@pytest.mark.parametrize("backend,device", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["field_gate", "sample_gate"])
@pytest.mark.parametrize("D,id_dtype", [(1, torch.int64), (10, torch.int32), (24, torch.int64)])
def test_matches_oracle(backend, device, dtype, per_sample, D, id_dtype):
    p = make_problem(48, 6, D, seed=D, per_sample=per_sample, id_dtype=id_dtype)
    rows = p["ids"].long() + p["offs"]
    assert rows.unique().numel() < rows.numel() // 2  # the Zipf draw really has many duplicates
    check_against_oracle(p, run_op(p, backend, device, dtype), dtype)


# The per-field reference loop is too slow for F=1000; the oracle covers it anyway.
@pytest.mark.parametrize("backend,device,B,F,D",
                         [(b, d, *shape) for b, d in CASES for shape in [(4, 2, 100), (2, 1000, 3)]
                          if not (b == "reference" and shape[1] == 1000)])
def test_wide_rows_and_many_fields(backend, device, B, F, D):
    """D above the kernels' 64/128 column blocks (loops over D) and F=1000 (position -> field math)."""
    p = make_problem(B, F, D, seed=F, zipf=False, per_sample=F > 2)
    check_against_oracle(p, run_op(p, backend, device, torch.float32), torch.float32)


@pytest.mark.parametrize("backend,device", CASES, ids=CASE_IDS)
def test_multi_valued_slots_with_padding(backend, device):
    """Same field offset repeated for 4 slots, per-sample gates zero at padding positions (id 0)."""
    p = make_problem(32, 3, 16, seed=3, per_sample=True, slots=4)
    ids = p["ids"].clone()
    pad = torch.from_numpy(np.random.default_rng(4).random(ids.shape) < 0.4)
    ids[pad] = 0
    p["ids"] = ids
    p["gates"] = np.where(pad.numpy(), 0.0, p["gates"])
    res = run_op(p, backend, device, torch.float32)
    check_against_oracle(p, res, torch.float32)
    assert torch.count_nonzero(res[0][pad.to(device)]) == 0


@pytest.mark.parametrize("backend,device", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["field_gate", "sample_gate"])
def test_out_of_range_ids_clamp_to_oov(backend, device, per_sample):
    p = make_problem(40, 5, 10, seed=5, zipf=False, per_sample=per_sample)
    ids = p["ids"].clone()
    ids[0, 0] = -3
    ids[1, 2] = int(p["vocab"][2])  # first id past the field
    ids[2, 4] = 10 ** 6
    ids[3, 1] = 1  # a legitimate OOV id stays
    p["ids"] = ids
    res = run_op(p, backend, device, torch.float32, vocab=p["vocab"])
    check_against_oracle(p, res, torch.float32, vocab=p["vocab"])
    w = torch.tensor(p["weight"], dtype=torch.float32)
    oov_row = w[int(p["offs"][2]) + 1]
    g = p["gates"][1, 2] if per_sample else p["gates"][2]
    torch.testing.assert_close(res[0][1, 2].cpu(), oov_row * float(g))


@pytest.mark.parametrize("backend,device", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("with_vocab", [True, False])
def test_check_bounds_raises_with_field_and_value(backend, device, with_vocab):
    p = make_problem(16, 4, 8, seed=6, zipf=False)
    ok = run_op(p, backend, device, torch.float32, check_bounds=True,
                vocab=p["vocab"] if with_vocab else None)  # valid ids pass
    check_against_oracle(p, ok, torch.float32)
    ids = p["ids"].clone()
    bad = int(p["vocab"][2]) + 7
    ids[5, 2] = bad
    p["ids"] = ids
    with pytest.raises(ValueError, match=rf"field 2 has id {bad}\b"):
        run_op(p, backend, device, torch.float32, check_bounds=True, vocab=p["vocab"] if with_vocab else None)
    ids[5, 2] = -1
    with pytest.raises(ValueError, match=r"field 2 has id -1\b"):
        run_op(p, backend, device, torch.float32, check_bounds=True, vocab=p["vocab"] if with_vocab else None)
    ids[5, 2] = int(p["vocab"][2])  # one past the last row: the edge itself
    with pytest.raises(ValueError, match=rf"field 2 has id {int(p['vocab'][2])}\b"):
        run_op(p, backend, device, torch.float32, check_bounds=True, vocab=p["vocab"] if with_vocab else None)


def test_check_bounds_derives_limits_from_repeated_offsets():
    # Two fields of 5 and 7 rows, the second used by 3 slots: its limit is 7, not 0.
    offs = torch.tensor([0, 5, 5, 5])
    limits = op_mod._field_limits(offs, 12)
    assert limits.tolist() == [5, 7, 7, 7]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("chunk", [4, 256])
def test_triton_backward_is_deterministic_and_chunking_is_exact(device, chunk, monkeypatch):
    """Hot rows appear ~100 times; chunk=4 makes most segments span several chunks."""
    from lightfmp.kernels import triton_ops
    monkeypatch.setattr(triton_ops, "_CHUNK", chunk)
    p = make_problem(64, 4, 24, seed=7, per_sample=True, vocab=[5, 9, 40, 3])
    grads = []
    for _ in range(2):
        res = run_op(p, "triton", device, torch.float32)
        grads.append(res[1].clone())
    check_against_oracle(p, res, torch.float32)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("compact", [True, False], ids=["nonzero_static", "searchsorted"])
def test_segments_across_chunk_boundaries(device, sparse, compact, monkeypatch):
    """Segments of every length against chunks of 4: heads on a chunk boundary and inside a chunk, pieces that
    end exactly at a chunk's end, one segment over five chunks; rows outside the table get no gradient (one of
    them 2**32 past row 3), with the segment heads found either way."""
    from lightfmp.kernels import triton_ops
    monkeypatch.setattr(triton_ops, "_CHUNK", 4)
    monkeypatch.setattr(triton_ops, "_compacts_on_device", lambda device: compact)
    R, D = 12, 3
    # sorted: -1 at 0, then 0 at 1, 2 at 2-4, ..., 9 at 24-30 (a head on a boundary, over two chunks), 11 at 31-49
    lengths = {0: 1, 2: 3, 3: 4, 5: 5, 6: 9, 8: 1, 9: 7, 11: 19}
    rows = np.concatenate([np.full(n, r) for r, n in lengths.items()] + [[-1, 12, 12, 2 ** 32 + 3]])
    rng = np.random.default_rng(3)
    rows = rng.permutation(rows)
    grad = rng.standard_normal((rows.size, D))
    gates = rng.uniform(0.1, 1.5, size=rows.size)
    want = np.zeros((R, D))
    ok = (rows >= 0) & (rows < R)
    np.add.at(want, rows[ok], grad[ok] * gates[ok, None])
    args = (torch.tensor(grad, dtype=torch.float32, device=device), torch.tensor(rows, device=device),
            torch.tensor(gates.reshape(-1, 1), dtype=torch.float32, device=device), 1, R, D, torch.float32)
    if sparse:
        uniq, vals = triton_ops.weight_grad_segments(*args, sparse=True)
        assert uniq.tolist() == [-1] + sorted(lengths) + [R]  # rows outside the table as -1 and R
        keep = (uniq >= 0) & (uniq < R)
        got = np.zeros((R, D))
        got[uniq[keep].cpu().numpy()] = vals[keep].double().cpu().numpy()
    else:
        got = triton_ops.weight_grad_segments(*args).double().cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.any(got[[1, 4, 7, 10]])


@pytest.mark.skipif(INTERPRET or not HAS_CUDA, reason="host syncs exist only between a host and a device")
def test_gpu_dense_backward_never_syncs():
    """The deterministic dense weight gradient runs on the device without waiting on it."""
    from lightfmp.kernels import triton_ops
    p = make_problem(4096, 8, 16, seed=14, vocab=[5, 9, 40, 3, 1000, 7, 2, 300])
    grad = torch.tensor(p["grad_out"], dtype=torch.float32, device="cuda")
    rows = triton_ops.flat_rows(p["ids"].cuda(), p["offs"].cuda(), None)
    gates = torch.tensor(p["gates"], dtype=torch.float32, device="cuda")
    R = int(p["vocab"].sum())
    triton_ops.weight_grad_segments(grad, rows, gates, 8, R, 16, torch.float32)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        triton_ops.weight_grad_segments(grad, rows, gates, 8, R, 16, torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend,device", [("torch", "cpu")])  # CUDA index_add_ uses atomics
def test_torch_backward_is_deterministic(backend, device):
    p = make_problem(64, 4, 16, seed=13, vocab=[5, 9, 40, 3])
    grads = [run_op(p, backend, device, torch.float32) for _ in range(2)]
    assert torch.equal(grads[0][1], grads[1][1]) and torch.equal(grads[0][2], grads[1][2])


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_atomic_variant_matches(device):
    p = make_problem(32, 4, 10, seed=8)
    check_against_oracle(p, run_op(p, "triton", device, torch.float32, deterministic=False), torch.float32)


@pytest.mark.parametrize("backend,device", [c for c in CASES if c[0] != "reference"],
                         ids=[i for i in CASE_IDS if not i.startswith("reference")])
def test_sparse_grad(backend, device):
    p = make_problem(32, 4, 10, seed=9, vocab=[20, 30, 3, 50])
    res = run_op(p, backend, device, torch.float32, sparse_grad=True)
    assert res[1].is_sparse
    check_against_oracle(p, res, torch.float32)


@settings(max_examples=6, deadline=None)
@given(B=st.integers(1, 24), F=st.integers(1, 5), D=st.integers(1, 20), per_sample=st.booleans(),
       bf16=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_random_shapes(B, F, D, per_sample, bf16, seed):
    dtype = torch.bfloat16 if bf16 else torch.float32
    p = make_problem(B, F, D, seed=seed, per_sample=per_sample)
    for backend, device in CASES:
        if backend != "reference":
            check_against_oracle(p, run_op(p, backend, device, dtype), dtype)


def test_cpu_auto_dispatch_never_touches_triton(monkeypatch):
    def boom():
        raise AssertionError("auto on CPU tensors must take the torch path")
    monkeypatch.setattr(op_mod, "_triton_ops", boom)
    p = make_problem(8, 3, 4, seed=10)
    check_against_oracle(p, run_op(p, "auto", "cpu", torch.float32), torch.float32)


def test_empty_batch():
    p = make_problem(0, 3, 4, seed=11)
    for backend, device in CASES:
        out, gw, gg = run_op(p, backend, device, torch.float32)
        assert out.shape == (0, 3, 4) and torch.count_nonzero(gw) == 0 and gg.shape == (3,)


def test_bad_arguments():
    ids = torch.zeros(4, 3, dtype=torch.int64)
    w = torch.zeros(10, 2)
    offs = torch.tensor([0, 3, 6])
    with pytest.raises(ValueError, match="gates"):
        gated_embedding(ids, w, offs, torch.ones(4))
    with pytest.raises(TypeError, match="int32/int64"):
        gated_embedding(ids.float(), w, offs, torch.ones(3))
    with pytest.raises(ValueError, match="backend"):
        gated_embedding(ids, w, offs, torch.ones(3), backend="cuda")
    with pytest.raises(ValueError, match="runs past"):
        gated_embedding(ids, w, offs, torch.ones(3), check_bounds=True, vocab_sizes=torch.tensor([3, 3, 5]))


@pytest.mark.skipif(INTERPRET or not HAS_CUDA, reason="full-size shapes only with compiled kernels")
def test_gpu_criteo_size_zipf():
    p = make_problem(16384, 39, 16, seed=12, vocab=np.geomspace(1e3, 1e5, 39).astype(np.int64))
    check_against_oracle(p, run_op(p, "triton", "cuda", torch.float32), torch.float32)
    check_against_oracle(p, run_op(p, "triton", "cuda", torch.bfloat16), torch.bfloat16)


class _FrontEnd(torch.nn.Module):
    def __init__(self, vocab, D, with_vocab):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(int(vocab.sum()), D))
        self.register_buffer("offs", torch.cumsum(vocab, 0) - vocab)
        self.register_buffer("vocab", vocab)
        self.gate = torch.nn.Parameter(torch.rand(vocab.numel()))
        self.with_vocab = with_vocab

    def forward(self, ids):
        return gated_embedding(ids, self.weight, self.offs, self.gate,
                               vocab_sizes=self.vocab if self.with_vocab else None)


@pytest.mark.parametrize("dynamo,with_vocab", [(False, False), (False, True), (True, True)],
                         ids=["torchscript", "torchscript-vocab", "dynamo-vocab"])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo, with_vocab):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    vocab = torch.tensor([7, 11, 5, 9])
    model = _FrontEnd(vocab, 6, with_vocab).eval()
    ids = torch.randint(0, 5, (8, 4))
    path = tmp_path / "front.onnx"
    if dynamo:
        torch.onnx.export(model, (ids,), str(path), input_names=["ids"], output_names=["out"],
                          dynamic_shapes={"ids": {0: torch.export.Dim("batch")}}, dynamo=True)
    else:
        torch.onnx.export(model, (ids,), str(path), input_names=["ids"], output_names=["out"],
                          dynamic_axes={"ids": {0: "batch"}}, dynamo=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Gather" in ops and "Mul" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    test_ids = torch.randint(0, 5, (13, 4))
    if with_vocab:
        test_ids[0, 1] = 50  # out of range -> OOV row, also inside the exported graph
    got = sess.run(None, {"ids": test_ids.numpy()})[0]
    with torch.no_grad():
        want = model(test_ids).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _one_hot_row(dtype):
    """2,048 lookups of one row (the gradient of that row is 2,048 times the output gradient)."""
    return torch.zeros(2048, 1, dtype=torch.long), torch.ones(3, 4, dtype=dtype, requires_grad=True), \
        torch.zeros(1, dtype=torch.long)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_grad_on_a_16_bit_table_is_refused_on_the_torch_path(dtype):
    """Its COO gradient would sum the 2,048 repeats in 16 bits (256 in bfloat16, not 2,048)."""
    ids, w, offs = _one_hot_row(dtype)
    with pytest.raises(ValueError, match=r"sparse_grad=True with a torch\.(bfloat16|float16) table"):
        gated_embedding(ids, w, offs, torch.ones(1), backend="torch", sparse_grad=True)
    out = gated_embedding(ids, w, offs, torch.ones(1), backend="torch")  # dense: summed exactly
    out.backward(torch.ones_like(out))
    assert w.grad[0, 0].item() == 2048


def test_modes_a_backend_would_not_honour_are_refused():
    ids, w, offs = _one_hot_row(torch.float32)
    with pytest.raises(ValueError, match="backend='reference' gives dense gradients only"):
        gated_embedding(ids, w, offs, torch.ones(1), backend="reference", sparse_grad=True)
    with pytest.raises(ValueError, match="needs deterministic=True on the Triton backend"):
        gated_embedding(ids, w, offs, torch.ones(1), backend="triton", sparse_grad=True, deterministic=False)
    w64 = torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend='triton' computes in float32"):
        gated_embedding(ids, w64, offs, torch.ones(1, dtype=torch.float64), backend="triton")
    exact = gated_embedding(ids[:1], torch.full((3, 1), 1 + 1e-9, dtype=torch.float64), offs,
                            torch.ones(1, dtype=torch.float64))  # auto: float64 stays float64 (the torch path)
    assert exact.item() == 1 + 1e-9

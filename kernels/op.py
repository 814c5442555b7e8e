"""Dispatch for the gated embedding op.

backend="auto": CUDA tensors -> Triton kernels (kernels/triton_ops.py), anything else -> the fused
torch path.  "triton" | "torch" | "reference" force one.  The torch path is deliberately a plain
embedding gather + mul with autograd doing the backward, so torch.onnx.export traces it to Gather/Mul
(Gather alone without gates).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F_

BACKENDS = ("auto", "triton", "torch", "reference")
OOV_ID = 1  # schema convention (lightfmp.schema.OOV_ID): local id 1 is the out-of-vocabulary bucket


def tracing() -> bool:
    """Under a tracer (TorchScript / ONNX export, torch.compile, torch.export): eager-only fast paths step aside
    so that the traced graph holds plain ops."""
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or (exporting is not None and exporting()))


def needed(ctx, i: int) -> bool:
    """Whether the running backward pass uses the gradient of a custom autograd Function's input `i`.
    `ctx.needs_input_grad` only says that input requires grad; torch.autograd.grad for other tensors (a gate step:
    the gates' gradient alone) does not use it, and then its GEMM / scatter is skipped, as autograd skips its own."""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    if node is None or will_run is None:
        return True
    try:
        return bool(will_run(node))
    except RuntimeError:  # a leaf that torch.autograd.grad returns itself: wanted
        return True


def _triton_ops():
    """Import the Triton module lazily: CPU-only installs never need triton to be importable."""
    from . import triton_ops
    return triton_ops


def _triton_importable() -> bool:
    try:
        _triton_ops()
    except ImportError:
        return False
    return True


def _triton_usable(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def _field_limits(field_offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Rows per field derived from the offsets: distance to the next larger distinct offset (or R).

    Repeated offsets (several slots of one multi-valued field) share that field's rows.
    """
    offs = field_offsets.long()
    uniq = torch.unique(offs)  # sorted
    ends = torch.cat([uniq[1:], uniq.new_tensor([num_rows])])
    return ends[torch.searchsorted(uniq, offs)] - offs


def _check_bounds(ids, field_offsets, vocab_sizes, num_rows):
    limits = vocab_sizes.long() if vocab_sizes is not None else _field_limits(field_offsets, num_rows)
    over = field_offsets.long() + limits > num_rows
    if bool(over.any()):
        f = int(over.nonzero()[0, 0])
        raise ValueError(f"gated_embedding: field {f} (offset {int(field_offsets[f])}, vocab {int(limits[f])}) "
                         f"runs past the table's {num_rows} rows")
    bad = (ids < 0) | (ids >= limits.unsqueeze(0))
    if bool(bad.any()):
        b, f = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"gated_embedding: field {f} has id {int(ids[b, f])} at batch row {b}, "
                         f"outside [0, {int(limits[f])})")


def _check_modes(backend: str, dtype: torch.dtype, deterministic: bool, sparse_grad: bool) -> None:
    """Combinations the backends would not honour, refused instead of answered differently."""
    if backend == "triton" and dtype == torch.float64:
        raise ValueError("backend='triton' computes in float32; a float64 table needs backend='torch' or "
                         "'reference'")
    if sparse_grad and backend == "reference":
        raise ValueError("sparse_grad=True: backend='reference' gives dense gradients only")
    if sparse_grad and backend == "triton" and not deterministic:
        raise ValueError("sparse_grad=True needs deterministic=True on the Triton backend (the atomic backward "
                         "writes a dense gradient)")
    if sparse_grad and backend == "torch" and dtype in (torch.float16, torch.bfloat16):
        # its COO gradient repeats a row per lookup, and summing them in 16 bits stalls (at 256 in bfloat16)
        raise ValueError(f"sparse_grad=True with a {dtype} table: the torch backend sums repeated rows in that "
                         f"precision; use a float32 table, or backend='triton'")


def _validate(ids, weight, field_offsets, gates, vocab_sizes):
    if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids must be an int32/int64 [B, F] tensor, got {ids.dtype} {tuple(ids.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [R, D], got {tuple(weight.shape)}")
    B, F = ids.shape
    if field_offsets.shape != (F,):
        raise ValueError(f"field_offsets must be [F={F}], got {tuple(field_offsets.shape)}")
    if gates is not None and gates.shape not in ((F,), (B, F)):
        raise ValueError(f"gates must be [F={F}] or [B={B}, F={F}], got {tuple(gates.shape)}")
    if vocab_sizes is not None and vocab_sizes.shape != (F,):
        raise ValueError(f"vocab_sizes must be [F={F}], got {tuple(vocab_sizes.shape)}")


class _GatherScale(torch.autograd.Function):
    """Eager torch path: gather-and-scale in one pass (F.embedding_bag with bags of one id).

    embedding_bag's CPU kernel (fbgemm) prefetches rows; on the 2-core benchmark machine it ran the
    forward 2-2.5x faster than index_select + mul.  The backward re-gathers the rows for the gate
    gradient instead of keeping the unscaled [B, F, D] rows alive between forward and backward.
    Never used while tracing: export must see plain Gather + Mul.
    """

    @staticmethod
    def forward(ctx, rows, weight, g):  # rows [B, F] int64, g [B, F] in weight's dtype
        ctx.save_for_backward(rows, weight, g)
        out = F_.embedding_bag(rows.reshape(-1, 1), weight, mode="sum", per_sample_weights=g.reshape(-1, 1))
        return out.view(rows.shape[0], rows.shape[1], weight.shape[1])

    @staticmethod
    def backward(ctx, grad):
        rows, weight, g = ctx.saved_tensors
        flat = rows.reshape(-1)
        grad = grad.reshape(-1, weight.shape[1])
        gw = gg = None
        if needed(ctx, 1):
            # index_add_ is sequential on CPU (deterministic); it measured 2-4x cheaper than
            # embedding_dense_backward, not counting the zero fill.
            gw = torch.zeros_like(weight).index_add_(0, flat, grad * g.reshape(-1, 1))
        if needed(ctx, 2):
            gg = weight.index_select(0, flat).mul_(grad).sum(-1).view(rows.shape)
        return None, gw, gg


def _torch_path(ids, weight, field_offsets, gates, vocab_sizes, sparse_grad):
    local = ids.long()
    if vocab_sizes is not None:
        local = torch.where((local >= 0) & (local < vocab_sizes.long().unsqueeze(0)), local,
                            torch.full_like(local, OOV_ID))
    rows = local + field_offsets.long().unsqueeze(0)
    if gates is None:
        # nothing to scale: a plain gather, whose backward is index_add_ into zeros (sequential on CPU)
        if sparse_grad:
            return F_.embedding(rows, weight, sparse=True)
        return weight.index_select(0, rows.reshape(-1)).view(rows.shape[0], rows.shape[1], weight.shape[1])
    g = gates.to(weight.dtype)
    if g.dim() == 1:
        # [B, F] so that the [F] gate gradient is a sum over D, then over B: cheaper on CPU than
        # autograd's strided reduction over dims (0, 2) of a [1, F, 1] broadcast.
        g = g.unsqueeze(0).expand(rows.shape[0], -1)
    if sparse_grad:
        return F_.embedding(rows, weight, sparse=True) * g.unsqueeze(-1)
    if weight.device.type == "cpu" and not tracing():
        return _GatherScale.apply(rows, weight, g)
    # One gather over all fields + one multiply: what ONNX export traces (Gather, Mul).
    out = weight.index_select(0, rows.reshape(-1)).view(rows.shape[0], rows.shape[1], weight.shape[1])
    return out * g.unsqueeze(-1)


def _reference_path(ids, weight, field_offsets, gates, vocab_sizes):
    """Explicit per-field gather; slow on purpose, works in float64 for checking the others."""
    B, F = ids.shape
    if gates is None:
        gates = torch.ones(F, dtype=weight.dtype, device=weight.device)
    cols = []
    for f in range(F):
        local = ids[:, f].long()
        if vocab_sizes is not None:
            v = int(vocab_sizes[f])
            local = torch.where((local >= 0) & (local < v), local, torch.full_like(local, OOV_ID))
        rows = local + int(field_offsets[f])
        g = gates[f].expand(B) if gates.dim() == 1 else gates[:, f]
        cols.append(weight.index_select(0, rows) * g.to(weight.dtype).unsqueeze(1))
    return torch.stack(cols, dim=1)


def gated_embedding(ids: torch.Tensor, weight: torch.Tensor, field_offsets: torch.Tensor,
                    gates: torch.Tensor | None, backend: str = "auto", check_bounds: bool = False,
                    vocab_sizes: torch.Tensor | None = None, *, deterministic: bool = True,
                    sparse_grad: bool = False) -> torch.Tensor:
    """``out[b, f] = weight[field_offsets[f] + ids[b, f]] * gate`` -> [B, F, D] in weight's dtype.

    ids [B, F] int32/int64 local ids; weight [R, D] flat table of all fields; field_offsets [F] first
    row of each field (may repeat for slots of one multi-valued field); gates [F] or [B, F], or None
    for no scaling (every gate 1: a plain gather, exactly the rows).
    vocab_sizes [F]: ids outside [0, vocab_sizes[f]) read the field's OOV row (local id 1).
    check_bounds: raise ValueError on such ids instead (bounds from vocab_sizes, else from the
    offsets).  deterministic=False uses float atomics in the Triton backward (comparison only).
    sparse_grad: weight gradient as a sparse COO tensor of the touched rows.
    Differentiable w.r.t. weight and gates.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not tracing():  # under tracing the shape checks would only add TracerWarnings
        _validate(ids, weight, field_offsets, gates, vocab_sizes)
    device = weight.device
    field_offsets = field_offsets.to(device)
    gates = gates.to(device) if gates is not None else None
    ids = ids.to(device)
    if vocab_sizes is not None:
        vocab_sizes = vocab_sizes.to(device)
    if check_bounds and not tracing():
        _check_bounds(ids, field_offsets, vocab_sizes, weight.shape[0])
        vocab_sizes = None  # every id is known to be in range: skip the clamp

    if backend == "auto":  # Triton computes in float32: a float64 table takes the torch path
        use_triton = device.type == "cuda" and weight.dtype != torch.float64 and not tracing() \
            and _triton_importable()
        backend = "triton" if use_triton else "torch"
    _check_modes(backend, weight.dtype, deterministic, sparse_grad)
    if backend == "torch":
        return _torch_path(ids, weight, field_offsets, gates, vocab_sizes, sparse_grad)
    if backend == "reference":
        return _reference_path(ids, weight, field_offsets, gates, vocab_sizes)
    if not _triton_usable(device):
        raise RuntimeError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "triton is imported to run on CPU")
    ops = _triton_ops()
    if gates is None:
        gates = torch.ones(ids.shape[1], dtype=weight.dtype, device=device)
    return ops.GatedEmbeddingTriton.apply(
        ids.contiguous(), weight if weight.stride(1) == 1 else weight.contiguous(),
        field_offsets.long().contiguous(), gates.contiguous(),
        vocab_sizes.long().contiguous() if vocab_sizes is not None else None,
        deterministic, sparse_grad)

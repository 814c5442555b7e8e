"""Triton kernels for the gated embedding lookup and its deterministic backward.

Layout: ``weight`` [R, D] holds every field's rows back to back; position ``n = b * F + f`` of the
flattened [B, F] id matrix reads row ``field_offsets[f] + ids[b, f]``.

Backward (weight): the flat rows of all N = B * F positions are sorted once (stable radix sort in
torch), equal rows form contiguous segments, and one program per segment sums its ``grad_out * gate``
rows in sorted order with fp32 accumulation -- no float atomics on the table, so the result is
bitwise reproducible.  Segments longer than ``_CHUNK`` (Zipf heavy hitters) are split into chunks whose
fp32 partials are reduced by a second pass of the same kernel, so one hot row does not serialise the
whole backward on one program.

Backward (gates): one pass computes ``sum_d grad_out[n, d] * weight[row_n, d]`` per position; [F]
gates are then reduced over the batch with ``torch.sum`` (deterministic).

Importing this module imports triton; set ``TRITON_INTERPRET=1`` before that to run on CPU tensors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Longest run of positions one program reduces before the segment is split (see module docstring).
_CHUNK = 256


@triton.jit
def _rows(ids_ptr, off_ptr, vocab_ptr, n, nmask, F, HAS_VOCAB: tl.constexpr):
    """Flat table row of positions n (int64), with out-of-vocab ids mapped to local id 1."""
    f = n % F
    local = tl.load(ids_ptr + n, mask=nmask, other=0).to(tl.int64)
    if HAS_VOCAB:
        vocab = tl.load(vocab_ptr + f, mask=nmask, other=2).to(tl.int64)
        local = tl.where((local >= 0) & (local < vocab), local, 1)
    return tl.load(off_ptr + f, mask=nmask, other=0).to(tl.int64) + local


@triton.jit
def _fwd_kernel(ids_ptr, off_ptr, vocab_ptr, w_ptr, gate_ptr, out_ptr,
                N, F, D, R, stride_w,
                HAS_VOCAB: tl.constexpr, PER_SAMPLE_GATE: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    nmask = n < N
    dmask = d < D
    row = _rows(ids_ptr, off_ptr, vocab_ptr, n, nmask, F, HAS_VOCAB)
    # Rows outside the table read as zeros instead of faulting (the torch path raises instead).
    valid = nmask & (row >= 0) & (row < R)
    w = tl.load(w_ptr + row[:, None] * stride_w + d[None, :],
                mask=valid[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    if PER_SAMPLE_GATE:
        g = tl.load(gate_ptr + n, mask=nmask, other=0.0).to(tl.float32)
    else:
        g = tl.load(gate_ptr + n % F, mask=nmask, other=0.0).to(tl.float32)
    out = w * g[:, None]
    tl.store(out_ptr + n[:, None] * D + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=nmask[:, None] & dmask[None, :])


@triton.jit
def _segment_sum_kernel(src_ptr, perm_ptr, gate_ptr, seg_start_ptr, seg_len_ptr, out_row_ptr, out_ptr,
                        U, F, D, R_out, stride_out,
                        HAS_PERM: tl.constexpr, HAS_GATE: tl.constexpr, PER_SAMPLE_GATE: tl.constexpr,
                        HAS_OUT_ROW: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[out_row[s]] = sum_j src[perm[start_s + j]] * gate, j = 0..len_s-1 in order, fp32.

    A program owns BLOCK_U segments and walks them side by side, one element of each per step, so
    every segment's sum has the same fixed order whatever the launch configuration.
    """
    s = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    smask = s < U
    dmask = d < D
    start = tl.load(seg_start_ptr + s, mask=smask, other=0).to(tl.int64)
    length = tl.load(seg_len_ptr + s, mask=smask, other=0).to(tl.int64)
    steps = tl.max(length, axis=0).to(tl.int32)  # <= _CHUNK (or the chunk count)
    acc = tl.zeros([BLOCK_U, BLOCK_D], dtype=tl.float32)
    for j in range(0, steps):
        live = j < length
        if HAS_PERM:
            src = tl.load(perm_ptr + start + j, mask=live, other=0).to(tl.int64)
        else:
            src = start + j
        v = tl.load(src_ptr + src[:, None] * D + d[None, :],
                    mask=live[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        if HAS_GATE:
            if PER_SAMPLE_GATE:
                g = tl.load(gate_ptr + src, mask=live, other=0.0).to(tl.float32)
            else:
                g = tl.load(gate_ptr + src % F, mask=live, other=0.0).to(tl.float32)
            v = v * g[:, None]
        acc += v
    if HAS_OUT_ROW:
        orow = tl.load(out_row_ptr + s, mask=smask, other=-1).to(tl.int64)
        # Rows the forward read as zeros (outside the table) get no gradient.
        smask = smask & (orow >= 0) & (orow < R_out)
    else:
        orow = s
    tl.store(out_ptr + orow[:, None] * stride_out + d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=smask[:, None] & dmask[None, :])


@triton.jit
def _atomic_bwd_kernel(grad_ptr, ids_ptr, off_ptr, vocab_ptr, gate_ptr, gw_ptr,
                       N, F, D, R,
                       HAS_VOCAB: tl.constexpr, PER_SAMPLE_GATE: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Comparison-only weight backward with float atomics (order-dependent, not bitwise reproducible)."""
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    nmask = n < N
    dmask = d < D
    row = _rows(ids_ptr, off_ptr, vocab_ptr, n, nmask, F, HAS_VOCAB)
    valid = nmask & (row >= 0) & (row < R)
    m = valid[:, None] & dmask[None, :]
    gr = tl.load(grad_ptr + n[:, None] * D + d[None, :], mask=m, other=0.0).to(tl.float32)
    if PER_SAMPLE_GATE:
        g = tl.load(gate_ptr + n, mask=nmask, other=0.0).to(tl.float32)
    else:
        g = tl.load(gate_ptr + n % F, mask=nmask, other=0.0).to(tl.float32)
    tl.atomic_add(gw_ptr + row[:, None] * D + d[None, :], gr * g[:, None], mask=m)


@triton.jit
def _gate_grad_kernel(grad_ptr, ids_ptr, off_ptr, vocab_ptr, w_ptr, out_ptr,
                      N, F, D, R, stride_w,
                      HAS_VOCAB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[n] = sum_d grad_out[n, d] * weight[row_n, d] (fp32)."""
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    row = _rows(ids_ptr, off_ptr, vocab_ptr, n, nmask, F, HAS_VOCAB)
    valid = nmask & (row >= 0) & (row < R)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dmask = d < D
        gr = tl.load(grad_ptr + n[:, None] * D + d[None, :],
                     mask=nmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + row[:, None] * stride_w + d[None, :],
                    mask=valid[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(gr * w, axis=1)
    tl.store(out_ptr + n, acc, mask=nmask)


def _block_d(D: int) -> int:
    return min(triton.next_power_of_2(D), 128)


def _block_n(D: int, block_d: int) -> int:
    # About 2K elements per program: enough work per program on GPU, few programs under the interpreter.
    return max(16, min(256, 2048 // block_d))


def forward(ids, weight, field_offsets, gates, vocab_sizes):
    B, F = ids.shape
    R, D = weight.shape
    N = B * F
    out = torch.empty((B, F, D), dtype=weight.dtype, device=weight.device)
    if N == 0 or D == 0:
        return out
    bd = _block_d(D)
    bn = _block_n(D, bd)
    grid = (triton.cdiv(N, bn), triton.cdiv(D, bd))
    _fwd_kernel[grid](ids, field_offsets, vocab_sizes if vocab_sizes is not None else field_offsets,
                      weight, gates, out, N, F, D, R, weight.stride(0),
                      HAS_VOCAB=vocab_sizes is not None, PER_SAMPLE_GATE=gates.dim() == 2,
                      BLOCK_N=bn, BLOCK_D=bd)
    return out


def flat_rows(ids, field_offsets, vocab_sizes):
    """Flat row index of every position, [B * F] int64, with the same OOV mapping as the kernels."""
    local = ids.long()
    if vocab_sizes is not None:
        local = torch.where((local >= 0) & (local < vocab_sizes.long().unsqueeze(0)), local, 1)
    return (local + field_offsets.long().unsqueeze(0)).reshape(-1)


def _segments(rows, R):
    """Stable sort of rows -> (perm, unique rows, segment starts, segment lengths)."""
    key = rows.int() if R < 2 ** 31 else rows
    sorted_rows, perm = torch.sort(key, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return perm, uniq.long(), starts, counts


def _segment_sum(src, perm, gates, starts, lengths, out_rows, out, F, D):
    U = starts.numel()
    if U == 0:
        return
    bd = _block_d(D)
    bu = max(16, min(128, 2048 // bd))
    _segment_sum_kernel[(triton.cdiv(U, bu), triton.cdiv(D, bd))](
        src, perm if perm is not None else starts, gates if gates is not None else src,
        starts, lengths, out_rows if out_rows is not None else starts, out,
        U, F, D, out.shape[0], out.stride(0),
        HAS_PERM=perm is not None, HAS_GATE=gates is not None,
        PER_SAMPLE_GATE=gates is not None and gates.dim() == 2, HAS_OUT_ROW=out_rows is not None,
        BLOCK_U=bu, BLOCK_D=bd)


def weight_grad_segments(grad, rows, gates, F, R, D, out_dtype, sparse=False):
    """Deterministic weight gradient: dense [R, D], or (unique rows [U], values [U, D]) if sparse."""
    device = grad.device
    perm, uniq, starts, counts = _segments(rows, R)
    U = uniq.numel()
    if sparse:
        out, out_rows = torch.empty((U, D), dtype=out_dtype, device=device), None
    else:
        out, out_rows = torch.zeros((R, D), dtype=out_dtype, device=device), uniq
    if U == 0:
        return (uniq, out) if sparse else out
    if int(counts.max()) <= _CHUNK:
        _segment_sum(grad, perm, gates, starts, counts, out_rows, out, F, D)
        return (uniq, out) if sparse else out
    # Two passes: fixed-size chunks -> fp32 partials, then each segment sums its chunks in order.
    nch = (counts + _CHUNK - 1) // _CHUNK
    ch_first = torch.cumsum(nch, 0) - nch
    seg_of_chunk = torch.repeat_interleave(torch.arange(U, device=device), nch)
    k = torch.arange(seg_of_chunk.numel(), device=device) - ch_first[seg_of_chunk]
    ch_start = starts[seg_of_chunk] + k * _CHUNK
    ch_len = torch.clamp(counts[seg_of_chunk] - k * _CHUNK, max=_CHUNK)
    partial = torch.empty((ch_start.numel(), D), dtype=torch.float32, device=device)
    _segment_sum(grad, perm, gates, ch_start, ch_len, None, partial, F, D)
    _segment_sum(partial, None, None, ch_first, nch, out_rows, out, F, D)
    return (uniq, out) if sparse else out


def weight_grad_atomic(grad, ids, field_offsets, gates, vocab_sizes, R, D, out_dtype):
    B, F = ids.shape
    N = B * F
    gw = torch.zeros((R, D), dtype=torch.float32, device=grad.device)
    if N == 0:
        return gw.to(out_dtype)
    bd = _block_d(D)
    bn = _block_n(D, bd)
    _atomic_bwd_kernel[(triton.cdiv(N, bn), triton.cdiv(D, bd))](
        grad, ids, field_offsets, vocab_sizes if vocab_sizes is not None else field_offsets, gates, gw,
        N, F, D, R, HAS_VOCAB=vocab_sizes is not None, PER_SAMPLE_GATE=gates.dim() == 2,
        BLOCK_N=bn, BLOCK_D=bd)
    return gw.to(out_dtype)


def gate_grad(grad, ids, weight, field_offsets, gates, vocab_sizes):
    B, F = ids.shape
    R, D = weight.shape
    N = B * F
    per_pos = torch.zeros((B, F), dtype=torch.float32, device=grad.device)
    if N == 0:
        return (per_pos if gates.dim() == 2 else per_pos.sum(0)).to(gates.dtype)
    bd = min(triton.next_power_of_2(D), 64)
    bn = max(16, min(256, 2048 // bd))
    _gate_grad_kernel[(triton.cdiv(N, bn),)](
        grad, ids, field_offsets, vocab_sizes if vocab_sizes is not None else field_offsets,
        weight, per_pos, N, F, D, R, weight.stride(0),
        HAS_VOCAB=vocab_sizes is not None, BLOCK_N=bn, BLOCK_D=bd)
    g = per_pos if gates.dim() == 2 else per_pos.sum(0)
    return g.to(gates.dtype)


class GatedEmbeddingTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, field_offsets, gates, vocab_sizes, deterministic, sparse_grad):
        ctx.save_for_backward(ids, weight, field_offsets, gates,
                              vocab_sizes if vocab_sizes is not None else field_offsets)
        ctx.has_vocab = vocab_sizes is not None
        ctx.deterministic = deterministic
        ctx.sparse_grad = sparse_grad
        return forward(ids, weight, field_offsets, gates, vocab_sizes)

    @staticmethod
    def backward(ctx, grad):
        ids, weight, field_offsets, gates, vocab = ctx.saved_tensors
        vocab = vocab if ctx.has_vocab else None
        grad = grad.contiguous()
        R, D = weight.shape
        gw = gg = None
        if ctx.needs_input_grad[1]:
            if not ctx.deterministic:
                gw = weight_grad_atomic(grad, ids, field_offsets, gates, vocab, R, D, weight.dtype)
            else:
                rows = flat_rows(ids, field_offsets, vocab)
                F = ids.shape[1]
                if ctx.sparse_grad:
                    uniq, vals = weight_grad_segments(grad, rows, gates, F, R, D, weight.dtype, sparse=True)
                    keep = (uniq >= 0) & (uniq < R)  # rows the forward read as zeros get no gradient
                    gw = torch.sparse_coo_tensor(uniq[keep].unsqueeze(0), vals[keep], (R, D),
                                                 is_coalesced=True)
                else:
                    gw = weight_grad_segments(grad, rows, gates, F, R, D, weight.dtype)
        if ctx.needs_input_grad[3]:
            gg = gate_grad(grad, ids, weight, field_offsets, gates, vocab)
        return None, gw, None, gg, None, None, None

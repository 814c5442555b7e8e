"""Triton kernels for the gated embedding lookup and its deterministic backward.

Layout: ``weight`` [R, D] holds every field's rows back to back; position ``n = b * F + f`` of the
flattened [B, F] id matrix reads row ``field_offsets[f] + ids[b, f]``.

Backward (weight): the flat rows of all N = B * F positions are sorted once (stable radix sort in
torch), equal rows form contiguous segments, and each segment's ``grad_out * gate`` rows are summed in
sorted order with fp32 accumulation -- no float atomics on the table, so the result is bitwise
reproducible.  The sorted positions are cut into fixed chunks of ``_CHUNK``: one pass sums each chunk's
first piece (up to the end of its segment or of the chunk), a second pass gives every segment head its
own piece plus the partials of the chunks its segment covers, in order.  One hot row (Zipf) is thus
spread over many programs, and the dense gradient needs no segment count on the host (no sync).

Backward (gates): one pass computes ``sum_d grad_out[n, d] * weight[row_n, d]`` per position; [F]
gates are then reduced over the batch with ``torch.sum`` (deterministic).

Importing this module imports triton; set ``TRITON_INTERPRET=1`` before that to run on CPU tensors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Positions per chunk of the sorted rows: the longest run one program walks (see module docstring).
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
def _walk(grad_ptr, perm_ptr, gate_ptr, first, length, d, dmask, F, D, PER_SAMPLE_GATE: tl.constexpr,
          BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per lane: sum_j grad[perm[first + j]] * gate, j = 0..length-1 in order (fp32)."""
    acc = tl.zeros([BLOCK_U, BLOCK_D], dtype=tl.float32)
    for j in range(0, tl.max(length, axis=0).to(tl.int32)):  # <= CHUNK steps
        live = j < length
        src = tl.load(perm_ptr + first + j, mask=live, other=0).to(tl.int64)
        v = tl.load(grad_ptr + src[:, None] * D + d[None, :], mask=live[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        if PER_SAMPLE_GATE:
            g = tl.load(gate_ptr + src, mask=live, other=0.0).to(tl.float32)
        else:
            g = tl.load(gate_ptr + src % F, mask=live, other=0.0).to(tl.float32)
        acc += v * g[:, None]
    return acc


@triton.jit
def _chunk_head_kernel(grad_ptr, perm_ptr, gate_ptr, chunk_end_ptr, partial_ptr, N, F, D,
                       CHUNK: tl.constexpr, PER_SAMPLE_GATE: tl.constexpr,
                       BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr):
    """partial[k] = sum of chunk k's first piece (its positions up to the end of their segment or of the chunk),
    in order, fp32.  A program walks BLOCK_U chunks side by side, one position of each per step."""
    k = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    start = k * CHUNK
    kmask = start < N
    dmask = d < D
    end = tl.minimum(tl.load(chunk_end_ptr + k, mask=kmask, other=0), start + CHUNK)
    length = tl.where(kmask, end - start, 0)
    acc = _walk(grad_ptr, perm_ptr, gate_ptr, start, length, d, dmask, F, D, PER_SAMPLE_GATE, BLOCK_U, BLOCK_D)
    tl.store(partial_ptr + k[:, None] * D + d[None, :], acc, mask=kmask[:, None] & dmask[None, :])


@triton.jit
def _segment_sum_kernel(grad_ptr, perm_ptr, gate_ptr, head_ptr, n_seg_ptr, partial_ptr, sorted_ptr, out_ptr,
                        F, D, R_out, stride_out,
                        CHUNK: tl.constexpr, PER_SAMPLE_GATE: tl.constexpr, OUT_BY_ROW: tl.constexpr,
                        BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr):
    """Segment s's sum -> out[its row] (OUT_BY_ROW) or out[s], for the segments s < n_seg (read on the device).

    Its own piece (its first position to the end of the segment or of that position's chunk) is walked in
    order; the chunks the segment covers after that add their first pieces' partial sums in chunk order.  The
    order depends on the fixed CHUNK only, never on the launch, so the result is bitwise reproducible; the
    launch covers every position, so no segment count is needed on the host (no sync).
    """
    s = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    smask = s < tl.load(n_seg_ptr)
    dmask = d < D
    first = tl.load(head_ptr + s, mask=smask, other=0)
    end = tl.load(head_ptr + s + 1, mask=smask, other=0)
    chunk = first // CHUNK
    at_chunk = (first % CHUNK) == 0  # the chunk's own partial already holds this piece
    own = tl.where(smask & ~at_chunk, tl.minimum(end, (chunk + 1) * CHUNK) - first, 0)
    first_chunk = tl.where(at_chunk, chunk, chunk + 1)
    n_chunks = tl.where(smask, tl.maximum((end - 1) // CHUNK - first_chunk + 1, 0), 0)
    acc = _walk(grad_ptr, perm_ptr, gate_ptr, first, own, d, dmask, F, D, PER_SAMPLE_GATE, BLOCK_U, BLOCK_D)
    for j in range(0, tl.max(n_chunks, axis=0).to(tl.int32)):
        live = j < n_chunks
        acc += tl.load(partial_ptr + (first_chunk + j)[:, None] * D + d[None, :],
                       mask=live[:, None] & dmask[None, :], other=0.0)
    if OUT_BY_ROW:
        orow = tl.load(sorted_ptr + first, mask=smask, other=-1).to(tl.int64)
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


def _compacts_on_device(device) -> bool:
    """Whether `torch.nonzero_static` runs on `device` (on CUDA only since torch 2.6)."""
    if device.type != "cuda":
        return True
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6)


def _segment_heads(sorted_rows, chunk):
    """(heads [N + 1]: each segment's first position, then N; segment count [1]; chunk_end [ceil(N / chunk)]:
    where the segment holding each chunk's first position ends), all on the device: no host sync."""
    N = sorted_rows.numel()
    device = sorted_rows.device
    is_head = torch.ones(N, dtype=torch.bool, device=device)
    is_head[1:] = sorted_rows[1:] != sorted_rows[:-1]
    if _compacts_on_device(device):
        heads = torch.nonzero_static(is_head, size=N + 1, fill_value=N).squeeze(1)
    else:  # the first position of each segment number (sorted), and N for every number past the last
        heads = torch.searchsorted(torch.cumsum(is_head, 0) - 1, torch.arange(N + 1, device=device))
    n_seg = is_head.sum(0, keepdim=True)
    chunk_end = heads[torch.searchsorted(heads, torch.arange(0, N, chunk, device=device), right=True)]
    return heads, n_seg, chunk_end


def weight_grad_segments(grad, rows, gates, F, R, D, out_dtype, sparse=False):
    """Deterministic weight gradient: dense [R, D], or (unique rows [U], values [U, D]) if sparse.

    The dense gradient needs no host sync: the sort, the segment heads and both kernels run on the device back
    to back.  The sparse one reads U on the host to size its values (one sync).
    """
    device = grad.device
    N = rows.numel()
    if N == 0 or D == 0:
        if sparse:
            return rows.new_empty(0), torch.empty((0, D), dtype=out_dtype, device=device)
        return torch.zeros((R, D), dtype=out_dtype, device=device)
    # rows outside the table stay outside it (as -1 or R) when the keys narrow to int32
    key = rows.clamp(-1, R).int() if R < 2 ** 31 else rows
    sorted_rows, perm = torch.sort(key, stable=True)
    chunk = _CHUNK
    heads, n_seg, chunk_end = _segment_heads(sorted_rows, chunk)
    if sparse:
        U = int(n_seg)
        uniq = sorted_rows[heads[:U]].long()
        out = torch.empty((U, D), dtype=out_dtype, device=device)
    else:
        out = torch.zeros((R, D), dtype=out_dtype, device=device)
    n_chunks = triton.cdiv(N, chunk)
    partial = torch.empty((n_chunks, D), dtype=torch.float32, device=device)
    bd = _block_d(D)
    bu = max(16, min(128, 2048 // bd))
    per_sample = gates.dim() == 2
    _chunk_head_kernel[(triton.cdiv(n_chunks, bu), triton.cdiv(D, bd))](
        grad, perm, gates, chunk_end, partial, N, F, D,
        CHUNK=chunk, PER_SAMPLE_GATE=per_sample, BLOCK_U=bu, BLOCK_D=bd)
    _segment_sum_kernel[(triton.cdiv(out.shape[0] if sparse else N, bu), triton.cdiv(D, bd))](
        grad, perm, gates, heads, n_seg, partial, sorted_rows, out, F, D, out.shape[0], out.stride(0),
        CHUNK=chunk, PER_SAMPLE_GATE=per_sample, OUT_BY_ROW=not sparse, BLOCK_U=bu, BLOCK_D=bd)
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

"""The dense layers the backbones are built from: `Linear` (an nn.Linear) and `Tower` (an nn.Sequential that runs
each Linear + ReLU pair as one call).

On CPU, float32 layers large enough to matter run their three GEMMs (forward, input and weight gradients) through
oneDNN (torch.ops.mkldnn._linear_pointwise, the op torch's compiler uses for CPU linear layers) with the ReLU fused
into the forward GEMM, except on Intel CPUs. Eager torch sends fp32 GEMMs to MKL, Intel's library: on the AMD EPYC
benchmark machine its sgemm ran at about half oneDNN's speed (90 vs 190 GFLOP/s on the DeepFM tower's shapes); on
Intel Xeons it was as fast as oneDNN in the forward and input-gradient GEMMs and faster in the weight gradient,
which oneDNN needs a transposed copy of the output gradient for (training 12-16% faster through MKL there:
docs/benchmarks.md). So the library is chosen by the CPU's vendor, once a process (`onednn_preferred`).
Everything else (Intel CPUs, CUDA, other dtypes, small GEMMs, tracing for export or torch.compile,
torch.backends.mkldnn disabled) is plain F.linear + F.relu, so exported graphs are unchanged Gemm + Relu.
Parameter names and shapes are nn.Linear's: checkpoints, pruning and export see no difference.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lightfmp.kernels.op import needed, tracing

# below this many multiply-adds (rows * in * out), or this many outputs, MKL's call overhead is the smaller one
MIN_MACS = 1 << 20
MIN_OUT = 16


@functools.cache
def _onednn_linear():
    """oneDNN's dense linear op, or None where this torch has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...), or "" where the system does not say (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return ""


@functools.cache
def onednn_preferred() -> bool:
    """Whether eligible layers go through oneDNN: everywhere but on Intel CPUs where torch has MKL, Intel's own
    GEMM library, which is the faster one there. Fixed for the process, so a run's floating point does not change
    mid-way (a run reproduces bit for bit on the same kind of CPU at the same thread count)."""
    return not (torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel")


def cpu_gemm_library() -> str:
    """The library this process's float32 CPU dense layers large enough to matter run on, as run metadata records
    it ("torch": neither oneDNN nor MKL)."""
    if onednn_preferred() and _onednn_on():
        return "oneDNN"
    return "MKL" if torch.backends.mkl.is_available() else "torch"


def _onednn_on() -> bool:
    """This torch has oneDNN's linear op and it is not disabled (torch.backends.mkldnn)."""
    return torch.backends.mkldnn.enabled and _onednn_linear() is not None


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN can take this layer and it is large enough for its speed to matter (not the CPU's choice:
    `onednn_preferred`)."""
    # tracing first: under export the batch size is symbolic, and comparing it would pin it
    return (not tracing() and x.device.type == "cpu" and x.dim() == 2 and x.dtype == torch.float32
            and weight.dtype == torch.float32 and _onednn_on()
            and weight.shape[0] >= MIN_OUT and x.shape[0] * weight.shape[0] * weight.shape[1] >= MIN_MACS)


class _OneDNNLinear(torch.autograd.Function):
    """y = x @ W.T + b (then ReLU when `relu`), all three GEMMs in oneDNN. The ReLU backward masks by the saved
    output, as torch's own ReLU does."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu: bool):
        y = _onednn_linear()(x, weight, bias, "relu" if relu else "none", [], "")
        ctx.relu = relu
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        op = _onednn_linear()
        gx = op(grad, weight.t(), None, "none", [], "") if needed(ctx, 0) else None
        # oneDNN reads its input contiguous: one transposed copy of grad (the weight operand may be strided)
        gw = op(grad.t().contiguous(), x.t(), None, "none", [], "") if needed(ctx, 1) else None
        gb = grad.sum(0) if needed(ctx, 2) else None
        return gx, gw, gb, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False) -> torch.Tensor:
    """F.linear (then ReLU when `relu`) through the fastest path for these tensors."""
    if _use_onednn(x, weight) and onednn_preferred():  # tracing first (`_use_onednn`): a compiler sees plain ops
        return _OneDNNLinear.apply(x, weight, bias, relu)
    y = F.linear(x, weight, bias)
    return torch.relu_(y) if relu else y  # in place: F.linear's output is fresh and its backward does not read it


class Linear(nn.Linear):
    """nn.Linear through `linear`; `relu=True` applies a ReLU too (fused on the oneDNN path)."""

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return linear(x, self.weight, self.bias, relu)


class Tower(nn.Sequential):
    """An nn.Sequential whose Linear layers followed by an nn.ReLU run as one `Linear(relu=True)` call; the same
    modules, names and indexing as the plain Sequential, and module by module under a tracer (the same graph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tracing():
            return super().forward(x)
        mods = list(self)
        i = 0
        while i < len(mods):
            if isinstance(mods[i], Linear) and i + 1 < len(mods) and type(mods[i + 1]) is nn.ReLU:
                x = mods[i](x, relu=True)
                i += 2
            else:
                x = mods[i](x)
                i += 1
        return x

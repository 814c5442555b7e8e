"""Data-parallel training under torchrun: the process group, the collectives the training loop needs, and the
failure handling that turns a dead rank into one clear line.

Every rank runs the whole command. They iterate the same global batch sequence and each takes its slice of every
global batch; DistributedDataParallel averages the weight gradients, so N processes compute what one does
(docs/distributed.md). Outside torchrun (WORLD_SIZE unset or 1) every helper here is a cheap no-op.

LIGHTFMP_FAULT_RANK_EPOCH="rank:epoch" is a testing hook: that rank exits(1) at the start of that epoch (0-based:
the number of epochs already done) of the continue / full-training phase.
LIGHTFMP_DIST_TIMEOUT: seconds a collective may wait for the other ranks (default 1800).
"""
from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import resume_hint
from .errors import LightFMPError

FAULT_ENV = "LIGHTFMP_FAULT_RANK_EPOCH"
TIMEOUT_ENV = "LIGHTFMP_DIST_TIMEOUT"
_LONG_WAIT = timedelta(hours=48)   # rank 0 preparing the data (a streamed data set takes hours) while others wait

_state = {"backend": None, "wait_group": None, "ctl_group": None, "old_sigterm": None}


class Stopped(BaseException):
    """torchrun's SIGTERM after another rank failed. A BaseException, so `except Exception` never swallows it."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise LightFMPError(f"${name}={os.environ.get(name)!r}: expected an integer") from None


def world() -> int:
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    return _env_int("RANK", 0) if world() > 1 else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if world() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True once the process group exists (WORLD_SIZE > 1 and init() ran)."""
    return world() > 1 and dist.is_available() and dist.is_initialized()


def _timeout() -> timedelta:
    seconds = _env_int(TIMEOUT_ENV, 1800)
    if seconds <= 0:
        raise LightFMPError(f"${TIMEOUT_ENV}={seconds}: must be a positive number of seconds")
    return timedelta(seconds=seconds)


def local_device(device: str) -> str:
    """The device this rank trains on: its own GPU (LOCAL_RANK) when training on CUDA."""
    if device == "cuda" and world() > 1:
        return f"cuda:{local_rank()}"
    return device


def refuse_sparse(sparse_embeddings: bool) -> None:
    """--sparse-embeddings under torchrun: DDP reduces dense gradients only (the tables' sparse ones fail inside its
    backward), so it is refused before anything starts."""
    if sparse_embeddings and world() > 1:
        raise LightFMPError("--sparse-embeddings under torchrun: data-parallel training reduces dense gradients only; "
                            "train without it, or in one process")


def init(device: str = "auto") -> None:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent; a no-op otherwise).

    `device` is the run's --device: the backend is nccl for CUDA, gloo for CPU. A malformed testing hook
    ($LIGHTFMP_FAULT_RANK_EPOCH) is refused here, before any work."""
    fault_hook()
    if world() <= 1 or active():
        return
    if not dist.is_available():
        raise LightFMPError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise LightFMPError(f"WORLD_SIZE={world()} but ${var} is not set: launch with torchrun")
    if device == "cuda" and not torch.cuda.is_available():
        raise LightFMPError("--device cuda: no CUDA device is available")
    cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank())
    elif "OMP_NUM_THREADS" not in os.environ:
        # ranks on one machine share its cores; more threads than cores per rank only contend
        local = max(1, _env_int("LOCAL_WORLD_SIZE", world()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    dist.init_process_group(backend=backend, timeout=_timeout())
    _state["backend"] = backend
    # gloo groups for control messages, whatever the training backend: one with the normal timeout (barriers,
    # decisions) and one that may wait for as long as rank 0 takes to prepare the data
    _state["ctl_group"] = dist.new_group(backend="gloo", timeout=_timeout()) if backend != "gloo" else None
    _state["wait_group"] = dist.new_group(backend="gloo", timeout=_LONG_WAIT)
    if _state["old_sigterm"] is None:
        _state["old_sigterm"] = signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame):
    raise Stopped()


def destroy() -> None:
    if _state["old_sigterm"] is not None:  # from here on torchrun's SIGTERM just ends the process
        signal.signal(signal.SIGTERM, _state["old_sigterm"])
        _state["old_sigterm"] = None
    if not active():
        return
    try:
        dist.destroy_process_group()
    except Exception:  # a peer is already gone; nothing left to tidy
        pass
    _state.update(backend=None, wait_group=None, ctl_group=None)


def _ctl():
    return _state["ctl_group"]


def barrier() -> None:
    if active():
        dist.barrier(group=_ctl())


def broadcast_int(value: int, long_wait: bool = False) -> int:
    """Rank 0's `value` on every rank."""
    if not active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.broadcast(t, src=0, group=_state["wait_group"] if long_wait else _ctl())
    return int(t.item())


def agree(value: int, what: str) -> int:
    """Check that every rank holds the same integer (e.g. the epoch it resumes from); raise if not."""
    if not active():
        return int(value)
    t = torch.tensor([int(value), -int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_ctl())
    if int(t[0]) != -int(t[1]):
        raise LightFMPError(f"ranks disagree on {what} ({-int(t[1])} .. {int(t[0])}); are all ranks reading the "
                            f"same files?")
    return int(value)


def rank0_first(fn, what: str):
    """Run `fn` on rank 0, then on the other ranks (which then reuse what rank 0 cached, e.g. encoded shards).
    If rank 0 fails, the others raise too instead of waiting forever."""
    if not active():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException:
            broadcast_int(0, long_wait=True)
            raise
        broadcast_int(1, long_wait=True)
        return result
    if not broadcast_int(0, long_wait=True):
        raise LightFMPError(f"rank 0 failed while {what} (its message says why)")
    return fn()


def _comm(t: torch.Tensor) -> torch.Tensor:
    # nccl moves CUDA tensors only, gloo CPU ones
    return t if (_state["backend"] == "nccl") == t.is_cuda else t.to("cuda" if _state["backend"] == "nccl" else "cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place when the tensor already lives where the backend communicates; returns it."""
    if active():
        all_reduce_sum(tensor).div_(world())
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (as all_reduce_mean); returns it."""
    if not active():
        return tensor
    t = _comm(tensor)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if t is not tensor:
        tensor.copy_(t)
    return tensor


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (same shape on all ranks), in rank order, on the CPU."""
    if not active():
        return [tensor.cpu()]
    t = _comm(tensor.contiguous())
    out = [torch.empty_like(t) for _ in range(world())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def wrap(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """The module DDP drives for the weight steps; the model itself outside torchrun."""
    if not active():
        return model
    ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
    # buffers (field offsets, pooling matrix) are constants built identically on every rank: no per-step sync
    sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel)
            .parameters else {"broadcast_buffers": False})  # the newer name (torch 2.13) / the older one
    return DistributedDataParallel(model, device_ids=ids, **sync)


# ---- failures --------------------------------------------------------------------------------------------------
def maybe_fault(epoch: int) -> None:
    """The testing hook: exit(1) at the start of `epoch` on the rank named by LIGHTFMP_FAULT_RANK_EPOCH."""
    fault = fault_hook()
    if fault is None:
        return
    r, e = fault
    spec = os.environ[FAULT_ENV]
    if r == rank() and e == epoch:
        print(f"lightfmp: rank {r}: {FAULT_ENV}={spec}: exiting at the start of epoch {e} (testing hook)",
              file=sys.stderr, flush=True)
        os._exit(1)  # like a crash: no cleanup, the OS closes this rank's sockets


def fault_hook() -> tuple[int, int] | None:
    """The testing hook's (rank, epoch), or None where it is not set."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        r, e = (int(v) for v in spec.split(":"))
    except ValueError:
        raise LightFMPError(f"${FAULT_ENV}={spec!r}: expected RANK:EPOCH, e.g. 1:1") from None
    return r, e


def is_comm_error(e: BaseException) -> bool:
    """A collective failed because another rank died, hung or closed its connection."""
    if isinstance(e, (Stopped, getattr(dist, "DistError", ()))):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in (
        "gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe"))


@contextmanager
def deaf_to_sigterm():
    """SIGTERM ignored for the block (in the main thread): a rank that lost another prints its last line while
    torchrun, seeing the other rank gone, sends it SIGTERM; raised inside that print, the signal would cut the line
    that says how to resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def failure_message(e: BaseException) -> str:
    if isinstance(e, Stopped):
        what = "stopped by torchrun (SIGTERM: the job was stopped, or another rank failed)"
    else:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        what = f"lost contact with another rank ({type(e).__name__}: {detail})"  # in training or preparing the data
    return f"lightfmp: rank {rank()}: {what}; {resume_hint()}"

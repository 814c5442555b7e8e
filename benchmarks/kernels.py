"""Benchmark the gated embedding op against the eager alternatives on a Criteo-like layout.

F=39 fields, D=16, vocab per field log-spaced from 1e3 to --max-vocab (1e6), uniform or Zipf ids.
Methods:
  fused          lightfmp.kernels.gated_embedding, backend auto (Triton on CUDA, torch path on CPU)
  fused_sparse   same with sparse_grad=True (weight gradient of the touched rows only)
  torch_fused    backend="torch" on CUDA (the CPU path, for comparison)
  triton_atomic  Triton with the float-atomic backward (CUDA, comparison only; not deterministic)
  loop           39 separate nn.Embedding lookups, * gate, torch.stack
  embedding_bag  F.embedding_bag on the flat table, bags of one id, gates as per_sample_weights
Modes: fwd, bwd (backward of a retained graph), fwdbwd.

CUDA: medians of triton.testing.do_bench (it flushes L2 between runs); effective bandwidth the
FBGEMM way (forward bytes = output + rows read + ids, backward counted 2x, fwd+bwd 3x) as % of a
device-to-device copy measured in the same run.  CPU: median of interleaved time.perf_counter runs
(methods alternate inside each repetition so background load hits all of them alike), and the
loop / fused ratio.

  python benchmarks/kernels.py --device cpu --json out/kernels_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as Fn

F_FIELDS, DIM = 39, 16
MODES = ("fwd", "bwd", "fwdbwd")


def make_ids(B, vocab, dist, rng):
    if dist == "uniform":
        ids = rng.integers(0, vocab, size=(B, len(vocab)))
    else:
        # Zipf(1.2) ranks, scattered over the field by a multiplicative hash so hot rows are not adjacent.
        ranks = rng.zipf(1.2, size=(B, len(vocab))) - 1
        ids = (ranks * 2654435761) % vocab
    return torch.from_numpy(ids.astype(np.int64))


class Case:
    """Inputs of one (B, dist) configuration, shared by every method."""

    def __init__(self, B, vocab, dist, device, dtype, seed=0):
        rng = np.random.default_rng(seed)
        self.B, self.vocab = B, vocab
        self.ids = make_ids(B, vocab, dist, rng).to(device)
        self.offs = torch.from_numpy(np.cumsum(vocab) - vocab).to(device)
        R = int(vocab.sum())
        self.weight = (torch.randn(R, DIM, device=device) * 0.01).to(dtype).requires_grad_()
        self.gates = torch.rand(len(vocab), device=device).requires_grad_()
        self.grad_out = torch.randn(B, len(vocab), DIM, device=device).to(dtype)


def build_method(name, case, device):
    """-> (forward fn, params whose grads are reset each run), or None where not applicable."""
    from lightfmp.kernels import gated_embedding
    c = case
    if name == "fused":
        return (lambda: gated_embedding(c.ids, c.weight, c.offs, c.gates)), [c.weight, c.gates]
    if name == "fused_sparse":
        return (lambda: gated_embedding(c.ids, c.weight, c.offs, c.gates, sparse_grad=True)), [c.weight, c.gates]
    if name == "torch_fused":
        if device != "cuda":
            return None  # that is "fused" on CPU
        return (lambda: gated_embedding(c.ids, c.weight, c.offs, c.gates, backend="torch")), [c.weight, c.gates]
    if name == "triton_atomic":
        if device != "cuda":
            return None
        return (lambda: gated_embedding(c.ids, c.weight, c.offs, c.gates, deterministic=False)), [c.weight, c.gates]
    if name == "loop":
        # Separate per-field tables, as a model without the flat layout would hold them.
        embs = [torch.nn.Embedding(int(v), DIM, device=device, dtype=c.weight.dtype) for v in c.vocab]
        cols = [c.ids[:, f].contiguous() for f in range(len(embs))]

        def loop():
            return torch.stack([embs[f](cols[f]) * c.gates[f] for f in range(len(embs))], dim=1)
        return loop, [e.weight for e in embs] + [c.gates]
    if name == "embedding_bag":
        if device == "cuda" and c.weight.dtype == torch.bfloat16:
            return None  # PyTorch has no bf16 per-sample-weights backward on CUDA
        N = c.ids.numel()
        bag_offsets = torch.arange(N, device=device)
        rows = (c.ids + c.offs.unsqueeze(0)).reshape(-1)

        def bag():
            # per_sample_weights must match the table dtype
            psw = c.gates.to(c.weight.dtype).expand(c.B, -1).reshape(-1)
            return Fn.embedding_bag(rows, c.weight, bag_offsets, mode="sum",
                                    per_sample_weights=psw).view(c.B, -1, DIM)
        return bag, [c.weight, c.gates]
    raise ValueError(name)


def _reset(params):
    for p in params:
        p.grad = None


def _runners(fn, params, grad_out):
    """Zero-arg callables per mode; bwd re-runs the backward of one retained graph."""
    holder = {}

    def fwd():
        return fn()

    def bwd():
        _reset(params)
        holder["out"].backward(grad_out, retain_graph=True)

    def fwdbwd():
        _reset(params)
        fn().backward(grad_out)

    def prepare_bwd():
        holder["out"] = fn()
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwdbwd}, prepare_bwd


def time_cpu(methods, case, reps, warmup):
    """Interleaved medians in ms: {(method, mode): (wall ms, process CPU ms)}.

    Process CPU time is reported too because a shared machine inflates wall time unevenly.
    """
    results = {}
    for mode in MODES:
        runs = {}
        for name, (fn, params) in methods.items():
            r, prep = _runners(fn, params, case.grad_out)
            if mode == "bwd":
                prep()
            runs[name] = r[mode]
        samples = {name: [] for name in runs}
        for i in range(warmup + reps):
            order = list(runs)
            if i % 2:
                order.reverse()
            for name in order:
                c0, t0 = time.process_time(), time.perf_counter()
                runs[name]()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if i >= warmup:
                    samples[name].append((dt * 1e3, dc * 1e3))
        for name, s in samples.items():
            results[(name, mode)] = (statistics.median(x[0] for x in s), statistics.median(x[1] for x in s))
    return results


def time_cuda(methods, case, reps):
    from triton.testing import do_bench
    results = {}
    for name, (fn, params) in methods.items():
        r, prep = _runners(fn, params, case.grad_out)
        for mode in MODES:
            if mode == "bwd":
                prep()
            # do_bench clears L2 before every run; the grad reset is inside the timed call.
            results[(name, mode)] = do_bench(r[mode], warmup=max(5, reps // 4), rep=reps, return_mode="median")
        _reset(params)
        torch.cuda.empty_cache()
    return results


def copy_bandwidth_gbs(device):
    from triton.testing import do_bench
    n = 256 * 1024 * 1024 // 4  # 1 GiB of fp32 per buffer
    x = torch.empty(n, device=device)
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), return_mode="median")
    return 2 * x.numel() * 4 / ms / 1e6


def machine_info(device):
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "torch_threads": torch.get_num_threads()}
    try:
        info["lscpu"] = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:15]
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = os.getloadavg()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        import triton
        info["triton"] = triton.__version__
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="B=4096 only, vocab up to 1e5, few repetitions")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 4096 16384 65536)")
    ap.add_argument("--dist", nargs="+", default=["uniform", "zipf"], choices=["uniform", "zipf"])
    ap.add_argument("--max-vocab", type=float, default=1e6)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--reps", type=int, help="CPU: timed repetitions; CUDA: do_bench rep in ms")
    ap.add_argument("--methods", nargs="+",
                    default=["fused", "fused_sparse", "torch_fused", "triton_atomic", "loop", "embedding_bag"])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    args = ap.parse_args(argv)

    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 does not matter here, the CPU fused path is the torch path")
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batch or ([4096] if args.quick else [4096, 16384, 65536])
    max_vocab = min(args.max_vocab, 1e5) if args.quick else args.max_vocab
    reps = args.reps or ((3 if args.quick else 7) if args.device == "cpu" else (50 if args.quick else 200))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    vocab = np.geomspace(1e3, max_vocab, F_FIELDS).astype(np.int64)
    elem = torch.finfo(dtype).bits // 8

    info = machine_info(args.device)
    copy_gbs = copy_bandwidth_gbs(args.device) if args.device == "cuda" else None
    print(f"device={args.device} dtype={args.dtype} F={F_FIELDS} D={DIM} rows={int(vocab.sum())} "
          f"vocab {vocab.min()}..{vocab.max()}" + (f" copy={copy_gbs:.0f} GB/s" if copy_gbs else ""))
    rows_out = []
    for B in batches:
        for dist in args.dist:
            case = Case(B, vocab, dist, args.device, dtype)
            methods = {}
            for m in args.methods:
                built = build_method(m, case, args.device)
                if built is not None:
                    methods[m] = built
            if args.device == "cuda":
                res = time_cuda(methods, case, reps)
            else:
                res = time_cpu(methods, case, reps, warmup=1)
            N = B * F_FIELDS
            fwd_bytes = 2 * N * DIM * elem + N * case.ids.element_size()
            for (m, mode), ms in res.items():
                row = {"B": B, "dist": dist, "method": m, "mode": mode}
                if isinstance(ms, tuple):
                    ms, row["cpu_ms"] = ms
                row["ms"] = ms
                if copy_gbs:
                    nbytes = fwd_bytes * {"fwd": 1, "bwd": 2, "fwdbwd": 3}[mode]
                    row["GBps"] = nbytes / ms / 1e6
                    row["pct_copy"] = 100 * row["GBps"] / copy_gbs
                rows_out.append(row)
            del case, methods
            print_block(rows_out, B, dist, args.device)
            if args.json:  # after every block, so a run cut short by a timeout still leaves data
                write_json(args, vocab, copy_gbs, info, rows_out)
    if hasattr(os, "getloadavg"):
        info["loadavg_at_end"] = os.getloadavg()
    if args.json:
        write_json(args, vocab, copy_gbs, info, rows_out)
        print(f"wrote {args.json}")


def write_json(args, vocab, copy_gbs, info, rows_out):
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = f"{args.json}.tmp"  # renamed when whole: a timeout that stops the script mid-write leaves the last copy
    with open(tmp, "w") as fh:
        json.dump({"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                   "device": args.device, "dtype": args.dtype, "F": F_FIELDS, "D": DIM,
                   "vocab": vocab.tolist(), "copy_GBps": copy_gbs, "machine": info,
                   "results": rows_out}, fh, indent=1)
    os.replace(tmp, args.json)


def print_block(rows, B, dist, device):
    sel = [r for r in rows if r["B"] == B and r["dist"] == dist]
    methods = list(dict.fromkeys(r["method"] for r in sel))
    get = {(r["method"], r["mode"]): r for r in sel}
    head = f"B={B} {dist}: ms (median)" + (" / % of copy bandwidth" if device == "cuda" else " wall")
    print(f"\n{head}")
    print(f"{'mode':8}" + "".join(f"{m:>20}" for m in methods) + f"{'loop/fused':>24}")
    for mode in MODES:
        cells = []
        for m in methods:
            r = get[(m, mode)]
            cells.append(f"{r['ms']:9.3f}" + (f" /{r['pct_copy']:5.1f}%" if "pct_copy" in r else ""))
        ratio = ""
        if ("loop", mode) in get and ("fused", mode) in get:
            lo, fu = get[("loop", mode)], get[("fused", mode)]
            ratio = f"{lo['ms'] / fu['ms']:.2f}x"
            if "cpu_ms" in fu:
                ratio += f" ({lo['cpu_ms'] / fu['cpu_ms']:.2f}x cpu)"
        print(f"{mode:8}" + "".join(f"{c:>20}" for c in cells) + f"{ratio:>24}")


if __name__ == "__main__":
    main()

"""Where the deterministic (sort-based) weight backward spends its time on CUDA, stage by stage.

    python benchmarks/kernels_bwd_parts.py [--json out/bwd_parts.json]

Same table as benchmarks/kernels.py (F=39, D=16, vocabularies 1e3..1e6 on a log scale, 6.0M rows) and the
same id distributions. Each stage is timed alone with triton.testing.do_bench (median ms): the flat-row map,
the stable sort, the segment heads (`_segment_heads`), the zero fill of the dense [R, D] gradient, the whole
``weight_grad_segments`` (dense: no host sync; sparse: one), beside the atomic backward and torch's own
``index_add_`` of the same rows. The two kernels' share is the whole minus the stages before them. CUDA only.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

F_FIELDS, DIM = 39, 16


def ids_for(B, vocab, dist, device, gen):
    cols = []
    for v in vocab:
        if dist == "zipf":
            # Zipf(1.2) ranks scattered over the field by kernels.py's multiplicative hash (clamping the tail to the
            # last row, as this script did before, made that row a second hot row of 6-22% of the ids)
            r = (gen.zipf(1.2, size=B) - 1) * 2654435761 % v
        else:
            r = gen.integers(0, v, size=B)
        cols.append(torch.from_numpy(r.astype(np.int64)))
    return torch.stack(cols, 1).to(device)


def main(argv=None):
    from triton.testing import do_bench

    from lightfmp.kernels import triton_ops as T

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[4096, 65536])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    dev = "cuda"
    gen = np.random.default_rng(0)
    vocab = np.geomspace(1e3, 1e6, F_FIELDS).astype(np.int64)
    R = int(vocab.sum())
    offs = torch.tensor(np.concatenate([[0], np.cumsum(vocab)[:-1]]), device=dev)
    weight = torch.randn(R, DIM, device=dev)
    gates = torch.rand(F_FIELDS, device=dev)
    out = []
    for B in args.batch:
        for dist in ("uniform", "zipf"):
            ids = ids_for(B, vocab, dist, dev, gen)
            grad = torch.randn(B, F_FIELDS, DIM, device=dev)
            rows = T.flat_rows(ids, offs, None)
            key = rows.int()
            srt, _ = torch.sort(key, stable=True)
            counts = torch.unique_consecutive(srt, return_counts=True)[1]
            res = {
                "flat_rows": do_bench(lambda: T.flat_rows(ids, offs, None), return_mode="median"),
                "sort": do_bench(lambda: torch.sort(key, stable=True), return_mode="median"),
                "segment_heads": do_bench(lambda: T._segment_heads(srt, T._CHUNK), return_mode="median"),
                "zeros_RD": do_bench(lambda: torch.zeros((R, DIM), device=dev), return_mode="median"),
                "weight_grad_segments": do_bench(
                    lambda: T.weight_grad_segments(grad, rows, gates, F_FIELDS, R, DIM, torch.float32),
                    return_mode="median"),
                "weight_grad_segments_sparse": do_bench(
                    lambda: T.weight_grad_segments(grad, rows, gates, F_FIELDS, R, DIM, torch.float32,
                                                   sparse=True), return_mode="median"),
                "weight_grad_atomic": do_bench(
                    lambda: T.weight_grad_atomic(grad, ids, offs, gates, None, R, DIM, torch.float32),
                    return_mode="median"),
                "index_add": do_bench(
                    lambda: torch.zeros((R, DIM), device=dev).index_add_(
                        0, rows, (grad * gates[None, :, None]).reshape(-1, DIM)), return_mode="median"),
                "gate_grad": do_bench(lambda: T.gate_grad(grad, ids, weight, offs, gates, None),
                                      return_mode="median"),
            }
            info = {"B": B, "dist": dist, "unique_rows": int(counts.numel()), "max_count": int(counts.max()),
                    "ms": res}
            out.append(info)
            print(f"B={B} {dist}: unique rows {info['unique_rows']}, longest segment {info['max_count']}")
            for k, v in res.items():
                print(f"  {k:28s} {v:8.3f} ms")
    if args.json:
        with open(f"{args.json}.tmp", "w") as fh:  # renamed when whole
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": out}, fh,
                      indent=1)
        os.replace(f"{args.json}.tmp", args.json)


if __name__ == "__main__":
    main()

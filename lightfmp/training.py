"""The training loop shared by all phases: BCE (+ lambda * E[L0] while gates train), Adam, per-epoch validation.

It reads `Rows` (lightfmp.rows): in-memory arrays or encoded shards on disk, chunk by chunk. Under torchrun every
rank walks the same global batch sequence and trains on its slice of each global batch (lightfmp.distributed).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as dist
from .checkpoint import Checkpoint, TrainState
from .errors import LightFMPError
from .metrics import log_loss, roc_auc
from .models import CTRModel
from .progress import Reporter
from .rows import SALT_HOLDOUT, Rows, as_rows, in_memory


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 512
    lr: float = 3e-3
    gate_lr: float = 0.1
    weight_decay: float = 0.0
    l0_lambda: float = 0.003
    target_k: int | None = None
    l0_warmup: float = 0.3         # fraction of steps over which lambda ramps up from 0
    gate_holdout: float = 0.2      # share of the rows whose batches only update the gates
    restore_best: bool = True      # keep the epoch with the best validation AUC
    patience: int | None = None    # stop after this many epochs without a better validation AUC
    seed: int = 0
    sparse_embeddings: bool = False  # sparse table gradients + SparseAdam for the tables
    in_memory_mb: int = 1024         # training views up to this size are read once into memory (rows.in_memory)


def l0_penalty(model: CTRModel, cfg: TrainConfig, progress: float = 1.0) -> torch.Tensor:
    """lambda * E[L0]; in target-k mode lambda * |E[L0] - k|, which pushes the expected count toward k.

    `progress` is the fraction of training done: lambda ramps up over the first `l0_warmup` of it, because
    while embeddings are still near zero no field looks useful and the penalty alone would close them all."""
    ramp = min(1.0, progress / cfg.l0_warmup) if cfg.l0_warmup > 0 else 1.0
    l0 = model.gate.expected_l0()
    if cfg.target_k is not None:
        return ramp * cfg.l0_lambda * (l0 - cfg.target_k).abs()
    return ramp * cfg.l0_lambda * l0


# random streams, each reseeded per epoch from (seed, epoch): a resumed run needs no saved RNG state
_ORDER, _GATE_ORDER, _GATE_NOISE, _TORCH = range(4)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (1 << 32) for p in parts]).generate_state(1)[0])


def _predict_array(model: CTRModel, ids: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    out = []
    for i in range(0, len(ids), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(ids[i:i + batch_size])).to(device)
        out.append(torch.sigmoid(model(x)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def predict(model: CTRModel, rows, batch_size: int = 8192, device: str = "cpu") -> np.ndarray:
    """Probabilities of `rows` (Rows, or an ids array [n, slots]) in stored order, computed by this process."""
    model.eval()
    if isinstance(rows, np.ndarray):
        return _predict_array(model, rows, batch_size, device)
    parts = [_predict_array(model, ids, batch_size, device) for ids, _ in rows.chunks(None)]
    return np.concatenate(parts) if parts else np.zeros(0)


@torch.no_grad()
def _predict_labelled(model: CTRModel, rows: Rows, batch_size: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of all rows on every rank. Under torchrun each rank scores rows[rank::world] of
    each chunk and the slices are all-gathered back into stored order, so every rank holds identical arrays
    (and takes identical early-stopping decisions)."""
    model.eval()
    w, r = (dist.world(), dist.rank()) if dist.active() else (1, 0)
    ps, ys = [], []
    for ids, y in rows.chunks(None):
        n = len(y)
        if w == 1:
            p = _predict_array(model, ids, batch_size, device)
        elif n:
            mine = _predict_array(model, ids[r::w], batch_size, device)
            width = -(-n // w)
            buf = torch.zeros(width, dtype=torch.float64, device=device)
            buf[:len(mine)] = torch.from_numpy(mine).to(device)
            p = np.empty(n)
            for k, part in enumerate(dist.all_gather(buf)):
                p[k::w] = part[:len(range(k, n, w))].numpy()
        else:
            p = np.zeros(0)
        ps.append(p)
        ys.append(np.asarray(y))
    return (np.concatenate(ps) if ps else np.zeros(0)), (np.concatenate(ys) if ys else np.zeros(0))


def evaluate(model: CTRModel, rows, device: str = "cpu", batch_size: int = 8192) -> dict:
    """AUC and logloss on `rows` (Rows or an (ids, labels) tuple); collective under torchrun."""
    p, y = _predict_labelled(model, as_rows(rows), batch_size, device)
    return {"auc": roc_auc(y, p), "logloss": log_loss(y, p), "rows": int(len(y))}


def _batches(chunks: Iterator[tuple[np.ndarray, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive batches of `size` rows across chunk boundaries; only the very last one may be shorter, so an
    epoch has ceil(rows / size) batches however the rows are chunked."""
    held_x: list[np.ndarray] = []
    held_y: list[np.ndarray] = []
    have = 0
    for ids, y in chunks:
        start, n = 0, len(y)
        if have:
            take = min(size - have, n)
            held_x.append(ids[:take])
            held_y.append(y[:take])
            have += take
            start = take
            if have < size:
                continue
            yield np.concatenate(held_x), np.concatenate(held_y)
            held_x, held_y, have = [], [], 0
        while start + size <= n:
            yield ids[start:start + size], y[start:start + size]
            start += size
        if start < n:
            held_x, held_y, have = [ids[start:]], [y[start:]], n - start
    if have:
        yield np.concatenate(held_x), np.concatenate(held_y)


def _cycle(rows: Rows, size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches of `size` rows: pass after pass over `rows`, each pass in a new shuffled order."""
    def passes():
        k = 0
        while True:
            yield from rows.chunks(_seed(seed, k))
            k += 1
    return _batches(passes(), size)


def _my_slice(ids: np.ndarray, y: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """This rank's rows of a global batch, the factor that turns their summed loss into its share of the global
    mean (DDP then averages over ranks: sum_r world/B * sum_i = mean over all B rows), and the real row count.

    A rank whose slice is empty (a global batch shorter than the world size) still runs the step, on one row
    with weight 0: every rank takes exactly the same steps and collectives, and nothing is added."""
    b = len(y)
    w, r = (dist.world(), dist.rank()) if dist.active() else (1, 0)
    x, t, weight = ids[r::w], y[r::w], w / b
    n = len(t)
    if n == 0:
        x, t, weight = ids[:1], y[:1], 0.0
    return (torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(np.ascontiguousarray(t)).to(device),
            weight, n)


def _weight_optimizers(model: CTRModel, cfg: TrainConfig):
    """Adam for the backbone; with sparse_embeddings the tables get sparse gradients and their own SparseAdam
    (a dense Adam step would read and write every row of every table, touched or not)."""
    emb = model.embedding
    emb.sparse = bool(cfg.sparse_embeddings)
    if not emb.sparse:
        return torch.optim.Adam(model.backbone_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay), None
    if cfg.weight_decay:
        raise LightFMPError("--sparse-embeddings: weight decay is not supported with sparse table gradients")
    tables = {id(p) for p in emb.table_parameters()}
    dense = [p for p in model.backbone_parameters() if id(p) not in tables]
    return torch.optim.Adam(dense, lr=cfg.lr), torch.optim.SparseAdam(emb.table_parameters(), lr=cfg.lr)


def fit(model: CTRModel, rows, valid, cfg: TrainConfig, reporter: Reporter | None = None, label: str = "train",
        device: str = "cpu", *, checkpoint: Checkpoint | None = None,
        epoch_start: Callable[[int], None] | None = None) -> dict:
    """Train in place; returns the per-epoch history.

    `rows` / `valid`: Rows (or (ids, labels) tuples). With gates and `gate_holdout` > 0, a hash-selected share of
    the rows is held out of the weight updates and each weight step is followed by a gate step on a held-out batch
    (BCE + L0 penalty), so a gate opens for a field that helps on rows the embeddings have not memorised;
    high-cardinality noise fields otherwise look useful by overfitting. With `gate_holdout` = 0 gates and weights
    take the same joint step.

    `checkpoint`: saved after every epoch (rank 0) and resumed from when it matches. `epoch_start(epoch)` is called
    before each epoch (the fault-injection hook). Under torchrun the model is wrapped in DDP for the weight steps."""
    rows = as_rows(rows)
    valid = as_rows(valid) if valid is not None else None
    reporter = reporter or Reporter(quiet=True)
    model.to(device)
    gated = model.gate is not None
    opt_w, opt_t = _weight_optimizers(model, cfg)
    opt_g = torch.optim.Adam([model.gate.log_alpha], lr=cfg.gate_lr) if gated else None
    optimizers = {"weights": opt_w, "gates": opt_g}
    if opt_t is not None:
        optimizers["tables"] = opt_t
    rows = in_memory(rows, cfg.in_memory_mb << 20)
    weight_rows, hold = rows, None
    if gated and cfg.gate_holdout > 0:
        w_rows, h_rows = rows.split(cfg.gate_holdout, cfg.seed, SALT_HOLDOUT)
        h_rows = in_memory(h_rows, cfg.in_memory_mb << 20)  # cycled many times per epoch
        if len(w_rows) and len(h_rows):  # too few rows for a hold-out: joint steps
            weight_rows, hold = w_rows, h_rows
    if len(weight_rows) == 0:
        raise LightFMPError(f"{label}: no training rows")
    bs = cfg.batch_size
    batches = max(1, math.ceil(len(weight_rows) / bs))

    state = checkpoint.load(model, optimizers) if checkpoint is not None else None
    resumed = state is not None
    state = state or TrainState(epoch=0, history=[])
    start = dist.agree(state.epoch, "the epoch to resume from")
    restored_seconds = state.seconds
    if resumed:
        reporter.log(f"resuming {checkpoint.phase} from epoch {start}")
    net = dist.wrap(model, device)   # after loading: DDP starts from identical weights on every rank
    w_rank = dist.rank() if dist.active() else 0

    with reporter.bars(label, cfg.epochs, batches) as (next_batch, next_epoch, status):
        for _ in range(min(start, cfg.epochs)):
            next_epoch()
        epoch = start
        while epoch < cfg.epochs and not state.stopped:
            if epoch_start is not None:
                epoch_start(epoch)
            torch.manual_seed(_seed(cfg.seed, epoch, _TORCH, w_rank))  # dropout: its own masks per rank
            # the gate noise: the same draws on every rank, so all ranks train through identical gates
            noise = torch.Generator(device=device).manual_seed(_seed(cfg.seed, epoch, _GATE_NOISE))
            gate_batches = _cycle(hold, min(bs, len(hold)), _seed(cfg.seed, epoch, _GATE_ORDER)) \
                if hold is not None else None
            model.train()
            t0, total, seen = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device), 0
            order = weight_rows.chunks(_seed(cfg.seed, epoch, _ORDER))
            for b, (ids, y) in enumerate(_batches(order, bs)):
                progress = (epoch * batches + b) / (cfg.epochs * batches)
                x, t, scale, n = _my_slice(ids, y, device)
                per_row = F.binary_cross_entropy_with_logits(net(x, model.gate.sample(noise) if gated else None), t,
                                                             reduction="none")
                loss = per_row.sum() * scale
                if n:
                    total += per_row.detach().sum().double()
                    seen += n
                if gated and hold is None:
                    loss = loss + l0_penalty(model, cfg, progress)
                opt_w.zero_grad(set_to_none=True)
                if opt_t is not None:
                    opt_t.zero_grad(set_to_none=True)
                if gated:
                    opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_w.step()
                if opt_t is not None:
                    opt_t.step()
                if gated and hold is None:
                    opt_g.step()
                if hold is not None:
                    gx, gt, gscale, _ = _my_slice(*next(gate_batches), device)
                    gate_loss = F.binary_cross_entropy_with_logits(model(gx, model.gate.sample(noise)), gt,
                                                                   reduction="sum") * gscale
                    gate_loss = gate_loss + l0_penalty(model, cfg, progress)
                    # only log_alpha's gradient: skips the weight-gradient matmuls of a full backward; it bypasses
                    # DDP (the raw module), so the ranks' gradients are averaged here
                    grad, = torch.autograd.grad(gate_loss, [model.gate.log_alpha])
                    model.gate.log_alpha.grad = dist.all_reduce_mean(grad)
                    opt_g.step()
                next_batch()
            sums = dist.all_reduce_sum(torch.stack([total.cpu(), torch.tensor(float(seen), dtype=torch.float64)])
                                       .to(device))
            rec = {"epoch": epoch + 1, "train_logloss": float(sums[0]) / max(float(sums[1]), 1.0),
                   "seconds": time.perf_counter() - t0}
            if gated:
                rec["expected_l0"] = float(model.gate.expected_l0().detach())
            if valid is not None and len(valid):
                rec["valid"] = evaluate(model, valid, device)
                score = rec["valid"]["auc"]
                if not np.isfinite(score):  # one-class validation split: rank epochs by logloss instead
                    score = -rec["valid"]["logloss"]
                if score > state.best_score:
                    state.best_score, state.best_epoch = score, epoch
                    if cfg.restore_best:
                        state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state.history.append(rec)
            state.epoch = epoch + 1
            state.seconds += time.perf_counter() - t0
            # early stopping; identical on every rank since the validation scores are
            state.stopped = cfg.patience is not None and "valid" in rec and epoch - state.best_epoch >= cfg.patience
            if checkpoint is not None:
                if dist.is_main():
                    checkpoint.save(model, optimizers, state)
                dist.barrier()  # nobody starts (or dies in) the next epoch before the checkpoint is whole
            status(f"loss {rec['train_logloss']:.4f}" + (f" valid auc {rec['valid']['auc']:.4f}" if "valid" in rec else ""))
            next_epoch()
            epoch += 1
    if cfg.restore_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
    out = {"epochs": state.history, "rows": int(len(rows)),
           "best_valid_score": state.best_score if np.isfinite(state.best_score) else None}
    if resumed:
        out["resumed_from_epoch"] = start
        out["seconds_restored"] = restored_seconds
    return out

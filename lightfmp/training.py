"""The one training loop: every phase and every gate-based selector trains through `fit`.

    fit           set up a `Trainer`, resume from a checkpoint, run epochs until done or stopped early
    Trainer.train_epoch   one pass over the weight rows in a seeded order
    Trainer.train_step    one weight step (BCE; with the gate's penalty when gates and weights step jointly)
    Trainer.gate_step     one gate step on a held-out batch (bilevel: only the gate's parameters move)
    track_best / stop_early   the validation bookkeeping (best epoch, early stopping)
    average_tied  the final model of a fit without gates: the mean of its tied epochs (lightfmp.averaging)
    evaluate / predict

The gate is the model's `gate` module (lightfmp.gates): fit only calls its interface. It reads `Rows`
(lightfmp.rows): in-memory arrays or encoded shards on disk, chunk by chunk. Under torchrun every rank walks the
same global batch sequence and trains on its slice of each global batch (lightfmp.distributed).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as dist
from .averaging import copies_allowed, mean_weights, tie
from .checkpoint import Checkpoint, TrainState
from .config import TrainConfig
from .errors import LightFMPError
from .metrics import roc_auc, row_log_loss, worse_beyond_noise
from .models import CTRModel
from .moments import Carry, load_named_state, named_state
from .progress import Reporter
from .rows import Rows, in_memory
from .splits import SALT_HOLDOUT


@dataclass(frozen=True)
class Plan:
    """What differs between the fits of one run, which share one TrainConfig: how many epochs, the seed of the random
    streams, whether the best validation epoch is kept (and training stops after `patience` epochs without a better
    one: the model-selecting phases), how large a training set is read into memory at once, and whether the final model
    is the mean of the tied epochs (lightfmp.averaging), with how many epochs' weights that budget holds."""
    epochs: int
    seed: int = 0
    select_best: bool = True
    in_memory_mb: int = 1024
    span: tuple[float, float] = (0.0, 1.0)  # the part of a longer schedule this fit is: the gates' progress runs over it
    split_seed: int | None = None  # the gate hold-out's seed: a row assignment, like the split (default: seed)
    averages: bool = False  # the final model is the mean of the tied epochs (a model-selecting fit without gates)
    copies: int = 1  # the most epochs' weights kept for that mean


# random streams, each reseeded per epoch from (seed, epoch): a resumed run needs no saved RNG state
_ORDER, _GATE_ORDER, _GATE_NOISE, _TORCH = range(4)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (1 << 32) for p in parts]).generate_state(1)[0])


# ---- prediction and evaluation -------------------------------------------------------------------------------------
def _predict_array(model: CTRModel, ids: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    out = []
    for i in range(0, len(ids), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(ids[i:i + batch_size])).to(device)
        out.append(torch.sigmoid(model(x)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def predict(model: CTRModel, rows: Rows | np.ndarray, batch_size: int = 8192, device: str = "cpu") -> np.ndarray:
    """Probabilities of `rows` (Rows, or an ids array [n, slots]) in stored order, computed by this process."""
    model.eval()
    if isinstance(rows, np.ndarray):
        return _predict_array(model, rows, batch_size, device)
    # consecutive batches across the chunks: the same batches however the rows are stored (one array in memory,
    # shard by shard on disk), so the same float rounding and the same predictions
    parts = [_predict_array(model, ids, batch_size, device) for ids, _ in _batches(rows.chunks(None), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)


@torch.no_grad()
def _predict_labelled(model: CTRModel, rows: Rows, batch_size: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of all rows on every rank, scored in consecutive batches of `batch_size` rows across
    the chunks: the same batches whether the rows are in memory or in shards, so the same predictions (one can
    differ in its last bits with the batch it is computed in, and the AUC ranks such differences: rows of equal
    inputs may not tie). Under torchrun each rank scores rows[rank::world] of each batch and the slices are
    all-gathered back into stored order, so every rank holds identical arrays (and takes identical early-stopping
    decisions); those sub-batches round as one process's batches do not, so the AUC may differ from one process's in
    its last digits (as the weights themselves do, by DDP's summation order)."""
    model.eval()
    w, r = (dist.world(), dist.rank()) if dist.active() else (1, 0)
    ps, ys = [], []
    for ids, y in _batches(rows.chunks(None), batch_size):
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


def evaluate(model: CTRModel, rows: Rows, device: str = "cpu", batch_size: int = 8192) -> dict:
    """AUC and logloss on `rows`; collective under torchrun."""
    return validate(model, rows, device, batch_size)[0]


def validate(model: CTRModel, rows: Rows, device: str = "cpu", batch_size: int = 8192) -> tuple[dict, np.ndarray]:
    """`evaluate`'s record and the per-row logloss it averages (what early stopping compares epochs by)."""
    p, y = _predict_labelled(model, rows, batch_size, device)
    losses = row_log_loss(y, p)
    return {"auc": roc_auc(y, p), "logloss": float(losses.mean()) if len(losses) else float("nan"),
            "rows": int(len(y))}, losses


def warm_up() -> None:
    """Pay torch's one-time lazy imports before any timed phase: the first optimizer a process builds imports
    torch._dynamo (1-2 s on a small machine), which would otherwise count as training time of whichever phase or
    selector happens to run first. Those imports are ~900 modules: a Ctrl-C among them (a notebook's first run) would
    leave some half-initialised for the rest of the process (every later run failing inside torch), so the modules
    an interrupted import added are taken out again and the next call imports them afresh."""
    before = set(sys.modules)
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    except BaseException:
        for name in set(sys.modules) - before:
            sys.modules.pop(name, None)
        raise


# ---- batches ---------------------------------------------------------------------------------------------------
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


def _cycle(rows: Rows, size: int, seed: int, window_bytes: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches of `size` rows: pass after pass over `rows`, each pass in a new shuffled order."""
    def passes():
        k = 0
        while True:
            yield from rows.chunks(_seed(seed, k), window_bytes)
            k += 1
    return _batches(passes(), size)


def _spread(chunks: Iterator[tuple[np.ndarray, np.ndarray]], n: int, parts: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over `chunks` (`n` rows) cut into `parts` consecutive batches whose sizes differ by at most one row
    (batch b holds rows floor(b n / parts) .. floor((b + 1) n / parts); some are empty when there are fewer rows
    than parts), read chunk by chunk as the batches are taken."""
    rest = iter(chunks)
    held_x: list[np.ndarray] = []
    held_y: list[np.ndarray] = []
    have = 0
    for b in range(parts):
        size = (b + 1) * n // parts - b * n // parts
        while have < size:
            ids, y = next(rest)
            held_x.append(ids)
            held_y.append(y)
            have += len(y)
        x_all = np.concatenate(held_x) if len(held_x) > 1 else held_x[0] if held_x else np.zeros((0, 0), np.int32)
        y_all = np.concatenate(held_y) if len(held_y) > 1 else held_y[0] if held_y else np.zeros(0, np.float32)
        yield x_all[:size], y_all[:size]
        held_x, held_y, have = ([x_all[size:]], [y_all[size:]], have - size) if have > size else ([], [], 0)


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


# ---- one fit ----------------------------------------------------------------------------------------------------
def _weight_optimizers(model: CTRModel, cfg: TrainConfig):
    """Adam for the backbone; with sparse_embeddings the tables get sparse gradients and their own SparseAdam
    (a dense Adam step would read and write every row of every table, touched or not). The Adam is the fused one
    (one kernel per parameter instead of a dozen element-wise passes: 3x cheaper on CPU) where this torch has it
    for the parameters' device."""
    def adam(params: list) -> torch.optim.Adam:
        try:
            return torch.optim.Adam(params, lr=cfg.lr, fused=True)
        except RuntimeError:  # no fused Adam for this device in this torch (CPU: torch < 2.4)
            return torch.optim.Adam(params, lr=cfg.lr)

    emb = model.embedding
    emb.sparse = bool(cfg.sparse_embeddings)
    if not emb.sparse:
        return adam(model.backbone_parameters()), None
    tables = {id(p) for p in emb.table_parameters()}
    dense = [p for p in model.backbone_parameters() if id(p) not in tables]
    return adam(dense), torch.optim.SparseAdam(emb.table_parameters(), lr=cfg.lr)


class Trainer:
    """The state of one fit: the model, its optimizers, the weight rows and the gate's hold-out rows.

    With a gate that `uses_holdout` and `gate_holdout` > 0, a hash-selected share of the rows is held out of the
    weight updates and each weight step is followed by a gate step on a held-out batch (BCE + the gate's penalty),
    so a gate opens for a field that helps on rows the embeddings have not memorised; high-cardinality noise
    fields otherwise look useful by overfitting. With a gate whose `holdout_pass` is set (Light-FMP's), each gate
    step reads the next 1/batches of the epoch's shuffled pass over the hold-out, so the gates read each held-out
    row once an epoch (as the weights read theirs), in as many steps as the weights take; otherwise each gate step
    reads a full batch, cycling the hold-out. Without a hold-out, gates and weights take the same joint step."""

    def __init__(self, model: CTRModel, rows: Rows, cfg: TrainConfig, plan: Plan, device: str, label: str,
                 carry: Carry | None = None):
        self.model, self.cfg, self.plan, self.device = model, cfg, plan, device
        self.gate = model.gate
        self.opt_w, self.opt_t = _weight_optimizers(model, cfg)
        if carry is not None and carry.state is not None:  # (a checkpoint resumed from replaces it)
            load_named_state(model, self.weight_optimizers, carry.state)
        self.opt_g = torch.optim.Adam(self.gate.parameters(), lr=cfg.gate_lr) if self.gate is not None else None
        self.rows = in_memory(rows, plan.in_memory_mb << 20)
        # rows too large for memory are shuffled in windows of chunks of a third of the budget: the window being
        # trained on (its last batches), the next one and that one's permutation stay within it
        self.window_bytes = (plan.in_memory_mb << 20) // 3
        self.weight_rows, self.hold = self.rows, None
        if self.gate is not None and self.gate.uses_holdout and cfg.gate_holdout > 0:
            w_rows, h_rows = self.rows.split(cfg.gate_holdout, plan.seed if plan.split_seed is None else
                                             plan.split_seed, SALT_HOLDOUT)
            h_rows = in_memory(h_rows, plan.in_memory_mb << 20)  # read in small batches every epoch
            if len(w_rows) and len(h_rows):  # too few rows for a hold-out: joint steps
                self.weight_rows, self.hold = w_rows, h_rows
        if len(self.weight_rows) == 0:
            raise LightFMPError(f"{label}: no training rows")
        self.joint = self.gate is not None and self.hold is None
        self.batches = max(1, math.ceil(len(self.weight_rows) / cfg.batch_size))
        self.net: torch.nn.Module = model  # the module the weight steps run (DDP under torchrun: see wrap)
        self.evidence = None  # measured on each batch before its step (`fit`'s `evidence`)

    @property
    def weight_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_w] + ([self.opt_t] if self.opt_t is not None else [])

    @property
    def optimizers(self) -> dict:
        """By name, as checkpoints store them."""
        out = {"weights": self.opt_w, "gates": self.opt_g}
        if self.opt_t is not None:
            out["tables"] = self.opt_t
        return out

    def wrap(self) -> None:
        """Hand the weight steps to DDP (after a checkpoint load: every rank starts from identical weights)."""
        self.net = dist.wrap(self.model, self.device)

    def progress(self, step: int) -> float:
        """Fraction of training done after `step` steps (of the schedule `plan.span` is part of)."""
        lo, hi = self.plan.span
        return lo + (hi - lo) * step / (self.plan.epochs * self.batches)

    def train_epoch(self, epoch: int, next_batch: Callable[[], None] = lambda: None) -> dict:
        cfg, device, seed = self.cfg, self.device, self.plan.seed
        w_rank = dist.rank() if dist.active() else 0
        torch.manual_seed(_seed(seed, epoch, _TORCH, w_rank))  # dropout: its own masks per rank
        # the gate noise: the same draws on every rank, so all ranks train through identical gates
        noise = torch.Generator(device=device).manual_seed(_seed(seed, epoch, _GATE_NOISE))
        held = None  # the gate steps' batches: one pass over the hold-out in shares, or full batches cycling it
        if self.hold is not None:
            order = _seed(seed, epoch, _GATE_ORDER)
            held = _spread(self.hold.chunks(order, self.window_bytes), len(self.hold), self.batches) \
                if self.gate.holdout_pass else \
                _cycle(self.hold, min(cfg.batch_size, len(self.hold)), order, self.window_bytes)
        self.model.train()
        t0, total, seen = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device), 0
        order = self.weight_rows.chunks(_seed(seed, epoch, _ORDER), self.window_bytes)
        for b, (ids, y) in enumerate(_batches(order, cfg.batch_size)):
            step = epoch * self.batches + b
            if self.evidence is not None:
                self.evidence.measure(self.model, ids, y)
            loss_sum, n = self.train_step(ids, y, self.progress(step), noise)
            if n:
                total += loss_sum
                seen += n
            if held is not None:
                ids_h, y_h = next(held)
                if len(y_h):  # empty only when the hold-out has fewer rows than the epoch has weight steps
                    self.gate_step(ids_h, y_h, self.progress(step), noise)
            if self.gate is not None:
                self.gate.after_step(self.progress(step + 1), cfg)
            next_batch()
        sums = dist.all_reduce_sum(torch.stack([total.cpu(), torch.tensor(float(seen), dtype=torch.float64)])
                                   .to(device))
        rec = {"epoch": epoch + 1, "train_logloss": float(sums[0]) / max(float(sums[1]), 1.0),
               "seconds": time.perf_counter() - t0}
        if self.gate is not None:
            rec.update(self.gate.summary())
        return rec

    def gate_epoch(self, epoch: int) -> None:
        """Epoch `epoch` of gate steps alone, the weights left as they are: the epoch's pass over the hold-out in
        shares, with the gate noise, order and schedule `train_epoch` gives that epoch (`gates_alone`)."""
        seed = self.plan.seed
        torch.manual_seed(_seed(seed, epoch, _TORCH, dist.rank() if dist.active() else 0))
        noise = torch.Generator(device=self.device).manual_seed(_seed(seed, epoch, _GATE_NOISE))
        held = _spread(self.hold.chunks(_seed(seed, epoch, _GATE_ORDER), self.window_bytes), len(self.hold),
                       self.batches)
        self.model.train()
        for b in range(self.batches):
            step = epoch * self.batches + b
            ids_h, y_h = next(held)
            if len(y_h):
                self.gate_step(ids_h, y_h, self.progress(step), noise)
            self.gate.after_step(self.progress(step + 1), self.cfg)

    def train_step(self, ids: np.ndarray, y: np.ndarray, progress: float,
                   noise: torch.Generator) -> tuple[torch.Tensor, int]:
        """One weight step on a global batch (and the gate's, when they step jointly). Returns this rank's summed
        BCE (float64, detached) and its row count."""
        x, t, scale, n = _my_slice(ids, y, self.device)
        gates = self.gate.sample(noise) if self.gate is not None else None
        per_row = F.binary_cross_entropy_with_logits(self.net(x, gates), t, reduction="none")
        loss = per_row.sum() * scale
        loss_sum = per_row.detach().sum().double()
        if self.joint:
            loss = loss + self.gate.penalty(progress, self.cfg)
        for opt in self.optimizers.values():
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_w.step()
        if self.opt_t is not None:
            self.opt_t.step()
        if self.joint:
            self.opt_g.step()
        return loss_sum, n

    def gate_step(self, ids: np.ndarray, y: np.ndarray, progress: float, noise: torch.Generator) -> None:
        """One step of the gate's parameters on a held-out batch: BCE through a fresh gate sample + penalty."""
        x, t, scale, _ = _my_slice(ids, y, self.device)
        loss = F.binary_cross_entropy_with_logits(self.model(x, self.gate.sample(noise)), t, reduction="sum") * scale
        loss = loss + self.gate.penalty(progress, self.cfg)
        # only the gate's gradients: skips the weight-gradient matmuls of a full backward; it bypasses DDP (the raw
        # module), so the ranks' gradients are averaged here
        params = list(self.gate.parameters())
        for p, grad in zip(params, torch.autograd.grad(loss, params)):
            p.grad = dist.all_reduce_mean(grad)
        self.opt_g.step()


def _gates_alone(trainer: Trainer, model: CTRModel, first: int) -> dict:
    """The gates alone for the planned epochs from `first` on (the epochs after the best one), on the best epoch's
    weights, from the best epoch's gates, with the gates' optimizer as training left it. The weights stop at their
    best epoch because they overfit the subset; the gates read held-out rows, and their planned steps are the
    method's L0 budget. The model comes back with the best epoch's gates. Returns {"epochs", "log_alpha": where
    the gates alone ended}."""
    best = {k: v.detach().clone() for k, v in model.gate.state_dict().items()}
    epochs = range(first, trainer.plan.epochs)
    for epoch in epochs:
        trainer.gate_epoch(epoch)
    alone = model.gate.log_alpha.detach().cpu().tolist()
    if not np.isfinite(alone).all():
        raise diverged("the gates alone ended with log_alpha not finite", trainer.cfg)
    model.gate.load_state_dict(best)
    return {"epochs": len(epochs), "log_alpha": alone}


def gates_finite(model) -> bool:
    gate = getattr(model, "gate", None)
    return not hasattr(gate, "log_alpha") or bool(torch.isfinite(gate.log_alpha.detach()).all())


def diverged(what: str, cfg: TrainConfig, gated: bool = True) -> LightFMPError:
    """The error of a fit whose numbers stopped being finite: never a finished run with NaN weights. The gates'
    rates are named only where the fit trained gates (not `--no-select`, not phase 3's pruned model)."""
    rates = (f"a smaller --lr (now {cfg.lr:g}), --gate-lr (now {cfg.gate_lr:g}) or --l0-lambda (now "
             f"{cfg.l0_lambda:g})" if gated else f"a smaller --lr (now {cfg.lr:g})")
    return LightFMPError(f"training diverged: {what}; {rates} trains")


def track_best(state: TrainState, rec: dict, losses: np.ndarray, epoch: int, model: CTRModel, plan: Plan) -> None:
    """Remember the epoch with the best validation AUC (logloss on a one-class split) and its per-row validation
    losses, with its weights when the plan selects the best epoch, and the per-row losses of the epoch with the
    lowest validation logloss. An epoch whose validation logloss is worse than that lowest one's beyond noise
    (`metrics.worse_beyond_noise`) is never the best, whatever its AUC: it is overfitting, the state `stop_early`
    stops on, and a higher AUC there comes with measurably worse probabilities. So an epoch that lowers the logloss
    until the best so far is measurably worse than it becomes the best itself, and an epoch whose logloss is not
    finite (diverged weights) is never the best. The reference is the lowest logloss, not the best epoch's: "not
    measurably worse" does not chain (each epoch within noise of the one before can drift far from the lowest).
    In a fit that averages (`plan.averages`), the epoch joins the tied set where it is not measurably worse than
    the lowest (`averaging.tie`)."""
    least = _least(state)
    finite = losses is not None and len(losses) > 0 and bool(np.isfinite(np.mean(losses)))
    lowest = finite and (least is None or float(np.mean(losses)) < float(np.mean(least)))
    if lowest:
        state.least_losses = losses
    score = _score(rec["valid"])
    better = (losses is None or finite) and score > state.best_score and not _worse_than_least(state, losses)
    displaced = lowest and _worse_than_least(state, state.best_losses)
    # rank 0's decision on every rank: the arrays are identical, the last bits of their logs across machines need not be
    if dist.broadcast_int(better or displaced):
        state.best_score, state.best_epoch, state.best_losses = score, epoch, losses
        if plan.select_best:
            state.best_state = _weights(model)
    if plan.averages and finite:
        state.tied = tie(state.tied, epoch, losses, _least(state), plan.copies,
                         lambda: state.best_state if state.best_epoch == epoch else _weights(model))


def _weights(model: CTRModel) -> dict:
    """A copy of the model's weights in host memory (the best epoch's, or a tied epoch's, kept for the end of a
    model-selecting fit: on a GPU, device memory holds the model alone)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _score(valid: dict) -> float:
    """What epochs are ranked by: validation AUC, or minus the logloss on a one-class split (AUC undefined)."""
    return valid["auc"] if np.isfinite(valid["auc"]) else -valid["logloss"]


def _given_as_best(state: TrainState, given: tuple[dict, np.ndarray], model: CTRModel, plan: Plan) -> None:
    """The model as given, validated (`given`: its record and per-row losses), is the best until an epoch beats it."""
    state.best_score, state.best_epoch, state.best_losses = _score(given[0]), -1, given[1]
    state.least_losses = given[1]
    if plan.select_best:
        state.best_state = _weights(model)
    if plan.averages and len(given[1]) and np.isfinite(np.mean(given[1])):
        state.tied = {-1: (state.best_state, given[1])}


def average_tied(model: CTRModel, state: TrainState, valid: Rows, device: str) -> dict:
    """Load the mean of the tied epochs' weights into `model` (which holds the best epoch's) and keep it unless its
    validation logloss is worse than the lowest epoch's beyond noise (then the best epoch's weights go back).
    Returns history.json's `averaged`: the epochs averaged (1-based; 0 is the model the fit was given), whether the
    mean is the final model, and its validation record."""
    model.load_state_dict(mean_weights(state.tied))
    rec, losses = validate(model, valid, device)
    used = not dist.broadcast_int(_worse_than_least(state, losses))
    if not used:
        model.load_state_dict(state.best_state)
    return {"epochs": [e + 1 for e in sorted(state.tied)], "used": used, "valid": rec}


def _final_model(averaged: dict) -> str:
    """The log line of a fit's `averaged` record: which epochs the final model is the mean of (epoch 0: the model the
    fit started from), or that the best epoch stayed."""
    epochs = [f"epoch {e}" if e else "the model it started from" for e in averaged["epochs"]]
    what = ", ".join(epochs[:-1]) + " and " + epochs[-1]
    if not averaged["used"]:
        return f"final model: the best epoch (the mean of {what} was measurably worse in validation logloss)"
    return f"final model: the mean of {what} (tied in validation logloss), valid auc {averaged['valid']['auc']:.4f}"


def stop_early(state: TrainState, rec: dict, losses: np.ndarray | None, epoch: int, cfg: TrainConfig,
               plan: Plan) -> bool:
    """Stop a model-selecting fit (patience 0: never) once `patience` epochs have passed without a better validation
    score and this epoch's validation logloss is worse than the lowest epoch's beyond noise (more than two standard
    errors of the per-row difference, `metrics.worse_beyond_noise`): a dip the validation rows cannot tell from
    chance does not end the run. `fit` takes rank 0's answer on every rank."""
    if not (plan.select_best and cfg.patience > 0 and "valid" in rec and epoch - state.best_epoch >= cfg.patience):
        return False
    if _least(state) is None or losses is None or len(losses) < 2:  # e.g. resumed from a checkpoint without them
        return True
    return _worse_than_least(state, losses)


def _least(state: TrainState) -> np.ndarray | None:
    """The per-row validation losses of the lowest-logloss epoch. A state from before they were kept (an older
    checkpoint) starts them at the best epoch's, once: re-reading the best epoch's at every step would chain."""
    if state.least_losses is None:
        state.least_losses = state.best_losses
    return state.least_losses


def _worse_than_least(state: TrainState, losses: np.ndarray | None) -> bool:
    """This epoch's per-row validation losses are worse than the lowest-logloss epoch's beyond noise (False without
    both)."""
    least = _least(state)
    return least is not None and losses is not None and len(losses) >= 2 and worse_beyond_noise(losses, least)


def fit(model: CTRModel, rows: Rows, valid: Rows | None, cfg: TrainConfig, reporter: Reporter | None = None,
        label: str = "train", device: str = "cpu", *, epochs: int | None = None, seed: int = 0,
        select_best: bool = True, in_memory_mb: int = 1024, checkpoint: Checkpoint | None = None,
        epoch_start: Callable[[int], None] | None = None, given: tuple[dict, np.ndarray] | None = None,
        span: tuple[float, float] = (0.0, 1.0), split_seed: int | None = None, carry: Carry | None = None,
        gates_alone: bool = False, evidence=None) -> dict:
    """Train `model` (and its gate, if it has one) in place on `rows`, validating on `valid` after each epoch;
    returns the per-epoch history.

    `given`: the validation record and per-row losses (`validate`) of `model` as given, when a fit continues
    another one on the same model: the model as given is the best until an epoch beats it (then `best_epoch` is 0,
    and the model comes back as given), and an epoch measurably worse than it can stop the fit.

    `carry` (lightfmp.moments): the weight optimizers start from its state, if any, and leave their final state in
    it (the next phase continues the same optimisation).
    `epochs` (default cfg.epochs), `seed`, `select_best`, `in_memory_mb`, `span`, `split_seed`: this fit's `Plan`.
    `checkpoint`: saved after every epoch (rank 0) and resumed from when it matches. `epoch_start(epoch)` is called
    before each epoch (the fault-injection hook). Under torchrun the model is wrapped in DDP for the weight steps.
    `gates_alone` (phase 1): after the best epoch is restored, the gates alone go on for the planned epochs after it
    (`_gates_alone`); the model keeps the best epoch's gates, the history records where the gates alone ended.
    `evidence` (lightfmp.progressive.SweepCosts): measures the model on each batch before its step; its totals are
    combined over ranks after each epoch and kept with the checkpoint (restored with it)."""
    reporter = reporter or Reporter(quiet=True)
    model.to(device)
    copies = copies_allowed(model, int(in_memory_mb) << 20)
    averages = bool(select_best and cfg.average_epochs and model.gate is None and valid is not None and len(valid)
                    and copies >= 2)
    plan = Plan(cfg.epochs if epochs is None else int(epochs), int(seed), bool(select_best), int(in_memory_mb),
                (float(span[0]), float(span[1])), None if split_seed is None else int(split_seed), averages, copies)
    trainer = Trainer(model, rows, cfg, plan, device, label, carry)
    trainer.evidence = evidence

    state = checkpoint.load(model, trainer.optimizers) if checkpoint is not None else None
    resumed = state is not None
    if resumed and evidence is not None:
        try:
            evidence.load(state.evidence or {})
        except (KeyError, ValueError) as e:  # the key names the rule's order: only an edited checkpoint gets here
            raise LightFMPError(f"{checkpoint.json_path}: what its epochs measured for the keep rule is missing or "
                                f"does not fit ({e}); delete {checkpoint.dir} and rerun") from None
    if state is None:
        state = TrainState(epoch=0, history=[])
        if given is not None:
            _given_as_best(state, given, model, plan)
    start = dist.agree(state.epoch, "the epoch to resume from")
    restored_seconds = state.seconds
    if resumed:
        reporter.log(f"resuming {checkpoint.phase} from epoch {start}")
    trainer.wrap()

    with reporter.bars(label, plan.epochs, trainer.batches) as (next_batch, next_epoch, status):
        for _ in range(min(start, plan.epochs)):
            next_epoch()
        epoch = start
        while epoch < plan.epochs and not state.stopped:
            if epoch_start is not None:
                epoch_start(epoch)
            t0 = time.perf_counter()
            rec = trainer.train_epoch(epoch, next_batch)
            if evidence is not None:
                evidence.combine()
                state.evidence = evidence.arrays()
            if not np.isfinite(rec["train_logloss"]):
                raise diverged(f"epoch {epoch + 1}'s training loss is {rec['train_logloss']}", cfg,
                               getattr(model, "gate", None) is not None)
            if not gates_finite(model):  # the weights' loss may still be finite: a gate step went to NaN or inf
                raise diverged(f"epoch {epoch + 1} ended with gates whose log_alpha is not finite", cfg)
            losses = None
            if valid is not None and len(valid):
                rec["valid"], losses = validate(model, valid, device)
                track_best(state, rec, losses, epoch, model, plan)
            state.history.append(rec)
            state.epoch = epoch + 1
            state.seconds += time.perf_counter() - t0
            state.stopped = bool(dist.broadcast_int(stop_early(state, rec, losses, epoch, cfg, plan)))
            if checkpoint is not None:
                if dist.is_main():
                    checkpoint.save(model, trainer.optimizers, state)
                dist.barrier()  # nobody starts (or dies in) the next epoch before the checkpoint is whole
                if not dist.is_main():
                    checkpoint.saved_elsewhere(state.epoch)
            status(f"loss {rec['train_logloss']:.4f}" + (f" valid auc {rec['valid']['auc']:.4f}" if "valid" in rec
                                                         else ""))
            next_epoch()
            epoch += 1
    if carry is not None:
        carry.state = named_state(model, trainer.weight_optimizers)
    if plan.select_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
    out = {"epochs": state.history, "rows": int(len(trainer.rows)),
           "best_valid_score": state.best_score if np.isfinite(state.best_score) else None,
           "best_epoch": state.best_epoch + 1 if np.isfinite(state.best_score) else None}
    if plan.averages and len(state.tied) > 1 and state.best_state is not None:
        out["averaged"] = average_tied(model, state, valid, device)
        reporter.log(f"{label}: {_final_model(out['averaged'])}")
    if gates_alone and trainer.hold is not None and hasattr(model.gate, "log_alpha") and np.isfinite(state.best_score):
        out["gates_alone"] = _gates_alone(trainer, model, max(state.best_epoch, 0) + 1)
    if resumed:
        out["resumed_from_epoch"] = start
        out["seconds_restored"] = restored_seconds
    return out

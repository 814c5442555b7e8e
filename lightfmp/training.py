"""The training loop shared by all phases: BCE (+ lambda * E[L0] while gates train), Adam, per-epoch validation."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import log_loss, roc_auc
from .models import CTRModel
from .progress import Reporter


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


def l0_penalty(model: CTRModel, cfg: TrainConfig, progress: float = 1.0) -> torch.Tensor:
    """lambda * E[L0]; in target-k mode lambda * |E[L0] - k|, which pushes the expected count toward k.

    `progress` is the fraction of training done: lambda ramps up over the first `l0_warmup` of it, because
    while embeddings are still near zero no field looks useful and the penalty alone would close them all."""
    ramp = min(1.0, progress / cfg.l0_warmup) if cfg.l0_warmup > 0 else 1.0
    l0 = model.gate.expected_l0()
    if cfg.target_k is not None:
        return ramp * cfg.l0_lambda * (l0 - cfg.target_k).abs()
    return ramp * cfg.l0_lambda * l0


@torch.no_grad()
def predict(model: CTRModel, ids: np.ndarray, batch_size: int = 8192, device: str = "cpu") -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(ids), batch_size):
        x = torch.from_numpy(ids[i:i + batch_size]).to(device)
        out.append(torch.sigmoid(model(x)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate(model: CTRModel, ids: np.ndarray, y: np.ndarray, device: str = "cpu") -> dict:
    p = predict(model, ids, device=device)
    return {"auc": roc_auc(y, p), "logloss": log_loss(y, p), "rows": int(len(y))}


def fit(model: CTRModel, ids: np.ndarray, y: np.ndarray, valid: tuple[np.ndarray, np.ndarray] | None,
        cfg: TrainConfig, reporter: Reporter, label: str = "train", device: str = "cpu") -> dict:
    """Train in place; returns the per-epoch history.

    With gates and `gate_holdout` > 0, a slice of the rows is held out of the weight updates and each weight step
    is followed by a gate step on a held-out batch (BCE + L0 penalty), so a gate opens for a field that helps on
    rows the embeddings have not memorised; high-cardinality noise fields otherwise look useful by overfitting.
    With `gate_holdout` = 0 gates and weights take the same joint step."""
    model.to(device)
    opt_w = torch.optim.Adam(model.backbone_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gated = model.gate is not None
    opt_g = torch.optim.Adam([model.gate.log_alpha], lr=cfg.gate_lr) if gated else None
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(ids)
    y_all = torch.from_numpy(y.astype(np.float32))
    rows = torch.randperm(len(ids), generator=gen)
    n_hold = int(len(ids) * cfg.gate_holdout) if gated and cfg.gate_holdout > 0 else 0
    hold, rows = rows[:n_hold], rows[n_hold:]
    n = len(rows)
    batches = max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    history, best_auc, best_state, best_epoch = [], -np.inf, None, 0
    torch.manual_seed(cfg.seed)  # the gate samples draw from the global generator

    def batch_loss(idx):
        return F.binary_cross_entropy_with_logits(model(x_all[idx].to(device)), y_all[idx].to(device))

    with reporter.bars(label, cfg.epochs, batches) as (next_batch, next_epoch, status):
        for epoch in range(cfg.epochs):
            model.train()
            t0, total, seen = time.perf_counter(), 0.0, 0
            perm = rows[torch.randperm(n, generator=gen)]
            hold_perm = hold[torch.randperm(n_hold, generator=gen)] if n_hold else None
            for b in range(batches):
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                progress = (epoch * batches + b) / (cfg.epochs * batches)
                loss = batch_loss(idx)
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                if gated and not n_hold:
                    loss = loss + l0_penalty(model, cfg, progress)
                opt_w.zero_grad(set_to_none=True)
                if gated:
                    opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_w.step()
                if gated and not n_hold:
                    opt_g.step()
                if n_hold:
                    start = (b * cfg.batch_size) % n_hold
                    gidx = hold_perm[start:start + cfg.batch_size]
                    # only log_alpha's gradient: skips the weight-gradient matmuls of a full backward
                    gate_loss = batch_loss(gidx) + l0_penalty(model, cfg, progress)
                    model.gate.log_alpha.grad, = torch.autograd.grad(gate_loss, [model.gate.log_alpha])
                    opt_g.step()
                next_batch()
            rec = {"epoch": epoch + 1, "train_logloss": total / max(seen, 1), "seconds": time.perf_counter() - t0}
            if gated:
                rec["expected_l0"] = float(model.gate.expected_l0().detach())
            if valid is not None and len(valid[1]):
                rec["valid"] = evaluate(model, valid[0], valid[1], device)
                score = rec["valid"]["auc"]
                if not np.isfinite(score):  # one-class validation split: rank epochs by logloss instead
                    score = -rec["valid"]["logloss"]
                if score > best_auc:
                    best_auc, best_epoch = score, epoch
                    if cfg.restore_best:
                        best_state = copy.deepcopy(model.state_dict())
            history.append(rec)
            status(f"loss {rec['train_logloss']:.4f}" + (f" valid auc {rec['valid']['auc']:.4f}" if "valid" in rec else ""))
            next_epoch()
            if cfg.patience is not None and "valid" in rec and epoch - best_epoch >= cfg.patience:
                break  # early stopping
    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return {"epochs": history, "rows": int(len(ids)), "best_valid_score": best_auc if np.isfinite(best_auc) else None}

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
    lr: float = 1e-3
    gate_lr: float = 0.05
    weight_decay: float = 0.0
    l0_lambda: float = 0.01
    target_k: int | None = None
    restore_best: bool = True      # keep the epoch with the best validation AUC
    seed: int = 0


def l0_penalty(model: CTRModel, cfg: TrainConfig) -> torch.Tensor:
    """lambda * E[L0]; in target-k mode lambda * |E[L0] - k|, which pushes the expected count toward k."""
    l0 = model.gate.expected_l0()
    if cfg.target_k is not None:
        return cfg.l0_lambda * (l0 - cfg.target_k).abs()
    return cfg.l0_lambda * l0


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
    """Train in place; returns the per-epoch history. Gates (if any) train jointly with the backbone."""
    model.to(device)
    groups = [{"params": model.backbone_parameters(), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if model.gate is not None:
        groups.append({"params": [model.gate.log_alpha], "lr": cfg.gate_lr, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(ids)
    y_all = torch.from_numpy(y.astype(np.float32))
    n = len(ids)
    batches = max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    history, best_auc, best_state = [], -1.0, None
    torch.manual_seed(cfg.seed)  # the gate samples draw from the global generator
    with reporter.bars(label, cfg.epochs, batches) as (next_batch, next_epoch, status):
        for epoch in range(cfg.epochs):
            model.train()
            t0, total, seen = time.perf_counter(), 0.0, 0
            perm = torch.randperm(n, generator=gen)
            for b in range(batches):
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                xb, yb = x_all[idx].to(device), y_all[idx].to(device)
                loss = F.binary_cross_entropy_with_logits(model(xb), yb)
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                if model.gate is not None:
                    loss = loss + l0_penalty(model, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                next_batch()
            rec = {"epoch": epoch + 1, "train_logloss": total / max(seen, 1), "seconds": time.perf_counter() - t0}
            if model.gate is not None:
                rec["expected_l0"] = float(model.gate.expected_l0().detach())
            if valid is not None and len(valid[1]):
                rec["valid"] = evaluate(model, valid[0], valid[1], device)
                if cfg.restore_best and rec["valid"]["auc"] > best_auc:
                    best_auc, best_state = rec["valid"]["auc"], copy.deepcopy(model.state_dict())
            history.append(rec)
            status(f"loss {rec['train_logloss']:.4f}" + (f" valid auc {rec['valid']['auc']:.4f}" if "valid" in rec else ""))
            next_epoch()
    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return {"epochs": history, "rows": n, "best_valid_auc": best_auc if best_state is not None else None}

"""Evaluation metrics, computed in float64 on held-out rows."""
from __future__ import annotations

import numpy as np


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic, with tied scores given their average rank."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # average rank over each run of equal scores
    bounds = np.flatnonzero(np.diff(sp)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(sp)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def row_log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """The binary cross-entropy of each row (probabilities clipped to [eps, 1 - eps])."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    return float(np.mean(row_log_loss(y, p, eps)))


# The paired test shared by the keep rule and early stopping: a change in the per-row losses of the same rows is
# significant when its mean exceeds two standard errors of the per-row difference (one-sided, about 2.5%).
SIGNIFICANT_SE = 2.0


def paired_difference(new: np.ndarray, old: np.ndarray) -> tuple[float, float]:
    """(mean, standard error) of the per-row difference new - old of two loss vectors over the same rows (at least
    2)."""
    d = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def worse_beyond_noise(new: np.ndarray, old: np.ndarray) -> bool:
    """Whether the per-row losses `new` are higher than `old` on the same rows by more than SIGNIFICANT_SE standard
    errors of the difference (a difference of exactly 0 is not; a NaN loss, as from diverged weights, is)."""
    mean, se = paired_difference(new, old)
    return not mean <= SIGNIFICANT_SE * se

"""Evaluation metrics, computed in float64 on held-out rows."""
from __future__ import annotations

import numpy as np


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic, with tied scores given their average rank."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0 or np.isnan(p).any():  # a NaN score has no rank (sorted last, it would rank top)
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # average rank over each run of equal scores
    bounds = np.flatnonzero(sp[1:] != sp[:-1]) + 1  # not np.diff: inf - inf is NaN, which would split a tie
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
    new, old = np.asarray(new, dtype=np.float64).ravel(), np.asarray(old, dtype=np.float64).ravel()
    if len(new) != len(old):
        raise ValueError(f"paired losses of {len(new)} and {len(old)} rows: a paired difference needs the same rows")
    d = new - old
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def worse_beyond_noise(new: np.ndarray, old: np.ndarray) -> bool:
    """Whether the per-row losses `new` are higher than `old` on the same rows by more than SIGNIFICANT_SE standard
    errors of the difference (a difference of exactly 0 is not; a NaN loss, as from diverged weights, is)."""
    mean, se = paired_difference(new, old)
    return not mean <= SIGNIFICANT_SE * se


def selection_stability(kept_sets, n_fields: int) -> float | None:
    """How alike the field sets of repeated selections are, corrected for chance: the estimator of Nogueira,
    Sechidis & Brown (JMLR 2018), 1 - mean_f s_f^2 / (k/d (1 - k/d)), where s_f^2 is the unbiased variance over the
    M runs of whether field f was kept and k the mean number kept of d fields. 1: every run keeps the same fields;
    about 0: no more alike than sets of those sizes drawn at random; down to -1. None where it is undefined: fewer
    than 2 runs, or every run keeping every field or none."""
    sets = [set(s) for s in kept_sets]
    m = len(sets)
    if m < 2 or n_fields < 1:
        return None
    share = np.array([sum(f in s for s in sets) for f in sorted(set().union(*sets))], dtype=np.float64) / m
    share = np.concatenate([share, np.zeros(n_fields - len(share))])  # the fields no run kept
    k = float(np.mean([len(s) for s in sets])) / n_fields
    if k <= 0.0 or k >= 1.0:
        return None
    variance = m / (m - 1) * share * (1.0 - share)
    return float(1.0 - variance.mean() / (k * (1.0 - k)))

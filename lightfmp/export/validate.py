"""Validation of a saved export against the run it came from: ONNX Runtime vs the PyTorch serving module on the
run's own held-out test rows, batch of 1 vs a large batch, and the exported model's test AUC vs the run's
recorded one (metrics.json `test.auc`). Any failed check raises, which fails the export."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import DataGone, LightFMPError
from ..formats import read_batches
from ..metrics import paired_difference, roc_auc, row_log_loss, worse_beyond_noise
from ..pipeline import run_data
from ..schema import FeatureSchema, bucket_ids
from .bundle import run_batched, session
from .contract import InputSpec
from .feeds import feeds_from_frame, sample_feeds
from .graph import ServingModule, serving_module, torch_inputs

VALIDATE_ROWS = 50_000
TOLERANCE = 1e-5       # max |probability difference|, ONNX Runtime vs PyTorch and batch 1 vs batch N
# max |test AUC of the exported model - the run's recorded test AUC| on the same rows: correct fp32 exports agree
# to ~1e-7 and fp16 tables move the AUC by ~1e-6, while a wrong field order, vocabulary, bucket edge or row set
# moves it by 1e-2 or more. On a small test split the bound is raised to what near ties can move (`tie_slack`).
AUC_TOLERANCE = 1e-3


@dataclass
class HeldOut:
    """The first rows of a run's test split as raw columns, in file order, with their labels."""
    frame: pd.DataFrame
    labels: np.ndarray
    complete: bool  # every test row of the run is in `frame`


def run_test_frame(run, max_rows: int) -> HeldOut:
    """The run's test rows (at most `max_rows`, file order) as raw columns: which rows are test and their labels
    come from the run's data read again through the one data path with its recorded split rule; the raw values
    from the file."""
    cfg = run.config
    test = run_data(run).split_rows("test")
    numbers = test.row_numbers()
    order = np.argsort(numbers, kind="stable")[:max_rows]
    wanted, labels = numbers[order], test.labels()[order]
    parts = []
    for df, start in read_batches(cfg.data.data, cfg.data.format, cfg.data.chunk_rows, exact_ints=True):
        pos = wanted[(wanted >= start) & (wanted < start + len(df))] - start
        if len(pos):
            parts.append(df.iloc[pos])
        if not len(wanted) or start + len(df) > wanted[-1]:
            break
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=run.schema.names)
    return HeldOut(frame, labels, len(numbers) <= max_rows)


@dataclass
class ValidationRows:
    """Graph inputs of the rows to validate on (ids and raw strings), with what is known about them."""
    feeds_ids: dict[str, np.ndarray]
    feeds_raw: dict[str, np.ndarray]
    source: str                      # "test split" or "sampled"
    all_test_rows: bool
    note: str | None = None
    ids_f64: np.ndarray | None = None  # the training-time (float64) encoding, test rows only
    labels: np.ndarray | None = None


def validation_rows(run, kept: FeatureSchema, limit: int = VALIDATE_ROWS) -> ValidationRows:
    """The run's test rows as graph inputs; rows drawn from the vocabularies where they cannot be read again (its
    data file gone or changed, or no split rule recorded: `DataGone`)."""
    try:
        held = run_test_frame(run, limit)
    except DataGone as why:
        n, vocabs = min(limit, 2048), {f.name: list(f.vocab or []) for f in kept.fields}
        ids = sample_feeds([InputSpec.from_field(f, False) for f in kept.fields], n, seed=1)
        raw = sample_feeds([InputSpec.from_field(f, True) for f in kept.fields], n, seed=1, vocabs=vocabs)
        return ValidationRows(ids, raw, "sampled", False, f"{why}; validated on sampled rows")
    return ValidationRows(feeds_from_frame(held.frame, kept), feeds_from_frame(held.frame, kept, raw=True),
                          "test split", held.complete, None, kept.encode(held.frame).astype(np.int64), held.labels)


def validate(path: Path, module: ServingModule, model, kept: FeatureSchema, rows: ValidationRows, raw: bool,
             dtype: str, run_auc: float | None, metrics_path: str | Path = "metrics.json") -> dict:
    """ORT vs PyTorch on the validation rows; batch 1 vs a large batch; the test AUC vs the run's. Raises when a
    check fails, else returns the report recorded as `validation` in feature_schema.json."""
    sess = session(path)
    feeds = rows.feeds_raw if raw else rows.feeds_ids
    n = len(next(iter(feeds.values())))
    ref = _torch_scores(module, rows, kept, n)
    got = run_batched(sess, feeds)
    diff = float(np.abs(got.astype(np.float64) - ref).max()) if n else 0.0
    if not diff <= TOLERANCE:
        raise LightFMPError(f"ONNX Runtime and PyTorch disagree on {rows.source} rows: max |diff| {diff:.3g} "
                            f"> {TOLERANCE:g}")
    k = min(n, 32)
    big = {key: v[:min(n, 4096)] for key, v in feeds.items()}
    big_out = sess.run(None, big)[0][:k]
    single = np.array([sess.run(None, {key: v[i:i + 1] for key, v in feeds.items()})[0][0] for i in range(k)])
    bdiff = float(np.abs(single - big_out).max()) if k else 0.0
    if not bdiff <= TOLERANCE:
        raise LightFMPError(f"batch of 1 and batch of {len(next(iter(big.values())))} disagree: max |diff| "
                            f"{bdiff:.3g} > {TOLERANCE:g}")
    res = {"rows": n, "source": rows.source, "all_test_rows": rows.all_test_rows, "tolerance": TOLERANCE,
           "max_abs_diff_vs_torch": diff, "batch1_vs_batch_max_abs_diff": bdiff}
    if rows.note:
        res["note"] = rows.note
    if rows.ids_f64 is not None:
        # how far the run's own scores of these rows may lie from the export's through numerics alone (ONNX
        # Runtime vs PyTorch on the same feeds; fp16 tables vs fp32): a wrong encoding cannot widen it
        numerics = diff if dtype != "fp16" else max(diff, _fp32_difference(model, kept, rows, got))
        res.update(_test_split_checks(model, kept, rows, got, dtype, run_auc, metrics_path, numerics))
    return res


def _fp32_difference(model, kept: FeatureSchema, rows: ValidationRows, got: np.ndarray) -> float:
    """max |export - the same graph with fp32 tables| on the same feeds: what fp16 tables alone move a score by."""
    n = len(got)
    ref = _torch_scores(serving_module(model, kept, "fp32"), rows, kept, n)
    return float(np.abs(got.astype(np.float64) - ref).max()) if n else 0.0


def _torch_scores(module: ServingModule, rows: ValidationRows, kept: FeatureSchema, n: int) -> np.ndarray:
    """The PyTorch serving module's scores of the validation rows' id feeds, 8,192 rows a call."""
    if not n:
        return np.zeros(0, np.float32)
    inputs = torch_inputs(rows.feeds_ids, kept)  # converted once, sliced per call
    with torch.no_grad():
        return np.concatenate([module(*(t[i:i + 8192] for t in inputs)).numpy() for i in range(0, n, 8192)])


def _test_split_checks(model, kept: FeatureSchema, rows: ValidationRows, got: np.ndarray, dtype: str,
                       run_auc: float | None, metrics_path: str | Path, numerics: float = 0.0) -> dict:
    """Numeric bucketing in float32 vs float64, AUCs (ONNX, PyTorch, the run's), fp16's change."""
    with torch.no_grad():
        enc = torch.sigmoid(model(torch.from_numpy(rows.ids_f64))).numpy().astype(np.float64)
    # the training-time (float64) ids with each numeric slot bucketed as the graph does (float32), and the rows
    # where that lands in another bucket
    ids32 = _bucket_ids(rows.feeds_ids, kept)
    numeric = np.array([f.kind == "numeric" for f in kept.fields for _ in range(f.slots)], dtype=bool)
    served = np.where(numeric, ids32, rows.ids_f64) if ids32 is not None else None
    moved = served != rows.ids_f64 if served is not None else None
    res: dict = {"numeric_bucket_mismatches": int(moved.any(1).sum()) if moved is not None else 0}
    if res["numeric_bucket_mismatches"]:  # per numeric field, the rows where it alone lands elsewhere
        slots = np.cumsum([0] + [f.slots for f in kept.fields])
        res["numeric_bucket_mismatches_by_field"] = {
            f.name: n for i, f in enumerate(kept.fields) if f.kind == "numeric"
            for n in [int(moved[:, slots[i]:slots[i + 1]].any(1).sum())] if n}
    if res["numeric_bucket_mismatches"] and rows.labels is not None and len(rows.labels) >= 2:
        res.update(_float32_bucket_check(model, kept, rows, enc, served, moved))
    if rows.labels is not None and len(np.unique(rows.labels)) == 2:
        res["auc_onnx"] = roc_auc(rows.labels, got)
        res["auc_torch"] = roc_auc(rows.labels, enc)
        if run_auc is None and rows.all_test_rows:  # null is the AUC of a test split with one label only
            raise LightFMPError(f"{metrics_path}: test.auc is null, but the run's test rows hold both labels: the "
                                "exported model cannot be checked against the run's test AUC")
        if run_auc is not None and math.isfinite(run_auc) and rows.all_test_rows:
            res["auc_run"] = run_auc
            res["auc_diff_vs_run"] = res["auc_onnx"] - run_auc
            # the run's float32 scores differ from PyTorch's here by batching alone, at most about as much as the
            # export's differ by numerics: pairs within twice that may be ordered otherwise by the run
            res["auc_tolerance"] = max(AUC_TOLERANCE, tie_slack(rows.labels, got, 2 * numerics))
            # what the graph's float32 buckets move the run's own model's AUC by (check 6, which let it pass)
            shift = res.get("auc_torch_float32_buckets", res["auc_torch"]) - res["auc_torch"]
            if not abs(res["auc_diff_vs_run"] - shift) <= res["auc_tolerance"]:  # the rows the run was tested on
                by = f"{res['auc_diff_vs_run']:+.2e}" if not shift else \
                    (f"{res['auc_diff_vs_run'] - shift:+.2e} beyond the {shift:+.2e} the float32 buckets move the "
                     f"run's own model's AUC by")
                raise LightFMPError(
                    f"test AUC of the exported model {res['auc_onnx']:.6f} differs from the run's recorded test "
                    f"AUC {run_auc:.6f} ({metrics_path} test.auc) by {by}, more than {res['auc_tolerance']:.3g}")
    elif rows.labels is not None and len(rows.labels):
        res["auc_skipped"] = (f"the {len(rows.labels):,} {rows.source} rows checked hold one label only, so they "
                              f"have no AUC to compare with the run's; the scores were checked against PyTorch")
    if dtype == "fp16":
        res["fp16"] = {"max_abs_diff_vs_fp32": float(np.abs(got.astype(np.float64) - enc).max()) if len(got) else 0.0}
        if "auc_onnx" in res:
            res["fp16"].update(auc_fp32=res["auc_torch"], auc_fp16=res["auc_onnx"],
                               auc_change=res["auc_onnx"] - res["auc_torch"])
    return res


def _float32_bucket_check(model, kept: FeatureSchema, rows: ValidationRows, enc: np.ndarray, served: np.ndarray,
                          moved: np.ndarray) -> dict:
    """The run's own model on the rows as the graph buckets them (float32) against as training did (float64): the
    same model, rows and batching, so the scores differ by the bucketing alone. Raises where that makes the per-row
    logloss worse beyond noise (`worse_beyond_noise`, the paired test of the keep rules and early stopping) and the
    test logloss or AUC worse by more than AUC_TOLERANCE, which a correct export reproduces to ~1e-7 (bucket edges
    closer together than float32 resolves at the field's values, as for seconds since 1970; a few values that float
    noise puts at an edge move neither by that much), naming the numeric field whose float32 buckets alone raise the
    logloss most."""
    def probabilities(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(model(torch.from_numpy(ids))).numpy().astype(np.float64)

    base, scores = row_log_loss(rows.labels, enc), probabilities(served)
    losses = row_log_loss(rows.labels, scores)
    change, se = paired_difference(losses, base)
    out = {"logloss_change_float32_buckets": change, "logloss_change_se": se}
    drop = 0.0
    if len(np.unique(rows.labels)) == 2:
        out["auc_torch_float32_buckets"] = roc_auc(rows.labels, scores)
        drop = roc_auc(rows.labels, enc) - out["auc_torch_float32_buckets"]
    if worse_beyond_noise(losses, base) and max(change, drop) > AUC_TOLERANCE:
        slots = np.cumsum([0] + [f.slots for f in kept.fields])
        alone = {}  # per numeric field with moved rows: the mean logloss change of its float32 buckets alone
        for i, f in enumerate(kept.fields):
            cols = slice(slots[i], slots[i + 1])
            if f.kind == "numeric" and moved[:, cols].any():
                ids = rows.ids_f64.copy()
                ids[:, cols] = served[:, cols]
                alone[f.name] = (float(np.mean(row_log_loss(rows.labels, probabilities(ids)) - base)),
                                 int(moved[:, cols].any(1).sum()))
        name = max(alone, key=lambda k: alone[k][0])
        size = f"{change / se:.1f} standard errors" if se > 0 else "every row alike"
        auc = f", test AUC {-drop:+.4f}" if "auc_torch_float32_buckets" in out else ""
        raise LightFMPError(
            f"numeric field '{name}': {alone[name][1]:,} of {len(moved):,} {rows.source} rows fall in another bucket "
            f"read as float32, as the exported graph reads numbers, and the run's own model scores them measurably "
            f"worse so (test logloss {change:+.4g}, {size}{auc}): its values are finer than float32 holds near its "
            f"bucket edges; train on a coarser, rounded or relative column instead (docs/export.md)")
    return out


def tie_slack(labels: np.ndarray, scores: np.ndarray, delta: float) -> float:
    """The most the AUC can change when scores move by up to `delta`: the share of (positive, negative) pairs whose
    scores lie within `delta` of each other, since only those can change order (or tie, or stop tying). The run
    scored the same rows with another batching, and an fp16 export with other tables, so rows with equal inputs
    may tie in one and not in the other."""
    y = np.asarray(labels).ravel() == 1
    pos, neg = np.asarray(scores, np.float64)[y], np.sort(np.asarray(scores, np.float64)[~y])
    if not len(pos) or not len(neg):
        return 0.0
    near = np.searchsorted(neg, pos + delta, "right") - np.searchsorted(neg, pos - delta, "left")
    return float(near.sum()) / (len(pos) * len(neg))


def _bucket_ids(feeds: dict, kept: FeatureSchema) -> np.ndarray | None:
    """The float32 numeric bucketing the graph applies, as full id rows (non-numeric slots from the feeds)."""
    cols = []
    for f in kept.fields:
        x = feeds[f.name]
        if f.kind == "numeric":
            cols.append(bucket_ids(x, f.boundaries or [], np.float32)[:, None])
        else:
            cols.append(x if x.ndim == 2 else x[:, None])
    return np.concatenate(cols, 1).astype(np.int64) if cols else None


__all__ = ["run_test_frame", "validation_rows", "validate", "HeldOut", "ValidationRows",
           "VALIDATE_ROWS", "TOLERANCE", "AUC_TOLERANCE", "tie_slack"]

"""The Python API, one function per phase; the CLI is a thin layer over these.

    train(cfg, out)          phase 1: gated pretraining on a subset (or, with no_select, plain full training)
    prune(run, keep=...)     phase 2 + 3: drop fields, slice the model, continue (the remaining rows, then every row)
    run(cfg, out)            all phases
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape

from . import checkpoint as ckpt_files
from . import distributed as dist
from .checkpoint import Checkpoint, check_place, checkpoint_dir, config_difference, config_sha256
from .config import COMMAND_LINE, RunConfig, check_no_rule_without_gates, check_one_rule, check_switches
from .closed_fields import measured_rows, rarest_label
from .dataset import Dataset, load_dataset, streaming
from .errors import DataGone, LightFMPError, shown_type
from .held_fields import MEAN_ROWS, hold_at_means
from .io import (as_the_kernel_reads, atomic_dir, check_apart, check_name_length, check_out, data_signature,
                 file_sha256, read_json)
from .keep_rule import (GATES_ALONE_RULE, TEST_ROWS, check_keep, check_rule_rows, closing_rows, closing_test,
                        decides_after_first_epoch, gates_alone_cut, keep_order, open_after_phase1, other_seed, ranking,
                        select_fields, selection_rule, shut_note, spread)
from .metrics import row_log_loss
from .models import build_model
from .models.dense import cpu_gemm_library
from .moments import Carry, prune_moments
from .progress import Reporter
from .progressive import SweepCosts, epoch_share
from .pruning import prune_model
from .rows import Rows
from .rundir import GATES_PLOT, Run, open_run, write_run_files
from .schema import FLOAT32_MAX, FeatureSchema, beyond_float32
from .shards import shard_home
from .splits import SplitRule
from .training import evaluate, fit, validate, warm_up
from .writer_lock import holder, one_writer

def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LightFMPError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise LightFMPError(f"--device {name!r}: expected cpu, cuda or auto")
    return name


def load_data(cfg: RunConfig, reporter: Reporter | None = None, schema: FeatureSchema | None = None,
              sha256: str | None = None, rule: SplitRule | None = None, signature: tuple | None = None) -> Dataset:
    """The data of a run (lightfmp.dataset). Under torchrun rank 0 prepares first; the others then reuse its shard
    cache."""
    return dist.rank0_first(lambda: load_dataset(cfg.data, reporter, schema, sha256, rule, signature),
                            "preparing the data")


UNFINISHED = "unfinished_run"  # run.json key: `run` wrote phase 1 and has phases 2-3 still to do


def phase_plan(cfg: RunConfig, epochs: int | None = None, select_best: bool = True, seed_offset: int = 0) -> dict:
    """A phase's fit plan (lightfmp.training.Plan): its epochs (default --epochs), the seed of its random streams
    (--init-seed's) and of its gate hold-out (--seed's: a row assignment, like the split), whether it selects the
    best validation epoch and stops early (every lightfmp phase does; the bench's AutoField and LPFS searches run
    their whole budget, as their papers do)."""
    return {"epochs": cfg.train.epochs if epochs is None else epochs, "seed": cfg.init_seed + seed_offset,
            "split_seed": cfg.data.seed + seed_offset, "select_best": select_best,
            "in_memory_mb": cfg.data.in_memory_mb}


def runtime(device: str, phase: str) -> dict:
    """What a run's numbers depend on beyond its config and data: torch's version, the device, the library of the
    dense layers on CPU (chosen by the CPU's vendor: lightfmp.models.dense) and the threads of each phase (on some
    CPUs the matrix products round differently at 1 and 2 threads, so a run reproduces exactly at the thread count
    it ran with)."""
    out = {"torch": torch.__version__, "device": device, f"threads_{phase}": torch.get_num_threads()}
    if device == "cpu":
        out[f"cpu_gemm_{phase}"] = cpu_gemm_library()
    return out


def _check_out(out: Path, force: bool) -> None:
    """Before any work: refuse an --out that exists (without --force) or that lightfmp did not write (ever), or
    whose checkpoint path is taken."""
    check_out(out, force, "run")
    check_place(out)


def _warn_one_class(data: Dataset, reporter: Reporter) -> None:
    """Validation or test rows of one class leave their AUC undefined: say so (epochs are then chosen by validation
    logloss; the test AUC is reported as nan, and an export checks its scores without it)."""
    for split, word, then in (("valid", "validation", "epochs are chosen by validation logloss"),
                              ("test", "test", "the test AUC is nan (test logloss still measures the model)")):
        y = data.split_rows(split).labels()
        if len(y) and y.min() == y.max():
            reporter.warn(f"every {word} row has label {int(y[0])}: {word} AUC is undefined, so "
                          f"{then}; a larger {word} share (--split){other_seed(data.rule.kind)} gives both "
                          f"classes")


def _phase(rows: int = 0, seconds: float = 0.0, **extra) -> dict:
    return {"rows": int(rows), "seconds": float(seconds), **extra}


def _averaged(hist: dict, before: int) -> dict:
    """metrics.json's `averaged_epochs` of a phase whose final model is the mean of its tied epochs
    (lightfmp.averaging): the phase's epochs averaged, counted from 1, where the fit (its history) follows `before`
    epochs of the phase and its epoch 0 is the model it was given (the last of those)."""
    avg = hist.get("averaged") or {}
    if not avg.get("used"):
        return {}
    return {"averaged_epochs": [e + before for e in avg["epochs"]]}


def _normalize(cfg: RunConfig) -> RunConfig:
    """The config a run records: the data path made absolute (later commands may run from another directory), and
    in target-k mode keep = k unless --keep or --threshold says otherwise."""
    for key in ("data", "shard_dir", "schema"):  # later commands may run from another directory
        value = getattr(cfg.data, key)
        if value and not Path(value).is_absolute():
            cfg = cfg.but(**{key: str(Path(value).expanduser().resolve())})
    if cfg.train.target_k is not None and cfg.prune.keep is None and cfg.prune.threshold is None:
        cfg = cfg.but(keep=cfg.train.target_k)
    return cfg


def _reporter(quiet: bool) -> Reporter:
    return Reporter(quiet or not dist.is_main(), warnings=dist.is_main())  # one rank speaks


def _device(cfg: RunConfig) -> str:
    return dist.local_device(resolve_device(cfg.train.device))


def _fit_seconds(t0: float, hist: dict) -> float:
    # a resumed phase counts the epochs of the attempts before too
    return time.perf_counter() - t0 + hist.get("seconds_restored", 0.0)


def _a_config(cfg) -> RunConfig:
    """`cfg` checked again as a whole: its sections are plain objects a caller may have edited since it was built
    (`cfg.train.batch_size = 0` ended in a ZeroDivisionError)."""
    if not isinstance(cfg, RunConfig):
        raise LightFMPError(f"the config must be a RunConfig (lightfmp.RunConfig.of(data=..., label=...)), got "
                            f"{shown_type(cfg)}")
    sections = [getattr(cfg, s, None) for s in ("data", "model", "train", "prune")]
    if not all(dataclasses.is_dataclass(v) and not isinstance(v, type) for v in sections):
        raise LightFMPError("the config's sections must be its own (build it with lightfmp.RunConfig.of(...))")
    return RunConfig.from_dict(cfg.to_dict(), "the config")


_TRAINING = threading.RLock()  # one training at a time in a process (`_process_state`)


def _fresh_lock() -> None:  # a child forked while another thread trained would inherit the lock held, for ever
    global _TRAINING
    _TRAINING = threading.RLock()


os.register_at_fork(after_in_child=_fresh_lock)


@contextlib.contextmanager
def _process_state():
    """What a training in this process needs of torch's process-wide state, and gives back: it seeds torch's one
    random generator (initialisation, batch order, dropout: lightfmp.training), so trainings started in threads of
    one process take turns (each then gives what it gives alone), and the caller's generator state (the CPU's) is
    restored afterwards; gradients are on whatever the caller's context (torch.no_grad, inference_mode); and the
    default dtype must be float32, in which lightfmp trains and exports."""
    if torch.get_default_dtype() != torch.float32:
        raise LightFMPError(f"torch's default dtype is {torch.get_default_dtype()} (torch.set_default_dtype): lightfmp "
                            f"trains in float32; set it back to torch.float32 first")
    with _TRAINING, torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        yield


def train(cfg: RunConfig, out: str | Path, force: bool = False, quiet: bool = False) -> dict:
    """Phase 1 into a new run directory. Returns the metrics written. An interrupted call resumes from its
    per-epoch checkpoint (<out>.ckpt) when called again with the same config and data."""
    check_switches(force=force, quiet=quiet)
    cfg = _a_config(cfg)
    check_no_rule_without_gates(cfg)
    dist.refuse_sparse(cfg.train.sparse_embeddings)
    out = as_the_kernel_reads(out)  # its siblings (lock, checkpoints) beside it, where the run will be
    _check_out(out, force)  # what is refused is refused in its own words, before the lock beside it
    dist.init(cfg.train.device)  # the ranks of a torchrun job learn whether rank 0 got the lock
    with _one_writer(out, "train"), _process_state():
        return _train(cfg, out, force, quiet, keep_checkpoints=False)[0]


@contextlib.contextmanager
def _one_writer(out: str | Path, command: str):
    """The lock of <out> for the command: rank 0 holds it for every rank of a torchrun job and, where their process
    group is up (`train`, `run`), tells the others whether it got it (they would otherwise see rank 0 leave as a
    lost connection, and advise a rerun while the other command still writes)."""
    with contextlib.ExitStack() as stack:
        if dist.is_main():
            try:
                stack.enter_context(one_writer(out, command))
            except LightFMPError:
                _tell_ranks(0)
                raise
            _tell_ranks(1)
        elif dist.active() and not dist.broadcast_int(0):
            raise LightFMPError(f"{out}: rank 0 could not take it for this {command} (its line says why)")
        yield


def _tell_ranks(got_lock: int) -> None:
    if dist.active():
        dist.broadcast_int(got_lock)


def label_alike(valid: Rows, seed: int) -> Rows:
    """The validation rows phase 1 reads (its best epoch, its early stop): every row of the rarest label and as many
    of each other label's, drawn (`closed_fields.measured_rows`, seeded), at most TEST_ROWS of them, spread (they
    are held in memory); all of them where that is every row. AUC, by which epochs are ranked, counts pairs of one
    row of each label, so its precision is set by the rarer label's rows (on KDD's 143 validation positives its
    standard error is ~0.0105 from all 14,563 rows and ~0.0108 from 286, by Hanley and McNeil's formula), and the
    logloss of such rows weighs each label alike, the estimand of the keep rules (`closed_fields.by_label`). Phase 3
    and `--no-select` read every validation row."""
    labels = valid.labels()
    if not len(labels):
        return valid
    rows = measured_rows(labels, rarest_label(labels)[0], np.random.default_rng(seed))
    rows = rows[spread(len(rows), TEST_ROWS)]  # held in memory (streamed data too): at most the rules' bound
    return valid.take(rows) if len(rows) < len(labels) else valid


def _train(cfg: RunConfig, out: Path, force: bool, quiet: bool, keep_checkpoints: bool,
           data: Dataset | None = None, rule_after: bool = False) -> tuple[dict, Dataset]:
    """Phase 1 (or the `--no-select` fit). `rule_after`: the keep rule runs next (`run`), so rows it cannot decide
    on are refused before any training."""
    _check_out(out, force)
    check_apart(out, cfg.data.data, "--data")  # a run inside a Parquet data directory would change the data
    if streaming(cfg.data):  # the shards must outlive the run's directory, which is published (and replaced) whole
        check_apart(out, shard_home(cfg.data.shard_dir), "--shard-dir")
    dist.init(cfg.train.device)
    reporter = _reporter(quiet)
    device = _device(cfg)
    cfg = _normalize(cfg)
    t_wall = time.perf_counter()
    warm_up()  # in seconds_wall, not in a phase's seconds
    # a --schema file's content, as its path alone does not say what it holds (an edited file is another run)
    given = {"schema_file_sha256": file_sha256(cfg.data.schema)} \
        if cfg.data.schema and Path(cfg.data.schema).is_file() else {}  # (no file: the loader says so)
    data = data if data is not None else load_data(cfg, reporter)
    schema, n_fields = data.schema, len(data.schema.fields)
    check_keep(cfg.train.target_k, n_fields, "--target-k")  # before any training (target-k sets keep)
    check_keep(cfg.prune.keep, n_fields)
    torch.manual_seed(cfg.init_seed)
    model = build_model(cfg.model.backbone, schema, cfg.model, gated=not cfg.train.no_select, trains_on=device)
    valid = data.split_rows("valid")
    if rule_after and not cfg.train.no_select:
        check_rule_rows(valid.labels(), cfg.prune.keep, cfg.prune.threshold, n_fields,
                        "--target-k" if cfg.train.target_k is not None and cfg.prune.keep == cfg.train.target_k
                        else "--keep", data.rule.kind, model)
    _warn_one_class(data, reporter)
    for f in schema.fields:  # said now, not after the training, when the export refuses the model
        edge = beyond_float32(f)
        if edge is not None:
            reporter.warn(f"field '{f.name}': its bucket edges reach {edge:.3g}, beyond float32 (up to "
                          f"{FLOAT32_MAX:.2g}): `lightfmp export` will refuse the model, whose graph reads numbers as "
                          f"float32; scale the column (a log, a unit)")
    sizes = data.split_sizes()
    base = {"backbone": cfg.model.backbone, "select": not cfg.train.no_select,
            "data": {"path": str(cfg.data.data), "rows": data.rows, "sha256": data.sha256, "split": sizes},
            "params": {"before": model.num_params()}, "runtime": runtime(device, "train")}
    # phase 1's key names the validation rows it reads: a checkpoint of a phase 1 that read others (every row) holds
    # per-row validation losses of other rows, so it is not resumed
    ckpt = Checkpoint(checkpoint_dir(out), "full" if cfg.train.no_select else "pretrain",
                      {"config_sha256": config_sha256(cfg), "data_sha256": data.sha256, **given,
                       **({} if cfg.train.no_select else {"valid_rows": "label alike"})}, reporter.log)
    if cfg.train.no_select:
        t0 = time.perf_counter()
        hist = fit(model, data.split_rows("train"), valid, cfg.train, reporter, "train (all fields)", device,
                   **phase_plan(cfg), checkpoint=ckpt, epoch_start=dist.maybe_fault)
        seconds = _fit_seconds(t0, hist)
        names = schema.names
        metrics = {**base, "fields": {"all": names, "kept": names, "dropped": []},
                   "gates": {n: 1.0 for n in names},
                   "params": {"before": model.num_params(), "after": model.num_params()},
                   "phases": {"pretrain": _phase(), "prune": _phase(),
                              "continue": _phase(sizes["train"], seconds, epochs=len(hist["epochs"]),
                                                 **_averaged(hist, 0))}}
        metrics.update(final_eval(model, data, device, reporter=reporter))
        metrics["seconds_total"] = seconds
        metrics["seconds_wall"] = time.perf_counter() - t_wall
        info, weights = {"state": "complete", "select": False}, {"model.safetensors": model}
        history, optimizer = {"continue": hist}, None
    else:
        sub, _ = data.subset(cfg.train.subset, cfg.data.seed)
        if len(sub) == 0:
            raise LightFMPError(f"--subset {cfg.train.subset:g}: selects none of the {sizes['train']:,} training rows; "
                                f"give a larger fraction")
        if len(sub) < cfg.train.batch_size:
            reporter.warn(f"phase 1 trains on {len(sub):,} rows (--subset {cfg.train.subset:g} of "
                          f"{sizes['train']:,}), fewer than one batch (--batch-size {cfg.train.batch_size}): one step "
                          f"an epoch is too little for the gates to learn which fields matter; give more rows or a "
                          f"larger --subset")
        t0 = time.perf_counter()
        # the gates and weights of the best validation epoch: once the subset is memorised, the gate steps on
        # held-out rows close the fields being memorised (the ids first), whatever they are worth on more rows
        carry = Carry()  # phase 3 continues phase 1's optimizer (lightfmp.moments)
        # the gates alone after the best epoch, for the default rule's first step where it decides after phase 3's
        # first epoch (--keep K, --threshold T and a shorter phase 3 do not read them)
        alone = cfg.prune.keep is None and decides_after_first_epoch(cfg.continue_epochs, cfg.prune.threshold)
        hist = fit(model, sub, label_alike(valid, cfg.data.seed), cfg.train, reporter, "pretrain (gated)", device,
                   **phase_plan(cfg, cfg.train.pretrain_epochs), checkpoint=ckpt, carry=carry, gates_alone=alone)
        seconds = _fit_seconds(t0, hist)
        metrics = {**base, "fields": {"all": schema.names}, **gate_tables(model, schema),
                   "phases": {"pretrain": _phase(len(sub), seconds, epochs=len(hist["epochs"]),
                                                 best_epoch=hist["best_epoch"],
                                                 gates_alone_epochs=hist.get("gates_alone", {}).get("epochs", 0),
                                                 valid=hist["epochs"][(hist["best_epoch"] or 0) - 1].get("valid"))},
                   "seconds_total": seconds, "seconds_wall": time.perf_counter() - t_wall}
        info = {"state": "pretrained", "select": True, "optimizer_state": True}  # pretrain_optimizer.safetensors
        weights = {"pretrain.safetensors": model}
        history, optimizer = {"pretrain": hist}, carry.state
    info.update(data_sha256=data.sha256, split=data.split, **given)
    if keep_checkpoints:  # `run` goes on to phases 2-3: run.json marks the run unfinished until _prune completes it
        info[UNFINISHED] = True
    if dist.is_main():
        if not keep_checkpoints:  # before publishing: a kill in between leaves no run (done again, the same
            ckpt_files.remove(out)  # result), never a finished one beside stale checkpoints
        with atomic_dir(out, force=force, kind="run") as tmp:
            write_run_files(tmp, info=info, config=cfg, schema=schema, metrics=metrics, history=history,
                            checkpoints=weights, optimizer=optimizer)
        if keep_checkpoints:
            ckpt.discard()
        _stop_line_after(out, phase1=keep_checkpoints)
    dist.barrier()  # the others return once the run directory is there (prune reads it next)
    _stop_line_after(out, phase1=keep_checkpoints)
    return metrics, data


def _stop_line_after(out: str | Path, phase1: bool) -> None:
    """What a stop from now on says to do, once rank 0 has published `out` (phase 1 of `run`: resume after it; else
    the finished result: nothing to rerun). Every rank says it: rank 0 as it publishes, the others after the barrier
    that follows (they hold the checkpoint's epoch they were told, which the publishing removed)."""
    (ckpt_files.phase1_published if phase1 else ckpt_files.published)(out)


def _alternative_note(search: dict) -> str:
    """Under --keep K, where the K fields costliest to close replaced the forward order's: said, with the evidence."""
    alt = search.get("alternative") or {}
    if not alt.get("chosen"):
        return ""
    where = (f"{alt['rows']:,} validation rows the search did not read, weighted by label" if alt.get("held_out", True)
             else f"{alt['rows']:,} validation rows, as many of each label, some of them searched (the search read "
                  f"most of a label's)")
    if not np.isfinite(alt["difference"]):
        return (f"; kept: the {len(alt['order'])} fields costliest to close (the forward order's gave no finite loss "
                f"on {where})")
    return (f"; kept: the {len(alt['order'])} fields costliest to close, measurably better than the forward order's "
            f"on {where} (logloss {alt['difference']:+.5f}, "
            + (f"{abs(alt['difference']) / alt['se']:.1f} standard errors)" if alt["se"] > 0 else "every row alike)"))


def gate_tables(model, schema: FeatureSchema) -> dict:
    with torch.no_grad():
        z = model.gate.deterministic().cpu()
        p = model.gate.open_probability().cpu()
        la = model.gate.log_alpha.detach().cpu()
    return {"gates": {n: float(v) for n, v in zip(schema.names, z)},
            "open_probability": {n: float(v) for n, v in zip(schema.names, p)},
            "log_alpha": {n: float(v) for n, v in zip(schema.names, la)}}


def final_eval(model, data: Dataset, device: str, fields: list[str] | None = None,
               reporter: Reporter | None = None) -> dict:
    """Valid and test metrics of the final model; test rows are used here and nowhere else. `reporter`: warn where
    the model does worse on the validation rows than one probability for every row (the training rows' label
    rate): it has learnt less than nothing, however its AUC reads."""
    out = {}
    for split in ("valid", "test"):
        rows = data.split_rows(split)
        out[split] = evaluate(model, rows.select(fields) if fields is not None else rows, device)
    valid = data.split_rows("valid").labels() if reporter is not None else []
    if len(valid):
        rate = float(np.mean(data.split_rows("train").labels()))
        constant = float(np.mean(row_log_loss(valid, np.full(len(valid), rate))))
        if out["valid"]["logloss"] > constant:
            reporter.warn(f"the final model's validation logloss {out['valid']['logloss']:.4f} is worse than "
                          f"predicting the training rows' label rate {rate:.3g} for every row ({constant:.4f}): it "
                          f"has learnt less than nothing; more rows, fewer fields or fewer epochs")
    return out


def prune(run_dir: str | Path, keep: int | None = None, threshold: float | None = None,
          continue_epochs: int | None = None, quiet: bool = False, default_rule: bool = False) -> dict:
    """Phases 2 and 3 on a pretrained run (re-running it re-prunes from the phase-1 checkpoint). An interrupted
    call resumes phase 3 from its per-epoch checkpoint (<run>.ckpt) when called again with the same arguments.
    Neither `keep` nor `threshold`: the rule the run recorded (its --keep or --threshold, or the last prune's), or
    with `default_rule` (--closing-test) the default rule whatever it recorded."""
    check_switches(quiet=quiet, default_rule=default_rule)
    check_one_rule(keep, threshold, default_rule)
    # converted and range-checked as the flags are (a numpy integer is an int; 2.5 or "3" is one line, not a
    # traceback after the work)
    given = {k: v for k, v in dict(keep=keep, threshold=threshold, continue_epochs=continue_epochs).items()
             if v is not None}
    rule = RunConfig.from_dict(given, COMMAND_LINE).prune
    given_path = as_the_kernel_reads(run_dir, "the run directory")
    writer = holder(given_path) if not given_path.exists() else None
    if writer is not None:  # a run still in phase 1: not written yet, and said so (not "no such run directory")
        raise LightFMPError(f"{given_path}: not written yet: another lightfmp command is writing it ({writer}); wait "
                            f"for it to end")
    opened = open_run(given_path)  # not a run: refused before the lock
    path = opened.path
    _join_ranks(opened)
    with _one_writer(path, "prune"), _process_state():
        return _prune(open_run(path), rule.keep, rule.threshold, rule.continue_epochs, quiet,
                      default_rule=default_rule)


def _join_ranks(run: Run) -> None:
    """The process group of a torchrun job, for the run's device (idempotent): before `prune` takes the lock, so
    that every rank learns whether rank 0 got it. What the run's config.yaml gives is named as its own (an edit
    there), not as a flag nobody passed; the testing hook's variable as itself."""
    dist.fault_hook()
    try:
        dist.refuse_sparse(run.config.train.sparse_embeddings)
        dist.init(run.config.train.device)
    except LightFMPError as e:
        raise LightFMPError(f"{run.path / 'config.yaml'}: {e}") from None


def _prune(run: Run, keep: int | None, threshold: float | None, continue_epochs: int | None, quiet: bool,
           data: Dataset | None = None, default_rule: bool = False) -> dict:
    """`data`: the run's data when the caller has it loaded already (`run`); otherwise it is read again."""
    # prune rewrites the run directory: refuse a path that is not one, first
    check_out(run.path, force=True, kind="run", in_place=True)
    check_place(run.path)  # phase 3's checkpoints go to <run>.ckpt: not over files lightfmp did not write there
    if not os.access(run.path, os.W_OK):  # it is copied, rewritten and put back in its place
        raise LightFMPError(f"{run.path}: is read-only; prune rewrites the run in place (copy it somewhere writable)")
    if not run.select:
        raise LightFMPError(f"{run.path}: was trained with --no-select; it has no gates to prune by")
    cfg = run.config
    if default_rule and cfg.train.target_k is not None:  # its config.yaml could not say so: --target-k means --keep K
        rule = f"--threshold {cfg.prune.threshold:g}" if cfg.prune.threshold is not None else \
            f"--keep {cfg.prune.keep if cfg.prune.keep is not None else cfg.train.target_k}"
        raise LightFMPError(f"--closing-test: {run.path} was trained with --target-k {cfg.train.target_k}, its rule "
                            f"{rule}; give --keep K or --threshold T, or train without --target-k for the closing "
                            f"test")
    recorded_rule = keep is None and threshold is None and not default_rule
    if recorded_rule:  # none given: the run's own rule; one: that alone
        keep, threshold = cfg.prune.keep, cfg.prune.threshold
    given_epochs = continue_epochs is not None or cfg.prune.continue_epochs is not None
    continue_epochs = continue_epochs if continue_epochs is not None else cfg.continue_epochs
    if continue_epochs < 0:
        raise LightFMPError(f"--continue-epochs {continue_epochs}: must be >= 0")
    config_file = run.path / "config.yaml"
    _join_ranks(run)
    try:  # what the run's config.yaml gives is named as its own (an edit there), not as a flag nobody passed
        device = _device(cfg)
    except LightFMPError as e:
        raise LightFMPError(f"{config_file}: {e}") from None
    reporter = _reporter(quiet)
    t_wall = time.perf_counter()
    warm_up()
    gated = run.load_pretrained()
    names = run.schema.names
    log_alpha = gated.gate.log_alpha.detach().cpu().clone()  # phase 1's best epoch's, as metrics.json reports them
    check_keep(keep, len(names), f"{config_file}: keep" if recorded_rule else "--keep")
    if data is None:
        data = run_data(run, reporter)
    subset, rest = data.subset(cfg.train.subset, cfg.data.seed)
    train = data.split_rows("train")
    if len(rest) == 0:  # subset = 1.0: the whole training split was used in phase 1; continue on all of it
        rest = train
    valid = data.split_rows("valid")
    check_rule_rows(valid.labels(), keep, threshold, len(names), split_kind=data.rule.kind, model=gated)
    key = {"config_sha256": config_sha256(cfg), "data_sha256": run.info.get("data_sha256"),
           "pretrain_sha256": file_sha256(run.path / "pretrain.safetensors"), "continue_epochs": continue_epochs}
    plan = phase_plan(cfg, continue_epochs, seed_offset=1)
    t0 = time.perf_counter()
    z = gated.gate_values()
    search, first_epoch, given, test_seconds, early = None, None, None, 0.0, None
    # phase 3's first epoch reads the rows phase 1 did not use (after it, every training row has been read once);
    # its later epochs read the whole training split, as any epoch after the first does
    split = continue_epochs >= 2
    deferred = decides_after_first_epoch(continue_epochs, threshold)
    # rows the final model reads over rows the phase-1 model read: whether a finer field is dense enough to stand
    # for a coarser one (lightfmp.groupings)
    rows_ratio = (len(train) if split else len(rest)) / max(len(subset), 1)
    if deferred:  # the fields phase 1 shut go now; the rule waits for phase 3's first epoch
        alone = run.gates_alone()
        if keep is None and alone is not None:  # and those the gates alone shut, where they cost nothing
            first = valid.take(np.arange(min(len(valid), closing_rows(gated))))  # the rows the cut reads
            early = gates_alone_cut(gated, *first.arrays(), alone, device)
            early = {**early, "fields": [names[i] for i in early["fields"]]}
            z = gated.gate_values()
        elif keep is None:  # phase 1 ran under another rule (or without a hold-out): no early cut, said so
            early = {"fields": [], "cost": None, "se": None, "cut": False, "recorded": False}
            reporter.log("phase 1 did not record its gates alone (trained for --keep, --threshold or a shorter phase "
                         "3, or without a gate hold-out): no early cut")
        order = open_after_phase1(gated.gate.log_alpha.detach().cpu(), z.cpu(), keep)
        kept = [names[i] for i in sorted(order)]
    elif keep is not None or threshold is None:  # the rules read at most TEST_ROWS validation rows: only those load
        first = valid.take(np.arange(min(len(valid), TEST_ROWS)))
        search = keep_order(gated, run.schema, *first.arrays(), keep, device,
                            rows_ratio=rows_ratio) if keep is not None \
            else closing_test(gated, run.schema, *first.arrays(), device)
        kept = select_fields(names, gated.gate.log_alpha.detach(), z, keep=keep, threshold=threshold, search=search)
        if keep is not None and _alternative_note(search):
            reporter.log(f"forward search on the phase-1 model{_alternative_note(search)}")
    else:
        kept = select_fields(names, gated.gate.log_alpha.detach(), z, threshold=threshold,
                             retry=f"phase 1 is kept in {run.path}: `lightfmp prune {run.path} --threshold T` with a "
                                   f"lower T, or --keep K, decides again")
    phase1 = run.load_optimizer_state(gated)  # phase 3 continues phase 1's optimizer, its state cut like the weights
    carry = Carry(prune_moments(gated, run.schema, kept, z.cpu(), phase1) if phase1 is not None else None)
    model, kept_schema = prune_model(gated, run.schema, kept, z.cpu())
    prune_seconds = time.perf_counter() - t0

    t0 = t1 = time.perf_counter()
    closed, first_fields, held = [], list(kept) if split else None, False
    if deferred:  # the rule's order, in the fields the first epoch reads
        at = {n: i for i, n in enumerate(kept)}
        order = [at[names[i]] for i in order]
    # the default rule's closing costs, measured on each batch of the first epoch before its step as well (every row
    # of the rarer label, as many of the other's, as on the validation rows): on as many rows as the test's bound on
    # its rows leaves beside the validation rows it measures
    rare, measured, share = None, 1.0, 0.0
    if deferred and keep is None:
        rare, measured = rarest_label(rest.labels())
        read = valid.labels()[:min(TEST_ROWS, closing_rows(model))]
        share = epoch_share(TEST_ROWS, len(read) * rarest_label(read)[1], len(rest) * measured)
    evidence = SweepCosts(order, device, share, rare) if share > 0 else None
    if split:
        # the first epoch; where the rule waits for it, it reads every field phase 1 left open, and the rule runs on
        # that model, which has read every training row (the subset's model cannot tell weak fields from noise).
        # No validation pass of its own: the rule reads the validation rows, and the model is validated below only
        # if it goes on as is
        first_key = {**key, "kept": kept, **({"evidence_order": order, "evidence_weights": "by label",
                                               "evidence_rows": "the rarer label's and as many, donors of the batch"}
                                              if evidence is not None else {})}
        first_epoch = fit(model, rest.select(kept), None, cfg.train, reporter,
                          "continue (first epoch)", device, **{**plan, "epochs": 1}, carry=carry,
                          checkpoint=Checkpoint(checkpoint_dir(run.path), "continue-first", first_key, reporter.log),
                          epoch_start=dist.maybe_fault, evidence=evidence)
        t1 = time.perf_counter()
    if deferred:
        first = valid.select(kept).take(np.arange(min(len(valid), TEST_ROWS)))
        search = keep_order(model, kept_schema, *first.arrays(), keep, device, rows_ratio,
                            order) if keep is not None \
            else closing_test(model, kept_schema, *first.arrays(), device, order, evidence)
        search["model"] = "after phase 3's first epoch"
        chosen = search["order"][:keep] if keep is not None else search["kept"]
        # the fields cut before the first epoch come last, by gate: the order names every field
        open_now, picked = set(kept), set(chosen)
        search["order"] += [names[i] for i in ranking(log_alpha) if names[i] not in open_now]
        closed = [n for n in kept if n not in picked]
        kept = [n for n in kept if n in chosen]  # schema order
        if closed:
            carry.state = prune_moments(model, kept_schema, kept, None, carry.state)
            # the cut holds the dropped fields at their means over the rows the first epoch read, as the rule
            # measured them (shuffled, their average kept), where the model allows it: a candidate of the fit below
            sample = rest.take(spread(len(rest), MEAN_ROWS)).select(kept_schema.names)
            at = {n: i for i, n in enumerate(kept_schema.names)}
            folded = hold_at_means(model, sample.arrays()[0], [at[n] for n in closed])
            held = bool(dist.broadcast_int(folded is not None))  # whether to use it: rank 0's answer on every rank
            model, kept_schema = prune_model(folded if held and folded is not None else model, kept_schema, kept)
            del folded  # the whole model before the cut: not kept through phase 3
            first_epoch["held"] = held
        test_seconds = time.perf_counter() - t1
        prune_seconds += test_seconds
        reporter.log(f"{'forward search' if keep is not None else 'closing test'} after phase 3's first epoch: "
                     f"{len(closed)} more field(s) dropped"
                     + (f" ({', '.join(closed)})" if closed else "") + _alternative_note(search)
                     + ("; the cut holds them at their means, and its model is a candidate" if held else ""))
    if split:
        if not closed or held:  # phase 3 goes on from its first epoch (pruned, the dropped fields held
            # at their means), which stays the best until an epoch beats it
            given = validate(model, valid.select(kept), device)
            first_epoch["epochs"][-1]["valid"] = given[0]
        plan = {**plan, "epochs": continue_epochs - 1, "seed": plan["seed"] + 1}
    # the key names the path: the same kept fields continue a different model after a first epoch on other fields
    ckpt = Checkpoint(checkpoint_dir(run.path), "continue", {**key, "kept": kept, "first_epoch_fields": first_fields,
                                                             "held": held}, reporter.log)
    hist = fit(model, (train if split else rest).select(kept), valid.select(kept), cfg.train, reporter,
               "continue (pruned)", device,
               **plan, checkpoint=ckpt, epoch_start=dist.maybe_fault, given=given, carry=carry) \
        if plan["epochs"] > 0 else {"epochs": [], "rows": 0}
    cont_seconds = _fit_seconds(t0, hist) - test_seconds + (first_epoch or {}).get("seconds_restored", 0.0)
    cont_epochs = len(hist["epochs"]) + (len(first_epoch["epochs"]) if first_epoch else 0)
    # where the rule waited for it, the first epoch read every field phase 1 left open: the part of phase 3 that
    # selection costs
    first_seconds = {"first_epoch_seconds": t1 - t0 + first_epoch.get("seconds_restored", 0.0)} if deferred else {}
    if first_epoch is not None:
        hist = {**hist, "first_epoch": first_epoch}

    metrics = run.metrics()
    pre = metrics["phases"]["pretrain"]
    kept_set = set(kept)
    metrics["fields"] = {"all": names, "kept": kept, "dropped": [n for n in names if n not in kept_set]}
    metrics["selection"] = selection_rule(kept, metrics["gates"], keep, threshold, search)
    if metrics["selection"].get("shut_but_kept"):
        reporter.warn(f"{escape(shut_note(metrics['selection']['shut_but_kept'], keep))}")
    if early is not None and (early["fields"] or early.get("recorded") is False):
        metrics["selection"]["gates_alone"] = {"rule": GATES_ALONE_RULE, **early}
        if early["cut"]:  # the first epoch did not read those
            metrics["selection"]["rule"] += (f"; before that epoch, the {len(early['fields'])} field(s) phase 1's gates "
                                             f"alone shut after its best epoch were cut (selection.gates_alone)")
    metrics["params"] = {"before": metrics["params"]["before"], "after": model.num_params()}
    metrics["runtime"] = {**metrics.get("runtime", {}), **runtime(device, "prune")}
    metrics["phases"] = {"pretrain": pre,
                         "prune": _phase(search["rows"] if search else 0, prune_seconds, rule=f"keep={keep}" if keep else
                                         f"threshold={threshold}" if threshold is not None else "closing test"),
                         "continue": _phase(0 if continue_epochs == 0 else len(train) if split else len(rest),
                                            cont_seconds, epochs=cont_epochs, **first_seconds,
                                            **_averaged(hist, 1 if first_epoch is not None else 0))}
    metrics.update(final_eval(model, data, device, kept, reporter))
    metrics["seconds_total"] = pre["seconds"] + prune_seconds + cont_seconds
    metrics["seconds_wall"] = metrics.get("seconds_wall", 0.0) + time.perf_counter() - t_wall
    history = run.history()
    history["continue"] = hist
    dist.barrier()  # every rank has read the run directory before rank 0 replaces it
    ckpt_files.forget(run.path)  # rank 0 removes the checkpoints next: a stop until it publishes resumes after phase 1
    if dist.is_main():
        # the checkpoints go before the finished run is published: a kill in between leaves the run pretrained (and,
        # from `run`, marked unfinished: a rerun does phases 2-3 again, the same result), never complete beside
        # stale checkpoints
        ckpt_files.remove(run.path)
        info = {k: v for k, v in run.info.items() if k != UNFINISHED}
        with atomic_dir(run.path, force=True, kind="run", in_place=True) as tmp:
            shutil.copytree(run.path, tmp, dirs_exist_ok=True)
            (tmp / GATES_PLOT).unlink(missing_ok=True)  # it showed the earlier kept set
            # config.yaml records the rule this prune used, so that --config reproduces the run as it now is; phase
            # 3's epochs only where --continue-epochs gave them (a value --epochs derived would outvote a later one)
            recorded = continue_epochs if given_epochs else None
            write_run_files(tmp, info={**info, "state": "complete"}, metrics=metrics, history=history,
                            config=cfg.but(keep=keep, threshold=threshold, continue_epochs=recorded),
                            checkpoints={"model.safetensors": model})
        _stop_line_after(run.path, phase1=False)
    dist.barrier()
    _stop_line_after(run.path, phase1=False)
    return metrics


def run_data(run: Run, reporter: Reporter | None = None) -> Dataset:
    """The rows a run was trained and tested on, read again through the one data path with the run's recorded
    config and fitted schema; refuses a data file that is gone or has changed since."""
    cfg = run.config
    if "split" not in run.info:
        raise DataGone(f"{run.path}: trained by an older lightfmp (run format {run.info.get('format_version')}, "
                       f"before the one split rule): its rows cannot be told apart again; train it again")
    if not cfg.data.data or not Path(cfg.data.data).exists():
        raise DataGone(f"{cfg.data.data}: the run's data file is gone (looked for "
                       f"{Path(str(cfg.data.data)).resolve()})")
    signature = data_signature(cfg.data.data)  # before the hash: a file replaced after it is refused by the read
    sha = file_sha256(cfg.data.data)
    if sha != run.info.get("data_sha256"):
        raise DataGone(f"{cfg.data.data}: data changed since `lightfmp train` (sha256 differs); train again")
    rule = SplitRule.from_dict(run.info["split"], str(run.path / "run.json"))
    return load_data(cfg, reporter, run.schema, sha, rule, signature)


def run(cfg: RunConfig, out: str | Path, force: bool = False, quiet: bool = False,
        data: Dataset | None = None) -> dict:
    """All phases in one call. Calling it again after an interruption resumes: phase 1 from its checkpoint, or,
    when phase 1 had finished (<out> is a pretrained run of the same config and data that `run` marked
    unfinished), straight into phases 2-3 (phase 3 from its checkpoint if it has one). `data`: cfg's data when the caller has loaded it already (bench)."""
    check_switches(force=force, quiet=quiet)
    out = as_the_kernel_reads(out)
    check_name_length(out)
    cfg = _a_config(cfg)
    check_no_rule_without_gates(cfg)  # a config built in Python (RunConfig.but, from_dict) as from the CLI
    if data is not None and not isinstance(data, Dataset):
        raise LightFMPError(f"data: the config's data as a lightfmp Dataset (lightfmp.dataset.load_dataset), or "
                            f"None to read cfg's file; got {shown_type(data)}")
    _check_out(out, True)  # as `train`'s, but an existing run may be one this call resumes (checked under the lock)
    dist.refuse_sparse(cfg.train.sparse_embeddings)
    dist.init(cfg.train.device)  # the ranks of a torchrun job learn whether rank 0 got the lock
    with _one_writer(out, "run"), _process_state():
        return _run(cfg, out, force, quiet, data)


def _run(cfg: RunConfig, out: Path, force: bool, quiet: bool, data: Dataset | None) -> dict:
    cfg = _normalize(cfg)
    # rank 0 decides: every rank must take the same branch
    done, why = _phase1_done(cfg, out) if dist.is_main() else (False, None)
    refused = why is not None and not force
    decided = dist.broadcast_int(-1 if refused else int(done))
    if decided == -1:  # every rank refuses, rank 0 saying why
        raise LightFMPError(f"{out}: holds an unfinished run {why}, so this command does not resume it; rerun "
                            f"the command that started it, or pass --force to start again" if dist.is_main() else
                            f"{out}: holds an unfinished run this command does not resume (rank 0 says why)")
    if decided == 1:
        _reporter(quiet).log(f"resuming: phase 1 is already complete in {out}")
        metrics = None
    else:
        metrics, data = _train(cfg, out, force, quiet, keep_checkpoints=not cfg.train.no_select, data=data,
                               rule_after=True)
    if cfg.train.no_select:
        return metrics
    return _prune(open_run(out), None, None, None, quiet, data)


def _phase1_done(cfg: RunConfig, out: Path) -> tuple[bool, str | None]:
    """(whether an earlier `run` of this config and data finished phase 1 into `out` and was interrupted afterwards
    (its run.json marks it unfinished; a run by an older lightfmp: its checkpoint folder is still there), why such a
    run in `out` is not this command's: other settings or other data; None where it is, or there is none)."""
    if cfg.train.no_select or not out.is_dir():
        return False, None
    try:
        r = open_run(out)
    except LightFMPError as e:  # where run.json still says `run` left it unfinished, what does not load is why
        try:
            said = read_json(out / "run.json").get(UNFINISHED) is True
        except LightFMPError:
            said = False
        return False, f"whose files do not load ({e})" if said else None
    if r.state != "pretrained" or not r.select or not r.info.get(UNFINISHED) and not checkpoint_dir(out).is_dir():
        return False, None
    said = bool(r.info.get(UNFINISHED))  # why: only of a run `run` left (not of `train` + a stopped `prune`)
    if config_sha256(_normalize(r.config)) != config_sha256(cfg):
        changed = config_difference(_normalize(r.config), cfg)
        return False, ("of other settings" + (f" ({changed})" if changed else "")) if said else None
    if not cfg.data.data or not Path(cfg.data.data).exists():
        return False, None
    if r.info.get("data_sha256") != file_sha256(cfg.data.data):
        if not said:
            return False, None
        return False, (f"of other data ({cfg.data.data} has changed since its phase 1 read it: sha256 differs from "
                       f"run.json)")
    if cfg.data.schema and "schema_file_sha256" in r.info:  # (a run of a lightfmp before this record: unknown)
        now = file_sha256(cfg.data.schema) if Path(cfg.data.schema).is_file() else None
        if now != r.info["schema_file_sha256"]:
            change = "has changed since its phase 1 read it: sha256 differs from run.json" if now else "is no file now"
            return False, f"of another schema ({cfg.data.schema} {change})" if said else None
    return True, None

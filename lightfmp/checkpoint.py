"""Per-epoch checkpoints of a training phase, so that rerunning an interrupted command resumes it.

    <out>.ckpt/<phase>.safetensors   model, optimizer moments and the best epoch's weights (tensors)
    <out>.ckpt/<phase>.json          epochs done, history so far, best score, and the key below (everything else)

The checkpoints live beside the run directory because `train` creates <out> only at the very end (atomically) and
`prune` rewrites it. A checkpoint is used only when its key matches: the phase, the sha256 of the resolved config
and of the data, plus phase-specific values (prune: the kept fields, the pretrained weights' sha256, the epochs).
No RNG state is stored: the training loop reseeds every random stream at the start of each epoch from
(seed, epoch), so a resumed run continues exactly as the uninterrupted one would. Never pickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import START_AGAIN, LightFMPError
from .held_signals import HeldSignals
from .io import NAME_MAX, atomic_path, check_name_length, json_safe, json_text, lightfmp_kind, os_errors_of

FORMAT = "lightfmp-checkpoint"
FORMAT_VERSION = 1
BEST_LOSSES = "valid_losses.best"  # not under "best.": those are the best epoch's weights
LEAST_LOSSES = "valid_losses.least"  # the per-row losses of the epoch with the lowest validation logloss
TIED = "tied."  # tied.<epoch>.<weight>: the weights of an epoch the final average reads (lightfmp.averaging)
TIED_LOSSES = "valid_losses.tied."  # valid_losses.tied.<epoch>: its per-row validation losses
EVIDENCE = "evidence."  # evidence.<name>: what the epochs measured for a rule (lightfmp.progressive.SweepCosts)

# where the failure message tells the user to look; updated as phases start and epochs complete
_hint = {"dir": None, "phase": None, "epoch": None, "done": None, "after": None}


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def check_place(out: str | Path) -> None:
    """Refuse, before any work, an `out` whose checkpoint path (<out>.ckpt) is not free for a folder lightfmp owns:
    a file there would fail the first checkpoint, and checkpoints written through a link could not be cleaned."""
    d = checkpoint_dir(out)
    check_name_length(Path(out))
    if len(os.fsencode(d.name)) > NAME_MAX:
        raise LightFMPError(f"{out}: its checkpoints go beside it in <name>.ckpt, which this name leaves too long for a "
                            f"file system ({NAME_MAX} bytes); give a name of at most {NAME_MAX - len('.ckpt')} bytes")
    if d.is_symlink():
        raise LightFMPError(f"{d}: is a symbolic link; checkpoints of {Path(out).name} need this path for a folder of "
                            f"their own")
    if d.exists() and not d.is_dir():
        raise LightFMPError(f"{d}: is not a folder; checkpoints of {Path(out).name} need this path (move it away)")
    stem = Path(out).name[:-len(".ckpt")] if Path(out).name.endswith(".ckpt") else ""
    owner = Path(out).parent / stem if stem not in ("", ".", "..") else None
    if owner is not None and not Path(out).exists() and lightfmp_kind(owner) == "run":
        raise LightFMPError(f"{out}: is where the checkpoints of the run {owner} go; give --out another name")
    kind = lightfmp_kind(d) if d.is_dir() else None
    if kind is not None:
        raise LightFMPError(f"{d}: is a lightfmp {kind}; checkpoints of {Path(out).name} need this path for a folder "
                            f"of their own (move it away, or name the new run otherwise)")
    foreign = _foreign_entry(d) if d.is_dir() else None
    if foreign is not None:  # a checkpoint would overwrite a file of the same name, and the clean-up delete it
        raise LightFMPError(f"{d}: holds {foreign!r}, which is not a checkpoint of lightfmp's; checkpoints of "
                            f"{Path(out).name} need this folder for their own (move it away)")


def _foreign_entry(d: Path) -> str | None:
    """What in a checkpoint folder a checkpoint could overwrite and its clean-up delete: the first .json or
    .safetensors file that is not one of a checkpoint's pair (a file of the user's named pretrain.safetensors).
    Other files (notes) are left alone; None when nothing is at risk."""
    named = [p for p in sorted(d.iterdir()) if p.suffix in (".json", ".safetensors")]
    # a phase's pair is ours when either file of it reads as a checkpoint (the other may be damaged: the phase
    # then restarts)
    ours = {p.stem for p in named if p.is_file() and not p.is_symlink() and _checkpoint_file(p)}
    return next((p.name for p in named if p.stem not in ours), None)


def _checkpoint_file(p: Path) -> bool:
    try:
        if p.suffix == ".json":
            return json.loads(p.read_text()).get("format") == FORMAT
        if p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
            return "phase" in meta and "epoch" in meta
    except (OSError, ValueError, AttributeError, SafetensorError):
        return False
    return False


def _computed(cfg) -> dict:
    """Everything that changes what training computes (the shard cache location does not), by flat key."""
    d = {k: v for k, v in cfg.flat().items() if k not in ("shard_dir",)}
    if d.get("init_seed") in (None, d.get("seed")):  # the default: the same run as before the flag existed
        d.pop("init_seed", None)
    if d.get("group_column") is None:  # likewise: checkpoints of a version without the flag still resume
        d.pop("group_column", None)
    return d


def config_sha256(cfg) -> str:
    """Hash of everything that changes what training computes (the shard cache location does not)."""
    return hashlib.sha256(json.dumps(_computed(cfg), sort_keys=True, default=str).encode()).hexdigest()


def config_difference(old, new) -> str | None:
    """The first setting (by name) that `config_sha256` tells apart in two configs, as "KEY: OLD there, NEW now";
    None where it tells none apart."""
    a, b = _computed(old), _computed(new)
    key = next((k for k in sorted(set(a) | set(b)) if json.dumps(a.get(k), default=str) != json.dumps(b.get(k),
                                                                                                     default=str)),
               None)
    return None if key is None else f"{key}: {a.get(key)!r} there, {b.get(key)!r} now"


def tensors_crc32(tensors: dict) -> str:
    """A checksum of every tensor's name, dtype, shape and bytes (CRC-32, in name order). The JSON records it, so
    that a changed byte or name in the tensors' file reads as damage (a restart), never as other weights or moments
    resumed."""
    crc = 0
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        crc = zlib.crc32(f"{k}|{t.dtype}|{tuple(t.shape)}".encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def resume_hint() -> str:
    if _hint.get("done"):  # the command's result was published before the stop: nothing is lost
        return f"{_hint['done']} was written in full before that; nothing to rerun"
    if _hint["dir"] is None and _hint.get("after") and _hint.get("resumable", True):
        return f"rerun the same command to resume after phase 1 (complete in {_hint['after']})"
    if _hint["dir"] is None or not _hint.get("resumable", True):
        return START_AGAIN
    if not _hint["epoch"]:  # nothing of this phase saved yet (the phases before it are, in the run directory)
        return f"rerun the same command to start the {_hint['phase']} phase again (it had no completed epoch yet)"
    return (f"rerun the same command to resume from epoch {_hint['epoch']} ({_hint['phase']} phase; checkpoint in "
            f"{_hint['dir']})")


def reset_hint(resumable: bool = True) -> None:
    """Forget the phase of an earlier command (a process that runs several, e.g. the tests); `resumable` False: this
    command's checkpoints are not resumed (`bench` trains in a temporary folder), so a stop says to start again."""
    _hint.update(dir=None, phase=None, epoch=None, resumable=resumable, done=None, after=None)


def phase1_published(out: str | Path) -> None:
    """Phase 1 is in the run directory `out` and its checkpoint gone (`run` goes on to phases 2-3): a stop before
    phase 3 saves an epoch resumes after phase 1."""
    _hint.update(dir=None, phase=None, epoch=None, after=str(out))


def published(out: str | Path) -> None:
    """The command's finished result is in `out` (its checkpoints gone): a stop from now on loses nothing (where the
    command is the run; a bench's runs are its parts, in a folder a stop deletes: `reset_hint(False)`)."""
    _hint.update(dir=None, phase=None, epoch=None)
    if _hint.get("resumable", True):
        _hint["done"] = str(out)


# safetensors writes a file through a temporary of its own beside it (Rust's tempfile: ".tmp" and 6 characters), which a
# process killed mid-write leaves in the checkpoint folder
SAFETENSORS_TEMPORARY = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def forget(out: str | Path) -> None:
    """A stop from now on has nothing of `out`'s checkpoints to resume from (they are being removed: by this process,
    or under torchrun by rank 0)."""
    if _hint["dir"] == str(checkpoint_dir(out)):
        _hint.update(dir=None, phase=None, epoch=None)


def remove(out: str | Path) -> None:
    """Delete the checkpoints of `out` (each <phase>.json that is one, its tensors, and half-written temporaries),
    then the folder if that left it empty: a file lightfmp did not write there is never deleted."""
    forget(out)
    d = checkpoint_dir(out)
    if not d.is_dir() or d.is_symlink():
        return
    for doc in d.glob("*.json"):
        try:
            ours = json.loads(doc.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            doc.with_suffix(".safetensors").unlink(missing_ok=True)
            doc.unlink(missing_ok=True)
    for tmp in list(d.glob(".*.safetensors.*.tmp")) + list(d.glob(".*.json.*.tmp")) \
            + [p for p in d.glob(".tmp*") if SAFETENSORS_TEMPORARY.fullmatch(p.name) and p.is_file()]:
        tmp.unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:  # not empty: something else is in there
        pass


@dataclass
class TrainState:
    """What the training loop needs to continue after `epoch` completed epochs."""
    epoch: int
    history: list[dict]
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    best_losses: np.ndarray | None = None   # per-row validation logloss of the best epoch
    least_losses: np.ndarray | None = None  # ... of the epoch with the lowest validation logloss (early stopping's test)
    stopped: bool = False                   # early stopping fired after the last saved epoch
    seconds: float = 0.0                    # training seconds of the saved epochs (all attempts)
    # the epochs the final model averages: epoch (-1: the model as given) -> (weights, per-row validation losses)
    tied: dict = field(default_factory=dict)
    evidence: dict | None = None            # name -> float64 array: what the saved epochs measured for a rule


class Checkpoint:
    def __init__(self, directory: str | Path, phase: str, key: dict, log=None):
        self.dir = Path(directory)
        self.phase = phase
        self.key = json_safe({"phase": phase, **key})
        self.log = log or (lambda msg: None)
        _hint.update(dir=str(self.dir), phase=phase, epoch=0, done=None)

    @property
    def tensors_path(self) -> Path:
        return self.dir / f"{self.phase}.safetensors"

    @property
    def json_path(self) -> Path:
        return self.dir / f"{self.phase}.json"

    # ---- writing (rank 0 only) ------------------------------------------------------------------------------
    def save(self, model: torch.nn.Module, optimizers: dict, state: TrainState) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if state.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
        if state.best_losses is not None:
            tensors[BEST_LOSSES] = torch.from_numpy(np.asarray(state.best_losses, dtype=np.float64))
        if state.least_losses is not None:
            # a copy: it is often the best epoch's array itself, and safetensors refuses tensors sharing memory
            tensors[LEAST_LOSSES] = torch.from_numpy(np.array(state.least_losses, dtype=np.float64))
        tied_best = None  # a tied epoch's weights that are the best epoch's too are written once, under "best."
        for e, (weights, losses) in state.tied.items():
            if weights is state.best_state:
                tied_best = e
            else:
                tensors.update({f"{TIED}{e}.{k}": v for k, v in weights.items()})
            tensors[f"{TIED_LOSSES}{e}"] = torch.from_numpy(np.array(losses, dtype=np.float64))
        for k, v in (state.evidence or {}).items():
            tensors[f"{EVIDENCE}{k}"] = torch.from_numpy(np.array(v, dtype=np.float64))
        scalars = {}
        for name, opt in optimizers.items():
            if opt is None:
                continue
            for idx, st in opt.state_dict()["state"].items():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        tensors[f"opt.{name}.{idx}.{k}"] = v
                    else:
                        scalars[f"opt.{name}.{idx}.{k}"] = v
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": self.key, "epoch": state.epoch,
               "history": state.history, "best_score": state.best_score if math.isfinite(state.best_score) else None,
               "best_epoch": state.best_epoch, "stopped": state.stopped, "seconds": state.seconds,
               "tied": sorted(state.tied), "tied_best": tied_best, "opt_scalars": scalars,
               "tensors_crc32": tensors_crc32(tensors)}
        # both files written under temporary names first, then renamed back to back with Ctrl-C / SIGTERM held
        # until both are in place: the previous epoch's pair stays whole until the new one is. (The epoch in both
        # must match, so a SIGKILL between the two renames is still detected, and the phase restarts.)
        # The tensors' header holds the JSON's sha256: the state it records (best epoch, stopped, history) is
        # trusted only with the tensors it was written with
        text = json_text(doc)
        with HeldSignals() as held, atomic_path(self.tensors_path) as tensors_tmp:
            with os_errors_of(tensors_tmp):
                save_file(tensors, str(tensors_tmp), metadata={"epoch": str(state.epoch), "phase": self.phase,
                                                                "json_sha256": _sha256(text)})
            with atomic_path(self.json_path) as json_tmp:
                json_tmp.write_text(text)
                held.start()  # the renames: JSON's as this block ends, the tensors' as the next one does
                _hint["epoch"] = state.epoch

    def saved_elsewhere(self, epoch: int) -> None:
        """Rank 0 saved `epoch` (every rank has passed the barrier after it): a torchrun rank that did not write the
        checkpoint says where it resumes from as rank 0 does."""
        _hint["epoch"] = epoch

    def discard(self) -> None:
        """Delete this phase's pair, then the folder if that left it empty (the next phase makes it again)."""
        self.tensors_path.unlink(missing_ok=True)
        self.json_path.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:  # absent, or another phase's files (or the user's) are in it
            pass

    # ---- reading (every rank) ---------------------------------------------------------------------------------
    def load(self, model: torch.nn.Module, optimizers: dict) -> TrainState | None:
        """Restore model and optimizers in place and return the state, or None when there is no usable
        checkpoint (absent, from another config / data / phase, or damaged; the last two are logged)."""
        if not self.json_path.exists():
            return None
        try:
            found = self._read(model)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, SafetensorError) as e:
            # a damaged checkpoint (cut short, edited, half written) must not block the rerun: nothing was loaded
            # yet, so the phase restarts and its first epoch overwrites the files
            why = str(e).splitlines()[0] if str(e) else ""
            self.log(f"ignoring damaged checkpoint {self.dir / self.phase}.*: cannot read it ({type(e).__name__}"
                     f"{': ' + why if why else ''}); {self.phase} starts again from its first epoch")
            return None
        if found is None:
            return None
        weights, moments, state = found
        try:
            model.load_state_dict(weights, strict=True)
            for name, opt in optimizers.items():
                if opt is not None:
                    # hyperparameters come from the config (part of the key), only the moments from the file
                    opt.load_state_dict({"state": moments.get(name, {}),
                                         "param_groups": opt.state_dict()["param_groups"]})
        except (ValueError, KeyError, RuntimeError) as e:
            raise LightFMPError(f"{self.json_path}: its optimizer state does not fit this model "
                                f"({str(e).splitlines()[0]}); delete {self.dir} and rerun") from None
        _hint["epoch"] = state.epoch
        return state

    def _read(self, model: torch.nn.Module) -> tuple[dict, dict, TrainState] | None:
        """Parse and check both files without touching the model: (weights, optimizer moments by name, state),
        or None for a checkpoint of something else (logged). Raises on a damaged one."""
        where = self.json_path
        text = self.json_path.read_text()
        doc = json.loads(text)
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            self.log(f"ignoring checkpoint {where}: unknown format")
            return None
        if doc.get("key") != self.key:
            diff = sorted(k for k in set(self.key) | set(doc.get("key") or {})
                          if (doc.get("key") or {}).get(k) != self.key.get(k))
            self.log(f"ignoring checkpoint {where}: made with a different {', '.join(diff)}")
            return None
        with safe_open(str(self.tensors_path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("epoch") != str(doc["epoch"]):
            self.log(f"ignoring checkpoint {where}: its tensors are from another epoch (interrupted write)")
            return None
        if "json_sha256" in meta and meta["json_sha256"] != _sha256(text):
            raise ValueError("it is not the JSON written with its tensors (edited?)")
        tensors = load_file(str(self.tensors_path))
        if "tensors_crc32" in doc and doc["tensors_crc32"] != tensors_crc32(tensors):
            raise ValueError("its tensors are not the ones written with it (a changed byte or name)")
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        own = model.state_dict()
        if not _fits(weights, own):
            # checked before loading anything: a half-loaded model must never be trained on
            self.log(f"ignoring checkpoint {where}: its weights do not fit this model")
            return None
        moments: dict[str, dict[int, dict]] = {}
        for k, v in list(tensors.items()) + list(doc.get("opt_scalars", {}).items()):
            if k.startswith("opt."):
                name, idx, sub = k[4:].split(".", 2)
                moments.setdefault(name, {}).setdefault(int(idx), {})[sub] = v
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        if best is not None and not _fits(best, own):
            raise ValueError("the best epoch's weights do not fit this model")
        tied = _read_tied(doc, tensors, best, own)
        losses = [tensors[k] for k in (BEST_LOSSES, LEAST_LOSSES) if k in tensors] + \
            [torch.from_numpy(losses) for _, losses in tied.values()]
        if len({tuple(t.shape) for t in losses}) > 1 or any(t.dim() != 1 for t in losses):
            raise ValueError("its per-row validation losses differ in shape")
        score = doc.get("best_score")
        state = TrainState(epoch=int(doc["epoch"]), history=list(doc.get("history", [])),
                           best_score=-math.inf if score is None else float(score),
                           best_epoch=int(doc.get("best_epoch", 0)), best_state=best,
                           best_losses=tensors[BEST_LOSSES].numpy() if BEST_LOSSES in tensors else None,
                           least_losses=tensors[LEAST_LOSSES].numpy() if LEAST_LOSSES in tensors else None,
                           stopped=bool(doc.get("stopped")), seconds=float(doc.get("seconds", 0.0)), tied=tied,
                           evidence={k[len(EVIDENCE):]: v.numpy() for k, v in tensors.items()
                                     if k.startswith(EVIDENCE)} or None)
        return weights, moments, state


def _read_tied(doc: dict, tensors: dict, best: dict | None, own: dict) -> dict:
    """The tied epochs of a checkpoint (`TrainState.tied`): each one's weights (the best epoch's, shared, where the
    JSON names it `tied_best`) and per-row validation losses. Raises ValueError where one is missing or does not fit
    the model (a damaged checkpoint: ignored, with a log line)."""
    tied = {}
    for e in doc.get("tied", []):
        prefix = f"{TIED}{e}."
        weights = best if e == doc.get("tied_best") else \
            {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not weights or not _fits(weights, own):
            raise ValueError(f"the weights of tied epoch {e} do not fit this model")
        tied[int(e)] = (weights, tensors[f"{TIED_LOSSES}{e}"].numpy())
    return tied


def _fits(weights: dict, own: dict) -> bool:
    """Whether saved weights have the model's names, shapes and dtypes (loadable without a cast)."""
    return set(weights) == set(own) and all(weights[k].shape == own[k].shape and weights[k].dtype == own[k].dtype
                                            for k in own)

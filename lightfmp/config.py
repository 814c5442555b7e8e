"""Every knob of a run, in four sections that are the configs the code uses:

    RunConfig.data    DataConfig    what to read and how to split and encode it (lightfmp.dataset)
    RunConfig.model   ModelConfig   the backbone (lightfmp.models.build_model)
    RunConfig.train   TrainConfig   the training loop (lightfmp.training.fit) and the phases
    RunConfig.prune   PruneConfig   which fields to keep, and continued training

CLI flags and --config YAML keys are generated from the fields, so they mirror each other by construction (key
`embed_dim` or `embed-dim` <-> flag `--embed-dim`). YAML takes the sections (`train: {lr: 0.001}`) or flat keys
(`lr: 0.001`). Every value is converted to its field's type and checked against its range here, once, with a
one-line error naming the flag.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import math
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import LightFMPError, shown, shown_type
from .formats import FORMATS
from .splits import check_one_split, parse_split

BACKBONES = ("mlp", "deepfm", "dcnv2", "widedeep")
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**32 - 1  # seeds are unsigned 32-bit integers, which every generator (numpy's, torch's) takes
# bucket edges are quantiles of a sample of at most this many of a field's values (the fit's reservoir,
# lightfmp.vocab): more buckets than sampled values cannot be told apart
MAX_BUCKETS = 200_000
MAX_INT = 2**63 - 1  # the largest integer torch and numpy hold: an integer option beyond it cannot even be asked for
COMMAND_LINE = "command line"  # the source of flag values: their errors name the flag, not a file


def opt(default, help: str, low=None, high=None, *, open_low: bool = False, open_high: bool = False,
        choices: tuple | None = None):
    """A flag: its default, help text and valid range ([low, high]; open ends excluded), or its choices."""
    meta = {"help": help, "low": low, "high": high, "open_low": open_low, "open_high": open_high,
            "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    data: str | None = opt(None, "Training data: a CSV, TSV (--format tsv), compressed text, Parquet file or "
                                 "directory of Parquet parts, or a Criteo / Avazu file.")
    label: str | None = opt(None, "Label column (0/1, booleans, or see --positive).")
    schema: str | None = opt(None, "Feature schema JSON; without it kinds are inferred from the data.")
    categorical: list[str] = opt([], "Comma-separated columns to treat as categorical.")
    numeric: list[str] = opt([], "Comma-separated columns to treat as numeric (quantile-bucketized).")
    multi_hot: list[str] = opt([], "Comma-separated multi-hot columns with separator, e.g. 'genres:|' (a column "
                                   "without one is split at '|').")
    ignore: list[str] = opt([], "Comma-separated columns to leave out.")
    positive: str | None = opt(None, "Label value that means 1 (e.g. 'click'); other values mean 0.")
    time_column: str | None = opt(None, "Split by this column's order (oldest rows train) instead of randomly.")
    group_column: str | None = opt(None, "Split by this column's values (a user, a session): every row of one value "
                                         "goes to one split, chosen by the value's hash and --seed.")
    split: list[float] = opt([0.8, 0.1, 0.1], "Train,valid,test fractions (summing to 1).", 0.0, 1.0)
    min_count: int = opt(2, "Values seen fewer times in the training rows map to the OOV id.", 1)
    num_buckets: int = opt(16, "Quantile buckets per numeric field.", 1, MAX_BUCKETS)
    seed: int = opt(0, "Seed for the split, the subset, the gate hold-out and (unless --init-seed) initialisation, "
                       "batch order, dropout and gate noise.", 0, MAX_SEED)
    stream: bool = opt(False, "Read the data in record batches into encoded shards on disk (bounded memory) "
                              "instead of loading it; implied by --format criteo|avazu.")
    format: str = opt("auto", "Input format: auto (by suffix), csv, tsv (tab-separated, header row), parquet, criteo "
                              "(TSV: label, I1-I13, C1-C26, no header) or avazu (CSV with header, label 'click').",
                      choices=FORMATS)
    hash_buckets: str | None = opt(None, "Hashing trick: 'N' hashes every categorical field into N buckets, "
                                         "'field:N,...' only those fields.")
    vocab_cap: int | None = opt(None, "Keep at most the N most frequent values per field; the rest map to OOV.", 1)
    chunk_rows: int = opt(262144, "Rows per record batch read and per encoded shard (streaming).", 1)
    shard_dir: str | None = opt(None, "Cache of encoded shards (default: $LIGHTFMP_HOME/shards).")
    in_memory_mb: int = opt(1024, "Training rows whose encoded ids fit in this many MB (e.g. the phase-1 subset) "
                                  "are read once into memory; larger sets stream from the shards every epoch, "
                                  "shuffled in windows of chunks of a third of this size.", 0)


@dataclass
class ModelConfig:
    backbone: str = opt("deepfm", "Backbone: mlp, deepfm, dcnv2 or widedeep.", choices=BACKBONES)
    embed_dim: int = opt(16, "Embedding size per field.", 1)
    hidden: list[int] = opt([256, 128], "Hidden layer sizes of the MLP tower.", 1)
    cross_layers: int = opt(2, "Cross layers (dcnv2).", 0)
    dropout: float = opt(0.0, "Dropout in the MLP tower.", 0.0, 1.0, open_high=True)


@dataclass
class TrainConfig:
    batch_size: int = opt(512, "Rows per batch.", 1)
    lr: float = opt(3e-3, "Adam learning rate of the backbone.", 0.0, open_low=True)
    gate_lr: float = opt(0.1, "Adam learning rate of the gates' log_alpha (in `bench`, of LPFS's and AutoField's "
                              "gates too).", 0.0, open_low=True)
    l0_lambda: float = opt(0.003, "Weight of the expected-L0 penalty (in `bench`, LPFS's L1 step is gate_lr x "
                                  "max(l0_lambda, 1e-4)).", 0.0)
    l0_warmup: float = opt(0.3, "Fraction of phase-1 steps over which the L0 weight ramps up from 0.", 0.0, 1.0)
    gate_holdout: float = opt(0.2, "Share of the phase-1 subset held out of weight updates; gate steps use it "
                                   "(0: gates and weights take one joint step).", 0.0, 1.0, open_high=True)
    target_k: int | None = opt(None, "Target-k mode: penalise |E[L0] - k| instead of E[L0]; prune keeps k.", 1)
    subset: float = opt(0.1, "Fraction of training rows for phase 1 (gated pretraining).", 0.0, 1.0,
                        open_low=True)
    pretrain_epochs: int = opt(5, "Epochs over the subset in phase 1.", 1)
    epochs: int = opt(10, "Most epochs of full training for --no-select; the default for --continue-epochs.", 1)
    patience: int = opt(1, "Stop a phase (phase 1, continued or full training) after this many epochs without a "
                           "better validation AUC, once an epoch's validation logloss is worse than the lowest-logloss "
                           "epoch's by more than two standard errors of the per-row difference (the best epoch by AUC "
                           "among those not so worse is kept); 0 disables early stopping.", 0)
    average_epochs: bool = opt(True, "The final model of a fit without gates that keeps its best epoch (phase 3, "
                                     "--no-select, a bench retraining) is the mean of the weights of the epochs "
                                     "whose validation logloss is not worse than the lowest epoch's by two standard "
                                     "errors, where the mean is not so worse itself (--no-average-epochs: the best "
                                     "epoch); --in-memory-mb bounds how many epochs' weights are kept for it.")
    sparse_embeddings: bool = opt(False, "Sparse gradients for the embedding tables, updated by a lazy Adam "
                                         "(SparseAdam): a step touches only the rows its batch read, much faster "
                                         "for large tables; untouched rows' moments are not decayed.")
    no_select: bool = opt(False, "Train the same backbone on all fields without gates, for comparison.")
    init_seed: int | None = opt(None, "Seed for initialisation, batch order, dropout and gate noise (default: "
                                      "--seed); the split, the subset and the gate hold-out stay with --seed, so runs "
                                      "that differ only here measure training noise on one split.", 0, MAX_SEED)
    device: str = opt("auto", "cpu, cuda or auto.", choices=DEVICES)


@dataclass
class PruneConfig:
    keep: int | None = opt(None, "Keep K fields: the first K of the forward order on the validation rows, or the K "
                                 "costliest to close where measurably better (default: every "
                                 "field whose closing raises the logloss by two standard errors, on its own or with the fields closed "
                                 "before it, on the validation rows and the rows phase 3's first epoch reads).", 1)
    threshold: float | None = opt(None, "Drop fields whose deterministic gate is below this (instead of the "
                                        "default rule).", 0.0, 1.0)
    continue_epochs: int | None = opt(None, "Epochs of phase 3: the first on the rows phase 1 did not use, the others "
                                            "on every training row (0 skips it; with 2 or more the keep rule "
                                            "decides after the first, but --threshold, on the phase-1 gates).", 0)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "prune": PruneConfig}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    @classmethod
    def of(cls, *given, source: str = "config", **flat) -> "RunConfig":
        """A config from flat keys (as flags name them), each converted and range-checked; `source` names them in
        errors."""
        if given:
            raise LightFMPError(f"RunConfig.of({', '.join(repr(g) for g in given)}): takes keywords only, as the flags "
                                f"name them (data=..., label=...)")
        cfg = cls.from_dict(flat, source)
        _named(source, check_no_rule_without_gates, cfg)
        return cfg

    def but(self, **flat) -> "RunConfig":
        """A copy with these flat keys changed (checked like any other value)."""
        d = self.flat()
        d.update(flat)
        return RunConfig.from_dict(d)

    @property
    def continue_epochs(self) -> int:
        """Phase 3's epochs: --continue-epochs, or --epochs without it."""
        return self.train.epochs if self.prune.continue_epochs is None else self.prune.continue_epochs

    @property
    def init_seed(self) -> int:
        """The seed of training's random streams: --init-seed, or --seed without it."""
        return self.data.seed if self.train.init_seed is None else self.train.init_seed

    def flat(self) -> dict:
        return {k: v for section in SECTIONS for k, v in dataclasses.asdict(getattr(self, section)).items()}

    def to_dict(self) -> dict:
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "config") -> "RunConfig":
        """Sections ({'train': {'lr': ...}}) or flat keys ({'lr': ...}), or both; unknown keys are errors. A section
        whose keys are all commented out (`train:` alone, read as null) is an empty section; `data` is both a
        section and the data-path key: a mapping or null is the section, anything else the path. Errors name
        `source` (the YAML file) unless the values are flags (COMMAND_LINE), whose errors name the flag."""
        if d is not None and not isinstance(d, collections.abc.Mapping):
            raise LightFMPError(f"{source}: must be a mapping of option: value, got {shown_type(d)}")
        values: dict[str, dict] = {s: {} for s in SECTIONS}
        for k, v in (d or {}).items():
            key = str(k).replace("-", "_")
            if key in SECTIONS and key not in _SECTION_OF and not isinstance(v, (dict, type(None))):
                raise LightFMPError(f"{source}: section '{k}' must be a mapping of option: value, got {shown(v)}")
            if key in SECTIONS and isinstance(v, (dict, type(None))):
                for kk, vv in (v or {}).items():
                    name = str(kk).replace("-", "_")
                    if _SECTION_OF.get(name) != key:
                        raise LightFMPError(f"{source}: unknown key '{kk}' in section '{k}'")
                    _set_once(values[key], name, vv, source)
            elif key in _SECTION_OF:
                _set_once(values[_SECTION_OF[key]], key, v, source)
            else:
                raise LightFMPError(f"{source}: unknown key '{k}'")
        made = {}
        for section, tp in SECTIONS.items():
            hints = typing.get_type_hints(tp)
            for name, v in list(values[section].items()):
                if v is None and hints[name] == list[str]:  # `categorical: null`: none (as older runs wrote it)
                    values[section][name] = []
                elif v is None and _unoptional(hints[name]) is hints[name]:  # `epochs:` left empty, `backbone: ~`
                    none = " ([] for none)" if typing.get_origin(hints[name]) is list else ""
                    raise LightFMPError(f"{source}: '{name}' must be {_what(hints[name])}, got no value (null); give "
                                        f"one{none} or remove the key")
            converted = {name: _coerce(v, hints[name], name, source) for name, v in values[section].items()}
            made[section] = tp(**{name: _named(source, _checked, v, _FIELDS[name]) for name, v in converted.items()})
        cfg = cls(**made)
        cfg.data.split = list(_named(source, parse_split, cfg.data.split))
        _named(source, check_one_rule, cfg.prune.keep, cfg.prune.threshold)
        _named(source, check_one_split, cfg.data.time_column, cfg.data.group_column)
        return cfg


def _set_once(section: dict, name: str, value, source: str) -> None:
    """A key given twice in one source (in its section and at the top, or as `embed-dim` and `embed_dim`) is an
    error: which one wins would depend on their order."""
    if name in section:
        raise LightFMPError(f"{source}: '{name}' is given twice ({shown(section[name])} and {shown(value)}); keep one")
    section[name] = value


def check_switches(**values) -> None:
    """Yes/no arguments given from Python (`force`, `quiet`, ...): True or False (a numpy bool too), never a value
    that is merely truthy ('no' would replace a run)."""
    for name, value in values.items():
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            raise LightFMPError(f"{name} {value!r}: must be True or False")


def check_one_rule(keep: int | None, threshold: float | None, closing_test: bool = False) -> None:
    """At most one keep rule: --keep K, --threshold T or (prune) --closing-test (none: the default rule, or the
    rule a run recorded)."""
    given = [f"--keep {keep}"] * (keep is not None) + [f"--threshold {threshold}"] * (threshold is not None) \
        + ["--closing-test"] * closing_test
    if len(given) > 1:
        raise LightFMPError(f"{' and '.join(given)}: give one keep rule, not {'both' if len(given) == 2 else 'several'}")


def check_no_rule_without_gates(cfg: "RunConfig") -> None:
    """--no-select trains every field without gates: a keep rule, a gate target or phase 3's epochs given with it would
    not apply, and the run's config would record what it never used."""
    if not cfg.train.no_select:
        return
    given = [f"{flag(k)} {v:g}" if isinstance(v, float) else f"{flag(k)} {v}"
             for k, v in (("keep", cfg.prune.keep), ("threshold", cfg.prune.threshold),
                          ("target_k", cfg.train.target_k)) if v is not None]
    if given:
        raise LightFMPError(f"--no-select and {given[0]}: --no-select trains every field without gates, so no keep "
                            f"rule applies; give one or the other")
    if cfg.prune.continue_epochs is not None:
        raise LightFMPError(f"--no-select and {flag('continue_epochs')} {cfg.prune.continue_epochs}: --no-select has "
                            f"no phase 3 to continue (its epochs are --epochs); give one or the other")


_FIELDS = {f.name: f for tp in SECTIONS.values() for f in dataclasses.fields(tp)}
_SECTION_OF = {f.name: s for s, tp in SECTIONS.items() for f in dataclasses.fields(tp)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unoptional(hint):
    """`int | None` -> int; other hints (`list[int]`, `str`) as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)][0]
    return hint


def _sequence(value):
    """A sequence given from Python as a numpy array, a pandas Index or Series, or an iterator: as a list (its text,
    "Index(['a', 'b'])", would name no column); a numpy scalar as the Python value it holds."""
    if isinstance(value, (str, bytes, dict, set, frozenset, list, tuple)):
        return value
    if hasattr(value, "tolist") and getattr(value, "ndim", 1) == 0:  # a numpy scalar (np.True_, np.int64(8))
        return value.item()
    if hasattr(value, "tolist") and getattr(value, "ndim", 1) == 1:
        return value.tolist()
    if isinstance(value, collections.abc.Iterator):
        return list(value)
    return value


def _items(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [s.strip() for s in str(value).split(",") if s.strip()]


# Text options whose value is a comma-separated list ('field:N,...'): YAML may give them as a list of its items.
TEXT_LISTS = ("hash_buckets",)


def _what(tp) -> str:
    """How an error names a field's type."""
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return f"a list of {ITEMS.get(item, item.__name__)} (or comma-separated text)"
    return "text" if tp is str else "a finite number" if tp is float else tp.__name__


ITEMS = {int: "integers", float: "numbers", str: "text items"}


def _where(key: str, source: str) -> str:
    """How an error names where a value came from: its flag, or its file and key."""
    return flag(key) if source == COMMAND_LINE else f"{source}: '{key}'"


def _shape_checked(value, tp, key, source):
    """`value`, unless YAML gave a mapping, or a list, where the field takes neither (`label: [a, b]`,
    `categorical: {a: 1}`, `hidden: [256, [1]]`): a one-line error naming the key and the type expected."""
    unordered = (dict, set, frozenset)  # from Python: a set's text is no list of names ("{'a'}")
    if typing.get_origin(tp) is list:
        nested = [v for v in value if isinstance(v, (*unordered, list, tuple))] if isinstance(value, (list, tuple)) \
            else []
        bad = value if isinstance(value, unordered) else nested[0] if nested else None
    elif key in TEXT_LISTS and isinstance(value, (list, tuple)):  # a list of its items, each one scalar
        bad = next((v for v in value if isinstance(v, (*unordered, list, tuple))), None)
    else:
        bad = value if isinstance(value, unordered) or isinstance(value, (list, tuple)) else None
    if bad is None:
        return value
    shape = "a mapping" if isinstance(bad, dict) else "a set" if isinstance(bad, (set, frozenset)) else "a list"
    got = f"{shape} {shown(bad)}" if bad is value else f"the item {shown(bad)}, {shape}"
    raise LightFMPError(f"{_where(key, source)} must be {_what(tp)}, got {got}")


# options whose value names a column or a path: an empty one is a mistake (an unset shell variable), never "none"
NAMES = {"data": "give its path", "label": "give the label column", "schema": "give its path, or leave it out",
         "time_column": "give a column, or leave it out", "group_column": "give a column, or leave it out",
         "shard_dir": "give a folder, or leave it out"}


def _coerce(value, hint, key, source):
    """YAML reads `lr: 1e-3` as a string and users write `epochs: '3'` or `hidden: 256,128`: convert to the
    field's type, or fail with the key named."""
    if value is None:
        return None
    tp = _unoptional(hint)
    value = _sequence(value)
    value = _shape_checked(value, tp, key, source)
    if not isinstance(value, (str, os.PathLike, numbers.Number, list, tuple, datetime.date, datetime.time)):
        # from Python, an object whose text is no value (YAML's dates are values: `positive: 2024-01-01`)
        what = " (a path: lightfmp reads its data from a file)" if key == "data" else ""
        raise LightFMPError(f"{_where(key, source)} must be {_what(tp)}{what}, got {shown_type(value)}")
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        parts = value.split(",") if isinstance(value, str) and value.strip() else []
        # ('tags:,' is a ',' separator the comma-separated text cannot carry: its own check says so)
        if any(not p.strip() and not (i and parts[i - 1].rstrip().endswith(":")) for i, p in enumerate(parts)):
            raise LightFMPError(f"{_where(key, source)} {shown(value)}: an empty item between commas (or at an end); remove the extra "
                                f"comma")
        return [_coerce(v, item, key, source) for v in _items(value)]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, str):
                return int(value.strip())
            try:  # a float, Decimal or Fraction only where it is whole (int() would round 2.5 down)
                whole = int(value)
            except (OverflowError, ValueError):
                raise ValueError(value) from None
            if not isinstance(value, numbers.Integral) and value != whole:
                raise ValueError(value)
            return whole
        if tp is float:
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
            return out
        if tp is str:
            if isinstance(value, bool) or isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value):
                # YAML reads yes / no / on / off unquoted as booleans: the text the user meant is lost
                if source in ("config", COMMAND_LINE):  # from Python (`RunConfig.of`), not a file
                    raise LightFMPError(f"{_where(key, source)} must be text, got the boolean {shown(value)}")
                raise LightFMPError(f"{source}: '{key}' must be text, got the YAML boolean {shown(value)}; quote the "
                                    f"value ('yes')")
            text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
            if key in NAMES and not text.strip():  # `--time-column "$COL"` with COL unset: not "none"
                raise LightFMPError(f"{_where(key, source)} {shown(value)}: empty; {NAMES[key]}")
            return text
    except (TypeError, ValueError):
        what = _what(tp)
        if source == COMMAND_LINE:
            raise LightFMPError(f"{flag(key)} {shown(value)}: must be {what}") from None
        raise LightFMPError(f"{source}: '{key}' must be {what}, got {shown(value)}") from None
    return value


def check_range(name: str, value, low=None, high=None, *, open_low: bool = False, open_high: bool = False):
    """`value` if it is a finite number in [low, high] (open ends excluded); otherwise a one-line error naming the
    flag `name` (e.g. '--threads'). Every numeric option is checked here, those of the config and the others."""
    if isinstance(value, float) and not math.isfinite(value):
        raise LightFMPError(f"{name} {value}: must be a finite number")
    lo = f"{'>' if open_low else '>='} {low}" if low is not None else None
    hi = f"{'<' if open_high else '<='} {high}" if high is not None else None
    if low is not None and (value < low or open_low and value == low):  # the upper end too, where one would type it
        shown = hi if hi and not (isinstance(high, int) and high >= 2 ** 63 - 1) else None  # not int64's limit
        raise LightFMPError(f"{name} {value}: must be {lo}" + (f" and {shown}" if shown else ""))
    if high is not None and (value > high or open_high and value == high):
        raise LightFMPError(f"{name} {value}: must be {hi}" + (f" and {lo}" if lo else ""))
    return value


def comma_ints(text, flag: str, low: int, high: int, example: str, repeats: str = "refuse") -> list[int]:
    """Comma-separated integers in [low, high] (--seeds, --batch-sizes, --clients): digits 0-9 only (int() would
    also read '1_0' as 10, and other scripts' digits), no empty item; a repeat refused (`repeats="refuse"`: a mean
    over seeds would count it once, quietly) or dropped ("drop"). Anything else is one line naming `flag`."""
    items = [s.strip() for s in str(text).split(",")]
    if not all(re.fullmatch(r"[+-]?[0-9]+", s) for s in items):
        raise LightFMPError(f"{flag} {text!r}: expected comma-separated integers like {example}")
    for s in items:  # by its digits: int() refuses a text of over 4,300 digits
        if len(s.lstrip("+-").lstrip("0")) > len(str(high)) or not low <= int(s) <= high:
            raise LightFMPError(f"{flag} {s if len(s) <= 24 else s[:21] + '...'}: must be >= {low:,} and <= {high:,}")
    values = [int(s) for s in items]
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None and repeats == "refuse":
        raise LightFMPError(f"{flag} {text!r}: {twice} is given twice; give each once")
    return list(dict.fromkeys(values))


def _checked(value, f: dataclasses.Field):
    """The value, if it lies in the field's range / choices; otherwise a one-line error naming the flag."""
    m = f.metadata
    if value is None:
        return None
    for v in value if isinstance(value, list) else [value]:
        if m["choices"] is not None and v not in m["choices"]:
            raise LightFMPError(f"{flag(f.name)} {v!r}: expected one of {', '.join(m['choices'])}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        high = MAX_INT if m["high"] is None and isinstance(v, int) else m["high"]
        check_range(flag(f.name), v, m["low"], high, open_low=m["open_low"], open_high=m["open_high"])
    return value


def _named(source: str, check, *args):
    """check(*args), its error naming `source` too when the value came from a file."""
    try:
        return check(*args)
    except LightFMPError as e:
        if source == COMMAND_LINE:
            raise
        raise LightFMPError(f"{source}: {e}") from None


def fields_of(section: str | None = None) -> list[dataclasses.Field]:
    """The flag fields of one section (or of all), in order."""
    return [f for s, tp in SECTIONS.items() if section in (None, s) for f in dataclasses.fields(tp)]


class _RepeatedKey(yaml.YAMLError):
    def __init__(self, key, lines: tuple[int, int]):
        super().__init__(key, lines)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (a plain loader keeps the last silently, so
    which value counts would depend on their order)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a merge (<<) may be overridden; other keys that are not scalars are refused by YAML
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise _RepeatedKey(key, (seen[key], line))
            seen[key] = line
        return super().construct_mapping(node, deep)


def _safe_load(text: str):
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        d = _safe_load(p.read_text())
    except FileNotFoundError:
        raise LightFMPError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__  # "Too many levels of ..."
        raise LightFMPError(f"{p}: cannot read it ({why})") from None
    except _RepeatedKey as e:
        raise LightFMPError(f"{p}: key '{e.key}' is given twice (lines {e.lines[0]} and {e.lines[1]}); keep one") \
            from None
    except yaml.YAMLError as e:
        raise LightFMPError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise LightFMPError(f"{p}: a config file must be a mapping of option: value")
    return d


def config_keys(doc: dict | None) -> list[str]:
    """The option names a config mapping sets, flat or in sections ({'train': {'lr': ...}} gives 'lr'; '-' read as
    '_'), as `RunConfig.from_dict` reads them."""
    out = set()
    for k, v in (doc or {}).items():
        key = str(k).replace("-", "_")
        if key in SECTIONS and isinstance(v, (dict, type(None))):
            out |= {str(kk).replace("-", "_") for kk in (v or {})}
        else:
            out.add(key)
    return sorted(out)


KIND_OPTIONS = ("categorical", "numeric", "multi_hot", "ignore")


def _columns(option: str, items) -> set[str]:
    """The columns a kind option's items may name (a multi-hot item 'genres:|' names 'genres'; with no column list
    here, 'u:tags:;' may name 'u', 'u:tags' or the whole item, as `vocab.parse_multi_hot` reads it against the
    data's columns)."""
    out = set()
    for i in (_items(items) if items is not None else []):
        parts = str(i).split(":") if option == "multi_hot" else [str(i)]
        out |= {":".join(parts[:n]).strip() for n in range(1, len(parts) + 1)}
    return out


def resolve(flags: dict, config_file: str | None = None) -> RunConfig:
    """Built-in defaults < --config YAML < flags given on the command line (None means not given); a keep rule
    given as a flag replaces the file's (--keep clears its threshold, --threshold its keep; --target-k K, the keep
    the file's target K implied, as a run's config.yaml records it; --no-select every rule and target of the file's,
    and its continue_epochs), and a column's kind given as a flag replaces the kind the file gives it (--numeric a
    takes a out of the file's categorical)."""
    base = RunConfig.from_dict(load_yaml(config_file), source=str(config_file)) if config_file else RunConfig()
    merged = base.flat()
    given = {k: v for k, v in flags.items() if v is not None}
    for rule, other in (("keep", "threshold"), ("threshold", "keep")):
        if rule in given and other not in given:
            merged[other] = None
    implied = merged["target_k"] is not None and merged["keep"] == merged["target_k"]
    if "target_k" in given and implied and "keep" not in given and "threshold" not in given:
        merged["keep"] = given["target_k"]
    if given.get("no_select"):
        for rule in ("keep", "threshold", "target_k", "continue_epochs"):
            if rule not in given:
                merged[rule] = None
    for option in KIND_OPTIONS:  # a column a flag gives a kind leaves the file's other kind lists
        named = _columns(option, given.get(option))
        for other in (o for o in KIND_OPTIONS if o != option and o not in given):
            merged[other] = [i for i in _items(merged[other]) if _columns(other, [i]).isdisjoint(named)]
    merged.update(given)
    cfg = RunConfig.from_dict(merged, source=COMMAND_LINE)
    check_no_rule_without_gates(cfg)  # what the user gives; a run read back keeps what it recorded
    return cfg

"""Every knob of a run, in one dataclass. CLI flags and --config YAML keys are generated from it, so they mirror
each other by construction (key `embed_dim` or `embed-dim` <-> flag `--embed-dim`)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import LightFMPError


def opt(default, help: str, group: str = "train"):
    return field(default=default, metadata={"help": help, "group": group})


@dataclass
class RunConfig:
    # data -----------------------------------------------------------------------------------------------------
    data: str | None = opt(None, "CSV or Parquet file of training data.", "data")
    label: str | None = opt(None, "Label column (0/1, booleans, or see --positive).", "data")
    schema: str | None = opt(None, "Feature schema JSON; without it kinds are inferred from the data.", "data")
    categorical: str | None = opt(None, "Comma-separated columns to treat as categorical.", "data")
    numeric: str | None = opt(None, "Comma-separated columns to treat as numeric (quantile-bucketized).", "data")
    multi_hot: str | None = opt(None, "Comma-separated multi-hot columns with separator, e.g. 'genres:|'.", "data")
    ignore: str | None = opt(None, "Comma-separated columns to leave out.", "data")
    positive: str | None = opt(None, "Label value that means 1 (e.g. 'click'); other values mean 0.", "data")
    time_column: str | None = opt(None, "Split by this column's order (oldest rows train) instead of randomly.",
                                  "data")
    split: str = opt("0.8,0.1,0.1", "Train,valid,test fractions.", "data")
    min_count: int = opt(2, "Values seen fewer times in the training rows map to the OOV id.", "data")
    num_buckets: int = opt(16, "Quantile buckets per numeric field.", "data")
    seed: int = opt(0, "Seed for the split, the subset, initialisation and batching.", "data")
    # streaming (issue 6): data larger than memory -------------------------------------------------------------
    stream: bool = opt(False, "Read the data in record batches into encoded shards on disk (bounded memory) "
                              "instead of loading it; implied by --format criteo|avazu.", "data")
    format: str = opt("auto", "Input format: auto (by suffix), csv, parquet, criteo (TSV: label, I1-I13, C1-C26, "
                              "no header) or avazu (CSV with header, label 'click').", "data")
    hash_buckets: str | None = opt(None, "Hashing trick: 'N' hashes every categorical field into N buckets, "
                                         "'field:N,...' only those fields.", "data")
    vocab_cap: int | None = opt(None, "Keep at most the N most frequent values per field; the rest map to OOV.",
                                "data")
    chunk_rows: int = opt(262144, "Rows per record batch read and per encoded shard (streaming).", "data")
    shard_dir: str | None = opt(None, "Cache of encoded shards (default: $LIGHTFMP_HOME/shards).", "data")
    in_memory_mb: int = opt(1024, "Training rows whose encoded ids fit in this many MB (e.g. the phase-1 subset) "
                                  "are read once into memory; larger sets stream from the shards every epoch.",
                            "data")
    # model ------------------------------------------------------------------------------------------------------
    backbone: str = opt("deepfm", "Backbone: mlp, deepfm, dcnv2 or widedeep.", "model")
    embed_dim: int = opt(16, "Embedding size per field.", "model")
    hidden: str = opt("256,128", "Hidden layer sizes of the MLP tower.", "model")
    cross_layers: int = opt(2, "Cross layers (dcnv2).", "model")
    dropout: float = opt(0.0, "Dropout in the MLP tower.", "model")
    # training ---------------------------------------------------------------------------------------------------
    batch_size: int = opt(512, "Rows per batch.")
    lr: float = opt(3e-3, "Adam learning rate of the backbone.")
    gate_lr: float = opt(0.1, "Adam learning rate of the gates' log_alpha.")
    l0_lambda: float = opt(0.003, "Weight of the expected-L0 penalty.")
    l0_warmup: float = opt(0.3, "Fraction of phase-1 steps over which the L0 weight ramps up from 0.")
    gate_holdout: float = opt(0.2, "Share of the phase-1 subset held out of weight updates; gate steps use it "
                                   "(0: gates and weights take one joint step).")
    target_k: int | None = opt(None, "Target-k mode: penalise |E[L0] - k| instead of E[L0]; prune keeps k.")
    subset: float = opt(0.1, "Fraction of training rows for phase 1 (gated pretraining).")
    pretrain_epochs: int = opt(5, "Epochs over the subset in phase 1.")
    epochs: int = opt(10, "Most epochs of full training for --no-select; the default for --continue-epochs.")
    patience: int = opt(1, "Stop full / continued training after this many epochs without a better validation "
                           "AUC (the best epoch is kept); 0 disables early stopping.")
    sparse_embeddings: bool = opt(False, "Sparse gradients for the embedding tables, updated by a lazy Adam "
                                         "(SparseAdam): a step touches only the rows its batch read, much faster "
                                         "for large tables; untouched rows' moments are not decayed.")
    no_select: bool = opt(False, "Train the same backbone on all fields without gates, for comparison.")
    device: str = opt("auto", "cpu, cuda or auto.")
    # pruning and continued training -----------------------------------------------------------------------------
    keep: int | None = opt(None, "Keep the top K fields by gate (default: those with gate >= --threshold).",
                           "prune")
    threshold: float = opt(0.5, "Drop fields whose deterministic gate is below this.", "prune")
    continue_epochs: int | None = opt(None, "Epochs of phase 3 on the rows phase 1 did not use (0 skips it).",
                                      "prune")

    def hidden_sizes(self) -> list[int]:
        try:
            return [int(v) for v in str(self.hidden).split(",") if v.strip()]
        except ValueError:
            raise LightFMPError(f"--hidden {self.hidden!r}: expected comma-separated integers like 256,128") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        hints = typing.get_type_hints(cls)
        clean = {}
        for k, v in (d or {}).items():
            key = str(k).replace("-", "_")
            if key not in hints:
                raise LightFMPError(f"{source}: unknown key '{k}'")
            clean[key] = _coerce(v, hints[key], k, source)
        return cls(**clean)


def _coerce(value, hint, key, source):
    """YAML reads `lr: 1e-3` as a string and users write `epochs: '3'`: convert to the field's type, or fail
    with the key named."""
    if value is None:
        return None
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    tp = base[0]
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
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value) if not isinstance(value, str) else int(value.strip())
        if tp is float:
            return float(value)
        if tp is str:
            return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    except (TypeError, ValueError):
        raise LightFMPError(f"{source}: '{key}' must be {tp.__name__}, got {value!r}") from None
    return value


def fields_of(group: str | None = None):
    return [f for f in dataclasses.fields(RunConfig) if group is None or f.metadata.get("group") == group]


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        d = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise LightFMPError(f"{p}: config file not found") from None
    except yaml.YAMLError as e:
        raise LightFMPError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise LightFMPError(f"{p}: a config file must be a mapping of option: value")
    return d


def resolve(flags: dict, config_file: str | None = None) -> RunConfig:
    """Built-in defaults < --config YAML < flags given on the command line (None means not given)."""
    merged = RunConfig.from_dict(load_yaml(config_file), source=str(config_file)).to_dict() if config_file else \
        RunConfig().to_dict()
    merged.update({k: v for k, v in flags.items() if v is not None})
    return RunConfig.from_dict(merged)

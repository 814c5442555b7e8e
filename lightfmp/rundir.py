"""The run directory contract: what lives in RUN/ and how it is read back.

RUN/run.json        format marker, format version, state (pretrained | complete), select flag, data hash, split
                    rule, and the keys config.yaml was written with
RUN/config.yaml     the resolved configuration (usable again as --config)
RUN/schema.json     the fitted feature schema of all fields
RUN/pretrain.safetensors  phase-1 gated model (select runs)
RUN/pretrain_optimizer.safetensors  phase 1's weight-optimizer state (select runs; phase 3 continues it)
RUN/model.safetensors     the final model over the kept fields
RUN/metrics.json    fields, gates, valid/test metrics, params, per-phase rows and seconds
RUN/history.json    per-epoch training history of each phase
RUN/.lightfmp-written.json  what lightfmp wrote into RUN (lightfmp.io.WRITTEN): --force replaces nothing else

Every reader goes through `open_run`, which checks each of these files and names the first bad one in a one-line
LightFMPError (`RUN/metrics.json: missing key 'fields'`), and through the `Run` methods.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import NAMES, RunConfig, config_keys, load_yaml
from .errors import LightFMPError
from .io import (RUN_FORMAT, atomic_path, file_sha256, os_errors_of, path_of, read_json, write_json_atomic,
                 write_text_atomic)
from .models import CTRModel, build_model
from .moments import FILE as OPTIMIZER_FILE
from .moments import MOMENTS, flatten, unflatten
from .schema import FeatureSchema
from .splits import SplitRule

FORMAT = RUN_FORMAT
FORMAT_VERSION = 3  # 2: run.json records the split rule and the schema's sha256; 3: and always every tensor
                    # file's, metrics.json's and history.json's sha256, and (with gates) the stored optimizer (older
                    # runs may lack them)
STATES = ("pretrained", "complete")
GATES_PLOT = "gates.png"  # `lightfmp inspect`'s chart inside the run (dropped when the run is pruned again)

# What readers take from metrics.json: from every run, from runs with gates (inspect, prune), and by state.
METRICS_KEYS = ("fields.all",)
GATED_KEYS = ("gates", "params.before", "phases.pretrain.seconds")
STATE_KEYS = {"pretrained": ("log_alpha",), "complete": ("fields.kept",)}


@dataclass
class Run:
    path: Path
    info: dict
    config: RunConfig
    schema: FeatureSchema

    @property
    def state(self) -> str:
        return self.info["state"]

    @property
    def select(self) -> bool:
        return bool(self.info["select"])

    def metrics(self, _recorded: bool = True) -> dict:
        """RUN/metrics.json, checked to hold every key the readers of a run in this state use, and to be the file
        the run wrote (its sha256 in run.json; `open_run` checks that last, after the files it names)."""
        p = self.path / "metrics.json"
        m = read_json(p)
        keys = METRICS_KEYS + (GATED_KEYS if self.select else ()) + STATE_KEYS[self.state]
        for key in keys:
            _require(m, key, p)
        names = _names(m["fields"]["all"], p, "fields.all")
        if sorted(names) != sorted(self.schema.names):
            raise LightFMPError(f"{p}: fields.all does not match the fields of {self.path / 'schema.json'}")
        if self.state == "complete":
            kept = _names(m["fields"]["kept"], p, "fields.kept")
            if not kept or not set(kept) <= set(names):
                raise LightFMPError(f"{p}: fields.kept must be a non-empty list of fields from fields.all")
            if "dropped" in m["fields"]:  # the export's contract lists them
                _names(m["fields"]["dropped"], p, "fields.dropped")
        for split in ("valid", "test"):  # what export checks its model against, and inspect shows
            _check_scores(m, split, p)
        for table, ok, what in (("gates", _unit, "a number from 0 to 1"),
                                ("open_probability", _unit, "a number from 0 to 1"),
                                ("log_alpha", math.isfinite, "a finite number")):
            if table in keys or table in m:
                for n in names:  # a field name may hold dots: looked up as one key
                    if not isinstance(m[table], dict) or n not in m[table]:
                        raise LightFMPError(f"{p}: missing key '{n}' in '{table}'")
                    if not _number(m[table][n]) or not ok(m[table][n]):
                        raise LightFMPError(f"{p}: {table}['{n}'] must be {what}, not {m[table][n]!r}")
        selection = m.get("selection", {})
        scores = selection.get("scores", {}) if isinstance(selection, dict) else None
        if not isinstance(scores, dict):
            raise LightFMPError(f"{p}: 'selection' must be an object with 'scores' by field")
        bad = next((n for n, v in scores.items() if v is not None and not (_number(v) and math.isfinite(v))), None)
        if bad is not None:
            raise LightFMPError(f"{p}: selection.scores['{bad}'] must be a number or null, not {scores[bad]!r}")
        if _recorded:
            _check_recorded(p, self.info, METRICS_KEY, "what it says of the gates and the kept fields is not the "
                                                       "run's")
        return m

    def history(self) -> dict:
        """RUN/history.json: the per-epoch history of each phase (required for runs with gates, which prune
        extends), each phase it holds an object (one whose key is missing says nothing: an older run)."""
        path = self.path / "history.json"
        expected = self.info.get(HISTORY_KEY)
        if expected is None and self.info["format_version"] >= 3:  # every run of this format records it
            raise LightFMPError(f"{self.path / 'run.json'}: missing key '{HISTORY_KEY}' (edited?)")
        if path.is_file():
            _check_recorded(path, self.info, HISTORY_KEY, "what it says of the run's phases is not the run's")
        h = read_json(path)
        for phase in ("pretrain", "continue"):
            if phase in h and not isinstance(h[phase], dict):
                raise LightFMPError(f"{path}: '{phase}' must be an object, not {type(h[phase]).__name__}")
        return h

    def gates_alone(self) -> list[float] | None:
        """Where phase 1's gates alone ended after its best epoch (history.json `pretrain.gates_alone.log_alpha`),
        one log_alpha per field; None where phase 1 did not record it."""
        path = self.path / "history.json"
        alone = self.history().get("pretrain", {}).get("gates_alone")
        if alone is None:
            return None
        values, n = alone.get("log_alpha") if isinstance(alone, dict) else None, len(self.schema.names)
        if not (isinstance(values, list) and len(values) == n
                and all(_number(v) and math.isfinite(v) for v in values)):
            raise LightFMPError(f"{path}: pretrain.gates_alone.log_alpha must be a list of {n} finite numbers, one "
                                f"per field (edited?)")
        return values

    def load_pretrained(self) -> CTRModel:
        model = _to_load(self.config.model.backbone, self.schema, self.config.model, gated=True)
        return _load_weights(model, self.path / "pretrain.safetensors", self.info)

    def load_optimizer_state(self, model: CTRModel) -> dict | None:
        """Phase 1's weight-optimizer state by parameter name (lightfmp.moments), checked against `model` (the
        phase-1 model); None for a run written before it was stored (phase 3 then starts a fresh optimizer)."""
        if not self.info.get("optimizer_state"):
            return None
        path = self.path / OPTIMIZER_FILE
        _check_unchanged(path, self.info)
        try:
            state = unflatten(load_file(str(path)))
        except Exception as e:
            raise LightFMPError(f"{path}: cannot read it ({str(e).splitlines()[0]})") from None
        params = dict(model.named_parameters())
        for name, st in state.items():
            if name not in params or set(st) != {"step", *MOMENTS} or any(
                    st[k].shape != params[name].shape for k in MOMENTS):
                raise LightFMPError(f"{path}: its state for '{name}' does not fit the run's phase-1 model")
        return state

    def load_final(self) -> tuple[CTRModel, FeatureSchema]:
        """The finished model, ready to score (eval mode: no dropout), and the schema of the fields it reads."""
        if self.state != "complete":
            raise LightFMPError(f"{self.path}: run is in state '{self.state}'; finish it with `lightfmp prune "
                                f"{self.path}` first")
        kept = self.metrics()["fields"]["kept"]
        schema = self.schema.subset(kept)
        model = _to_load(self.config.model.backbone, schema, self.config.model, gated=False)
        return _load_weights(model, self.path / "model.safetensors", self.info).eval(), schema


def _to_load(backbone: str, schema: FeatureSchema, cfg, gated: bool) -> CTRModel:
    """The run's model, built to load its weights into. Building draws the initial weights from torch's generator:
    the caller's generator state is kept as it was (a notebook that seeds, loads a run and samples reproduces)."""
    with torch.random.fork_rng(devices=[]):
        return build_model(backbone, schema, cfg, gated=gated)


def _check_scores(m: dict, split: str, path: Path) -> None:
    """metrics.json's `split` entry, where present: an object whose auc (0-1) and logloss (>= 0) are numbers, or null
    (a split with one label has no AUC)."""
    if split not in m:
        return
    if not isinstance(m[split], dict):
        raise LightFMPError(f"{path}: '{split}' must be an object with auc and logloss, not {type(m[split]).__name__}")
    for key, ok in (("auc", lambda v: 0 <= v <= 1), ("logloss", lambda v: v >= 0)):
        v = m[split].get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v)):
            span = "between 0 and 1" if key == "auc" else ">= 0"
            raise LightFMPError(f"{path}: {split}.{key} must be a number {span} or null, not {v!r}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unit(v) -> bool:
    return 0 <= v <= 1


def _require(doc: dict, key: str, path: Path) -> None:
    """`key` ("a.b.c") is in `doc`; else an error naming the first missing part ('a' or 'a.b' ...)."""
    node, parts = doc, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise LightFMPError(f"{path}: missing key '{'.'.join(parts[:i + 1])}'")
        node = node[part]


def _names(value, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LightFMPError(f"{path}: '{key}' must be a list of field names")
    return value


def _check_recorded(path: Path, info: dict, key: str, meaning: str) -> None:
    """`path` still has the sha256 run.json recorded under `key` when the run was opened (`info`; None recorded:
    nothing to check). Where it does not but run.json records its new one now, the run was rewritten since it was
    opened (a prune): said so, not called an edit."""
    expected = info.get(key)
    if expected is None or file_sha256(path) == expected:
        return
    _refuse_if_rewritten(path, key)
    raise LightFMPError(f"{path}: changed since the run wrote it (sha256 differs from run.json), so {meaning}: "
                        f"restore it or train again")


def _refuse_if_rewritten(path: Path, key: str) -> None:
    """Where run.json, read again now, records `path`'s present sha256 under `key` (a str, or a dict by file name),
    the run was rewritten since it was opened: said so."""
    try:
        now = read_json(path.parent / "run.json").get(key)
    except (LightFMPError, AttributeError):
        return
    now = now.get(path.name) if isinstance(now, dict) else now
    if isinstance(now, str) and now == file_sha256(path):
        raise LightFMPError(f"{path.parent}: rewritten since it was opened (by prune?); open the run again "
                            f"(lightfmp.open_run) to read it")


def _check_unchanged(path: Path, info: dict) -> None:
    """A tensor file whose sha256 run.json records (runs written before it did record none) must still have it: an
    edit that leaves the file readable (a flipped byte in a weight) would otherwise go on unseen."""
    if not path.is_file():  # removed after the run was opened
        raise LightFMPError(f"{path}: missing")
    expected = info.get(WEIGHTS_KEY, {}).get(path.name)
    if expected is None and info["format_version"] >= 3:  # every run of this format records each one it wrote
        raise LightFMPError(f"{path.parent / 'run.json'}: records no sha256 for {path.name} under '{WEIGHTS_KEY}' "
                            f"(edited?)")
    if expected is not None and file_sha256(path) != expected:
        _refuse_if_rewritten(path, WEIGHTS_KEY)
        raise LightFMPError(f"{path}: changed since the run wrote it (sha256 differs from run.json); restore it or "
                            f"train again")


def _load_weights(model: CTRModel, path: Path, info: dict) -> CTRModel:
    """The weights at `path` (checked by `open_run`, and against run.json's sha256 where it has one) into `model`."""
    _check_unchanged(path, info)
    try:
        state = load_file(str(path))
    except Exception as e:
        raise LightFMPError(f"{path}: cannot read checkpoint ({str(e).splitlines()[0]})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LightFMPError(f"{path}: checkpoint does not match the run's config "
                            f"({str(e).splitlines()[0]})") from None
    return model


WEIGHTS_KEY = "weights_sha256"  # run.json: each tensor file's sha256, as written
METRICS_KEY = "metrics_sha256"  # run.json: metrics.json's sha256, as written
HISTORY_KEY = "history_sha256"  # run.json: history.json's sha256, as written (prune reads phase 1's gates from it)
RECORD_KEY = "lightfmp"  # the header's one metadata entry: JSON with sorted keys (the file's bytes reproduce)


def _check_weights(path: Path) -> dict[str, str]:
    """The file is there and its safetensors header is whole (the tensors are read only when needed); returns the
    record lightfmp wrote into the header ({} for files written before it did)."""
    if not path.is_file():
        raise LightFMPError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
            meta = fh.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise LightFMPError(f"{path}: cannot read it ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    if RECORD_KEY not in meta:
        return {}
    try:
        record = json.loads(meta[RECORD_KEY])
    except ValueError:
        record = None
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()) \
            or "fields" in record and not _names_json(record["fields"]):
        raise LightFMPError(f"{path}: its header's '{RECORD_KEY}' record is not what lightfmp writes (edited?)")
    return record


def _names_json(text: str) -> bool:
    """Whether `text` is a JSON list of names."""
    try:
        names = json.loads(text)
    except ValueError:
        return False
    return isinstance(names, list) and all(isinstance(n, str) for n in names)


# config keys that may change after training without changing what the run is: where files live and how they are
# read (a moved data file's sha256 is checked), the device, and the keep rule and phase-3 epochs prune may be given
MAY_CHANGE = {"data.data", "data.schema", "data.shard_dir", "data.in_memory_mb", "data.chunk_rows", "data.stream",
              "train.device", "train.epochs", "prune.keep", "prune.threshold", "prune.continue_epochs"}


def trained_record(info: dict, config: RunConfig) -> dict[str, str]:
    """What a weights file was trained with, as text for its header record: run.json's split rule and every config
    key but those that MAY_CHANGE. Every weights file of a run carries it, and `open_run` compares it with the files
    as they are: a hand edit of either file after training would go unnoticed otherwise (an edited seed or subset
    re-splits the rows, so that the phase-1 model's training rows are read as validation rows; an edited
    `positive` flips the labels), so it is refused instead."""
    record = {f"config.{section}.{key}": json.dumps(value) for section, keys in config.to_dict().items()
              for key, value in keys.items() if f"{section}.{key}" not in MAY_CHANGE}
    if config.train.init_seed == config.data.seed:  # the same run as without it (bit for bit): the same record
        record["config.train.init_seed"] = json.dumps(None)
    if "split" in info:
        record["run.split"] = json.dumps(info["split"], sort_keys=True)
    return record


def _fields_read(metrics: dict) -> dict[str, list[str]]:
    """The fields each weights file's model reads, by file name: the phase-1 model every field, the final model the
    kept ones (metrics.json)."""
    fields = metrics.get("fields", {})
    return {name: fields[key] for name, key in (("pretrain.safetensors", "all"), ("model.safetensors", "kept"))
            if key in fields}


def _check_fields(p: Path, said: list[str] | None, weights: Path, trained: dict[str, str]) -> None:
    """The fields metrics.json names for `weights` (`said`) are the ones it was trained on (in order): a list edited
    by hand would load another field's weights under a name of the same vocabulary size, or fail as a mismatched
    checkpoint."""
    was = json.loads(trained["fields"]) if "fields" in trained else None
    if was is None or said is None or said == was:
        return
    key = "fields.kept" if weights.name == "model.safetensors" else "fields.all"
    at = next((i for i, (a, b) in enumerate(zip(said, was)) if a != b), min(len(said), len(was)))
    what = f"field {at + 1} is {said[at]!r} where {weights.name} was trained on {was[at]!r}" \
        if at < min(len(said), len(was)) else f"it names {len(said)} fields where {weights.name} was trained on {len(was)}"
    raise LightFMPError(f"{p / 'metrics.json'}: {key}: {what} (edited?): restore it or train again")


def _check_trained(p: Path, now: dict[str, str], weights: Path, trained: dict[str, str]) -> None:
    """run.json and config.yaml still say (`now`: their `trained_record`) what `weights` was trained with
    (`trained`: its record)."""
    for key in sorted(set(now) & set(trained)):  # (a run.json without a split is refused as an older run's)
        if now[key] != trained[key]:
            where, name = ("run.json", "split") if key == "run.split" else ("config.yaml", key.split(".", 1)[1])
            raise LightFMPError(f"{p / where}: {name} is {now[key]}, but {weights.name} was trained with "
                                f"{trained[key]} (edited?); a run is read as it was trained: restore it or train again")


def _read_info(p: Path) -> dict:
    marker = p / "run.json"
    if not marker.exists():
        raise LightFMPError(f"{p}: not a lightfmp run (no run.json)")
    info = read_json(marker)
    if info.get("format") != FORMAT:
        raise LightFMPError(f"{p}: not a lightfmp run (run.json has no format '{FORMAT}')")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LightFMPError(f"{p}: run format version {version} is newer than this lightfmp reads "
                            f"({FORMAT_VERSION}); upgrade lightfmp")
    if info.get("state") not in STATES:
        raise LightFMPError(f"{marker}: 'state' must be one of {', '.join(STATES)}, not {info.get('state')!r}")
    if not isinstance(info.get("select"), bool) or (info["state"] == "pretrained" and not info["select"]):
        raise LightFMPError(f"{marker}: 'select' must be true or false (true for a pretrained run)")
    if "split" in info:
        SplitRule.from_dict(info["split"], str(marker))
    if not isinstance(info.get("config_keys", []), list):
        raise LightFMPError(f"{marker}: 'config_keys' must be a list")
    hashes = info.get(WEIGHTS_KEY, {})
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise LightFMPError(f"{marker}: '{WEIGHTS_KEY}' must map file names to sha256 texts (edited?)")
    for key in (METRICS_KEY, HISTORY_KEY):
        if not isinstance(info.get(key, ""), str):
            raise LightFMPError(f"{marker}: '{key}' must be a sha256 text (edited?)")
    # a run with gates of this format always stores phase 1's optimizer (prune would start a fresh one)
    if (OPTIMIZER_FILE in hashes or version >= 3 and info.get("select")) and info.get("optimizer_state") is not True:
        raise LightFMPError(f"{marker}: 'optimizer_state' is {json.dumps(info.get('optimizer_state'))}, but the run "
                            f"wrote {OPTIMIZER_FILE} (every run with gates of format 3 does) (edited?)")
    if version >= 3 and METRICS_KEY not in info:  # every run of this format records it: a removed key is an edit
        raise LightFMPError(f"{marker}: missing key '{METRICS_KEY}' (edited?)")
    return info


def _read_config(p: Path, info: dict) -> RunConfig:
    path = p / "config.yaml"
    doc = load_yaml(path)
    # the keys it was written with (run.json): a file cut short still parses, but lacks the last ones
    missing = [k for k in info.get("config_keys", []) if k not in config_keys(doc)]
    if missing:
        raise LightFMPError(f"{path}: missing key '{missing[0]}', which {p / 'run.json'} lists under config_keys "
                            f"(either file cut short or edited?)")
    return RunConfig.from_dict(_unset_empty_names(doc), source=str(path))


def _unset_empty_names(doc):
    """A run's recorded config as it meant it: an empty name or path (recorded by lightfmp before empty ones were
    refused) meant "not given"."""
    if not isinstance(doc, dict):
        return doc
    out = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            v = _unset_empty_names(v)
        elif str(k).replace("-", "_") in NAMES and isinstance(v, str) and not v.strip():
            v = None
        out[k] = v
    return out


def _read_schema(p: Path, info: dict) -> FeatureSchema:
    path = p / "schema.json"
    if "schema_sha256" not in info and info["format_version"] >= 2:  # every run of this format records it
        raise LightFMPError(f"{p / 'run.json'}: missing key 'schema_sha256' (edited?)")
    if "schema_sha256" in info and path.is_file() and file_sha256(path) != info["schema_sha256"]:
        raise LightFMPError(f"{path}: changed since the run wrote it (sha256 differs from run.json); the model's ids "
                            f"no longer match its vocabularies: train again")
    try:
        schema = FeatureSchema.load(path)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise LightFMPError(f"{path}: not a valid feature schema ({type(e).__name__}: {e})") from None
    unfitted = next((f for f in schema.fields if not f.fitted), None)  # a run's schema is the fitted one
    if unfitted is not None:
        what = "bucket boundaries" if unfitted.kind == "numeric" else "vocabulary"
        raise LightFMPError(f"{path}: field '{unfitted.name}' ({unfitted.kind}) has no {what}; a run's schema is "
                            f"fitted (edited by hand?)")
    return schema


def open_run(path: str | Path) -> Run:
    """The run at `path`, with every file of it checked (weights: only their header) before anything is done."""
    p = path_of(path, "the run directory")
    if not p.exists():
        raise LightFMPError(f"{p}: no such run directory")
    if not p.is_dir():
        raise LightFMPError(f"{p}: not a directory")
    info = _read_info(p)
    run = Run(p, info, _read_config(p, info), _read_schema(p, info))
    metrics = run.metrics(_recorded=False)  # its sha256 last, below
    weights = []
    if run.select:  # what prune reads: the phase-1 weights, and the history it extends
        run.history()
        weights.append(p / "pretrain.safetensors")
        if info.get("optimizer_state"):  # runs written before it was stored have none
            _check_weights(p / OPTIMIZER_FILE)
    if run.state == "complete":
        weights.append(p / "model.safetensors")
    now, fields = trained_record(info, run.config), _fields_read(metrics)
    for path in weights:  # runs written before the weights carried these records have none to compare
        meta = _check_weights(path)
        try:
            _check_trained(p, now, path, meta)
            _check_fields(p, fields.get(path.name), path, meta)
        except LightFMPError:  # where the weights file is what changed (another run's copied in), it is named
            _check_unchanged(path, info)
            raise
    # last, so that the checks above name what an edit broke where they can: metrics.json is the file the run wrote
    # (its sha256 in run.json; runs written before it was recorded have none)
    _check_recorded(p / "metrics.json", info, METRICS_KEY, "what it says of the gates and the kept fields is not "
                                                            "the run's")
    return run


def write_run_files(d: Path, *, info: dict, config: RunConfig | None = None, schema: FeatureSchema | None = None,
                    metrics: dict | None = None, history: dict | None = None,
                    checkpoints: dict[str, torch.nn.Module] | None = None,
                    optimizer: dict | None = None) -> None:
    """Write the given parts into directory `d`, each atomically; run.json last, so its state never runs ahead.
    `optimizer`: phase 1's weight-optimizer state by parameter name (lightfmp.moments)."""
    if config is not None:
        doc = config.to_dict()
        write_text_atomic(d / "config.yaml", yaml.safe_dump(doc, sort_keys=False))
        info = {**info, "config_keys": config_keys(doc)}
    if schema is not None:
        schema.save(d / "schema.json")
        info = {**info, "schema_sha256": file_sha256(d / "schema.json")}
    record = trained_record(info, config) if config is not None else {}
    fields = _fields_read(metrics) if metrics is not None else {}
    hashes = dict(info.get(WEIGHTS_KEY, {}))  # the tensor files' sha256, checked where they are loaded
    for name, model in (checkpoints or {}).items():
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        meta = {**record, **({"fields": json.dumps(fields[name])} if name in fields else {})}
        with atomic_path(d / name) as tmp, os_errors_of(tmp):
            save_file(state, str(tmp), metadata={RECORD_KEY: json.dumps(meta, sort_keys=True)} if meta else None)
        hashes[name] = file_sha256(d / name)
    if optimizer is not None:
        with atomic_path(d / OPTIMIZER_FILE) as tmp, os_errors_of(tmp):
            save_file(flatten(optimizer), str(tmp))
        hashes[OPTIMIZER_FILE] = file_sha256(d / OPTIMIZER_FILE)
    if hashes:
        info = {**info, WEIGHTS_KEY: hashes}
    if history is not None:
        write_json_atomic(d / "history.json", history)
        info = {**info, HISTORY_KEY: file_sha256(d / "history.json")}
    if metrics is not None:
        write_json_atomic(d / "metrics.json", metrics)
        info = {**info, METRICS_KEY: file_sha256(d / "metrics.json")}
    write_json_atomic(d / "run.json", {"format": FORMAT, "format_version": FORMAT_VERSION, **info})

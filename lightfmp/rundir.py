"""The run directory contract: what lives in RUN/ and how it is read back.

RUN/run.json        format marker, format version, state (pretrained | complete), select flag, data hash
RUN/config.yaml     the resolved configuration (usable again as --config)
RUN/schema.json     the fitted feature schema of all fields
RUN/pretrain.safetensors  phase-1 gated model (select runs)
RUN/model.safetensors     the final model over the kept fields
RUN/metrics.json    fields, gates, valid/test metrics, params, per-phase rows and seconds
RUN/history.json    per-epoch training history of each phase
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import RunConfig
from .errors import LightFMPError
from .io import atomic_path, write_json_atomic, write_text_atomic
from .models import CTRModel, ModelConfig, build_model
from .schema import FeatureSchema

FORMAT = "lightfmp-run"
FORMAT_VERSION = 1


def model_config(cfg: RunConfig) -> ModelConfig:
    return ModelConfig(embed_dim=cfg.embed_dim, hidden=cfg.hidden_sizes(), cross_layers=cfg.cross_layers,
                       dropout=cfg.dropout)


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

    def metrics(self) -> dict:
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def load_pretrained(self) -> CTRModel:
        model = build_model(self.config.backbone, self.schema, model_config(self.config), gated=True)
        return _load_weights(model, self.path / "pretrain.safetensors")

    def load_final(self) -> tuple[CTRModel, FeatureSchema]:
        """The finished model and the schema of the fields it reads."""
        if self.state != "complete":
            raise LightFMPError(f"{self.path}: run is in state '{self.state}'; finish it with `lightfmp prune "
                                f"{self.path}` first")
        kept = self.metrics()["fields"]["kept"]
        schema = self.schema.subset(kept)
        model = build_model(self.config.backbone, schema, model_config(self.config), gated=False)
        return _load_weights(model, self.path / "model.safetensors"), schema


def _load_weights(model: CTRModel, path: Path) -> CTRModel:
    if not path.exists():
        raise LightFMPError(f"{path}: checkpoint missing")
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


def open_run(path: str | Path) -> Run:
    p = Path(path)
    marker = p / "run.json"
    if not p.is_dir():
        raise LightFMPError(f"{p}: not a directory")
    if not marker.exists():
        raise LightFMPError(f"{p}: not a lightfmp run (no run.json)")
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        raise LightFMPError(f"{marker}: not valid JSON") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LightFMPError(f"{p}: not a lightfmp run (run.json has no format '{FORMAT}')")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LightFMPError(f"{p}: run format version {version} is newer than this lightfmp reads "
                            f"({FORMAT_VERSION}); upgrade lightfmp")
    cfg_file = p / "config.yaml"
    try:
        cfg = RunConfig.from_dict(yaml.safe_load(cfg_file.read_text()), source=str(cfg_file))
    except FileNotFoundError:
        raise LightFMPError(f"{cfg_file}: missing") from None
    return Run(p, info, cfg, FeatureSchema.load(p / "schema.json"))


def write_run_files(d: Path, *, info: dict, config: RunConfig | None = None, schema: FeatureSchema | None = None,
                    metrics: dict | None = None, history: dict | None = None,
                    checkpoints: dict[str, torch.nn.Module] | None = None) -> None:
    """Write the given parts into directory `d`, each atomically; run.json last, so its state never runs ahead."""
    if config is not None:
        write_text_atomic(d / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    if schema is not None:
        schema.save(d / "schema.json")
    for name, model in (checkpoints or {}).items():
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(d / name) as tmp:
            save_file(state, str(tmp))
    if history is not None:
        write_json_atomic(d / "history.json", history)
    if metrics is not None:
        write_json_atomic(d / "metrics.json", metrics)
    write_json_atomic(d / "run.json", {"format": FORMAT, "format_version": FORMAT_VERSION, **info})

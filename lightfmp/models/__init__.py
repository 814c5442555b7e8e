"""Backbones, each one short file over the shared gated embedding front end."""
from .base import CTRModel, ModelConfig, training_on
from .dcnv2 import DCNv2
from .deepfm import DeepFM
from .mlp import MLP
from .widedeep import WideDeep
from ..errors import LightFMPError
from ..gates import Gate

BACKBONES = {m.name: m for m in (MLP, DeepFM, DCNv2, WideDeep)}


def build_model(backbone: str, schema, cfg: ModelConfig, gated: bool = False, gate: Gate | None = None,
                trains_on: str | None = None) -> CTRModel:
    """The backbone over `schema`; `gate` (or `gated=True`: a HardConcreteGate) scales the field embeddings.
    `trains_on`: the device a new model is about to train on: its parts are refused before they are built where this
    machine's memory cannot hold what that needs (`check_fits`); None for a model loaded from a run."""
    try:
        cls = BACKBONES[backbone.lower()]
    except KeyError:
        raise LightFMPError(f"unknown backbone '{backbone}' (choose from {', '.join(BACKBONES)})") from None
    with training_on(trains_on):
        return cls(schema, cfg, gated=gated, gate=gate)


__all__ = ["BACKBONES", "CTRModel", "ModelConfig", "build_model", "MLP", "DeepFM", "DCNv2", "WideDeep"]

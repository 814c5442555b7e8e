"""lightfmp: Light-FMP feature and model pruning for CTR models (Wang, Bui & Ning 2026).

The names below load on first use (`lightfmp.RunConfig` imports its module then): `import lightfmp` alone does not
load torch, so that the `lightfmp` command can answer a stop while torch loads (`lightfmp.cli.entry`)."""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {"RunConfig": "config", "LightFMPError": "errors", "HardConcreteGate": "gates", "BACKBONES": "models",
            "build_model": "models", "prune": "pipeline", "run": "pipeline", "train": "pipeline",
            "open_run": "rundir", "FeatureSchema": "schema", "Field": "schema"}
__all__ = list(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # what static tools read; at run time the names load on first use
    from .config import RunConfig
    from .errors import LightFMPError
    from .gates import HardConcreteGate
    from .models import BACKBONES, build_model
    from .pipeline import prune, run, train
    from .rundir import open_run
    from .schema import FeatureSchema, Field


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # a submodule: `lightfmp.io` as the package always gave
    else:
        raise AttributeError(f"module 'lightfmp' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

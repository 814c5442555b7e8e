"""lightfmp: Light-FMP feature and model pruning for CTR models (Wang, Bui & Ning 2026)."""
from .config import RunConfig
from .errors import LightFMPError
from .gates import HardConcreteGate
from .models import BACKBONES, build_model
from .pipeline import prune, run, train
from .rundir import open_run
from .schema import FeatureSchema, Field

__version__ = "0.1.0"
__all__ = ["RunConfig", "LightFMPError", "HardConcreteGate", "BACKBONES", "build_model", "prune", "run", "train",
           "open_run", "FeatureSchema", "Field", "__version__"]

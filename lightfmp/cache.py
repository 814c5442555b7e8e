"""Where lightfmp keeps what it downloads and builds: the one place that reads $LIGHTFMP_HOME."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home", "ENV_VAR"]

ENV_VAR = "LIGHTFMP_HOME"


def cache_home(home: str | Path | None = None) -> Path:
    """``home`` when given, else $LIGHTFMP_HOME, else ~/.cache/lightfmp (``~`` expanded; not created)."""
    base = home or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "lightfmp"
    return Path(base).expanduser()

"""Where lightfmp keeps what it downloads and builds: the one place that reads $LIGHTFMP_HOME; and the progress
lines of those downloads."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import LightFMPError
from .io import check_name_length

__all__ = ["cache_home", "say", "ENV_VAR"]

ENV_VAR = "LIGHTFMP_HOME"


def cache_home(home: str | Path | None = None) -> Path:
    """``home`` when given, else $LIGHTFMP_HOME, else ~/.cache/lightfmp (``~`` expanded; not created; a name no
    file system takes is refused here, before any work)."""
    if home is not None and not isinstance(home, (str, os.PathLike)):
        raise LightFMPError(f"home {home!r}: a folder path (str or Path), got {type(home).__name__}")
    base = home or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "lightfmp"
    path = Path(base).expanduser()
    check_name_length(path)
    return path


def say(quiet: bool, msg: str) -> None:
    """A progress line of a download or preparation step on stderr (none when `quiet`)."""
    if not quiet:
        print(f"[lightfmp] {msg}", file=sys.stderr)

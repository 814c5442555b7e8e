"""Where lightfmp keeps what it downloads and builds: the one place that reads $LIGHTFMP_HOME; and the progress
lines of those downloads."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import LightFMPError
from .io import check_name_length, check_outside, lightfmp_kind

__all__ = ["cache_home", "say", "ENV_VAR"]

ENV_VAR = "LIGHTFMP_HOME"


def cache_home(home: str | Path | None = None) -> Path:
    """``home`` when given, else $LIGHTFMP_HOME, else ~/.cache/lightfmp (``~`` expanded; not created; a name no
    file system takes, and a run's or an export's folder or a place inside one, which --force or prune replaces
    whole, are refused here, before any work)."""
    if home is not None and not isinstance(home, (str, os.PathLike)):
        raise LightFMPError(f"home {home!r}: a folder path (str or Path), got {type(home).__name__}")
    base = home or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "lightfmp"
    path = Path(base).expanduser()
    check_name_length(path)
    kind = lightfmp_kind(path)
    if kind is not None:
        raise LightFMPError(f"{path}: is a lightfmp {kind}; the cache (--home, ${ENV_VAR}) needs a directory of its "
                            f"own")
    check_outside(path)
    return path


def say(quiet: bool, msg: str) -> None:
    """A progress line of a download or preparation step on stderr (none when `quiet`)."""
    if not quiet:
        print(f"[lightfmp] {msg}", file=sys.stderr)

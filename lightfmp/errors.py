"""One exception type for user-facing problems: the CLI prints its message on one line and exits non-zero."""


class LightFMPError(Exception):
    """Bad input or a run directory in the wrong state. The message names the file, column or value."""

"""One exception type for user-facing problems: the CLI prints its message on one line and exits non-zero."""
import reprlib


# what a command stopped before it saved anything says to do (`lightfmp.checkpoint.resume_hint`, `lightfmp.cli.entry`)
START_AGAIN = "rerun the same command to start again"


class LightFMPError(Exception):
    """Bad input or a run directory in the wrong state. The message names the file, column or value."""


class DataGone(LightFMPError):
    """A run's rows cannot be read again: its data file is gone, or differs from the one it was trained on, or the
    run recorded no split rule (an older lightfmp's). What needs the rows refuses; an export validates on sampled
    rows instead."""


class CellError(LightFMPError):
    """A cell that breaks a column's rule; `row` is its position in the column that was read (a batch's row), so
    whoever knows where the batch starts in the file can name the row and line."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


_SHORT = reprlib.Repr()  # (attributes, not arguments: Python 3.11's Repr takes none)
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 80, 80, 40
_SHORT.maxdict = _SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = 6


def shown(value) -> str:
    """A value as an error quotes it: its repr, cut short (a YAML file's aliases can expand a 400-byte file into a
    value of megabytes)."""
    text = _SHORT.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def shown_type(value) -> str:
    """How an error names what a Python caller passed where another type goes: 'None', 'a value of type int'."""
    return "None" if value is None else f"a value of type {type(value).__name__}"


def first_repeat(items):
    """The first item that comes a second time (None if none does): what an error about a name given twice names."""
    seen = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None

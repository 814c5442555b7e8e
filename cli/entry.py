"""The `lightfmp` command's entry point: the commands (`lightfmp.cli.app`) and the process around them.

Loading the commands takes seconds (torch, triton): a stop meanwhile (Ctrl-C, SIGTERM) ends the command with the one
line and exit code a stopped command gives (`lightfmp.cli.common.friendly`), not a traceback through the imports. So
the handlers are in place before the commands' modules load (where the signal was not ignored by whoever started the
process), and they stay until a command starts (typer builds the commands and reads the arguments first), which gives
the signals back to its own handling (`lightfmp.cli.common.friendly`). Once a command is over, stop signals are
ignored: Python puts back the default handlers as it shuts down, before torch's teardown, and a stop then would kill
the process over finished work; and a stopped command ends at once, without the teardown (which, after a stop inside
an extension's import, prints tens of lines of leak reports)."""
import contextlib
import os
import signal
import sys
import threading

from lightfmp.errors import START_AGAIN

_CODES = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}
_DEFAULTS = (signal.SIG_DFL, signal.default_int_handler)


def _stopped_while_loading(signum, frame):
    word, code = _CODES[signum]
    os.write(2, f"{word}: {START_AGAIN}\n".encode())
    os._exit(code)


# (only the main thread may set them: imported from another, the commands load as any module does)
_BEFORE = {s: signal.signal(s, _stopped_while_loading) for s in _CODES if signal.getsignal(s) in _DEFAULTS} \
    if threading.current_thread() is threading.main_thread() else {}

from .app import main as _commands  # noqa: E402  (after the handlers: this import is the seconds they cover)
from .common import hold_loading_handlers  # noqa: E402


def main() -> None:
    hold_loading_handlers(_BEFORE)
    code = None
    try:
        _commands()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        raise
    finally:
        if code is not None:  # the command is over (done, refused or stopped); an unexpected exception goes on
            if threading.current_thread() is threading.main_thread():
                for s in _CODES:
                    signal.signal(s, signal.SIG_IGN)
            if code in (130, 143):
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)


if __name__ == "__main__":
    main()

"""The `lightfmp` command's entry point. Loading the commands takes seconds (torch, triton); a stop meanwhile (Ctrl-C,
SIGTERM) ends the command with the one line and exit code a stopped command gives (`lightfmp.cli.common.friendly`),
not a traceback. So the handlers are in place before the commands' modules load, and `main` gives the signals back
to the commands' own handling."""
import os
import signal
import threading

from lightfmp.errors import START_AGAIN

_CODES = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


def _stopped_while_loading(signum, frame):
    word, code = _CODES[signum]
    os.write(2, f"{word}: {START_AGAIN}\n".encode())
    os._exit(code)


# (only the main thread may set them: imported from another, the commands load as any module does)
_BEFORE = {s: signal.signal(s, _stopped_while_loading) for s in _CODES} \
    if threading.current_thread() is threading.main_thread() else {}

from .app import main as _main  # noqa: E402  (after the handlers: this import is the seconds they cover)


def main() -> None:
    for s, handler in _BEFORE.items():
        signal.signal(s, handler)
    _main()


if __name__ == "__main__":
    main()

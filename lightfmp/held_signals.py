"""Stop signals held over a step that must not be cut short (a checkpoint's pair of files, a scratch directory's
removal): recorded while it runs, acted on once it is done."""
from __future__ import annotations

import signal
import threading


class HeldSignals:
    """From `start()` to the end of the block, SIGINT and SIGTERM are recorded instead of acted on; the first one
    recorded is raised again at the end, into the handlers that were there before. Main thread only (where Python
    runs its signal handlers); elsewhere it holds nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.saved, self.caught = {}, []

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.saved[sig] = signal.signal(sig, lambda signum, frame: self.caught.append(signum))

    def __enter__(self) -> "HeldSignals":
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        if self.caught and exc[0] is None:
            signal.raise_signal(self.caught[0])


__all__ = ["HeldSignals"]

"""Progress bars for epochs and batches (rich), or nothing at all with --quiet."""
from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=True, quiet=quiet)

    def log(self, msg: str) -> None:
        self.console.print(msg)

    @contextmanager
    def bars(self, label: str, epochs: int, batches: int):
        """Yields (next_batch, next_epoch, set_status) callbacks driving an epoch bar and a batch bar."""
        if self.quiet:
            yield (lambda: None), (lambda: None), (lambda text: None)
            return
        cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[status]}")]
        with Progress(*cols, console=self.console, transient=True) as prog:
            ep = prog.add_task(f"{label} epochs", total=epochs, status="")
            bt = prog.add_task("batches", total=batches, status="")

            def next_epoch():
                prog.advance(ep)
                prog.reset(bt, total=batches)

            yield (lambda: prog.advance(bt)), next_epoch, (lambda text: prog.update(ep, status=text))

"""Progress on stderr: bars for epochs and batches on a terminal, one plain line per step otherwise (a log file, a
pipe, a CI job), or nothing at all with --quiet."""
from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    def __init__(self, quiet: bool = False, warnings: bool = True):
        """`quiet`: no progress or log lines; `warnings`: whether `warn` speaks (with `quiet` too; not on a
        torchrun rank but the first, where every rank would say the same)."""
        self.quiet, self.warnings = quiet, warnings
        self.console = Console(stderr=True, quiet=quiet)

    def log(self, msg: str) -> None:
        # soft_wrap: a long line stays one line in a log file (no wrapping at the console width)
        self.console.print(msg, highlight=False, soft_wrap=True)

    def warn(self, msg: str) -> None:
        """A warning: printed with --quiet too (it says the result may not be what was asked for)."""
        if self.warnings:
            Console(stderr=True).print(f"[yellow]warning[/]: {msg}", highlight=False, soft_wrap=True)

    @contextmanager
    def bars(self, label: str, epochs: int, batches: int):
        """Yields (next_batch, next_epoch, set_status) callbacks driving an epoch bar and a batch bar; when stderr
        is not a terminal, a line when the phase starts, one per finished epoch (with the status) and one at the
        end instead."""
        if self.quiet:
            yield (lambda: None), (lambda: None), (lambda text: None)
            return
        if not self.console.is_terminal:
            with self._lines(label, epochs, batches) as callbacks:
                yield callbacks
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

    @contextmanager
    def _lines(self, label: str, epochs: int, batches: int):
        self.log(f"{label}: start, {counted(epochs, 'epoch')} of {counted(batches, 'batch', 'batches')}")
        t0 = time.perf_counter()
        seen = {"epoch": 0, "status": ""}

        def next_epoch():
            seen["epoch"] += 1
            status, seen["status"] = seen["status"], ""
            self.log(f"{label}: epoch {seen['epoch']}/{epochs} {status or 'restored from the checkpoint'} "
                     f"({time.perf_counter() - t0:.1f} s)")

        def set_status(text: str):
            seen["status"] = text

        yield (lambda: None), next_epoch, set_status
        self.log(f"{label}: done in {time.perf_counter() - t0:.1f} s")


def counted(n: int, one: str, many: str | None = None) -> str:
    """"1 field", "2,000 fields": `n` and its noun (`many`: the plural, default `one` + "s")."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"

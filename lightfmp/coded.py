"""A batch coded once: what the fit pass keeps so that the encode pass does not read and parse the file again.

    Coded         one batch: per field the column's `Tokens` (categorical and multi-hot: codes into the batch's
                  distinct texts) or its float64 values (numeric), and the batch's labels
    CodedStore    the coded batches of a file, in order: held in memory, or (streaming) written to a scratch
                  directory on disk one batch at a time and read back one at a time, so memory stays flat

The fit pass has to find each batch's distinct values anyway (to count them); the encode pass then only maps
those distinct values to ids (vocabulary look-up or hash) and gathers them by the codes. When the fit pass does
not run (the schema is given fitted, or its fit was cached), the encode pass reads the file and codes each batch
itself, with the same code (`FeatureSchema.code`).

On disk, batch i is i.codes (raw int32 [token fields, rows]), i.numbers (raw float64 [numeric fields, rows]),
i.labels.npy (float32), i.values.arrow (one record batch of distinct texts per token field, Arrow IPC) and
i.fields.json (the fields in file order, the row count, and the numeric fields whose column did not parse, with
the message the encode pass raises for them).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NoReturn

import numpy as np
import pyarrow as pa

from .encoding import Tokens
from .errors import CellError, LightFMPError
from .held_signals import HeldSignals
from .io import make_dirs, os_errors_of
from .scratch import Claim


@dataclass
class Unparsed:
    """A numeric column of a batch that does not parse: the error the encode pass raises, and (while the batch is in
    memory) the column itself, so the fit can parse its training rows alone."""
    error: str
    column: object = None
    row: int | None = None  # the first bad cell's row in the batch, where known

    def fail(self) -> NoReturn:
        raise CellError(self.error, self.row) if self.row is not None else LightFMPError(self.error)


@dataclass
class Coded:
    """One batch, coded: field name -> Tokens (categorical, multi-hot), float64 array (numeric) or Unparsed."""
    rows: int
    fields: dict[str, Tokens | np.ndarray | Unparsed]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.rows


class CodedStore:
    """The coded batches of a file, in order: in memory (`root` None) or in a scratch directory under `root`,
    removed by `close()` (use as a context manager); claimed (`lightfmp.scratch`), so that one a killed process left
    there is removed by the next streamed run (`lightfmp.dataset.load_dataset`)."""

    def __init__(self, root: Path | None = None):
        self._held: list[Coded] = []
        self._root, self._dir, self._claim = root, None, None
        self._made: list[Path] = []  # directories above the scratch one that this store created
        self.count = 0

    def __enter__(self) -> "CodedStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the batches: the scratch directory goes, and so do the directories made for it if now empty. A stop
        (Ctrl-C, SIGTERM) meanwhile takes effect once it is gone: cut short, its rest stayed until the next streamed
        run on that shard home."""
        self._held = []
        with HeldSignals() as held:
            held.start()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            if self._claim is not None:
                self._claim.close()
                self._claim = None
            for d in reversed(self._made):
                try:
                    d.rmdir()
                except OSError:  # not empty: the shards or a cached fit went there
                    break
            self._made = []

    def add(self, coded: Coded) -> None:
        if self._root is None:
            self._held.append(Coded(coded.rows, {k: Unparsed(v.error, row=v.row) if isinstance(v, Unparsed) else v
                                                 for k, v in coded.fields.items()}, coded.labels))
        else:
            if self._dir is None:  # made on the first batch, so a file that cannot be read leaves nothing
                self._made = [d for d in [self._root, *self._root.parents][::-1] if not d.exists()]
                make_dirs(self._root)
                self._dir = Path(tempfile.mkdtemp(prefix=".coded-", suffix=".tmp", dir=self._root))
                with os_errors_of(self._dir):
                    self._claim = Claim(self._dir)
            _save(self._dir / f"{self.count:06d}", coded)
        self.count += 1

    def __iter__(self) -> Iterator[Coded]:
        if self._root is None:
            yield from self._held
            return
        for i in range(self.count):
            yield _load(self._dir / f"{i:06d}")


def _save(stem: Path, coded: Coded) -> None:
    with os_errors_of(stem.parent):
        _write(stem, coded)


def _write(stem: Path, coded: Coded) -> None:
    names = list(coded.fields)
    toks = [n for n in names if isinstance(coded.fields[n], Tokens)]
    nums = [n for n in names if n not in toks]
    n = coded.rows
    with open(f"{stem}.codes", "wb") as fh:  # raw, field after field (no copy into one array first)
        for k in toks:
            np.ascontiguousarray(coded.fields[k].codes, dtype=np.int32).tofile(fh)
    with open(f"{stem}.numbers", "wb") as fh:
        for k in nums:
            v = coded.fields[k]
            np.ascontiguousarray(np.full(n, np.nan) if isinstance(v, Unparsed) else v, dtype=np.float64).tofile(fh)
    np.save(f"{stem}.labels.npy", np.zeros(0, np.float32) if coded.labels is None else coded.labels,
            allow_pickle=False)
    schema = pa.schema([("v", pa.string())])
    with pa.OSFile(f"{stem}.values.arrow", "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for k in toks:
            writer.write_batch(pa.record_batch([coded.fields[k].values], schema=schema))
    errors = {k: [v.error, v.row] for k, v in coded.fields.items() if isinstance(v, Unparsed)}
    Path(f"{stem}.fields.json").write_text(json.dumps({"tokens": toks, "numbers": nums, "errors": errors,
                                                        "rows": n, "labels": coded.labels is not None}))


def _load(stem: Path) -> Coded:
    try:
        meta = json.loads(Path(f"{stem}.fields.json").read_text())
        n = int(meta["rows"])
        codes = np.fromfile(f"{stem}.codes", dtype=np.int32).reshape(len(meta["tokens"]), n)
        numbers = np.fromfile(f"{stem}.numbers", dtype=np.float64).reshape(len(meta["numbers"]), n)
        labels = np.load(f"{stem}.labels.npy")
        with pa.OSFile(f"{stem}.values.arrow") as src:  # read into memory: the arrays outlive the file
            reader = pa.ipc.open_file(src)
            values = [reader.get_batch(j).column(0) for j in range(reader.num_record_batches)]
    except (OSError, ValueError, KeyError, pa.ArrowInvalid) as e:
        raise LightFMPError(f"{stem}: coded batch unreadable ({type(e).__name__}); the scratch directory was "
                            f"changed while lightfmp ran") from None
    fields: dict = {k: Tokens(codes[j], values[j]) for j, k in enumerate(meta["tokens"])}
    fields.update({k: numbers[j] for j, k in enumerate(meta["numbers"])})
    fields.update({k: Unparsed(msg, row=row) for k, (msg, row) in meta["errors"].items()})
    return Coded(int(meta["rows"]), fields, labels if meta["labels"] else None)


__all__ = ["Coded", "CodedStore", "Unparsed"]

"""The one label parser: a batch's label column -> float32 0/1, with errors that name the file row (and line).

Labels are 0/1 (also written 1.0 / 0.0) or booleans, or, with --positive VALUE, that value is 1 and any other 0.
`LabelCounts` gathers the values seen over all batches so a degenerate label (one class in the training rows,
or a --positive value no row has) is refused with the counts, not trained on.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from .errors import LightFMPError
from .formats import line_of
from .schema import cell_strings

TRUE = frozenset({"1", "1.0", "true", "True", "TRUE"})
FALSE = frozenset({"0", "0.0", "false", "False", "FALSE"})


def parse_labels(df: pd.DataFrame, label: str, positive: str | None, source: str, start: int = 0,
                 fmt: str = "parquet") -> np.ndarray:
    """0/1 labels of a batch whose first row is global row `start` of the file."""
    if label not in df.columns:
        raise LightFMPError(f"{source}: label column '{label}' not found (columns: {', '.join(df.columns)})")
    col = df[label]
    text = cell_strings(col)
    missing = col.isna().to_numpy()
    if positive is not None:
        pos, bad = (text == str(positive)).to_numpy(), missing
    else:
        pos = text.isin(TRUE).to_numpy()
        bad = missing | ~(pos | text.isin(FALSE).to_numpy())
    if bad.any():
        i = int(np.argmax(bad))
        line = line_of(fmt, start + i)
        where = f"row {start + i}" + (f" (line {line})" if line is not None else "")
        if missing[i]:
            raise LightFMPError(f"{source}: label column '{label}' has a missing value at {where}")
        raise LightFMPError(f"{source}: label column '{label}' is not binary: value {text.iloc[i]!r} at {where} "
                            f"(labels must be 0/1 or booleans, or pass --positive VALUE)")
    return pos.astype(np.float32)


class LabelCounts:
    """Raw label values of the training rows (up to a few distinct ones) and their 0/1 classes."""

    def __init__(self, label: str, positive: str | None):
        self.label, self.positive = label, positive
        self.values: Counter = Counter()
        self.classes = np.zeros(2, dtype=np.int64)

    def add(self, df: pd.DataFrame, y: np.ndarray) -> None:
        if len(self.values) < 20:
            self.values.update(cell_strings(df[self.label]).dropna().value_counts().to_dict())
        self.classes += np.bincount(y.astype(np.int64), minlength=2)[:2]

    def check(self, source: str) -> None:
        """Refuse training rows of one class."""
        if self.classes.min() > 0:
            return
        seen = ", ".join(f"{v!r}: {n}" for v, n in self.values.most_common(8))
        if self.positive is not None and self.classes[1] == 0:
            raise LightFMPError(f"{source}: --positive {self.positive!r} matches no training row of label column "
                                f"'{self.label}' (values seen: {seen})")
        only = "1 (positive)" if self.classes[0] == 0 else "0 (negative)"
        raise LightFMPError(f"{source}: every training row of label column '{self.label}' is {only}; a model "
                            f"needs both classes (values seen: {seen})")

"""The one label parser: a batch's label column -> float32 0/1, with errors that name the file row (and line).

Labels are 0/1 (also written 1.0 / 0.0) or booleans, or, with --positive VALUE, that value (as text, or as the same
number: 1.0 for --positive 1) is 1 and any other 0. A missing label (an empty cell, null, or a missing number's
spelling such as NA: `encoding.MISSING_TEXT`) is refused either way.
`LabelCounts` gathers the values seen over all batches so a degenerate label (one class in the training rows,
or a --positive value no row has) is refused with the counts, not trained on.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .encoding import MISSING_TEXT, column, column_names, missing, tokens
from .errors import LightFMPError
from .formats import line_of

TRUE = frozenset({"1", "1.0", "true", "True", "TRUE"})
FALSE = frozenset({"0", "0.0", "false", "False", "FALSE"})


def _is_positive(value: str, positive: str) -> bool:
    """`value` is the --positive value: the same text, the same number (`1.0` and `1` for --positive 1), or the
    same boolean in any case (a Parquet boolean reads 'True'; --positive true means it)."""
    if value == positive or value in ("True", "False") and value.lower() == positive.strip().lower():
        return True
    try:
        return float(value) == float(positive)
    except ValueError:
        return False


def check_label_column(columns: list[str], label: str, source: str, flag: bool = True) -> None:
    """The label is one of the data's columns: the one message wherever a file is checked (`flag`: the name came
    from --label, not from a format's fixed label or a schema file)."""
    if label in columns:
        return
    named = "--label " if flag else "label column "
    one = len(columns) == 1 and any(sep in columns[0] for sep in ",;\t|")  # a header read as one name
    hint = "; its header reads as one column: is --format right for it?" if one else ""
    raise LightFMPError(f"{source}: {named}'{label}' is not one of its columns ({', '.join(columns)}){hint}")


def parse_labels(data, label: str, positive: str | None, source: str, start: int = 0,
                 fmt: str = "parquet") -> np.ndarray:
    """0/1 labels of a batch (record batch or DataFrame) whose first row is global row `start` of the file. Each
    distinct value of the column is judged once."""
    check_label_column(column_names(data), label, source, flag=False)
    col = column(data, label)
    t = tokens(col)
    texts = t.values.to_pylist()
    # 'NA', 'null': missing, as in a number, unless it is the --positive value itself
    spelled = np.array([v.strip() in MISSING_TEXT and not (positive is not None and _is_positive(v, str(positive)))
                        for v in texts] + [False])
    absent = missing(col) | spelled[t.codes]
    # per distinct text, then a last entry for a cell with no text (code -1)
    if positive is not None:
        pos_v = np.array([_is_positive(v, str(positive)) for v in texts] + [False])
        # ' yes' or 'Yes' beside --positive yes: meant as it, most likely, yet read as 0 by an exact rule: refused
        # (where no value matches it exactly, the counts say so at the end, listing the values)
        bad_v = np.array([bool(pos_v.any()) and not p and v.strip().casefold() == str(positive).strip().casefold()
                          for v, p in zip(texts, pos_v)] + [False])
    else:
        pos_v = np.array([v in TRUE for v in texts] + [False])
        bad_v = ~(pos_v | np.array([v in FALSE for v in texts] + [False]))
    pos, bad = pos_v[t.codes], absent | bad_v[t.codes]
    if bad.any():
        i = int(np.argmax(bad))
        line = line_of(fmt, start + i, source)
        where = f"row {start + i}" + (f" (line {line})" if line is not None else "")
        text = texts[t.codes[i]] if t.codes[i] >= 0 else None
        if absent[i]:
            spelling = f" ({text!r})" if text is not None else ""
            raise LightFMPError(f"{source}: label column '{label}' has a missing value{spelling} at {where}")
        if positive is not None:
            raise LightFMPError(f"{source}: label column '{label}' holds {text!r} at {where}, which differs from "
                                f"--positive {str(positive)!r} only in case or spaces; clean the column, or give "
                                f"the value as written")
        raise LightFMPError(f"{source}: label column '{label}' is not binary: value {text!r} at {where} "
                            f"(labels must be 0/1 or booleans, or pass --positive VALUE)")
    return pos.astype(np.float32)


class LabelCounts:
    """Raw label values of the training rows (up to a few distinct ones) and their 0/1 classes."""

    def __init__(self, label: str, positive: str | None):
        self.label, self.positive = label, positive
        self.values: Counter = Counter()
        self.classes = np.zeros(2, dtype=np.int64)

    def add(self, data, y: np.ndarray, train: np.ndarray | None = None) -> None:
        """Count the label values and classes of a batch's rows (only those where `train` is true, when given)."""
        if len(self.values) < 20:
            t = tokens(column(data, self.label))
            counts = t.counts(train)
            order = np.argsort(-counts, kind="stable")  # most frequent first, as value_counts lists them
            texts = t.values.to_pylist()
            self.values.update({texts[k]: int(counts[k]) for k in order if counts[k]})
        y = y if train is None else y[train]
        self.classes += np.bincount(y.astype(np.int64), minlength=2)[:2]

    def check(self, source: str) -> None:
        """Refuse training rows of one class."""
        if self.classes.min() > 0:
            return
        if not self.classes.sum():
            raise LightFMPError(f"{source}: the training split holds no rows; give it a larger share in --split")
        seen = ", ".join(f"{v!r}: {n}" for v, n in self.values.most_common(8))
        if self.positive is not None and self.classes[1] == 0:
            raise LightFMPError(f"{source}: --positive {self.positive!r} matches no training row of label column "
                                f"'{self.label}' (values seen: {seen})")
        only = "1 (positive)" if self.classes[0] == 0 else "0 (negative)"
        raise LightFMPError(f"{source}: every training row of label column '{self.label}' is {only}; a model "
                            f"needs both classes (values seen: {seen})")

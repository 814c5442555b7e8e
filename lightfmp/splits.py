"""The one split rule: which rows are train / valid / test, which training rows form the phase-1 subset, and which
subset rows are held out for the gate steps.

Every assignment is a function of a row's global number in the file (0 for the first data row; under the group
rule, the split of its group's value) and the seed, through `row_uniform` with a salt per use, so it does not depend
on how the file is chunked, which process reads it, or whether the encoded rows live in memory or in shards on
disk:

    hash   train if u < f_train, valid if u < f_train + f_valid, else test;  u = row_uniform(row, seed, SALT_SPLIT)
    group  the same with u = row_uniform(stable_hash(the --group-column value's text), seed, SALT_SPLIT): every row
           of one group (a user, a session, a protein) lands in one split, so no group is both trained and tested
           on; the fractions are those of the groups, not of the rows
    time   rows ranked by --time-column (oldest first): the first round(f_train * n) train, the next
           round(f_valid * n) valid, the rest test; rows of one time go to one split, the earlier where a boundary
           falls among them (runs recorded before that rule, without "time_ties", split ties by file order, and
           are read back so)

A run records its rule (`SplitRule.to_dict()`) in run.json as "split", and every later command reads it back.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from .errors import LightFMPError

SPLITS = ("train", "valid", "test")

# salts keep the uses of the row hash independent of each other
SALT_SPLIT = 1      # train / valid / test
SALT_SUBSET = 2     # phase-1 subset vs the rest of the training split
SALT_HOLDOUT = 3    # gate hold-out inside the phase-1 subset
SALT_SAMPLE = 4     # a smoke run's sample of the file (bench --quick)

_MASK = 0xFFFFFFFFFFFFFFFF


def row_uniform(rows: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A float64 in [0, 1) per global row number, from splitmix64(row, seed, salt): the same row always lands on
    the same side of any threshold, whichever process or chunk reads it."""
    with np.errstate(over="ignore"):
        x = np.asarray(rows, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64((seed * 0x632BE59BD9B4E019 + salt * 0xD6E8FEB86659FD93) & _MASK)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def parse_split(text) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1): three fractions, each > 0 (validation rows pick the best epoch),
    summing to 1."""
    shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in text) \
        if isinstance(text, (list, tuple)) else text  # as typed (the command line gives a list): 0.9,0.1
    usage = f"--split {shown!r}: expected three fractions train,valid,test, each > 0, summing to 1, such as 0.8,0.1,0.1"
    try:
        parts = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise LightFMPError(usage) from None
    if len(parts) != 3 or not all(np.isfinite(parts)) or min(parts) <= 0:
        raise LightFMPError(usage)
    if abs(sum(parts) - 1.0) > 1e-6:
        raise LightFMPError(f"{usage} (they sum to {sum(parts):g})")
    return parts[0], parts[1], parts[2]


def check_one_split(time_column: str | None, group_column: str | None) -> None:
    """One split rule: by time, by group, or (neither) by row hash."""
    if time_column and group_column:
        raise LightFMPError(f"--time-column {time_column} and --group-column {group_column}: give one split rule, "
                            f"not both")


@dataclass(frozen=True)
class SplitRule:
    fractions: tuple[float, float, float]
    seed: int
    time_column: str | None = None
    time_ties: str = "together"  # "together": rows of one time in one split; "rank": by file order (older runs)
    group_column: str | None = None

    def __post_init__(self):
        check_one_split(self.time_column, self.group_column)  # a config changed in place skips the flags' check

    @property
    def kind(self) -> str:
        return "time" if self.time_column else "group" if self.group_column else "hash"

    def to_dict(self) -> dict:
        return {"rule": self.kind, "fractions": list(self.fractions), "seed": int(self.seed),
                "time_column": self.time_column, **({"time_ties": self.time_ties} if self.time_column else {}),
                **({"group_column": self.group_column} if self.group_column else {}),
                "salts": {"split": SALT_SPLIT, "subset": SALT_SUBSET, "holdout": SALT_HOLDOUT}}

    @classmethod
    def from_dict(cls, d: dict, source: str = "run.json") -> "SplitRule":
        try:
            rule = cls(tuple(float(f) for f in d["fractions"]), int(d["seed"]), d.get("time_column"),
                       d.get("time_ties", "rank"),  # recorded before ties were kept together: as they were split
                       d.get("group_column"))
        except (KeyError, TypeError, ValueError):
            raise LightFMPError(f"{source}: 'split' is not a split rule (needs fractions and seed)") from None
        if rule.time_ties not in ("together", "rank"):
            raise LightFMPError(f"{source}: split.time_ties must be 'together' or 'rank', not {rule.time_ties!r}")
        return rule

    def hash_codes(self, rows: np.ndarray) -> np.ndarray:
        """0 train, 1 valid, 2 test per global row number (the hash rule), or per group value's hash (the group
        rule: `lightfmp.encoding.stable_hash` of its text)."""
        f = self.fractions
        u = row_uniform(rows, self.seed, SALT_SPLIT)
        return np.where(u < f[0], 0, np.where(u < f[0] + f[1], 1, 2)).astype(np.uint8)


DAY_MONTH = re.compile(r"\s*\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}(\D|$)")  # 05/03/2024: day and month, in an order
                                                                     # the value alone cannot tell


def _dates(values: pd.Series, column: str, source: str) -> pd.Series:
    """The values as UTC times (NaT where one is no date): in the format pandas infers from the first value, the
    rest each alone. Day-month dates (05/03/2024) are read in one order throughout: day first where some value's
    first part passes 12, month first otherwise (pandas' reading); a column where both parts pass 12 somewhere is
    refused. Where pandas infers no format from the first value (two-digit years, AM/PM: 05/03/24 10:30 PM) it
    would read every value alone, each in the order that fits it, so every value is read here, in one order."""
    present = values.notna()
    first = str(values[present].iloc[0]) if present.any() else ""
    if guess_datetime_format(first) is not None:
        t = pd.to_datetime(values, errors="coerce", utc=True)
        again = t.isna() & present
        if not again.any():  # one format read every value (month first, where day-month: pandas' reading)
            return t
    else:
        t, again = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]"), present
    text = values.astype(str)
    dm = present & text.str.match(DAY_MONTH)
    day_first = False
    if dm.any():
        parts = text[dm].str.extract(r"^\s*(\d{1,2})[/.-](\d{1,2})").astype(int)
        over = [text[dm][parts[i] > 12] for i in (0, 1)]
        if len(over[0]) and len(over[1]):
            raise LightFMPError(f"{source}: --time-column '{column}': {over[0].iloc[0]!r} reads day first and "
                                f"{over[1].iloc[0]!r} month first; write the dates as YYYY-MM-DD")
        day_first = bool(len(over[0]))
    if day_first and bool(dm[present].iloc[0]) and not again[present].all():  # the first format, read day first
        t = pd.to_datetime(values, errors="coerce", utc=True, dayfirst=True)
        again = t.isna() & present
    for rows, order in ((again & dm, day_first), (again & ~dm, False)):  # dates in another format than the first
        if rows.any():  # (2020-01-02 after 2020-01-01 10:00): each alone, day-month ones in the column's order
            t[rows] = pd.to_datetime(values[rows], errors="coerce", utc=True, format="mixed", dayfirst=order)
    return t


def time_codes(values: pd.Series, fractions: tuple[float, float, float], column: str, source: str,
               ties: str = "together") -> np.ndarray:
    """Split codes of every row of the file by the rank of its `column` value: oldest rows train. Values are
    numbers, or else dates (in any formats pandas reads; times with a zone are ordered on UTC, times without one
    are read as UTC); a value that is neither is an error naming it. `ties` "together": rows of one time go to one
    split; "rank": by their rank in the file (the rule runs recorded before it was kept)."""
    t = pd.to_numeric(values, errors="coerce")
    numbers = not t.isna().all()
    if not numbers:
        with warnings.catch_warnings():  # pandas warns when it has to guess a date format: a value's error follows
            warnings.simplefilter("ignore", UserWarning)
            # in the format pandas infers from the first value; times with a zone on one timeline (UTC), those
            # without read as UTC
            t = _dates(values, column, source)
    missing = values.isna().to_numpy()
    if missing.any():
        raise LightFMPError(f"{source}: --time-column '{column}' is missing at row {int(missing.argmax())}: every "
                            f"row needs a time to be ordered by")
    bad = t.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        if numbers and not pd.isna(pd.to_datetime(values.iloc[row:row + 1], errors="coerce", format="mixed").iloc[0]):
            first = int((~bad).argmax())
            raise LightFMPError(f"{source}: --time-column '{column}' mixes numbers and dates ({values.iloc[first]!r} "
                                f"at row {first}, {values.iloc[row]!r} at row {row}); write every time one way")
        raise LightFMPError(f"{source}: --time-column '{column}': value {values.iloc[row]!r} at row {row} is neither "
                            f"a number nor a date")
    times = t.to_numpy()
    n = len(times)
    n_train, n_valid = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    codes = np.full(n, 2, dtype=np.uint8)
    if ties == "rank":
        order = np.argsort(times, kind="stable")
        codes[order[:n_train]] = 0
        codes[order[n_train:n_train + n_valid]] = 1
        return codes
    ranked = np.sort(times, kind="stable")
    # rows of one time go to one split, the earlier where a boundary falls among them: a later split never holds a
    # row as old as one a former split trains or validates on
    if n_train + n_valid > 0:
        codes[times <= ranked[n_train + n_valid - 1]] = 1
    if n_train > 0:
        codes[times <= ranked[n_train - 1]] = 0
    return codes


def check_split_keys(time_column: str | None, group_column: str | None, columns: list[str], source: str) -> None:
    """The --time-column / --group-column named is a column of the data."""
    for flag, key in (("--time-column", time_column), ("--group-column", group_column)):
        if key is not None and key not in columns:
            raise LightFMPError(f"{source}: {flag} '{key}' not found (columns: {', '.join(columns)})")


def check_sizes(sizes: dict[str, int], rows: int, fractions, source: str, time_column: str | None = None,
                group_column: str | None = None) -> None:
    if rows < 10:
        raise LightFMPError(f"{source}: {rows} rows is too few to split into train/valid/test")
    for name in SPLITS:
        if not sizes[name]:
            ties = (f" (--time-column '{time_column}': rows of one time stay in one split, so times shared by many "
                    f"rows at a boundary move it; split by row hash without it, or by a finer time)"
                    if time_column else
                    f" (--group-column '{group_column}': each group goes to one split whole, so a few groups may "
                    f"leave one empty; split by row hash without it, or another --seed)" if group_column else "")
            raise LightFMPError(f"{source}: --split {','.join(f'{f:g}' for f in fractions)} leaves the {name} "
                                f"split empty with {rows} rows{ties}")

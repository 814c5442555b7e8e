"""Record-batch readers, the only way lightfmp reads a data file: a file is read as DataFrames of at most
`chunk_rows` rows, each with the global number of its first data row, so nothing ever holds the whole file.

    csv       header row; every cell read as text, an empty cell is missing
    parquet   a file, or a directory of part files read in sorted path order; columns keep their types
    criteo    Criteo display-ads TSV: no header, label, I1..I13, C1..C26; the integer columns get the usual
              log-square transform (v > 2 -> floor(ln(v)^2)) and, like the C columns, are categorical strings
    avazu     Avazu CSV with header: label `click`, `id` dropped, `hour` (YYMMDDHH) -> `hour_of_day`, `weekday`

Compressed text files (.gz, .bz2, ...) are decompressed on the fly by pyarrow.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import lzma
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .errors import LightFMPError
from .io import data_files

FORMATS = ("auto", "csv", "parquet", "criteo", "avazu")
PARQUET_SUFFIXES = (".parquet", ".pq")
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label"] + CRITEO_INT + CRITEO_CAT
AVAZU_LABEL = "click"
# a block must hold at least one whole row; 16 MiB leaves room for very wide rows
_BLOCK_BYTES = 16 << 20


def resolve_format(path: str | Path, fmt: str = "auto") -> str:
    """The concrete format of `path`: `fmt` unless it is 'auto', then by suffix."""
    fmt = (fmt or "auto").lower()
    if fmt not in FORMATS:
        raise LightFMPError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    p = Path(path)
    if p.is_dir():
        return "parquet"
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in PARQUET_SUFFIXES:
        return "parquet"
    if last in (".tsv", ".txt"):
        raise LightFMPError(f"{p}: cannot tell the format of a {last} file; pass --format criteo for Criteo TSV "
                            f"or --format csv")
    return "csv"


def fixed_label(fmt: str) -> str | None:
    """The label column a format fixes (the user need not pass --label), or None."""
    return {"criteo": "label", "avazu": AVAZU_LABEL}.get(fmt)


def all_categorical(fmt: str) -> bool:
    """Formats whose feature columns are all categorical (no kind inference)."""
    return fmt in ("criteo", "avazu")


def implies_stream(fmt: str) -> bool:
    return fmt in ("criteo", "avazu")


def line_of(fmt: str, row: int) -> int | None:
    """1-based file line of data row `row` for text formats (exact unless quoted cells span lines)."""
    if fmt == "parquet":
        return None
    return row + (1 if fmt == "criteo" else 2)


def check_source(path: str | Path | None, fmt: str = "auto") -> tuple[Path, str]:
    """(path, concrete format) of a data file that exists: the one place a data path is checked."""
    if not path:
        raise LightFMPError("no data: pass --data FILE (or `data:` in --config)")
    p = Path(path)
    if not p.exists():
        raise LightFMPError(f"{p}: file not found (looked for {p.resolve()})")
    return p, resolve_format(p, fmt)


def read_batches(path: str | Path, fmt: str, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, int]]:
    """(DataFrame of at most chunk_rows rows with a fresh RangeIndex, global row number of its first row)."""
    p, fmt = check_source(path, fmt)
    if fmt == "parquet":
        tables = _parquet_tables(p, chunk_rows)
    elif fmt == "criteo":
        tables = _csv_tables(p, chunk_rows, delimiter="\t", names=CRITEO_COLUMNS)
    else:
        tables = _csv_tables(p, chunk_rows)
    start = 0
    for table in tables:
        df = table.to_pandas()
        df.columns = [str(c) for c in df.columns]
        if fmt == "criteo":
            df = _criteo(df, p, start)
        elif fmt == "avazu":
            df = _avazu(df, p, start)
        yield df, start
        start += len(df)
    if start == 0:
        raise LightFMPError(f"{p}: no data rows")


# ---- pyarrow readers ----------------------------------------------------------------------------------------------
def _rebatch(batches, chunk_rows: int):
    """pyarrow record batches of any size -> tables of exactly chunk_rows rows (the last one may be shorter)."""
    import pyarrow as pa
    buf, n = [], 0
    for b in batches:
        if b.num_rows == 0:
            continue
        buf.append(b)
        n += b.num_rows
        while n >= chunk_rows:
            t = pa.Table.from_batches(buf)
            yield t.slice(0, chunk_rows)
            rest = t.slice(chunk_rows)
            buf, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(buf)


def _csv_tables(p: Path, chunk_rows: int, delimiter: str = ",", names: list[str] | None = None):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    quote = delimiter != "\t"  # Criteo TSV has no quoting; a '"' in a cell is data
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quote else False)
    try:
        if names is None:
            # a first open only to learn the header; then every column is read as text
            names = pacsv.open_csv(p, read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
                                   parse_options=parse).schema.names
            _unique(p, names, "header")
            read = pacsv.ReadOptions(block_size=_BLOCK_BYTES)
        else:
            read = pacsv.ReadOptions(block_size=_BLOCK_BYTES, column_names=names)
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                       null_values=[""], quoted_strings_can_be_null=True)
        reader = pacsv.open_csv(p, read_options=read, parse_options=parse, convert_options=convert)
        yield from _rebatch(reader, chunk_rows)
    except LightFMPError:
        raise
    except pa.ArrowInvalid as e:
        msg = _one_line(e)
        head = _head(p)
        if head is not None and b"\0" in head:
            raise LightFMPError(f"{p}: not a {'TSV' if not quote else 'CSV'} text file (binary data)") from None
        if "Empty CSV file" in msg:
            raise LightFMPError(_no_header(p, head, quote)) from None
        if "Expected" in msg and "columns, got" in msg and names is not None:
            raise LightFMPError(_bad_width(p, delimiter, len(names), quote, msg)) from None
        raise LightFMPError(f"{p}: cannot parse {'TSV' if not quote else 'CSV'} ({msg})") from None
    except OSError as e:  # unreadable / corrupt compressed stream
        raise LightFMPError(f"{p}: cannot read ({type(e).__name__}: {_one_line(e)})") from None


def _one_line(e: BaseException, limit: int = 160) -> str:
    """An error's first line, safe to print: pyarrow quotes the offending row, which in a binary file holds
    control characters and arbitrary bytes; those become '?' and the text is cut at `limit` characters."""
    text = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _head(p: Path, size: int = 1 << 16) -> bytes | None:
    """The first bytes of a data file (decompressed), or None when they cannot be read. Only on error paths."""
    opener = _COMPRESSED.get(p.suffix.lower(), open)
    try:
        with opener(p, "rb") as fh:
            return fh.read(size)
    except (OSError, EOFError, lzma.LZMAError):
        return None


def _no_header(p: Path, head: bytes | None, quoted: bool) -> str:
    """Why pyarrow found no header row: the file is empty, or a quote opened in it is never closed (pyarrow then
    reads the whole file as one unfinished cell)."""
    if head is not None and not head.strip():
        return f"{p}: empty file (no header, no rows)"
    if quoted and head is not None and head.count(b'"') % 2:
        return f"{p}: a quote (\") opened in the header is never closed"
    return f"{p}: no header row could be read"


def _unique(p: Path, names: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LightFMPError(f"{p}: {what} repeats column name(s) {', '.join(map(repr, dup))}")


def _bad_width(p: Path, delimiter: str, expected: int, quoted: bool, arrow_msg: str) -> str:
    """pyarrow's streaming reader does not know line numbers: rescan the file for the first line whose field count
    is wrong (only on this error path) so the message can name it."""
    what = f"expected {expected} (label, I1-I13, C1-C26)" if not quoted and expected == len(CRITEO_COLUMNS) \
        else f"the header has {expected}"
    opener = _COMPRESSED.get(p.suffix.lower(), open)
    try:
        with opener(p, "rt", encoding="utf-8", errors="replace", newline="") as fh:
            if quoted:
                rows = csv.reader(fh, delimiter=delimiter)
                for fields in rows:
                    if fields and len(fields) != expected:
                        return f"{p}: line {rows.line_num} has {len(fields)} fields, {what}"
            else:
                for n, line in enumerate(fh, 1):
                    line = line.rstrip("\r\n")
                    if line and line.count(delimiter) + 1 != expected:
                        return f"{p}: line {n} has {line.count(delimiter) + 1} tab-separated fields, {what}"
    except (OSError, csv.Error, EOFError):
        pass
    return f"{p}: {arrow_msg}"  # already made printable by _one_line


def _parquet_files(p: Path) -> list[Path]:
    files = data_files(p)  # the same list the data hash covers
    if not files:
        raise LightFMPError(f"{p}: directory holds no Parquet part files")
    return files


def _parquet_tables(p: Path, chunk_rows: int):
    import pyarrow.parquet as pq
    names = None
    for f in _parquet_files(p):
        try:
            pf = pq.ParquetFile(f)
            got = pf.schema_arrow.names
            if names is None:
                _unique(f, got, "schema")
                names = got
            elif got != names:
                raise LightFMPError(f"{f}: columns {got} differ from the first part's {names}")
            # rebatched per file: a part's last chunk may be short, never one spanning two parts
            yield from _rebatch(pf.iter_batches(batch_size=chunk_rows), chunk_rows)
        except LightFMPError:
            raise
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise LightFMPError(f"{f}: cannot read Parquet ({type(e).__name__}: {_one_line(e)})") from None


# ---- dataset-specific transforms ------------------------------------------------------------------------------------
def _int_text(x: np.ndarray, index) -> pd.Series:
    """Integral float64 values as '12' strings, NaN as missing."""
    ok = ~np.isnan(x)
    text = pd.Series(np.where(ok, x, 0).astype(np.int64), index=index).astype(str).astype(object)
    return text.where(ok, None)


def _criteo(df: pd.DataFrame, p: Path, start: int) -> pd.DataFrame:
    """I columns: integer counts -> floor(ln(v)^2) for v > 2, else v (0, 1, 2 and negatives unchanged)."""
    for c in CRITEO_INT:
        col = df[c]
        x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        bad = (np.isnan(x) & col.notna().to_numpy()) | (np.isfinite(x) & (np.mod(x, 1) != 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise LightFMPError(f"{p}: line {line_of('criteo', start + i)} column {c}: {col.iloc[i]!r} is not an "
                                f"integer")
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 3.0)) ** 2), x)
        df[c] = _int_text(y, df.index)
    return df


def _avazu(df: pd.DataFrame, p: Path, start: int) -> pd.DataFrame:
    for c in (AVAZU_LABEL, "hour"):
        if c not in df.columns:
            raise LightFMPError(f"{p}: not an Avazu file: no '{c}' column (columns: {', '.join(df.columns)})")
    hour = df["hour"]
    t = pd.to_datetime(hour, format="%y%m%d%H", errors="coerce")
    bad = t.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise LightFMPError(f"{p}: line {line_of('avazu', start + i)} column hour: {hour.iloc[i]!r} is not "
                            f"YYMMDDHH")
    derived = {"hour_of_day": t.dt.hour.astype(str).astype(object),
               "weekday": t.dt.day_of_week.astype(str).astype(object)}  # Monday = 0
    out = {}
    for c in df.columns:
        if c == "id":  # a row id: unique per row, no signal
            continue
        if c == "hour":
            out.update(derived)
        else:
            out[c] = df[c]
    return pd.DataFrame(out, index=df.index)


__all__ = ["FORMATS", "CRITEO_COLUMNS", "resolve_format", "fixed_label", "all_categorical", "implies_stream",
           "line_of", "read_batches"]

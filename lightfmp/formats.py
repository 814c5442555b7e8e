"""Record-batch readers, the only way lightfmp reads a data file: a file is read as Arrow tables of at most
`chunk_rows` rows (`read_tables`), each with the global number of its first data row, so nothing ever holds the
whole file. `read_batches` gives the same batches as pandas DataFrames, for callers that want frames.

    csv       header row; every cell read as text, an empty cell is missing
    tsv       the same, tab-separated (cells quoted with '"' as in CSV where they hold a tab or a newline)
    parquet   a file, or a directory of part files read in sorted path order; columns keep their types
    criteo    Criteo display-ads TSV: no header, label, I1..I13, C1..C26; the integer columns get the usual
              log-square transform (v > 2 -> floor(ln(v)^2)) and, like the C columns, are categorical strings
    avazu     Avazu CSV with header: label `click`, `id` dropped, `hour` (YYMMDDHH) -> `hour_of_day`, `weekday`

Compressed text files (.gz, .bz2, ...) are decompressed on the fly by pyarrow. The Criteo and Avazu transforms
work once per distinct value of a batch (their derived columns are dictionary arrays); a Parquet file written by
pandas loses the index columns its metadata names, as pandas would read it.
"""
from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import lzma
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import LightFMPError
from .io import check_utf8_name, data_files, partitions

FORMATS = ("auto", "csv", "tsv", "parquet", "criteo", "avazu")
PARQUET_SUFFIXES = (".parquet", ".pq")
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label"] + CRITEO_INT + CRITEO_CAT
AVAZU_LABEL = "click"
# bytes of text pyarrow parses at a time: a block must hold at least one whole row. 4 MiB leaves room for very wide
# rows; larger blocks read slower (less of a block stays in cache) and the reader's read-ahead holds more memory
BLOCK_BYTES = 4 << 20


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
        raise LightFMPError(f"{p}: cannot tell the format of a {last} file; pass --format tsv (tab-separated, "
                            f"header row), --format criteo (Criteo TSV, no header) or --format csv")
    return "csv"


def fixed_label(fmt: str) -> str | None:
    """The label column a format fixes (the user need not pass --label), or None."""
    return {"criteo": "label", "avazu": AVAZU_LABEL}.get(fmt)


def all_categorical(fmt: str) -> bool:
    """Formats whose feature columns are all categorical (no kind inference)."""
    return fmt in ("criteo", "avazu")


def implies_stream(fmt: str) -> bool:
    return fmt in ("criteo", "avazu")


LINE_SCAN_BYTES = 256 << 20  # an error's line is counted in files up to this size (a few seconds to read)


def line_of(fmt: str, row: int, path: str | Path | None = None) -> int | None:
    """1-based file line of data row `row` of a text file (None for Parquet): counted in the file where `path` is
    given and at most LINE_SCAN_BYTES long, past the blank lines the reader skips (an error's path only: it reads
    the file up to that row), else one line a row. Exact unless quoted cells span lines."""
    if fmt == "parquet":
        return None
    header = 0 if fmt == "criteo" else 1
    try:
        if path is not None and Path(path).suffix.lower() not in (".zst", ".lz4", ".br") \
                and Path(path).stat().st_size <= LINE_SCAN_BYTES:  # (Arrow decompresses those itself)
            with _open_text(Path(path)) as fh:
                seen = -header  # the header is the first line that is not blank
                for n, line in enumerate(fh, 1):
                    if line.strip("\r\n"):
                        if seen == row:
                            return n
                        seen += 1
    except (OSError, EOFError, lzma.LZMAError):
        pass
    return row + header + 1


def check_source(path: str | Path | None, fmt: str = "auto") -> tuple[Path, str]:
    """(path, concrete format) of a data file that exists: the one place a data path is checked."""
    if not path:
        raise LightFMPError("no data: pass --data FILE (or `data:` in --config)")
    p = Path(path)
    if not _python_opens(p):  # pyarrow takes the path as UTF-8 text
        check_utf8_name(p, "--data")
    if not p.exists():
        where = "" if p.is_absolute() else f" (looked for {p.resolve()})"
        raise LightFMPError(f"--data {p}: file not found{where}")  # named as the flag: a --config value says so
    if not p.is_dir() and not p.is_file():  # a named pipe, a device: it cannot be read twice (hash, fit, encode)
        raise LightFMPError(f"{p}: not a regular file (a pipe or device); lightfmp reads its data more than once: "
                            f"write it to a file first")
    return p, resolve_format(p, fmt)


def read_tables(path: str | Path, fmt: str, chunk_rows: int) -> Iterator[tuple[pa.Table, int]]:
    """(Arrow table of at most chunk_rows rows, global row number of its first row). A table's columns are the
    reader's record batches sliced without copying, so a column may come in a few chunks. The next table is read
    in a background thread while the caller works on this one."""
    p, fmt = check_source(path, fmt)
    yield from _ahead(_tables(p, fmt, chunk_rows))


def _tables(p: Path, fmt: str, chunk_rows: int) -> Iterator[tuple[pa.Table, int]]:
    if fmt == "parquet":
        tables = _parquet_tables(p, chunk_rows)
    elif fmt == "criteo":
        tables = _csv_tables(p, chunk_rows, delimiter="\t", names=CRITEO_COLUMNS)
    elif fmt == "tsv":
        tables = _csv_tables(p, chunk_rows, delimiter="\t", quote=True)
    else:
        tables = _csv_tables(p, chunk_rows)
    start = 0
    for table in tables:
        if fmt == "criteo":
            table = _criteo(table, p, start)
        elif fmt == "avazu":
            table = _avazu(table, p, start)
        yield table, start
        start += table.num_rows
    if start == 0:
        raise LightFMPError(f"{p}: no data rows")


_END = object()


def _ahead(items: Iterator):
    """The items of `items`, each computed in a background thread while the caller works on the one before:
    pyarrow parses and hashes without holding the GIL, so reading overlaps the caller's work. One item in flight
    at most; an error of the reader is raised where the caller asks for that item."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightfmp-read") as pool:
        pending = pool.submit(next, items, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, items, _END)
            yield item


def read_batches(path: str | Path, fmt: str, chunk_rows: int,
                 exact_ints: bool = False) -> Iterator[tuple[pd.DataFrame, int]]:
    """(DataFrame of at most chunk_rows rows with a fresh RangeIndex, global row number of its first row): the
    tables of `read_tables` as pandas frames (the Criteo / Avazu columns as text). `exact_ints`: an integer column
    with nulls holds Python ints and None, as training read it (pandas' default makes it float, which rounds ids
    past 2**53)."""
    _, fmt = check_source(path, fmt)
    for table, start in read_tables(path, fmt, chunk_rows):
        if fmt in ("criteo", "avazu"):
            table = pa.table([c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in table.columns],
                             names=table.schema.names)
        df = table.to_pandas(integer_object_nulls=exact_ints)
        df.columns = [str(c) for c in df.columns]
        yield df, start


# ---- pyarrow readers ----------------------------------------------------------------------------------------------
def _rebatch(batches, chunk_rows: int):
    """pyarrow record batches of any size -> tables of exactly chunk_rows rows (the last one may be shorter)."""
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


@contextlib.contextmanager
def _source(p: Path):
    """What pyarrow's CSV reader opens: the path (it decompresses .gz and .bz2 by the suffix itself), or a
    decompressed stream where it would parse the compressed bytes: xz (pyarrow has no xz codec), and a suffix in
    capitals (.GZ: pyarrow's suffix check is case-sensitive)."""
    if not _python_opens(p):
        yield p
        return
    with _COMPRESSED[p.suffix.lower()](p, "rb") as fh:
        yield fh


def _python_opens(p: Path) -> bool:
    """Whether a CSV's bytes come through Python's decompressors (`_source`: xz, or a suffix in capitals), not from
    pyarrow opening the path itself (a Parquet file or folder, a plain or .gz / .bz2 CSV)."""
    suffix = p.suffix.lower()
    return suffix in _COMPRESSED and (suffix == ".xz" or p.suffix != suffix) and not p.is_dir()


def _csv_tables(p: Path, chunk_rows: int, delimiter: str = ",", names: list[str] | None = None,
                quote: bool | None = None):
    import pyarrow.csv as pacsv
    if quote is None:
        quote = delimiter != "\t"  # Criteo TSV has no quoting; a '"' in a cell is data
    kind = "TSV" if delimiter == "\t" else "CSV"
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quote else False)
    try:
        if names is None:
            # a first open only to learn the header; then every column is read as text
            with _source(p) as src:
                names = pacsv.open_csv(src, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
                                       parse_options=parse).schema.names
            _unique(p, names, "header")
            read = pacsv.ReadOptions(block_size=BLOCK_BYTES)
        else:
            read = pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=names)
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                       null_values=[""], quoted_strings_can_be_null=True)
        with _source(p) as src:
            reader = pacsv.open_csv(src, read_options=read, parse_options=parse, convert_options=convert)
            yield from _rebatch(reader, chunk_rows)
    except LightFMPError:
        raise
    except pa.ArrowInvalid as e:
        msg = _one_line(e)
        head = _head(p)
        if head is not None and b"\0" in head:
            raise LightFMPError(f"{p}: not a {kind} text file (binary data)") from None
        if "Empty CSV file" in msg:
            raise LightFMPError(_no_header(p, head, quote)) from None
        if "Expected" in msg and "columns, got" in msg:
            width = len(names) if names is not None else _header_width(p, delimiter)  # None: failed on the first block
            if width:
                raise LightFMPError(_bad_width(p, delimiter, width, quote, msg)) from None
        raise LightFMPError(f"{p}: cannot parse {kind} ({msg})") from None
    except (OSError, EOFError, lzma.LZMAError) as e:  # unreadable / corrupt compressed stream
        raise LightFMPError(f"{p}: cannot read ({type(e).__name__}: {_one_line(e)})") from None
    except UnicodeDecodeError as e:  # the header's names, decoded by pyarrow: another encoding, or not text at all
        head = _head(p)
        if head is not None and (b"\0" in head or head[:4] in (b"PAR1", b"PK\x03\x04")):
            raise LightFMPError(f"{p}: not a {kind} text file (binary data)") from None
        raise LightFMPError(f"{p}: the header row is not UTF-8 text (byte 0x{e.object[e.start]:02x} in a column "
                            f"name); save the file as UTF-8") from None


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


def _open_text(p: Path):
    """A text file (decompressed) as the error-path rescans read it: utf-8-sig, since pyarrow drops a byte-order
    mark."""
    return _COMPRESSED.get(p.suffix.lower(), open)(p, "rt", encoding="utf-8-sig", errors="replace", newline="")


def _header_width(p: Path, delimiter: str) -> int | None:
    """The number of fields of a text file's header row (only on an error path), or None."""
    try:  # blank lines before the header are skipped, as pyarrow does
        with _open_text(p) as fh:
            return len(next(r for r in csv.reader(fh, delimiter=delimiter) if r))
    except (OSError, csv.Error, EOFError, StopIteration, lzma.LZMAError):
        return None


def _bad_width(p: Path, delimiter: str, expected: int, quoted: bool, arrow_msg: str) -> str:
    """pyarrow's streaming reader does not know line numbers: rescan the file for the first line whose field count
    is wrong (only on this error path) so the message can name it."""
    what = f"expected {expected} (label, I1-I13, C1-C26)" if not quoted and expected == len(CRITEO_COLUMNS) \
        else f"the header has {expected}"
    try:
        with _open_text(p) as fh:
            if quoted:
                rows = csv.reader(fh, delimiter=delimiter)
                start = 1
                for fields in rows:  # a quoted cell may span lines: name the lines of the record
                    if fields and len(fields) != expected:
                        where = f"line {start}" if rows.line_num == start \
                            else f"the record on lines {start}-{rows.line_num}"
                        return f"{p}: {where} has {len(fields)} fields, {what}"
                    start = rows.line_num + 1
            else:
                for n, line in enumerate(fh, 1):
                    line = line.rstrip("\r\n")
                    if line and line.count(delimiter) + 1 != expected:
                        return f"{p}: line {n} has {line.count(delimiter) + 1} tab-separated fields, {what}"
    except (OSError, csv.Error, EOFError, lzma.LZMAError):
        pass
    return f"{p}: {arrow_msg}"  # already made printable by _one_line


def _parquet_files(p: Path) -> list[Path]:
    files = data_files(p)  # the same list the data hash covers
    if not files:
        raise LightFMPError(f"{p}: directory holds no Parquet part files")
    return files


def _parquet_tables(p: Path, chunk_rows: int):
    """The parts' rows; a part in key=value folders (Hive / Spark partitioning) gets those as text columns."""
    import pyarrow.parquet as pq
    names = None
    for f in _parquet_files(p):
        try:
            pf = pq.ParquetFile(f)
            keys = partitions(p, f)
            got = pf.schema_arrow.names + [k for k, _ in keys]
            if names is None or keys:  # (a folder's key may be a column of one part)
                _unique(f, got, "schema" + (" with its key=value folders" if keys else ""))
            if names is None:
                names = got
            elif got != names:
                raise LightFMPError(f"{f}: columns {got} differ from the first part's {names}"
                                    + (" (its key=value folders are columns)" if keys else ""))
            index = [c for c in (pf.schema_arrow.pandas_metadata or {}).get("index_columns", [])
                     if isinstance(c, str) and c in got]  # a pandas index stored as columns: not data
            # rebatched per file: a part's last chunk may be short, never one spanning two parts
            for t in _rebatch(pf.iter_batches(batch_size=chunk_rows), chunk_rows):
                for key, value in keys:
                    t = t.append_column(key, pa.array([value], pa.string()).take(np.zeros(len(t), np.int64)))
                yield t.drop_columns(index) if index else t
        except LightFMPError:
            raise
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise LightFMPError(f"{f}: cannot read Parquet ({type(e).__name__}: {_one_line(e)})"
                                + _other_file_hint(p, f)) from None


def _other_file_hint(p: Path, f: Path) -> str:
    """Where a directory's file without a Parquet suffix is not Parquet: every file of a directory is read as a part
    (`lightfmp.io.data_files`), so say how to leave it out, or, beside a single Parquet file (a `lightfmp data synth`
    folder holds truth.json beside data.parquet), which file to pass."""
    if f == p or f.suffix.lower() in PARQUET_SUFFIXES:
        return ""
    parts = [q for q in data_files(p) if q.suffix.lower() in PARQUET_SUFFIXES]
    if len(parts) == 1:
        return f"; every file of the directory {p} is read as a part: pass the data file itself ({parts[0]})"
    return (f"; every file of the directory {p} is read as a part: move {f.name} out, or start its name with '_' or "
            f"'.' (such files are skipped)")


# ---- dataset-specific transforms ------------------------------------------------------------------------------------
# Each works on a column's distinct values (Arrow's dictionary_encode, in order of first appearance, so the first
# bad distinct value is the one the first bad row holds) and gives a dictionary column of the derived texts.
def _distinct(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.Array]:
    """(the column dictionary-encoded, a null cell as a value of its own; the distinct values)."""
    enc = pc.dictionary_encode(col, null_encoding="encode")
    return enc, enc.chunk(enc.num_chunks - 1).dictionary if enc.num_chunks else pa.array([], type=col.type)


def _first_row(enc: pa.ChunkedArray, bad_values: np.ndarray) -> int:
    """The first row whose value is bad (an error path only)."""
    codes = np.concatenate([c.indices.to_numpy() for c in enc.chunks])
    return int(np.argmax(bad_values[codes]))


def _derived(enc: pa.ChunkedArray, ints: np.ndarray, ok: np.ndarray) -> pa.ChunkedArray:
    """Row i holds the decimal text of ints[k], where k is its value in `enc` (null where not ok[k]): a dictionary
    column whose dictionary is the distinct texts (pandas reads a dictionary column as a Categorical, whose
    categories must be distinct)."""
    distinct, inverse = np.unique(ints[ok], return_inverse=True)
    inner = np.zeros(len(ints), dtype=np.int32)
    inner[ok] = inverse.reshape(-1)
    lookup, texts = pa.array(inner, mask=~ok), pa.array(distinct.astype(str), type=pa.string())
    return pa.chunked_array([pa.DictionaryArray.from_arrays(pc.take(lookup, c.indices), texts) for c in enc.chunks],
                            type=pa.dictionary(pa.int32(), pa.string()))


def _criteo_numbers(values: pa.Array) -> np.ndarray:
    """float64 of the distinct texts of an I column, as pandas.to_numeric reads them (NaN: null or not a number).
    Plain decimal integers go through Arrow's integer parser (the same values); anything else through pandas."""
    if pc.all(pc.match_substring_regex(values, r"^-?[0-9]+$")).as_py() is not False:
        try:
            return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
        except pa.ArrowInvalid:  # too many digits for an int64
            pass
    return pd.to_numeric(values.to_pandas(), errors="coerce").to_numpy(dtype=np.float64)


# Criteo's I columns as the model reads them: recorded in an export's inputs (`derive`), so that a raw count sent to
# the Predictor, `lightfmp serve` or the example client is turned into the text the vocabulary holds
CRITEO_DERIVE = "criteo_log_square"
CRITEO_DERIVE_RULE = ("a raw count v (an integer) becomes floor(ln(v)^2) when v > 2 and stays v otherwise, then its "
                      "decimal text; an empty value is missing")


def derived(fmt: str, column: str) -> str | None:
    """How `fmt` derives the column the model reads from the file's raw value (None: it reads the value as it is).
    Avazu's derived columns have names of their own (a record with only `hour` lacks them, and is refused)."""
    return CRITEO_DERIVE if fmt == "criteo" and column in CRITEO_INT else None


def criteo_log_square(x: np.ndarray) -> np.ndarray:
    """floor(ln(v)^2) for v > 2, else v (0, 1, 2 and negatives unchanged); NaN stays NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 3.0)) ** 2), x)


def criteo_texts(values: list, name: str) -> list:
    """The model's texts for raw counts given at serving time (ints, integral floats or their text; None / NaN / ''
    missing), by training's rule (`_criteo`); the first value that is not an integer is refused, naming its record."""
    def absent(v) -> bool:  # None, NaN, pandas' NA / NaT, or the empty text of a blank cell
        return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)) \
            or (isinstance(v, str) and v == "")
    x = np.full(len(values), np.nan)
    text = [i for i, v in enumerate(values) if isinstance(v, str) and v != ""]
    if text:
        with np.errstate(invalid="ignore", over="ignore"):
            x[text] = _criteo_numbers(pa.array([values[i] for i in text], pa.string()))
    for i, v in enumerate(values):
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            try:
                x[i] = float(v)
            except OverflowError:  # an integer beyond any float: no count
                x[i] = np.inf
        elif not (absent(v) or isinstance(v, str)):
            raise LightFMPError(f"record {i}, field '{name}' (a Criteo count) got {v!r} ({type(v).__name__}); "
                                f"expected an integer")
    present = np.array([not absent(v) for v in values], dtype=bool)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(present & (~np.isfinite(x) | (np.mod(x, 1) != 0)))
    if len(bad):
        v = values[bad[0]]
        raise LightFMPError(f"record {bad[0]}, field '{name}' (a Criteo count) got {v!r:.60}; expected an integer")
    y = criteo_log_square(x)
    return [str(int(v)) if ok else None for v, ok in zip(y, present)]


def _criteo(table: pa.Table, p: Path, start: int) -> pa.Table:
    """I columns: integer counts -> floor(ln(v)^2) for v > 2, else v (0, 1, 2 and negatives unchanged)."""
    cols = []
    for name, col in zip(table.schema.names, table.columns):
        if name not in CRITEO_INT:
            cols.append(col)
            continue
        enc, values = _distinct(col)
        x = _criteo_numbers(values)
        present = ~np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        whole = np.mod(x, 1, out=np.zeros_like(x), where=np.isfinite(x)) == 0  # inf % 1 warns: never computed
        bad = (np.isnan(x) & present) | np.isinf(x) | ~whole & np.isfinite(x)
        if bad.any():
            i = _first_row(enc, bad)
            raise LightFMPError(f"{p}: line {line_of('criteo', start + i, p)} column {name}: "
                                f"{values.to_pandas().iloc[int(np.argmax(bad))]!r} is not an integer")
        y = criteo_log_square(x)
        ok = ~np.isnan(y)
        cols.append(_derived(enc, np.where(ok, y, 0).astype(np.int64), ok))
    return pa.table(cols, names=table.schema.names)


def _avazu(table: pa.Table, p: Path, start: int) -> pa.Table:
    names = table.schema.names
    for c in (AVAZU_LABEL, "hour"):
        if c not in names:
            raise LightFMPError(f"{p}: not an Avazu file: no '{c}' column (columns: {', '.join(names)})")
    taken = [c for c in ("hour_of_day", "weekday") if c in names]
    if taken:  # the columns the hour is read into
        raise LightFMPError(f"{p}: column '{taken[0]}' clashes with the column lightfmp derives from 'hour' "
                            f"(hour_of_day and weekday); rename it, or read the file as --format csv")
    hour = table.column("hour")
    enc, values = _distinct(hour)
    text = values.cast(pa.string()).to_pandas().fillna("")  # read as integers or text
    t = pd.to_datetime(text, format="%y%m%d%H", errors="coerce")
    # a missing hour too; and exactly eight digits (the format takes one-digit months, days and hours: '141021')
    bad = (t.isna() | (text.str.len() != 8) | ~text.str.isdigit()).to_numpy()
    if bad.any():
        i = _first_row(enc, bad)
        line = line_of('avazu', start + i, p)
        if not hour.slice(i, 1).is_valid().to_pylist()[0]:  # a blank cell: missing, as a blank label is called
            raise LightFMPError(f"{p}: line {line} column hour: missing value (an Avazu hour is YYMMDDHH)")
        value = hour.slice(i, 1).to_pandas().iloc[0]  # the cell as a DataFrame of the batch shows it
        raise LightFMPError(f"{p}: line {line} column hour: {value!r} is not YYMMDDHH")
    ok = np.ones(len(t), dtype=bool)
    derived = {"hour_of_day": _derived(enc, t.dt.hour.to_numpy().astype(np.int64), ok),
               "weekday": _derived(enc, t.dt.day_of_week.to_numpy().astype(np.int64), ok)}  # Monday = 0
    out_names, cols = [], []
    for c, col in zip(names, table.columns):
        if c == "id":  # a row id: unique per row, no signal
            continue
        if c == "hour":
            out_names += list(derived)
            cols += list(derived.values())
        else:
            out_names.append(c)
            cols.append(col)
    return pa.table(cols, names=out_names)


__all__ = ["BLOCK_BYTES", "FORMATS", "CRITEO_COLUMNS", "resolve_format", "fixed_label", "all_categorical",
           "implies_stream", "line_of", "read_tables", "read_batches"]

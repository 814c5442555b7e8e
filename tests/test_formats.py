"""lightfmp/formats.py: decisions a mutation audit found no other test pinned."""
import gzip
import os

import numpy as np
import pandas as pd
import pytest

from lightfmp.errors import LightFMPError
from lightfmp.formats import CRITEO_COLUMNS, _one_line, check_source, criteo_texts, line_of, read_tables, resolve_format


def _names(path, fmt):
    return [t.schema.names for t, _ in read_tables(path, fmt, 100)][0]


def _rows(path, fmt):
    return pd.concat([t.to_pandas() for t, _ in read_tables(path, fmt, 100)], ignore_index=True)


def test_the_format_is_case_insensitive_and_a_compressed_or_txt_file_is_not_guessed(tmp_path):
    assert resolve_format(tmp_path / "x.csv", "CSV") == "csv"
    for name in ("x.tsv.gz", "x.txt", "x.TXT.bz2"):
        with pytest.raises(LightFMPError, match="cannot tell the format"):
            resolve_format(tmp_path / name)


def test_an_errors_line_skips_blank_lines_and_without_the_file_counts_one_line_a_row(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b\n\n1,2\n\n3,4\n")
    assert line_of("csv", 1, p) == 5
    assert line_of("csv", 4) == 6 and line_of("criteo", 4) == 5


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LightFMPError, match=r"--data nope.csv: file not found \(looked for "):
        check_source("nope.csv")
    with pytest.raises(LightFMPError) as e:
        check_source(tmp_path / "nope.csv")
    assert str(e.value).endswith("file not found")


def test_a_name_that_is_not_utf8_is_refused_only_where_pyarrow_opens_it_by_name(tmp_path):
    """pyarrow takes a path as UTF-8 text: a CSV or Parquet name from another locale ended in its traceback, and is
    refused in one line naming --data. A file whose bytes come through Python's decompressors (xz, a suffix in
    capitals) was read whatever its name, and still is."""
    import lzma
    odd = tmp_path / "r\udce9sum\udce9"  # what Python makes of the bytes r\xe9sum\xe9
    text = "a,label\nx,1\ny,0\n"
    for suffix in (".csv", ".csv.gz", ".parquet"):
        p = odd.with_name(odd.name + suffix)
        p.write_bytes(b"")
        with pytest.raises(LightFMPError, match="^--data .*: the name is not UTF-8 text"):
            check_source(p)
    for suffix, pack in ((".csv.xz", lzma.compress), (".csv.GZ", gzip.compress)):
        p = odd.with_name(odd.name + suffix)
        p.write_bytes(pack(text.encode()))
        assert check_source(p) == (p, "csv")
        assert _rows(p, "csv")["a"].tolist() == ["x", "y"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_named_pipe_is_refused_before_it_is_read(tmp_path):
    fifo = tmp_path / "d.csv"
    os.mkfifo(fifo)
    with pytest.raises(LightFMPError, match="not a regular file"):
        check_source(fifo)


def test_a_gzip_file_with_a_suffix_in_capitals_is_decompressed(tmp_path):
    p = tmp_path / "d.csv.GZ"
    p.write_bytes(gzip.compress(b"a,b\n1,2\n3,4\n"))
    assert _rows(p, "auto").to_dict("list") == {"a": ["1", "3"], "b": ["2", "4"]}


def test_a_quote_in_a_criteo_cell_is_data(tmp_path):
    row = ["1"] + ["3"] * 13 + ['a"b'] + ["c"] * 25
    p = tmp_path / "d.txt"
    p.write_text("\t".join(row) + "\n" + "\t".join(row) + "\n")
    df = _rows(p, "criteo")
    assert list(df["C1"].astype(str)) == ['a"b', 'a"b'] and len(df.columns) == len(CRITEO_COLUMNS)


def test_an_empty_quoted_csv_cell_is_missing(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('a,b\n"",1\nx,2\n')
    assert _rows(p, "csv")["a"].isna().tolist() == [True, False]


def test_a_tsv_width_error_names_the_line_after_a_record_spanning_lines(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text('a\tb\n"x\ny"\t1\n1\t2\t3\n')
    with pytest.raises(LightFMPError, match=r"line 4 has 3 fields, the header has 2"):
        list(read_tables(p, "tsv", 100))


def test_a_pandas_index_stored_in_parquet_is_not_a_column(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"a": ["x", "y"], "label": [0, 1]}, index=pd.Index([5, 6], name="rid")).to_parquet(p)
    assert _names(p, "parquet") == ["a", "label"]


def test_a_later_parts_key_folder_repeating_one_of_its_columns_is_refused(tmp_path):
    d = tmp_path / "d"
    (d / "k=1").mkdir(parents=True)
    (d / "k=2").mkdir()
    pd.DataFrame({"a": ["x"]}).to_parquet(d / "k=1" / "p.parquet")
    pd.DataFrame({"a": ["y"], "k": ["z"]}).to_parquet(d / "k=2" / "p.parquet")
    with pytest.raises(LightFMPError, match="repeats column name"):
        list(read_tables(d, "parquet", 100))


def test_a_boolean_criteo_count_is_refused():
    with pytest.raises(LightFMPError, match=r"record 1, field 'I1' \(a Criteo count\) got True"):
        criteo_texts([3, True], "I1")


def test_an_infinite_criteo_count_in_a_file_is_refused(tmp_path):
    row = ["1"] + ["inf"] + ["3"] * 12 + ["c"] * 26
    p = tmp_path / "d.txt"
    p.write_text("\t".join(row) + "\n")
    with pytest.raises(LightFMPError, match="line 1 column I1: 'inf' is not an integer"):
        list(read_tables(p, "criteo", 100))


def _avazu(tmp_path, header, row):
    p = tmp_path / "a.csv"
    p.write_text(header + "\n" + row + "\n")
    return p


def test_an_avazu_hour_must_have_eight_digits(tmp_path):
    p = _avazu(tmp_path, "id,click,hour,site", "1,0,141021,s")
    with pytest.raises(LightFMPError, match="line 2 column hour: '141021' is not YYMMDDHH"):
        list(read_tables(p, "avazu", 100))


def test_an_avazu_column_named_as_a_derived_one_is_refused(tmp_path):
    p = _avazu(tmp_path, "id,click,hour,weekday", "1,0,14102100,x")
    with pytest.raises(LightFMPError, match="column 'weekday' clashes"):
        list(read_tables(p, "avazu", 100))


def test_an_error_quoted_from_pyarrow_is_cut_to_one_printable_line():
    text = _one_line(ValueError("x" * 500 + "\nsecond"))
    assert len(text) == 160 and text.endswith("...") and "second" not in text


def test_an_unclosed_quote_in_a_csv_header_is_named(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('"a,b\n1,2\n')
    with pytest.raises(LightFMPError, match=r"a quote \(\"\) opened in the header is never closed"):
        list(read_tables(p, "csv", 100))

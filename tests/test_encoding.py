"""lightfmp/encoding.py: decisions a mutation audit found no other test pinned, each against a reference computed by
hand from the documented rules."""
import decimal
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from helpers import fnv_reference as fnv
from lightfmp.encoding import (VocabIndex, as_float, float_cells, lists, missing, numbers, present,
                               read_otherwise_before, seconds, split_multi, stable_hash, tokens, value_text)
from lightfmp.errors import CellError, LightFMPError


def texts(tok):
    vals = tok.values.to_pylist() + [None]
    return [vals[c] for c in tok.codes]


# ---- the text rule ----------------------------------------------------------------------------------------------
def test_decimal_and_binary_columns_were_read_otherwise_before_text_rule_2():
    assert read_otherwise_before(pa.decimal128(5, 2)) and read_otherwise_before(pa.binary())
    assert read_otherwise_before(pa.array([decimal.Decimal("0.50")]).dictionary_encode().type)
    assert not read_otherwise_before(pa.string()) and not read_otherwise_before(pa.float64())


def test_a_non_finite_decimal_is_a_category_not_a_crash():
    """int(Decimal('Infinity')) raises OverflowError: a non-finite decimal must not reach the whole-number branch."""
    t = tokens(pd.Series([decimal.Decimal("Infinity"), decimal.Decimal("2.00"), decimal.Decimal("NaN")], dtype=object))
    got = texts(t)
    assert got[1:] == ["2", None] and got[0] in ("Infinity", "inf")  # (which spelling: see REPORT.md, finding 2)
    assert value_text(decimal.Decimal("-Infinity")) in ("-Infinity", "-inf")


# ---- numbers ------------------------------------------------------------------------------------------------------
def test_a_blank_text_cell_is_missing_not_refused():
    x, bad = float_cells(pd.Series(["1", "", "   ", None], dtype=object))
    assert bad is None and x[0] == 1.0 and np.isnan(x[1:]).all()
    got = numbers(pa.array(["1", "", " ", None]), "x")  # the Arrow text path: '' fails Arrow's cast
    assert got[0] == 1.0 and np.isnan(got[1:]).all()


def test_the_refused_cell_is_named_by_its_row_in_the_column():
    with pytest.raises(CellError) as e:
        as_float(pd.Series(["1", "NA", "2", "zz", "yy"], dtype=object), "x")
    assert e.value.row == 3 and "'zz'" in str(e.value)


def test_a_nan_spelling_arrow_reads_but_the_rule_refuses_is_refused():
    """Arrow's cast reads 'Nan' / '+NaN' as NaN; the rule (MISSING_TEXT) does not list them: refused as on a Series."""
    for bad in ("Nan", "+NaN"):
        with pytest.raises(LightFMPError, match=re.escape(f"non-numeric value '{bad}'")):
            as_float(pd.Series(["1", bad], dtype=object), "x")
        with pytest.raises(LightFMPError, match=re.escape(f"non-numeric value '{bad}'")):
            numbers(pa.array(["1", bad, None]), "x")


def test_an_integer_past_2_53_reads_as_the_nearest_float():
    big = 2 ** 53 + 1
    assert numbers(pa.array([big, None]), "x")[0] == float(big)
    assert numbers(pa.chunked_array([pa.array([big]), pa.array([3])]), "x").tolist() == [float(big), 3.0]


def test_a_millisecond_timestamp_is_its_seconds():
    t = pa.array([1704888000123, None], type=pa.timestamp("ms"))
    got = seconds(t)
    assert got[0] == pytest.approx(1704888000.123) and np.isnan(got[1])
    assert numbers(pa.array([90_000, None], type=pa.duration("ms")), "d")[0] == 90.0


# ---- missing and present -------------------------------------------------------------------------------------------
def test_nan_in_a_float_column_is_missing_like_null():
    col = pa.array([1.0, float("nan"), None, 2.0])
    assert present(col) == 2
    assert missing(col).tolist() == [False, True, True, False]
    assert present(pa.chunked_array([col, col])) == 4


# ---- codes of a column ---------------------------------------------------------------------------------------------
def test_a_sliced_dictionary_column_with_nulls_reads_its_own_rows():
    arr = pa.array(["a", None, "b", "c", None, "a", "d", "e", "f", "b"]).dictionary_encode()
    assert texts(tokens(arr.slice(3))) == ["c", None, "a", "d", "e", "f", "b"]
    assert texts(tokens(arr.slice(1, 4))) == [None, "b", "c", None]
    # 9 rows past the offset: the validity bitmap's second byte
    long = pa.array([None if i % 3 == 0 else f"v{i % 4}" for i in range(40)]).dictionary_encode()
    want = [None if i % 3 == 0 else f"v{i % 4}" for i in range(40)][11:30]
    assert texts(tokens(long.slice(11, 19))) == want


def test_counts_are_rows_per_distinct_value():
    t = tokens(pa.array(["b", None, "a", "b", "b", None]))
    assert dict(zip(t.values.to_pylist(), t.counts().tolist())) == {"b": 3, "a": 1}
    mask = np.array([True, True, True, False, False, False])
    assert dict(zip(t.values.to_pylist(), t.counts(mask).tolist())) == {"b": 1, "a": 1}


# ---- multi-hot ------------------------------------------------------------------------------------------------------
def test_split_multi_drops_empty_tokens():
    got = split_multi(pd.Series(["a||b|", None, "", "|", "c"], dtype=object), "|").tolist()
    assert got == [["a", "b"], [], [], [], ["c"]]


def test_lists_drop_empty_tokens_and_number_positions_per_cell():
    ls = lists(pa.array(["x|y", "|z||w", None, "", "y"]), "|")
    cells = ls.cells.values.to_pylist()
    toks = ls.tokens.values.to_pylist() + [None]
    per_cell = {c: [] for c in cells}
    for code, cell, pos in zip(ls.tokens.codes, ls.cell, ls.position):
        per_cell[cells[cell]].append((int(pos), toks[code]))
    assert per_cell == {"x|y": [(0, "x"), (1, "y")], "|z||w": [(0, "z"), (1, "w")], "": [], "y": [(0, "y")]}
    assert dict(zip(cells, ls.lengths.tolist())) == {"x|y": 2, "|z||w": 2, "": 0, "y": 1}


# ---- hashing and look-up -------------------------------------------------------------------------------------------
def test_stable_hash_of_a_chunked_column_covers_every_chunk():
    vals = ["a", "bb", "", "héllo", "ccc"]
    col = pa.chunked_array([pa.array(vals[:2]), pa.array(vals[2:])])
    assert [int(h) for h in stable_hash(col)] == [fnv(v) for v in vals]


def test_stable_hash_reads_each_string_to_its_own_end():
    vals = ["ab", "a", "abc", "b", "", "abcd", "ab"]  # lengths tie and differ: strings end at every byte index
    assert [int(h) for h in stable_hash(pa.array(vals))] == [fnv(v) for v in vals]


def test_a_vocabulary_with_entries_hashed_alike_finds_each_text():
    """A non-text entry of a hand-written schema hashes as '' does: the table falls back to an exact look-up."""
    index = VocabIndex([1, "", "a"])
    assert index.positions(pa.array(["", "a", "1", "b"])).tolist() == [1, 2, -1, -1]


def test_a_dictionary_of_bytes_or_decimals_reads_as_the_plain_column_does():
    """A dictionary column's values follow the text rule as a plain column's: bytes as UTF-8 text, a decimal as the
    number it is."""
    for arr in (pa.array([b"k3", None, b"k3", b"z"]), pa.array([decimal.Decimal("0.50"), None, decimal.Decimal("0.50"),
                                                              decimal.Decimal("2.00")])):
        assert texts(tokens(arr.dictionary_encode())) == texts(tokens(arr))
    assert texts(tokens(pa.array([b"k3", None]).dictionary_encode())) == ["k3", None]
    assert texts(tokens(pa.array([decimal.Decimal("0.50"), decimal.Decimal("2.00")]).dictionary_encode())) == ["0.5", "2"]

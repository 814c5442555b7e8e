"""lightfmp/rows.py: decisions a mutation audit found no other test pinned."""
import numpy as np
import pytest

from lightfmp.errors import LightFMPError
from lightfmp.rows import ArrayRows, MemoryStore, StoredRows, in_memory


def _store(chunks=3, size=10, splits=None):
    """Chunks of `size` rows whose first id column is the global row number; split code per row from `splits`."""
    store = MemoryStore(2)
    for c in range(chunks):
        rows = np.arange(c * size, (c + 1) * size)
        split = np.zeros(size, np.int8) if splits is None else np.asarray(splits(rows), np.int8)
        store.append(ids=np.column_stack([rows, rows % 3]).astype(np.int32), labels=(rows % 2).astype(np.float32),
                     rows=rows, split=split)
    return store


def _stored(**kw):
    return StoredRows(_store(**kw), {"r": (0, 1), "m": (1, 2)}, (0,))


def test_selecting_an_unknown_field_names_it_and_the_fields_there_are():
    for rows in (ArrayRows(np.zeros((3, 2)), np.zeros(3), slots={"a": (0, 1), "b": (1, 2)}), _stored()):
        with pytest.raises(LightFMPError) as e:
            rows.select(["a" if isinstance(rows, ArrayRows) else "r", "nope"])
        assert "'nope'" in str(e.value) and "(fields: " in str(e.value)


def test_ids_and_labels_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 rows, labels 2"):
        ArrayRows(np.zeros((3, 2)), np.zeros(2))


def test_a_split_gives_the_rows_at_or_above_the_fraction_first_in_memory_and_stored():
    stored = _stored(chunks=20, size=50)
    held = ArrayRows(*stored.arrays(), stored.row_numbers(), stored.slots)
    for rows in (held, stored):
        big, small = rows.split(0.2, 0, 7)
        assert len(big) + len(small) == 1000 and len(big) > 700 and len(small) < 300  # (weight rows, hold-out)
    for a, b in zip(held.split(0.2, 0, 7), stored.split(0.2, 0, 7)):
        assert np.array_equal(a.row_numbers(), b.row_numbers())


def test_a_negative_position_is_refused_not_wrapped():
    rows = _stored()
    with pytest.raises(IndexError, match="positions out of range for 30 rows"):
        rows.take(np.array([-1]))
    with pytest.raises(IndexError):
        rows.take(np.array([len(rows)]))


def test_taking_rows_keeps_their_global_row_numbers_in_memory():
    rows = ArrayRows(np.zeros((5, 1)), np.zeros(5), row_numbers=np.array([10, 11, 12, 13, 14]))
    part = rows.take(np.array([3, 1]))
    assert part.row_numbers().tolist() == [13, 11]
    # so a hash split of the part picks what the split of the whole picks among those rows
    whole = {int(r) for r in rows.split(0.5, 0, 3)[1].row_numbers()}
    assert {int(r) for r in part.split(0.5, 0, 3)[1].row_numbers()} == whole & {13, 11}


def test_a_view_that_fits_its_budget_exactly_is_read_into_memory():
    rows = _stored()
    need = len(rows) * rows.num_slots * 4
    assert isinstance(in_memory(rows, need), ArrayRows)
    assert in_memory(rows, need - 1) is rows


def test_an_empty_view_reads_as_arrays_of_its_width():
    rows = StoredRows(_store(), {"r": (0, 1), "m": (1, 2)}, (1,))  # no validation rows
    ids, labels = rows.arrays()
    assert len(rows) == 0 and ids.shape == (0, 2) and ids.dtype == np.int32 and labels.dtype == np.float32
    assert rows.select(["m"]).arrays()[0].shape == (0, 1)


def test_evaluation_order_skips_chunks_without_rows_of_the_view():
    rows = StoredRows(_store(splits=lambda r: (r >= 10) & (r < 20)), {"r": (0, 1), "m": (1, 2)}, (0,))  # chunk 1 only in split 1
    parts = list(rows.chunks(None))
    assert len(parts) == 2 and all(len(p[1]) for p in parts)
    assert list(ArrayRows(np.zeros((0, 2)), np.zeros(0)).chunks(None)) == []
    assert list(ArrayRows(np.zeros((0, 2)), np.zeros(0)).chunks(1)) == []


def test_evaluation_order_in_memory_is_the_stored_order():
    ids = np.arange(20, dtype=np.int32).reshape(10, 2)
    (got, y), = ArrayRows(ids, np.arange(10)).chunks(None)
    assert np.array_equal(got, ids) and np.array_equal(y, np.arange(10))

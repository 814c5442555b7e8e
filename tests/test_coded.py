"""lightfmp/coded.py: decisions a mutation audit found no other test pinned."""
import numpy as np
import pyarrow as pa
import pytest

from lightfmp.coded import Coded, CodedStore, Unparsed
from lightfmp.encoding import Tokens
from lightfmp.errors import CellError, LightFMPError
from lightfmp.scratch import OWNER


def _batch(labels=True):
    return Coded(4, {"t": Tokens(np.array([0, 1, 0, 1], np.int32), pa.array(["a", "b"])), "x": np.arange(4.0),
                     "bad": Unparsed("column x: 'q' is not a number", column=["q"] * 4, row=2)},
                 np.zeros(4, np.float32) if labels else None)


def test_an_unparsed_column_with_a_row_fails_as_a_cell_error_naming_the_row():
    with pytest.raises(CellError) as e:
        Unparsed("bad cell", row=3).fail()
    assert e.value.row == 3
    with pytest.raises(LightFMPError) as e:
        Unparsed("bad column").fail()
    assert not isinstance(e.value, CellError)


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_batch_comes_back_with_its_bad_cells_row_and_without_labels_where_it_had_none(tmp_path, on_disk):
    with CodedStore(tmp_path / "s" if on_disk else None) as store:
        store.add(_batch(labels=False))
        store.add(_batch())
        a, b = list(store)
        assert a.labels is None and b.labels is not None and len(b.labels) == 4
        assert a.fields["bad"].row == 2 and a.fields["bad"].error == "column x: 'q' is not a number"
        with pytest.raises(CellError) as e:
            a.fields["bad"].fail()
        assert e.value.row == 2


def test_a_truncated_coded_batch_is_reported_as_changed_scratch_not_a_numpy_error(tmp_path):
    with CodedStore(tmp_path / "s") as store:
        store.add(_batch())
        codes = next(store._dir.glob("*.codes"))
        codes.write_bytes(codes.read_bytes()[:-4])
        with pytest.raises(LightFMPError, match="coded batch unreadable .ValueError.; the scratch directory was "
                                                "changed"):
            list(store)


def test_the_scratch_directory_is_hidden_claimed_and_takes_the_folders_made_for_it_when_closed(tmp_path):
    store = CodedStore(tmp_path / "a" / "b" / "c")
    store.add(_batch())
    where = store._dir
    assert where.name.startswith(".coded-") and where.name.endswith(".tmp") and (where / OWNER).is_file()
    store.close()
    assert list(tmp_path.iterdir()) == []  # a, a/b and a/b/c were made for it: all gone

"""The base-layer vocabulary: the checked thin id and the closed sets' stored values."""

from __future__ import annotations

import pytest

from reconciler.vocabulary import (
    MAX_THIN_ID,
    DeviceState,
    Filesystem,
    Kind,
    PoolOp,
    Removal,
    ThinId,
    ThinIdError,
)


@pytest.mark.parametrize("value", [0, 1, 4096, MAX_THIN_ID])
def test_a_thin_id_in_range_is_that_integer(value: int) -> None:
    """Every id dm-thin accepts (0 to 2**24-1) makes a ThinId equal to the integer."""
    thin_id = ThinId(value)
    assert thin_id == value and isinstance(thin_id, int) and str(thin_id) == str(value)


@pytest.mark.parametrize("value", [-1, MAX_THIN_ID + 1, 1 << 32])
def test_a_thin_id_out_of_range_is_refused_saying_why(value: int) -> None:
    """Outside 24 bits there is no thin id: the error names the value and the range."""
    with pytest.raises(ThinIdError, match=rf"thin id {value}: dm-thin ids are 24-bit, "
                                          rf"0 to {MAX_THIN_ID}"):
        ThinId(value)


@pytest.mark.parametrize("value", ["7", 7.0, True, None])
def test_a_thin_id_is_made_from_integers_only(value: object) -> None:
    """Text, floats and booleans are not thin ids, whatever they would convert to."""
    with pytest.raises(ThinIdError, match="not an integer"):
        ThinId(value)  # type: ignore[arg-type]


def test_the_range_is_24_bits() -> None:
    """The largest id is the kernel's: 2**24-1."""
    assert MAX_THIN_ID == (1 << 24) - 1


def test_the_stored_values_of_the_closed_sets_are_unchanged() -> None:
    """The enums' values are what databases written by earlier versions hold."""
    assert [k.value for k in Kind] == ["view", "active", "committed", "base"]
    assert [r.value for r in Removal] == ["pending", "requested"]
    assert [o.value for o in PoolOp] == ["create_thin", "create_snap", "delete"]
    assert [f.value for f in Filesystem] == ["ext4", "xfs", "none"]
    assert DeviceState("Faulty") is DeviceState.FAULTY

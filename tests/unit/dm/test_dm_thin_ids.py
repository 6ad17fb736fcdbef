"""Thin ids where the dm layer reads them: a thin table's dev_id and our device uuids."""

from __future__ import annotations

import pytest

from reconciler.dm.errors import ParseError
from reconciler.dm.parse import parse_thin_table
from reconciler.dm.pool import parse_thin_uuid, thin_uuid
from reconciler.dm.types import TargetLine
from reconciler.units import Sectors
from reconciler.vocabulary import MAX_THIN_ID, ThinId


def _thin(params: str) -> TargetLine:
    return TargetLine(Sectors(0), Sectors(8192), "thin", params)


def test_a_thin_tables_id_is_a_checked_thin_id() -> None:
    """The last id dm-thin allows parses to a ThinId."""
    table = parse_thin_table(_thin(f"254:0 {MAX_THIN_ID}"))
    assert type(table.device_id) is ThinId and table.device_id == MAX_THIN_ID


def test_a_thin_table_past_24_bits_is_a_parse_error_naming_the_field() -> None:
    """An id no pool can hold is refused where the table is parsed, naming dev_id."""
    with pytest.raises(ParseError, match=r"field 'dev_id' \(thin id in the pool \(24 bits\)\)"):
        parse_thin_table(_thin(f"254:0 {MAX_THIN_ID + 1}"))


def test_our_uuid_gives_back_the_thin_id_it_was_made_from() -> None:
    """thin_uuid and parse_thin_uuid agree; a foreign or out-of-range uuid is not ours."""
    assert parse_thin_uuid("p", thin_uuid("p", ThinId(42))) == 42
    assert type(parse_thin_uuid("p", thin_uuid("p", ThinId(42)))) is ThinId
    assert parse_thin_uuid("p", thin_uuid("q", ThinId(42))) is None
    assert parse_thin_uuid("p", f"RECONCILER-v1-p-{MAX_THIN_ID + 1}") is None

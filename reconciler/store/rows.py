"""Where rows become records and records rows: the one place the store converts types.

Records carry the vocabulary's enums and checked thin ids; the database columns hold their
strings and integers. Each table's conversion is written once, here, for the hand-written
SQL (tuples) and for peewee's row objects alike. A value no record may hold (a state this
version does not know, a thin id out of range) is a RowError naming the table, the column
and the value, never a record carrying a bad string onward.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from enum import StrEnum
from typing import Any, TypeVar

from reconciler.store.database import StoreError
from reconciler.store.records import (
    DeviceRecord,
    IntentRecord,
    OrphanKind,
    OrphanRecord,
    PoolRecord,
    SnapshotRecord,
    TransitionRecord,
    UnknownKind,
)
from reconciler.vocabulary import (
    NO_LABELS,
    DeviceState,
    Filesystem,
    Kind,
    PoolOp,
    Removal,
    ThinId,
    ThinIdError,
    Trigger,
)

E = TypeVar("E", bound=StrEnum)


class RowError(StoreError):
    """A stored value no record may hold (written by another version, or by hand)."""


DEVICE_COLUMNS = tuple(f.name for f in fields(DeviceRecord))
TRANSITION_COLUMNS = tuple(f.name for f in fields(TransitionRecord))
INTENT_COLUMNS = tuple(f.name for f in fields(IntentRecord))
SNAPSHOT_COLUMNS = tuple(f.name for f in fields(SnapshotRecord))
POOL_COLUMNS = tuple(f.name for f in fields(PoolRecord))
ORPHAN_COLUMNS = tuple(f.name for f in fields(OrphanRecord))


def open_kind(kind: type[E], value: str) -> E | UnknownKind:
    """A kind column that a newer version may have written a kind into that this one does
    not know (requests, conditions): the member, or the text as an UnknownKind."""
    try:
        return kind(value)
    except ValueError:
        return UnknownKind(value)


def enum_cell(kind: type[E], value: object, table: str, column: str) -> E:
    """The member of `kind` a column holds, or a RowError that says what was found."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise RowError(f"{table}.{column} holds {value!r}, not a {kind.__name__} "
                       f"(one of {allowed})") from None


def thin_id_cell(value: object, table: str, column: str) -> ThinId | None:
    """The thin id a column holds (None for NULL), or a RowError that says what was found."""
    if value is None:
        return None
    try:
        return ThinId(value)  # type: ignore[arg-type]  # checked by ThinId itself
    except ThinIdError as exc:
        raise RowError(f"{table}.{column}: {exc}") from None


def _cell(value: Any) -> Any:
    """What a column stores of a record's value: an enum's string, a thin id's integer."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, ThinId):
        return int(value)
    return value


def _values(record: Any, columns: Sequence[str]) -> list[Any]:
    return [_cell(getattr(record, name)) for name in columns]


def _named(row: Sequence[Any] | Any, columns: Sequence[str]) -> dict[str, Any]:
    """A tuple of the hand-written SQL, or a peewee row object, as column -> value."""
    if isinstance(row, tuple):
        return dict(zip(columns, row, strict=True))
    return {name: getattr(row, name) for name in columns}


def device_values(record: DeviceRecord) -> list[Any]:
    """The devices row of a record, in DEVICE_COLUMNS' order."""
    values = _values(record, DEVICE_COLUMNS)
    values[DEVICE_COLUMNS.index("labels")] = json.dumps(dict(record.labels), sort_keys=True)
    return values


# The members by their stored values: a dict lookup per row where a start-up reads 50,000
# (an unknown value still goes through enum_cell, which names it).
_STATES: dict[object, DeviceState] = {m.value: m for m in DeviceState}
_FILESYSTEMS: dict[object, Filesystem] = {m.value: m for m in Filesystem}
_NO_LABELS = "{}"


def device_record(row: Sequence[Any] | Any) -> DeviceRecord:
    """The record of a devices row. Its name and spec digest are interned: the spec of an
    unchanged device carries equal strings (interned there too), held once, not twice."""
    values = _named(row, DEVICE_COLUMNS)
    labels = values["labels"]
    values["labels"] = NO_LABELS if labels == _NO_LABELS else json.loads(labels)
    for flag in ("provisioned", "formatted", "active", "readonly"):
        values[flag] = bool(values[flag])
    state = _STATES.get(values["state"])
    values["state"] = state if state is not None else enum_cell(
        DeviceState, values["state"], "devices", "state")
    filesystem = _FILESYSTEMS.get(values["filesystem"])
    values["filesystem"] = filesystem if filesystem is not None else enum_cell(
        Filesystem, values["filesystem"], "devices", "filesystem")
    for column in ("device_id", "origin_id"):
        if values[column] is not None:
            values[column] = thin_id_cell(values[column], "devices", column)
    for column in ("name", "spec_digest"):
        if isinstance(values[column], str):
            values[column] = sys.intern(values[column])
    return DeviceRecord(**values)


def transition_values(record: TransitionRecord) -> list[Any]:
    """The transitions row of a record, in TRANSITION_COLUMNS' order."""
    return _values(record, TRANSITION_COLUMNS)


def transition_record(row: Sequence[Any] | Any) -> TransitionRecord:
    """The record of a transitions row."""
    values = _named(row, TRANSITION_COLUMNS)
    for column in ("from_state", "to_state"):
        values[column] = enum_cell(DeviceState, values[column], "transitions", column)
    values["trigger"] = enum_cell(Trigger, values["trigger"], "transitions", "trigger")
    return TransitionRecord(**values)


def intent_values(record: IntentRecord) -> list[Any]:
    """The intents row of a record, in INTENT_COLUMNS' order."""
    return _values(record, INTENT_COLUMNS)


def intent_record(row: Sequence[Any] | Any) -> IntentRecord:
    """The record of an intents row."""
    values = _named(row, INTENT_COLUMNS)
    values["op"] = enum_cell(PoolOp, values["op"], "intents", "op")
    thin_id = thin_id_cell(values["thin_id"], "intents", "thin_id")
    if thin_id is None:
        raise RowError("intents.thin_id holds NULL, not a thin id")
    values["thin_id"] = thin_id
    values["origin_id"] = thin_id_cell(values["origin_id"], "intents", "origin_id")
    return IntentRecord(**values)


def orphan_values(record: OrphanRecord) -> dict[str, Any]:
    """The orphans row of a record, by column."""
    return dict(zip(ORPHAN_COLUMNS, _values(record, ORPHAN_COLUMNS), strict=True))


def orphan_record(row: Sequence[Any] | Any) -> OrphanRecord:
    """The record of an orphans row."""
    values = _named(row, ORPHAN_COLUMNS)
    values["kind"] = enum_cell(OrphanKind, values["kind"], "orphans", "kind")
    values["thin_id"] = thin_id_cell(values["thin_id"], "orphans", "thin_id")
    return OrphanRecord(**values)


def snapshot_values(record: SnapshotRecord) -> list[Any]:
    """The snapshots row of a record, in SNAPSHOT_COLUMNS' order."""
    values = _values(record, SNAPSHOT_COLUMNS)
    values[SNAPSHOT_COLUMNS.index("labels")] = json.dumps(record.labels, sort_keys=True)
    return values


def snapshot_record(row: Sequence[Any] | Any) -> SnapshotRecord:
    """The record of a snapshots row."""
    values = _named(row, SNAPSHOT_COLUMNS)
    values["labels"] = json.loads(values["labels"])
    for flag in ("exposed", "active", "readonly"):
        values[flag] = bool(values[flag])
    values["kind"] = enum_cell(Kind, values["kind"], "snapshots", "kind")
    values["filesystem"] = enum_cell(Filesystem, values["filesystem"], "snapshots",
                                     "filesystem")
    if values["removal"] is not None:
        values["removal"] = enum_cell(Removal, values["removal"], "snapshots", "removal")
    return SnapshotRecord(**values)


def pool_record(row: Sequence[Any] | Mapping[str, Any]) -> PoolRecord:
    """The record of a pools row."""
    return PoolRecord(**_named(row, POOL_COLUMNS))

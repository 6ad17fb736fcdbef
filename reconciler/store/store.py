"""Store: the daemon's memory, one SQLite file in WAL mode.

synchronous=FULL because every row written here is a promise about the kernel that recovery
will rely on after a power cut. Thin ids are allocated here (lowest free) because the store,
not the kernel, is where we can see which ids are quarantined (Faulty) or in flight.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import peewee

from reconciler.store.models import (
    ALL_MODELS,
    DATABASE,
    DeviceRow,
    PoolRow,
    RejectedSpecRow,
    TransitionRow,
)
from reconciler.store.records import (
    DeviceRecord,
    PoolRecord,
    RejectedSpecRecord,
    TransitionRecord,
)

# dm-thin device ids are 24 bits wide.
MAX_THIN_ID = (1 << 24) - 1
REMOVED = "Removed"


class StoreError(RuntimeError):
    """The store cannot do what was asked (no free id, database unreadable)."""


def _device_from_row(row: DeviceRow) -> DeviceRecord:
    values: dict[str, Any] = {f.name: getattr(row, f.name) for f in fields(DeviceRecord)}
    values["labels"] = json.loads(row.labels)
    return DeviceRecord(**values)


class Store:
    """The daemon's persistent state. One Store per thread: peewee connections are not shared."""

    def __init__(self, path: Path, clock: Callable[[], float], max_id: int = MAX_THIN_ID) -> None:
        self.path = path
        self.max_id = max_id
        self.clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = peewee.SqliteDatabase(
            str(path),
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",
                "busy_timeout": 5000,
            },
        )
        DATABASE.initialize(self._db)
        self._db.connect(reuse_if_open=True)
        self._db.create_tables(ALL_MODELS, safe=True)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes so they land together or not at all."""
        with self._db.atomic():
            yield

    # -- devices ---------------------------------------------------------------------------

    def devices(self, include_removed: bool = False) -> list[DeviceRecord]:
        """All device records by name; Removed ones only when asked (they are history)."""
        query = DeviceRow.select().order_by(DeviceRow.name)
        if not include_removed:
            query = query.where(DeviceRow.state != REMOVED)
        return [_device_from_row(row) for row in query]

    def device(self, name: str) -> DeviceRecord | None:
        """One device record, Removed included, or None."""
        row = DeviceRow.get_or_none(DeviceRow.name == name)
        return None if row is None else _device_from_row(row)

    def save_device(self, record: DeviceRecord) -> None:
        """Insert or update a device record."""
        values = asdict(record)
        values["labels"] = json.dumps(record.labels, sort_keys=True)
        DeviceRow.insert(**values).on_conflict_replace().execute()

    def ids_in_use(self) -> set[int]:
        """Thin ids held by devices that are not Removed (Faulty ones stay quarantined)."""
        query = DeviceRow.select(DeviceRow.device_id).where(
            (DeviceRow.state != REMOVED) & DeviceRow.device_id.is_null(False)
        )
        return {row.device_id for row in query if row.device_id is not None}

    def allocate_id(self) -> int:
        """The lowest thin id not held by any live device."""
        taken = self.ids_in_use()
        candidate = 0
        while candidate in taken:
            candidate += 1
        if candidate > self.max_id:
            raise StoreError(f"no free thin id: all {self.max_id + 1} ids are in use "
                             f"(dm-thin ids are 24-bit, at most {MAX_THIN_ID})")
        return candidate

    # -- history ---------------------------------------------------------------------------

    def record_transition(self, transition: TransitionRecord) -> None:
        """Append one state change to a device's history."""
        TransitionRow.create(**asdict(transition))

    def history(self, name: str) -> list[TransitionRecord]:
        """A device's state changes, oldest first."""
        query = (
            TransitionRow.select()
            .where(TransitionRow.device == name)
            .order_by(TransitionRow.at, TransitionRow.id)
        )
        return [
            TransitionRecord(
                device=row.device,
                from_state=row.from_state,
                to_state=row.to_state,
                trigger=row.trigger,
                at=row.at,
                error=row.error,
            )
            for row in query
        ]

    # -- rejected specs --------------------------------------------------------------------

    def replace_rejected_specs(self, rejected: Iterable[RejectedSpecRecord]) -> None:
        """Make the stored list of rejected specs exactly this one (the last pass's view)."""
        with self._db.atomic():
            RejectedSpecRow.delete().execute()
            for item in rejected:
                RejectedSpecRow.create(**asdict(item))

    def rejected_specs(self) -> list[RejectedSpecRecord]:
        """Spec files the last pass rejected, by name."""
        return [
            RejectedSpecRecord(name=row.name, path=row.path, error=row.error, seen_at=row.seen_at)
            for row in RejectedSpecRow.select().order_by(RejectedSpecRow.name)
        ]

    # -- pool ------------------------------------------------------------------------------

    def pool(self, name: str) -> PoolRecord | None:
        """The pool's record, or None before the pool was first made or adopted."""
        row = PoolRow.get_or_none(PoolRow.name == name)
        if row is None:
            return None
        return PoolRecord(**{f.name: getattr(row, f.name) for f in fields(PoolRecord)})

    def save_pool(self, record: PoolRecord) -> None:
        """Insert or update the pool's record."""
        PoolRow.insert(**asdict(record)).on_conflict_replace().execute()

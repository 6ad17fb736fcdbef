"""Store: the daemon's memory, one SQLite file in WAL mode, made of its tables.

`database.Connection` opens the file and runs transactions; `snapshot_tables` and
`operator_tables` hold the snapshotter's and the operators' tables; this module adds the
devices, their history, the pool and the write-ahead intents (what a pass writes around each
kernel call), and allocates thin ids: here (lowest free) because the store, not the kernel,
is where we can see which ids are quarantined (Faulty) or in flight.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from reconciler.store.database import StoreError
from reconciler.store.operator_tables import OperatorTables
from reconciler.store.records import DeviceRecord, IntentRecord, PoolRecord, TransitionRecord
from reconciler.store.rows import (
    DEVICE_COLUMNS,
    INTENT_COLUMNS,
    POOL_COLUMNS,
    TRANSITION_COLUMNS,
    device_record,
    device_values,
    intent_record,
    intent_values,
    pool_record,
    transition_record,
    transition_values,
)
from reconciler.store.snapshot_tables import SnapshotTables
from reconciler.vocabulary import MAX_THIN_ID, DeviceState, ThinId

__all__ = ["MAX_THIN_ID", "IdAllocator", "Store", "StoreError"]


class IdAllocator:
    """Hands out the lowest thin id not taken, lowest first; the one allocator there is.

    Built once per pass from the ids taken (live devices' and the pool's), it remembers where
    its last search ended, so that making N devices costs O(N) rather than O(N^2).
    """

    def __init__(self, taken: Iterable[int], max_id: int = MAX_THIN_ID) -> None:
        self._taken = set(taken)
        self._floor = 0
        self.max_id = min(max_id, MAX_THIN_ID)

    def take(self) -> ThinId:
        """The lowest free id, now taken."""
        candidate = self._floor
        while candidate in self._taken:
            candidate += 1
        if candidate > self.max_id:
            raise StoreError(f"no free thin id: all {self.max_id + 1} ids are in use "
                             f"(dm-thin ids are 24-bit, at most {MAX_THIN_ID})")
        self._taken.add(candidate)
        self._floor = candidate + 1
        return ThinId(candidate)


def _upsert(table: str, columns: tuple[str, ...]) -> str:
    return (f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


# The hot writes (a few per kernel call) as plain SQL: peewee's query building costs ten
# times SQLite's own work here, and these statements never change.
_SAVE_DEVICE = _upsert("devices", DEVICE_COLUMNS)
_SAVE_TRANSITION = (f"INSERT INTO transitions ({', '.join(TRANSITION_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(TRANSITION_COLUMNS))})")
_SAVE_INTENT = _upsert("intents", INTENT_COLUMNS)
_SAVE_TRANSACTION_ID = "UPDATE pools SET transaction_id = ? WHERE name = ?"
_SELECT_DEVICES = f"SELECT {', '.join(DEVICE_COLUMNS)} FROM devices"
_SELECT_DEVICE = f"{_SELECT_DEVICES} WHERE name = ?"
_SELECT_POOL = f"SELECT {', '.join(POOL_COLUMNS)} FROM pools WHERE name = ?"
_SELECT_HISTORY = (f"SELECT {', '.join(TRANSITION_COLUMNS)} FROM transitions WHERE device = ? "
                   "ORDER BY at, id")
_SELECT_INTENTS = f"SELECT {', '.join(INTENT_COLUMNS)} FROM intents ORDER BY at"


class Store(SnapshotTables, OperatorTables):
    """The daemon's persistent state (see `database.Connection` for how it is opened and
    shared). Each method commits before it returns unless inside `transaction`."""

    # -- devices ---------------------------------------------------------------------------

    def devices(self, include_removed: bool = False) -> list[DeviceRecord]:
        """All device records by name; Removed ones only when asked (they are history)."""
        sql = _SELECT_DEVICES
        params: tuple[Any, ...] = ()
        if not include_removed:
            sql += " WHERE state != ?"
            params = (DeviceState.REMOVED.value,)
        cursor = self._sql(sql + " ORDER BY name", params)
        return [device_record(row) for row in cursor.fetchall()]

    def device(self, name: str) -> DeviceRecord | None:
        """One device record, Removed included, or None."""
        row = self._sql(_SELECT_DEVICE, (name,)).fetchone()
        return None if row is None else device_record(row)

    def save_device(self, record: DeviceRecord) -> None:
        """Insert or update a device record."""
        self._sql(_SAVE_DEVICE, device_values(record))

    # -- history ---------------------------------------------------------------------------

    def record_transition(self, transition: TransitionRecord) -> None:
        """Append one state change to a device's history."""
        self._sql(_SAVE_TRANSITION, transition_values(transition))

    def history(self, name: str) -> list[TransitionRecord]:
        """A device's state changes, oldest first."""
        return [transition_record(row)
                for row in self._sql(_SELECT_HISTORY, (name,)).fetchall()]

    # -- pool ------------------------------------------------------------------------------

    def pool(self, name: str) -> PoolRecord | None:
        """The pool's record, or None before the pool was first made or adopted."""
        row = self._sql(_SELECT_POOL, (name,)).fetchone()
        return None if row is None else pool_record(row)

    def save_pool(self, record: PoolRecord) -> None:
        """Insert or update the pool's record."""
        self._m.Pool.insert(**asdict(record)).on_conflict_replace().execute()

    def save_transaction_id(self, name: str, value: int) -> None:
        """The pool's transaction id, after each change of its metadata (nothing before the
        pool is first recorded). One prepared statement: it is written with every create and
        delete, and peewee's read-modify-write of the row cost 90 ms of them in the VM."""
        self._sql(_SAVE_TRANSACTION_ID, (value, name))

    # -- write-ahead intents ---------------------------------------------------------------

    def save_intent(self, intent: IntentRecord) -> None:
        """Record a pool change before it is made (one per device at most)."""
        self._sql(_SAVE_INTENT, intent_values(intent))

    def drop_intent(self, device: str) -> None:
        """Forget a device's intent once the change is recorded or undone."""
        self._sql("DELETE FROM intents WHERE device = ?", (device,))

    def intents(self) -> list[IntentRecord]:
        """Pool changes that were started and not yet recorded as done."""
        return [intent_record(row) for row in self._sql(_SELECT_INTENTS).fetchall()]

    def intent(self, device: str) -> IntentRecord | None:
        """The pool change started for one device and not yet recorded as done, if any."""
        return next((i for i in self.intents() if i.device == device), None)

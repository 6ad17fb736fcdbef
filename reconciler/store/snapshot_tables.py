"""The snapshotter API's stored specs: the snapshots table and its queries.

Part of the store (see `store.Store`, which is made of these tables). The lookups every
snapshotter call makes are plain SQL: peewee built each in 40 ms under the VM's emulation,
most of a Prepare's own time.
"""

from __future__ import annotations

from collections.abc import Mapping

import peewee

from reconciler.store.database import Connection
from reconciler.store.records import SnapshotRecord
from reconciler.store.rows import SNAPSHOT_COLUMNS, snapshot_record, snapshot_values
from reconciler.vocabulary import Kind, Removal

_SELECT_SNAPSHOTS = f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM snapshots"
_SELECT_LIVE_SNAPSHOT_BY_KEY = (f"{_SELECT_SNAPSHOTS} WHERE key = ? AND removal IS NULL "
                                "AND kind != ?")
_SELECT_SNAPSHOT = f"{_SELECT_SNAPSHOTS} WHERE name = ?"
# A measured figure is never unset by a save: a record read before the measurement and
# saved after it (a call parked across a pass) keeps what was measured meanwhile.
_SAVE_SNAPSHOT = (
    f"INSERT INTO snapshots ({', '.join(SNAPSHOT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SNAPSHOT_COLUMNS))}) ON CONFLICT(name) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(snapshots.{c}, excluded.{c})" if c == "exclusive_bytes"
                else f"{c} = excluded.{c}" for c in SNAPSHOT_COLUMNS if c != "name"))
_MAX_SNAPSHOT_SEQ = "SELECT MAX(seq) FROM snapshots"
_SELECT_UNMEASURED = (f"{_SELECT_SNAPSHOTS} WHERE kind = ? AND removal IS NULL "
                      "AND exclusive_bytes IS NULL ORDER BY seq")
_SET_EXCLUSIVE_BYTES = ("UPDATE snapshots SET exclusive_bytes = ? "
                        "WHERE name = ? AND exclusive_bytes IS NULL")


class SnapshotTables(Connection):
    """Snapshots: saved by the snapshotter, read by it and (as device specs) by reconcile."""

    def save_snapshot(self, record: SnapshotRecord) -> None:
        """Insert or update a snapshot."""
        self._sql(_SAVE_SNAPSHOT, snapshot_values(record))
        self._saved_snapshots.add(record.name)

    def take_saved_snapshots(self) -> set[str]:
        """Names of the snapshots this Store saved since the last call (a rolled-back save
        included: the caller only reads those rows again)."""
        saved, self._saved_snapshots = self._saved_snapshots, set()
        return saved

    def snapshots(self) -> list[SnapshotRecord]:
        """Every snapshot whose device is wanted (live, or removed but awaiting Cleanup)."""
        snap = self._m.Snapshot
        query = snap.select().where(
            snap.removal.is_null() | (snap.removal == Removal.PENDING.value)).order_by(snap.seq)
        return [snapshot_record(row) for row in query]

    def live_snapshots(self) -> list[SnapshotRecord]:
        """Snapshots the API can see (not removed, not a base), oldest first."""
        snap = self._m.Snapshot
        query = snap.select().where(snap.removal.is_null() & (snap.kind != Kind.BASE.value))
        return [snapshot_record(row) for row in query.order_by(snap.seq)]

    def snapshot_by_key(self, key: str) -> SnapshotRecord | None:
        """The live snapshot with this key, if any (never a base, whatever its key)."""
        row = self._sql(_SELECT_LIVE_SNAPSHOT_BY_KEY, (key, Kind.BASE.value)).fetchone()
        return None if row is None else snapshot_record(row)

    def bases(self) -> list[SnapshotRecord]:
        """The snapshotter's live base devices, newest first."""
        snap = self._m.Snapshot
        query = snap.select().where(snap.removal.is_null() & (snap.kind == Kind.BASE.value))
        return [snapshot_record(row) for row in query.order_by(snap.seq)]

    def snapshots_on(self, device: str) -> list[SnapshotRecord]:
        """Wanted snapshots whose device is taken from `device` (a parent's or a base's)."""
        snap = self._m.Snapshot
        query = snap.select().where((snap.parent == device) & (
            snap.removal.is_null() | (snap.removal == Removal.PENDING.value)))
        return [snapshot_record(row) for row in query.order_by(snap.seq)]

    def snapshot(self, name: str) -> SnapshotRecord | None:
        """A snapshot by its device name, removed ones included."""
        row = self._sql(_SELECT_SNAPSHOT, (name,)).fetchone()
        return None if row is None else snapshot_record(row)

    def snapshot_children(self, key: str) -> list[SnapshotRecord]:
        """Live snapshots taken from the committed snapshot `key`."""
        snap = self._m.Snapshot
        query = snap.select().where((snap.parent_key == key) & snap.removal.is_null())
        return [snapshot_record(row) for row in query.order_by(snap.seq)]

    def snapshots_with_removal(self, removal: Removal) -> list[SnapshotRecord]:
        """Snapshots removed by the API in this way."""
        snap = self._m.Snapshot
        query = snap.select().where(snap.removal == removal.value).order_by(snap.seq)
        return [snapshot_record(row) for row in query]

    def unmeasured_snapshots(self) -> list[SnapshotRecord]:
        """Live committed snapshots whose exclusive bytes are not measured yet, oldest first."""
        rows = self._sql(_SELECT_UNMEASURED, (Kind.COMMITTED.value,)).fetchall()
        return [snapshot_record(row) for row in rows]

    def save_exclusive_bytes(self, measured: Mapping[str, int]) -> None:
        """Store what was measured of these snapshots (by device name), in one transaction.
        A figure is written once: a snapshot measured already keeps its first (taken before
        any child could share its blocks). Not a change of any device's spec: the snapshots
        are not reported to `take_saved_snapshots`."""
        with self.transaction():
            for name, size in measured.items():
                self._sql(_SET_EXCLUSIVE_BYTES, (size, name))

    def next_snapshot_seq(self) -> int:
        """A sequence number never used before (removed snapshots keep theirs as history)."""
        value = self._sql(_MAX_SNAPSHOT_SEQ).fetchone()[0]
        return 1 if value is None or value < 1 else int(value) + 1

    def next_base_seq(self) -> int:
        """A base's sequence number, never used before: bases count down from -1, apart
        from containerd's snapshots."""
        value = self._m.Snapshot.select(peewee.fn.MIN(self._m.Snapshot.seq)).scalar()
        return -1 if value is None or value > -1 else int(value) - 1

"""The store: the thin id allocator over its ids, history, and records surviving a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.store import (
    MAX_THIN_ID,
    DeviceRecord,
    IdAllocator,
    Store,
    StoreError,
    TransitionRecord,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite", lambda: 100.0)


def test_ids_are_allocated_lowest_free_first(store: Store) -> None:
    """The first id is 0, and a freed id is handed out again before a new one."""
    assert IdAllocator(store.ids_in_use()).take() == 0
    store.save_device(DeviceRecord(name="a", device_id=0, state="Created"))
    store.save_device(DeviceRecord(name="b", device_id=1, state="Created"))
    assert IdAllocator(store.ids_in_use()).take() == 2
    store.save_device(DeviceRecord(name="a", device_id=0, state="Removed"))
    assert IdAllocator(store.ids_in_use()).take() == 0


def test_faulty_devices_keep_their_ids_quarantined(store: Store) -> None:
    """A Faulty device's id is not reused until the device is cleared."""
    store.save_device(DeviceRecord(name="a", device_id=0, state="Faulty"))
    assert IdAllocator(store.ids_in_use()).take() == 1


def test_ids_are_24_bit_and_exhaustion_is_a_clear_error(tmp_path: Path) -> None:
    """Ids stop at 2**24-1; when every id is taken, allocation fails saying so."""
    assert MAX_THIN_ID == (1 << 24) - 1
    small = Store(tmp_path / "small.sqlite", lambda: 1.0, max_id=1)
    small.save_device(DeviceRecord(name="a", device_id=0, state="Created"))
    small.save_device(DeviceRecord(name="b", device_id=1, state="Faulty"))
    with pytest.raises(StoreError, match="24-bit"):
        IdAllocator(small.ids_in_use(), small.max_id).take()


def test_records_and_history_survive_a_reopen(tmp_path: Path) -> None:
    """What was saved is there after closing and opening the database again."""
    first = Store(tmp_path / "db.sqlite", lambda: 1.0)
    first.save_device(DeviceRecord(name="a", device_id=3, labels={"team": "web"}))
    first.record_transition(TransitionRecord("a", "Unknown", "Creating", "create", 1.0))
    first.close()
    second = Store(tmp_path / "db.sqlite", lambda: 2.0)
    record = second.device("a")
    assert record is not None
    assert (record.device_id, record.labels) == (3, {"team": "web"})
    assert [t.to_state for t in second.history("a")] == ["Creating"]


def test_removed_devices_are_history_not_inventory(store: Store) -> None:
    """devices() leaves Removed rows out unless asked; device() still finds them."""
    store.save_device(DeviceRecord(name="gone", state="Removed"))
    store.save_device(DeviceRecord(name="here", state="Activated"))
    assert [d.name for d in store.devices()] == ["here"]
    assert [d.name for d in store.devices(include_removed=True)] == ["gone", "here"]
    assert store.device("gone") is not None


OLD_SNAPSHOTS = """CREATE TABLE snapshots (
    name VARCHAR(255) NOT NULL PRIMARY KEY, seq INTEGER NOT NULL, key TEXT NOT NULL,
    kind VARCHAR(255) NOT NULL, parent_key TEXT, parent VARCHAR(255),
    labels TEXT NOT NULL, size_bytes BIGINT NOT NULL, filesystem VARCHAR(255) NOT NULL,
    exposed INTEGER NOT NULL, removal VARCHAR(255), base_inodes BIGINT NOT NULL,
    used_bytes BIGINT NOT NULL, used_inodes BIGINT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, removed_at REAL)"""


def test_snapshots_of_an_older_database_get_their_device_wishes(tmp_path: Path) -> None:
    """A database from before the snapshotter stored active/read-only is migrated once,
    with the rule that version used: nothing it kept active is deactivated, or the reverse."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SNAPSHOTS)
        for seq, kind, exposed, removal in [(1, "active", 0, None), (2, "view", 0, None),
                                            (3, "committed", 0, None),
                                            (4, "committed", 1, None),
                                            (5, "active", 0, "pending")]:
            db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, NULL, NULL, '{}', 1024, "
                       "'ext4', ?, ?, 0, 0, 0, 1.0, 1.0, NULL)",
                       (f"snap-{seq}", seq, f"k{seq}", kind, exposed, removal))
    store = Store(path, lambda: 2.0)
    wishes = {s.name: (s.active, s.readonly) for s in store.snapshots()}
    assert wishes == {
        "snap-1": (True, False),  # active: a writable live device
        "snap-2": (True, True),  # view: read-only
        "snap-3": (False, True),  # committed: rests
        "snap-4": (True, True),  # committed, mounts asked for: read-only
        "snap-5": (False, False),  # removed, waiting for Cleanup: rests
    }
    store.close()
    reopened = Store(path, lambda: 3.0)  # the migration runs once
    assert {s.name: (s.active, s.readonly) for s in reopened.snapshots()} == wishes
    reopened.close()

"""The store: the thin id allocator over its ids, history, records surviving a reopen, and
sharing its file with other processes (waiting, trying again whole, giving up clearly)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.store import (
    MAX_THIN_ID,
    DeviceRecord,
    IdAllocator,
    PoolRecord,
    RequestKind,
    SnapshotRecord,
    Store,
    StoreError,
    TransitionRecord,
)
from reconciler.store.database import BUSY_RETRY_DELAYS
from reconciler.testing.world import FakeClock
from reconciler.vocabulary import DeviceState, Filesystem, Kind, Removal, ThinId, Trigger


def held_ids(store: Store) -> set[int]:
    """Thin ids held by devices that are not Removed (a Faulty one's stays quarantined)."""
    return {r.device_id for r in store.devices() if r.device_id is not None}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite", lambda: 100.0)


def test_ids_are_allocated_lowest_free_first(store: Store) -> None:
    """The first id is 0, and a freed id is handed out again before a new one."""
    assert IdAllocator(held_ids(store)).take() == 0
    store.save_device(DeviceRecord(name="a", device_id=ThinId(0), state=DeviceState.CREATED))
    store.save_device(DeviceRecord(name="b", device_id=ThinId(1), state=DeviceState.CREATED))
    assert IdAllocator(held_ids(store)).take() == 2
    store.save_device(DeviceRecord(name="a", device_id=ThinId(0), state=DeviceState.REMOVED))
    assert IdAllocator(held_ids(store)).take() == 0


def test_faulty_devices_keep_their_ids_quarantined(store: Store) -> None:
    """A Faulty device's id is not reused until the device is cleared."""
    store.save_device(DeviceRecord(name="a", device_id=ThinId(0), state=DeviceState.FAULTY))
    assert IdAllocator(held_ids(store)).take() == 1


def test_ids_are_24_bit_and_exhaustion_is_a_clear_error(tmp_path: Path) -> None:
    """Ids stop at 2**24-1; when every id is taken, allocation fails saying so."""
    assert MAX_THIN_ID == (1 << 24) - 1
    small = Store(tmp_path / "small.sqlite", lambda: 1.0, max_id=1)
    small.save_device(DeviceRecord(name="a", device_id=ThinId(0), state=DeviceState.CREATED))
    small.save_device(DeviceRecord(name="b", device_id=ThinId(1), state=DeviceState.FAULTY))
    with pytest.raises(StoreError, match="24-bit"):
        IdAllocator(held_ids(small), small.max_id).take()


def test_records_and_history_survive_a_reopen(tmp_path: Path) -> None:
    """What was saved is there after closing and opening the database again."""
    first = Store(tmp_path / "db.sqlite", lambda: 1.0)
    first.save_device(DeviceRecord(name="a", device_id=ThinId(3), labels={"team": "web"}))
    first.record_transition(TransitionRecord(
        "a", DeviceState.UNKNOWN, DeviceState.CREATING, Trigger.CREATE, 1.0))
    first.close()
    second = Store(tmp_path / "db.sqlite", lambda: 2.0)
    record = second.device("a")
    assert record is not None
    assert (record.device_id, record.labels) == (3, {"team": "web"})
    assert [t.to_state for t in second.history("a")] == ["Creating"]


def test_removed_devices_are_history_not_inventory(store: Store) -> None:
    """devices() leaves Removed rows out unless asked; device() still finds them."""
    store.save_device(DeviceRecord(name="gone", state=DeviceState.REMOVED))
    store.save_device(DeviceRecord(name="here", state=DeviceState.ACTIVATED))
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


def _snapshots_schema(path: Path) -> set[tuple[str, str]]:
    """The snapshots table's and its indexes' SQL."""
    with sqlite3.connect(path) as db:
        return set(db.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name = "
                              "'snapshots' OR name = 'snapshots_old'").fetchall())


def _snapshots_measured_in_commit(path: Path) -> None:
    """A database as the version that measured usage in Commit left it: its peewee schema
    (used_bytes NOT NULL with no default, the indexes), two snapshots."""
    with sqlite3.connect(path) as db:
        db.execute(OLD_SNAPSHOTS.replace(
            "exposed INTEGER NOT NULL,",
            "exposed INTEGER NOT NULL, active INTEGER NOT NULL, readonly INTEGER NOT NULL,"))
        for index in ("key", "parent_key", "removal"):
            db.execute(f"CREATE INDEX snapshotrow_{index} ON snapshots ({index})")
        db.execute("CREATE UNIQUE INDEX snapshotrow_seq ON snapshots (seq)")
        db.execute("INSERT INTO snapshots VALUES ('snap-1', 1, 'layer', 'committed', NULL, "
                   "NULL, '{}', 1024, 'ext4', 0, 0, 1, NULL, 0, 65536, 12, 1.0, 1.0, NULL)")
        db.execute("INSERT INTO snapshots VALUES ('snap-2', 2, 'work', 'active', 'layer', "
                   "'snap-1', '{}', 1024, 'ext4', 0, 1, 0, NULL, 12, 0, 0, 1.0, 1.0, NULL)")


def test_usage_measured_by_an_older_version_is_kept(tmp_path: Path) -> None:
    """A committed snapshot measured by an older version (in its Commit) keeps its figure;
    an active one has none (measured when asked); the table takes rows that leave the bytes
    unmeasured, keeps its indexes, and is migrated once."""
    path = tmp_path / "old.sqlite"
    _snapshots_measured_in_commit(path)
    store = Store(path, lambda: 2.0)
    layer, work = store.snapshots()
    assert (layer.key, layer.exclusive_bytes, layer.used_inodes) == ("layer", 65536, 12)
    assert (work.key, work.exclusive_bytes) == ("work", None)
    work.kind, work.key = Kind.COMMITTED, "layer-2"
    store.save_snapshot(work)
    assert [r.key for r in store.unmeasured_snapshots()] == ["layer-2"]
    store.save_exclusive_bytes({"snap-2": 4096, "snap-1": 1})
    assert [r.exclusive_bytes for r in store.snapshots()] == [65536, 4096], "measured once"
    store.close()
    fresh = tmp_path / "fresh.sqlite"
    Store(fresh, lambda: 1.0).close()
    assert _snapshots_schema(path) == _snapshots_schema(fresh), "as a new database's"
    reopened = Store(path, lambda: 3.0)
    assert [r.exclusive_bytes for r in reopened.snapshots()] == [65536, 4096]
    reopened.close()


# -- sharing the file with other processes ---------------------------------------------------


def _other_process(path: Path) -> sqlite3.Connection:
    """Another process's connection: it waits for no lock (so a single-threaded test sees at
    once what it would have waited for)."""
    return sqlite3.connect(path, isolation_level=None, timeout=0)


def _add_request(db: sqlite3.Connection, name: str) -> None:
    db.execute("INSERT INTO requests (kind, name, at) VALUES ('retry', ?, 1.0)", (name,))


def test_taking_requests_survives_a_commit_between_its_read_and_its_write(
        tmp_path: Path) -> None:
    """The daemon's take_requests reads, then deletes; a CLI commit landing in between made
    the delete fail with `database is locked` (a deferred transaction cannot become a writer
    after another one committed). Now the other process is the one that waits."""
    path = tmp_path / "db.sqlite"
    daemon = Store(path, lambda: 1.0)
    daemon.add_request(RequestKind.GC_ORPHANS, "*")
    cli = _other_process(path)
    outcomes: list[str] = []

    def between(sql: str) -> None:
        # Called as each statement of the daemon's connection starts: the delete comes after
        # the read, so a commit here is one between them.
        if sql.startswith("DELETE") and "requests" in sql and not outcomes:
            try:
                _add_request(cli, "between")
                outcomes.append("committed")
            except sqlite3.OperationalError as exc:
                outcomes.append(str(exc))

    daemon.trace(between)
    taken = daemon.take_requests()
    daemon.trace(None)
    assert outcomes == ["database is locked"]  # the daemon held the write lock since BEGIN
    assert [(r.kind, r.name) for r in taken] == [("gc-orphans", "*")]
    _add_request(cli, "after")  # what the waiting CLI then does
    assert [r.name for r in daemon.take_requests()] == ["after"]
    cli.close()
    daemon.close()


def test_work_refused_as_busy_waits_and_runs_again_whole(tmp_path: Path) -> None:
    """A read-modify-write met by another writer's lock waits (briefly, on the injected
    sleep) and then runs from its first statement: it sees what the other one committed."""
    path = tmp_path / "db.sqlite"
    clock = FakeClock()

    def sleep_then_commit(seconds: float) -> None:
        clock.sleep(seconds)
        if other.in_transaction:
            other.execute("COMMIT")

    store = Store(path, clock, sleep=sleep_then_commit, busy_timeout=0.01)
    store.add_request(RequestKind.GC_ORPHANS, "*")
    other = _other_process(path)
    other.execute("BEGIN IMMEDIATE")
    _add_request(other, "x")
    taken = store.take_requests()
    assert [r.name for r in taken] == ["*", "x"]
    assert len(clock.slept) == 1 and 0 < clock.slept[0] <= 1.5 * BUSY_RETRY_DELAYS[0]
    assert store.take_requests() == []
    other.close()
    store.close()


def test_a_transaction_refused_as_busy_is_begun_again_and_its_body_runs_once(
        tmp_path: Path) -> None:
    """`transaction()` waits for its BEGIN IMMEDIATE before any of its body runs, so the
    caller's writes run exactly once, all together."""
    path = tmp_path / "db.sqlite"
    waits: list[float] = []

    def sleep_then_release(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            other.execute("ROLLBACK")

    store = Store(path, lambda: 1.0, sleep=sleep_then_release, busy_timeout=0.01)
    other = _other_process(path)
    other.execute("BEGIN IMMEDIATE")
    runs = 0
    with store.transaction():
        runs += 1
        store.save_device(DeviceRecord(name="a", device_id=ThinId(0), state=DeviceState.CREATING))
        with store.transaction():  # nested: a savepoint of the same transaction
            store.record_transition(TransitionRecord(
                "a", DeviceState.UNKNOWN, DeviceState.CREATING, Trigger.CREATE, 1.0))
    assert runs == 1 and len(waits) == 2
    assert store.device("a") is not None
    assert [t.to_state for t in store.history("a")] == ["Creating"]
    other.close()
    store.close()


def test_a_database_busy_past_the_bound_is_a_store_error_saying_so(tmp_path: Path) -> None:
    """When another process keeps the write lock through every try, the store gives up after
    a bounded number of short waits with a StoreError that says the database stayed busy,
    and nothing of the refused work was written."""
    path = tmp_path / "db.sqlite"
    clock = FakeClock()
    store = Store(path, clock, sleep=clock.sleep, busy_timeout=0.01)
    other = _other_process(path)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="stayed busy through 7 tries"):
        store.add_request(RequestKind.RETRY, "a")
    with pytest.raises(StoreError, match="stayed busy"):
        store.take_requests()
    assert len(clock.slept) == 2 * len(BUSY_RETRY_DELAYS)
    assert sum(clock.slept) <= 2 * 1.5 * sum(BUSY_RETRY_DELAYS) < 10
    other.execute("ROLLBACK")
    assert store.take_requests() == []
    other.close()
    store.close()


def test_the_transaction_id_is_saved_alone(store: Store) -> None:
    """save_transaction_id changes that column of that pool's row only; before the pool is
    recorded it writes nothing."""
    store.save_transaction_id("p", 4)
    assert store.pool("p") is None
    store.save_pool(PoolRecord("p", 1, "/dev/loop0", "/dev/loop1", 128, 5.0))
    store.save_pool(PoolRecord("q", 1, "/dev/loop2", "/dev/loop3", 256, 6.0))
    store.save_transaction_id("p", 7)
    assert store.pool("p") == PoolRecord("p", 7, "/dev/loop0", "/dev/loop1", 128, 5.0)
    assert store.pool("q") == PoolRecord("q", 1, "/dev/loop2", "/dev/loop3", 256, 6.0)


def test_a_snapshot_reads_back_the_same_by_every_path(store: Store) -> None:
    """The prepared lookups (by key, by name) and peewee's listings give one record back."""
    record = SnapshotRecord(
        name="snap-7", seq=7, key="k/é", kind=Kind.COMMITTED, parent_key="p", parent="snap-3",
        labels={"b": "2", "a": "1"}, size_bytes=1 << 30, filesystem=Filesystem.XFS, exposed=True,
        active=False, readonly=True, removal=None, base_inodes=11, exclusive_bytes=4096,
        used_inodes=12, created_at=1.5, updated_at=2.5, removed_at=None)
    store.save_snapshot(record)
    assert store.snapshot_by_key("k/é") == record
    assert store.snapshot("snap-7") == record
    assert store.live_snapshots() == [record] == store.snapshots()
    assert store.next_snapshot_seq() == 8
    record.removal, record.removed_at = Removal.PENDING, 3.5
    store.save_snapshot(record)
    assert store.snapshot_by_key("k/é") is None
    assert store.snapshot("snap-7") == record


def test_a_measured_figure_outlives_a_save_of_a_record_read_before(store: Store) -> None:
    """A committed snapshot read unmeasured, measured meanwhile, then saved from the old read
    (its labels changed) keeps the figure: a measurement is never undone by a save."""
    record = SnapshotRecord(name="snap-1", seq=1, key="layer", kind=Kind.COMMITTED)
    store.save_snapshot(record)
    stale = store.snapshot("snap-1")
    assert stale is not None and stale.exclusive_bytes is None
    assert [r.name for r in store.unmeasured_snapshots()] == ["snap-1"]
    store.save_exclusive_bytes({"snap-1": 8192})
    stale.labels = {"tier": "gold"}
    store.save_snapshot(stale)
    saved = store.snapshot("snap-1")
    assert saved is not None and (saved.exclusive_bytes, saved.labels) == (8192,
                                                                           {"tier": "gold"})
    assert store.unmeasured_snapshots() == []


def test_a_device_reads_back_the_same_by_name_and_in_the_listing(store: Store) -> None:
    record = DeviceRecord(name="d", device_id=ThinId(3), state=DeviceState.ACTIVATED,
                          provisioned=True, formatted=True, labels={"x": "y"}, readonly=True)
    store.save_device(record)
    assert store.device("d") == record == store.devices()[0]
    assert store.device("e") is None

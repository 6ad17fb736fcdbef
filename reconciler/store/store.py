"""Store: the daemon's memory, one SQLite file in WAL mode.

synchronous=FULL because every row written here is a promise about the kernel that recovery
will rely on after a power cut. The file and its -wal and -shm are 0600: they hold labels,
spec errors and the pool's layout, which are for root (and the daemon's user) only. Thin
ids are allocated here (lowest free) because the store, not the kernel, is where we can see
which ids are quarantined (Faulty) or in flight.

The daemon and any number of CLI processes share the file, so every transaction that reads
then writes begins IMMEDIATE: in WAL mode a deferred one that read is refused at once when it
tries to write after another process committed (SQLite cannot wait for that upgrade, so
`busy_timeout` never applies to it). What SQLite still refuses as busy or locked is tried
again whole after a short wait, a bounded number of times, then raised as a StoreError that
says so: a single statement outside a transaction is run again alone, and a transaction is
begun again before any of it ran, or (the store's own) run again from its first statement.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import peewee
import structlog

from reconciler.store.models import bind_models
from reconciler.store.records import (
    BASE_KIND,
    ConditionKind,
    ConditionRecord,
    DeviceRecord,
    IntentRecord,
    OrphanRecord,
    PoolRecord,
    RejectedSpecRecord,
    RequestKind,
    RequestRecord,
    SnapshotRecord,
    TransitionRecord,
)

T = TypeVar("T")

log = structlog.get_logger(__name__)

# dm-thin device ids are 24 bits wide.
MAX_THIN_ID = (1 << 24) - 1
REMOVED = "Removed"

# How long SQLite itself waits for another connection's write lock before saying busy.
BUSY_TIMEOUT_S = 5.0
# Waits (seconds, before jitter) between the tries of work SQLite refused as busy: what the
# busy timeout does not cover (a snapshot that went stale, a lock met while opening) clears in
# milliseconds, and a lock held for all of these tries is held by something stuck.
BUSY_RETRY_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class StoreError(RuntimeError):
    """The store cannot do what was asked (no free id, database unreadable or busy)."""


def is_busy(exc: peewee.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the database (SQLITE_BUSY or
    SQLITE_LOCKED, extended codes included), which passes, unlike a broken file or query."""
    cause = exc.args[0] if exc.args else None
    code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "database is locked" in text or "database is busy" in text


class _Database(peewee.SqliteDatabase):
    """peewee's SQLite database whose statements outside a transaction go through `retry`
    (one statement is whole by itself); inside one, the transaction is what is retried."""

    def __init__(self, path: Path | str, retry: Callable[[Callable[[], Any]], Any],
                 busy_timeout: float, readonly: bool = False) -> None:
        pragmas: dict[str, Any] = {
            # First, so that the pragmas after it wait for a lock too.
            "busy_timeout": round(busy_timeout * 1000),
        }
        if not readonly:  # a reader changes nothing, not even the journal mode
            pragmas.update(journal_mode="wal", synchronous="full")
        super().__init__(str(path), pragmas=pragmas, timeout=busy_timeout, uri=readonly)
        self._retry = retry

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        """Run one statement; retried alone when it is not part of a transaction."""
        if self.in_transaction():
            return self._execute(sql, params)
        return self._retry(lambda: self._execute(sql, params))

    def _execute(self, sql: str, params: Any) -> Any:
        return super().execute_sql(sql, params)  # type: ignore[no-untyped-call]


class IdAllocator:
    """Hands out the lowest thin id not taken, lowest first; the one allocator there is.

    Built once per pass from the ids taken (live devices' and the pool's), it remembers where
    its last search ended, so that making N devices costs O(N) rather than O(N^2).
    """

    def __init__(self, taken: Iterable[int], max_id: int = MAX_THIN_ID) -> None:
        self._taken = set(taken)
        self._floor = 0
        self.max_id = max_id

    def take(self) -> int:
        """The lowest free id, now taken."""
        candidate = self._floor
        while candidate in self._taken:
            candidate += 1
        if candidate > self.max_id:
            raise StoreError(f"no free thin id: all {self.max_id + 1} ids are in use "
                             f"(dm-thin ids are 24-bit, at most {MAX_THIN_ID})")
        self._taken.add(candidate)
        self._floor = candidate + 1
        return candidate


_DEVICE_COLUMNS = tuple(f.name for f in fields(DeviceRecord))
_TRANSITION_COLUMNS = tuple(f.name for f in fields(TransitionRecord))
_INTENT_COLUMNS = tuple(f.name for f in fields(IntentRecord))


def _upsert(table: str, columns: tuple[str, ...]) -> str:
    return (f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


# The hot writes (a few per kernel call) as plain SQL: peewee's query building costs ten
# times SQLite's own work here, and these statements never change.
_SAVE_DEVICE = _upsert("devices", _DEVICE_COLUMNS)
_SAVE_TRANSITION = (f"INSERT INTO transitions ({', '.join(_TRANSITION_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_TRANSITION_COLUMNS))})")
_SAVE_INTENT = _upsert("intents", _INTENT_COLUMNS)
_SAVE_TRANSACTION_ID = "UPDATE pools SET transaction_id = ? WHERE name = ?"
_SELECT_DEVICES = f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM devices"
# The lookups every snapshotter call makes, for the same reason (peewee built each in 40 ms
# under the VM's emulation: most of a Prepare's own time).
_SNAPSHOT_COLUMNS = tuple(f.name for f in fields(SnapshotRecord))
_POOL_COLUMNS = tuple(f.name for f in fields(PoolRecord))
_SELECT_DEVICE = f"{_SELECT_DEVICES} WHERE name = ?"
_SELECT_SNAPSHOTS = f"SELECT {', '.join(_SNAPSHOT_COLUMNS)} FROM snapshots"
_SELECT_LIVE_SNAPSHOT_BY_KEY = (f"{_SELECT_SNAPSHOTS} WHERE key = ? AND removal IS NULL "
                                "AND kind != ?")
_SELECT_SNAPSHOT = f"{_SELECT_SNAPSHOTS} WHERE name = ?"
_SAVE_SNAPSHOT = _upsert("snapshots", _SNAPSHOT_COLUMNS)
_MAX_SNAPSHOT_SEQ = "SELECT MAX(seq) FROM snapshots"
_SELECT_POOL = f"SELECT {', '.join(_POOL_COLUMNS)} FROM pools WHERE name = ?"


def _device_values(record: DeviceRecord) -> list[Any]:
    values: list[Any] = [getattr(record, name) for name in _DEVICE_COLUMNS]
    values[_DEVICE_COLUMNS.index("labels")] = json.dumps(record.labels, sort_keys=True)
    return values


def _device_from_tuple(row: tuple[Any, ...]) -> DeviceRecord:
    values = dict(zip(_DEVICE_COLUMNS, row, strict=True))
    values["labels"] = json.loads(values["labels"])
    for flag in ("provisioned", "formatted", "active", "readonly"):
        values[flag] = bool(values[flag])
    return DeviceRecord(**values)


def _snapshot_from_tuple(row: tuple[Any, ...]) -> SnapshotRecord:
    values = dict(zip(_SNAPSHOT_COLUMNS, row, strict=True))
    values["labels"] = json.loads(values["labels"])
    for flag in ("exposed", "active", "readonly"):
        values[flag] = bool(values[flag])
    return SnapshotRecord(**values)


def _snapshot_values(record: SnapshotRecord) -> list[Any]:
    values: list[Any] = [getattr(record, name) for name in _SNAPSHOT_COLUMNS]
    values[_SNAPSHOT_COLUMNS.index("labels")] = json.dumps(record.labels, sort_keys=True)
    return values


def _snapshot_from_row(row: Any) -> SnapshotRecord:
    values: dict[str, Any] = {f.name: getattr(row, f.name) for f in fields(SnapshotRecord)}
    values["labels"] = json.loads(row.labels)
    return SnapshotRecord(**values)


# SQLite's files beside the database; it makes them with the database file's mode.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _private_files(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (SQLite then gives its -wal and
    -shm the same mode), and make an existing one, and its side files, 0600 if an earlier
    version left them readable by all. A file that is not ours to change is left to its
    owner (a user running `status` on a database they may read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    try:
        _tighten(fd)
    finally:
        os.close(fd)
    for suffix in _SIDE_FILES:
        try:
            fd = os.open(f"{path}{suffix}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK)
        except OSError:
            continue  # absent (or not a file SQLite could use either)
        try:
            _tighten(fd)
        finally:
            os.close(fd)


def _readonly_uri(path: Path) -> str:
    """How a reader opens the database file without creating or changing any file.

    SQLite's `mode=ro` still creates the -wal and -shm files of a WAL database when they are
    missing (and leaves them behind): so when there is no -wal, which means no connection
    has the database open (every writer's connection keeps one while open), the file is
    opened `immutable` (no locks, no side files); when there is one, a writer may be at work,
    and `mode=ro` reads its -wal and -shm, which exist already."""
    quoted = urllib.parse.quote(str(path.absolute()))
    if Path(f"{path}-wal").exists():
        return f"file:{quoted}?mode=ro"
    return f"file:{quoted}?mode=ro&immutable=1"


def _tighten(fd: int) -> None:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and os.geteuid() in (0, st.st_uid):
        os.fchmod(fd, 0o600)


class Store:
    """The daemon's persistent state. One Store per thread: peewee connections are not shared.

    Shared with other processes: `sleep` is how the store waits between the tries of work
    the database refused as busy (see the module docstring), `busy_timeout` how long SQLite
    waits for a lock within one try (default BUSY_TIMEOUT_S).

    `readonly` (what `reconciler plan` uses): no directory or file is created and none is
    changed, by construction: SQLite refuses any write. Without a database file the store
    is an empty one in memory (what a first pass would start from)."""

    def __init__(self, path: Path, clock: Callable[[], float], max_id: int = MAX_THIN_ID,
                 sleep: Callable[[float], None] = time.sleep,
                 busy_timeout: float | None = None, readonly: bool = False) -> None:
        self.path = path
        self.max_id = max_id
        self.clock = clock
        self._sleep = sleep
        timeout = BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout
        fresh = not path.exists()
        if readonly:
            where = "file::memory:" if fresh else _readonly_uri(path)
            self._db = _Database(where, self._retrying, timeout, readonly=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _private_files(path)
            self._db = _Database(path, self._retrying, timeout)
        self._m = bind_models(self._db)
        self._data_version: int | None = None
        self._saved_snapshots: set[str] = set()
        if readonly:
            try:
                self._retrying(lambda: self._db.connect(reuse_if_open=True))
                self._needs_migration()  # the first read: an unreadable file says so here
            except peewee.DatabaseError as exc:
                # Not ours to repair: say why in one line (a user without the right to the
                # 0600 file, not a database at all).
                raise StoreError(f"cannot read the database {path}: {exc}") from exc
        else:
            self._retrying(lambda: self._db.connect(reuse_if_open=True))
        if readonly and not fresh:
            if self._needs_migration():
                raise StoreError(f"the database {path} was written by an older version: "
                                 "run the daemon (or `reconciler run --once`) to update it")
            return
        # Statement by statement: CREATE ... IF NOT EXISTS is whole by itself, and an open
        # (every CLI call) takes no write lock unless the file needs to change.
        self._db.create_tables(self._m.all(), safe=True)
        if self._needs_migration():
            self._atomically(self._migrate)

    def _retrying(self, work: Callable[[], T]) -> T:
        """`work`, run again whole (after a short, growing wait) while the database is busy;
        a StoreError once it stayed busy through every try."""
        for attempt, delay in enumerate((*BUSY_RETRY_DELAYS, None), start=1):
            try:
                return work()
            except peewee.OperationalError as exc:
                if not is_busy(exc):
                    raise
                if delay is None:
                    raise StoreError(
                        f"the database {self.path} stayed busy through {attempt} tries "
                        f"({exc}): another process holds it; try again") from exc
                wait = delay * random.uniform(0.5, 1.5)  # so that waiting processes part
                log.debug("store.busy", error=str(exc), attempt=attempt,
                          next=f"trying again in {wait:.3f}s")
                self._sleep(wait)
        raise AssertionError("unreachable: the last try returns or raises")

    def _atomically(self, work: Callable[[], T]) -> T:
        """`work` (reads, then writes) as one IMMEDIATE transaction, run again whole while
        the database is busy; inside a caller's transaction, a savepoint of it."""
        if self._db.in_transaction():
            with self._db.atomic():
                return work()

        def once() -> T:
            with self._db.atomic("IMMEDIATE"):
                return work()

        return self._retrying(once)

    def _needs_migration(self) -> bool:
        columns = {column.name for column in self._db.get_columns("snapshots")}
        return "active" not in columns

    def _migrate(self) -> None:
        """Bring a database written by an older version up to this one's columns (in an
        IMMEDIATE transaction, asking again inside: two processes opening an old file
        at once do it once)."""
        if self._needs_migration():
            # Before 0.2 reconcile derived a snapshot device's wishes from its kind; now the
            # snapshotter stores them. Written once, with the rule the older version used.
            self._sql("ALTER TABLE snapshots ADD COLUMN active INTEGER NOT NULL DEFAULT 1")
            self._sql("ALTER TABLE snapshots ADD COLUMN readonly INTEGER NOT NULL DEFAULT 0")
            self._sql("UPDATE snapshots SET active = (removal IS NULL AND "
                      "(kind != 'committed' OR exposed)), readonly = (kind != 'active')")

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one plain statement (autocommitted unless inside `transaction`)."""
        return self._db.execute_sql(sql, params)

    def trace(self, callback: Callable[[str], None] | None) -> None:
        """Call `callback` with every SQL statement this store runs (None: stop); for
        benchmarks that count round trips."""
        self._db.connection().set_trace_callback(callback)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def _replace_all(self, model: Any, items: Iterable[Any]) -> None:
        """Make a table hold exactly `items` (dataclasses), in one transaction."""
        rows = [asdict(item) for item in items]  # taken once: the transaction may run again

        def replace() -> None:
            model.delete().execute()
            for row in rows:
                model.create(**row)

        self._atomically(replace)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes so they land together or not at all; nested, a savepoint.

        The outermost begins IMMEDIATE, retried while busy before any of its body ran; the
        body then holds the write lock, so none of it waits on another process. The body is
        the caller's and runs once: should SQLite refuse it as busy all the same, it is
        rolled back whole and raised as a StoreError."""
        if self._db.in_transaction():
            with self._db.atomic():
                yield
            return
        try:
            with ExitStack() as stack:
                self._retrying(lambda: stack.enter_context(self._db.atomic("IMMEDIATE")))
                yield
        except peewee.OperationalError as exc:
            if not is_busy(exc):
                raise
            raise StoreError(f"the database {self.path} was busy inside a transaction "
                             f"({exc}); nothing of it was written") from exc

    # -- devices ---------------------------------------------------------------------------

    def devices(self, include_removed: bool = False) -> list[DeviceRecord]:
        """All device records by name; Removed ones only when asked (they are history)."""
        sql = _SELECT_DEVICES
        params: tuple[Any, ...] = ()
        if not include_removed:
            sql += " WHERE state != ?"
            params = (REMOVED,)
        cursor = self._sql(sql + " ORDER BY name", params)
        return [_device_from_tuple(row) for row in cursor.fetchall()]

    def device(self, name: str) -> DeviceRecord | None:
        """One device record, Removed included, or None."""
        row = self._sql(_SELECT_DEVICE, (name,)).fetchone()
        return None if row is None else _device_from_tuple(row)

    def save_device(self, record: DeviceRecord) -> None:
        """Insert or update a device record."""
        self._sql(_SAVE_DEVICE, _device_values(record))

    def ids_in_use(self) -> set[int]:
        """Thin ids held by devices that are not Removed (Faulty ones stay quarantined)."""
        query = self._m.Device.select(self._m.Device.device_id).where(
            (self._m.Device.state != REMOVED) & self._m.Device.device_id.is_null(False)
        )
        return {row.device_id for row in query if row.device_id is not None}

    # -- history ---------------------------------------------------------------------------

    def record_transition(self, transition: TransitionRecord) -> None:
        """Append one state change to a device's history."""
        self._sql(_SAVE_TRANSITION,
                             [getattr(transition, name) for name in _TRANSITION_COLUMNS])

    def history(self, name: str) -> list[TransitionRecord]:
        """A device's state changes, oldest first."""
        query = (
            self._m.Transition.select()
            .where(self._m.Transition.device == name)
            .order_by(self._m.Transition.at, self._m.Transition.id)
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
        self._replace_all(self._m.RejectedSpec, rejected)

    def rejected_specs(self) -> list[RejectedSpecRecord]:
        """Spec files the last pass rejected, by name."""
        return [
            RejectedSpecRecord(name=row.name, path=row.path, error=row.error, seen_at=row.seen_at)
            for row in self._m.RejectedSpec.select().order_by(self._m.RejectedSpec.name)
        ]

    # -- pool ------------------------------------------------------------------------------

    def pool(self, name: str) -> PoolRecord | None:
        """The pool's record, or None before the pool was first made or adopted."""
        row = self._sql(_SELECT_POOL, (name,)).fetchone()
        return None if row is None else PoolRecord(*row)

    def save_pool(self, record: PoolRecord) -> None:
        """Insert or update the pool's record."""
        self._m.Pool.insert(**asdict(record)).on_conflict_replace().execute()

    def save_transaction_id(self, name: str, value: int) -> None:
        """The pool's transaction id, after each change of its metadata (nothing before the
        pool is first recorded). One prepared statement: it is written with every create and
        delete, and peewee's read-modify-write of the row cost 90 ms of them in the VM."""
        self._sql(_SAVE_TRANSACTION_ID, (value, name))

    # -- operator requests -----------------------------------------------------------------

    def add_request(self, kind: RequestKind, name: str, arg: int | None = None) -> int:
        """Queue a request for the daemon (it runs them at the start of its next pass);
        returns its id."""
        row = self._m.Request.create(kind=kind.value, name=name, at=self.clock(), arg=arg)
        request_id: int = row.id
        return request_id

    def written_by_others(self) -> bool:
        """Whether another connection (another process: the CLI, a second daemon) committed
        since the last time this was asked; True the first time."""
        version: int = self._sql("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    def has_requests(self) -> bool:
        """Whether any request waits (one cheap query)."""
        return self._sql("SELECT 1 FROM requests LIMIT 1").fetchone() is not None

    def take_requests(self) -> list[RequestRecord]:
        """Remove and return the queued requests, oldest first (CLI processes add them at
        any moment: the read and the delete are one IMMEDIATE transaction)."""
        def take() -> list[Any]:
            rows = list(self._m.Request.select().order_by(self._m.Request.id))
            self._m.Request.delete().where(self._m.Request.id.in_([r.id for r in rows])).execute()
            return rows

        return [RequestRecord(id=r.id, kind=r.kind, name=r.name, at=r.at, arg=r.arg)
                for r in self._atomically(take)]

    # -- write-ahead intents ---------------------------------------------------------------

    def save_intent(self, intent: IntentRecord) -> None:
        """Record a pool change before it is made (one per device at most)."""
        self._sql(_SAVE_INTENT, [getattr(intent, name) for name in _INTENT_COLUMNS])

    def drop_intent(self, device: str) -> None:
        """Forget a device's intent once the change is recorded or undone."""
        self._sql("DELETE FROM intents WHERE device = ?", (device,))

    def intents(self) -> list[IntentRecord]:
        """Pool changes that were started and not yet recorded as done."""
        return [
            IntentRecord(device=r.device, op=r.op, thin_id=r.thin_id, origin_id=r.origin_id,
                         from_txn=r.from_txn, to_txn=r.to_txn, at=r.at)
            for r in self._m.Intent.select().order_by(self._m.Intent.at)
        ]

    def intent(self, device: str) -> IntentRecord | None:
        """The pool change started for one device and not yet recorded as done, if any."""
        return next((i for i in self.intents() if i.device == device), None)

    # -- orphans ---------------------------------------------------------------------------

    def replace_orphans(self, orphans: Iterable[OrphanRecord]) -> None:
        """Make the stored orphan list exactly this one (the last full pass's view)."""
        self._replace_all(self._m.Orphan, orphans)

    def orphans(self) -> list[OrphanRecord]:
        """Thin ids and dm devices of our pool the store does not manage."""
        return [
            OrphanRecord(kind=r.kind, name=r.name, thin_id=r.thin_id, seen_at=r.seen_at)
            for r in self._m.Orphan.select().order_by(self._m.Orphan.kind, self._m.Orphan.name)
        ]

    # -- snapshots (the snapshotter API's stored specs) ------------------------------------

    def save_snapshot(self, record: SnapshotRecord) -> None:
        """Insert or update a snapshot."""
        self._sql(_SAVE_SNAPSHOT, _snapshot_values(record))
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
            snap.removal.is_null() | (snap.removal == "pending")).order_by(snap.seq)
        return [_snapshot_from_row(row) for row in query]

    def live_snapshots(self) -> list[SnapshotRecord]:
        """Snapshots the API can see (not removed, not a base), oldest first."""
        snap = self._m.Snapshot
        query = snap.select().where(snap.removal.is_null() & (snap.kind != BASE_KIND))
        return [_snapshot_from_row(row) for row in query.order_by(snap.seq)]

    def snapshot_by_key(self, key: str) -> SnapshotRecord | None:
        """The live snapshot with this key, if any (never a base, whatever its key)."""
        row = self._sql(_SELECT_LIVE_SNAPSHOT_BY_KEY, (key, BASE_KIND)).fetchone()
        return None if row is None else _snapshot_from_tuple(row)

    def bases(self) -> list[SnapshotRecord]:
        """The snapshotter's live base devices, newest first."""
        snap = self._m.Snapshot
        query = snap.select().where(snap.removal.is_null() & (snap.kind == BASE_KIND))
        return [_snapshot_from_row(row) for row in query.order_by(snap.seq)]

    def snapshots_on(self, device: str) -> list[SnapshotRecord]:
        """Wanted snapshots whose device is taken from `device` (a parent's or a base's)."""
        snap = self._m.Snapshot
        query = snap.select().where((snap.parent == device) & (
            snap.removal.is_null() | (snap.removal == "pending")))
        return [_snapshot_from_row(row) for row in query.order_by(snap.seq)]

    def snapshot(self, name: str) -> SnapshotRecord | None:
        """A snapshot by its device name, removed ones included."""
        row = self._sql(_SELECT_SNAPSHOT, (name,)).fetchone()
        return None if row is None else _snapshot_from_tuple(row)

    def snapshot_children(self, key: str) -> list[SnapshotRecord]:
        """Live snapshots taken from the committed snapshot `key`."""
        snap = self._m.Snapshot
        query = snap.select().where((snap.parent_key == key) & snap.removal.is_null())
        return [_snapshot_from_row(row) for row in query.order_by(snap.seq)]

    def snapshots_with_removal(self, removal: str) -> list[SnapshotRecord]:
        """Snapshots removed by the API in this way ("pending" or "requested")."""
        snap = self._m.Snapshot
        query = snap.select().where(snap.removal == removal).order_by(snap.seq)
        return [_snapshot_from_row(row) for row in query]

    def next_snapshot_seq(self) -> int:
        """A sequence number never used before (removed snapshots keep theirs as history)."""
        value = self._sql(_MAX_SNAPSHOT_SEQ).fetchone()[0]
        return 1 if value is None or value < 1 else int(value) + 1

    def next_base_seq(self) -> int:
        """A base's sequence number, never used before: bases count down from -1, apart
        from containerd's snapshots."""
        value = self._m.Snapshot.select(peewee.fn.MIN(self._m.Snapshot.seq)).scalar()
        return -1 if value is None or value > -1 else int(value) - 1

    # -- conditions and facts --------------------------------------------------------------

    def set_condition(self, kind: ConditionKind, message: str,
                      names: Iterable[str] = ()) -> ConditionRecord:
        """Say a condition is in force (again): its count grows, its `since` stays."""
        now = self.clock()
        row = self._m.Condition
        listed = json.dumps(sorted(names))

        def count_in() -> tuple[int, float]:
            old = row.get_or_none(row.kind == kind.value)
            count = 1 if old is None else old.count + 1
            since = now if old is None else old.since
            row.insert(kind=kind.value, message=message, names=listed, count=count,
                       since=since, at=now).on_conflict_replace().execute()
            return count, since

        count, since = self._atomically(count_in)
        return ConditionRecord(kind.value, message, tuple(json.loads(listed)), count, since, now)

    def clear_condition(self, kind: ConditionKind) -> None:
        """The condition no longer holds."""
        self._m.Condition.delete().where(self._m.Condition.kind == kind.value).execute()

    def conditions(self) -> list[ConditionRecord]:
        """Every condition in force, by kind."""
        return [ConditionRecord(r.kind, r.message, tuple(json.loads(r.names)), r.count,
                                r.since, r.at)
                for r in self._m.Condition.select().order_by(self._m.Condition.kind)]

    def condition(self, kind: ConditionKind) -> ConditionRecord | None:
        """One condition, if in force."""
        return next((c for c in self.conditions() if c.kind == kind.value), None)

    def fact(self, key: str) -> str | None:
        """A value remembered across restarts (e.g. the spec directory's filesystem)."""
        row = self._m.Fact.get_or_none(self._m.Fact.key == key)
        return None if row is None else str(row.value)

    def set_fact(self, key: str, value: str) -> None:
        """Remember a value across restarts."""
        self._m.Fact.insert(key=key, value=value).on_conflict_replace().execute()

"""The store's connection to its SQLite file: opening it, waiting out another process's lock,
transactions, and the file's permissions; the tables build on it.

synchronous=FULL because every row written here is a promise about the kernel that recovery
will rely on after a power cut. The file and its -wal and -shm are 0600: they hold labels,
spec errors and the pool's layout, which are for root (and the daemon's user) only.

The daemon and any number of CLI processes share the file, so every transaction that reads
then writes begins IMMEDIATE: in WAL mode a deferred one that read is refused at once when it
tries to write after another process committed (SQLite cannot wait for that upgrade, so
`busy_timeout` never applies to it). What SQLite still refuses as busy or locked is tried
again whole after a short wait, a bounded number of times, then raised as a StoreError that
says so: a single statement outside a transaction is run again alone, and a transaction is
begun again before any of it ran, or (the store's own) run again from its first statement.
"""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import peewee
import structlog

from reconciler.store.models import bind_models
from reconciler.vocabulary import MAX_THIN_ID

T = TypeVar("T")

log = structlog.get_logger(__name__)

# How long SQLite itself waits for another connection's write lock before saying busy.
BUSY_TIMEOUT_S = 5.0
# Waits (seconds, before jitter) between the tries of work SQLite refused as busy: what the
# busy timeout does not cover (a snapshot that went stale, a lock met while opening) clears in
# milliseconds, and a lock held for all of these tries is held by something stuck.
BUSY_RETRY_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class StoreError(RuntimeError):
    """The store cannot do what was asked (no free id, database unreadable or busy)."""


class StoreBusy(StoreError):
    """Other connections kept the database busy through every try: it works, and will again
    once they let go (unlike a file that cannot be read at all)."""


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


# SQLite's files beside the database; it makes them with the database file's mode.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _open_own(path: Path, create: bool = False) -> int | None:
    """The database (or a side file), opened without following a link, after fstat showed a
    plain file of root's or ours with one name; None when absent (`create`: made 0600).

    root opens these files by name in root_path: a link planted there would have it chmod,
    and write our schema into, whatever the link points to (issue 23). The config refuses a
    root_path others may write to, so what passes here stays what SQLite then opens."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    except PermissionError:
        raise  # said as a lack of rights, by the CLI
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link: refusing to follow it (remove it; "
                             "reconciler keeps its own database there)") from None
        raise StoreError(f"cannot open {path}: {exc.strerror}: refusing to use it as the "
                         "database (move it away)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file: refusing to use it as the "
                             "database (move it away)")
        if st.st_nlink != 1:
            raise StoreError(f"{path} has {st.st_nlink} names (a hard link): refusing to "
                             "write to it (remove it; reconciler keeps its own database)")
        if st.st_uid not in (0, os.geteuid()):
            raise StoreError(f"{path} is owned by uid {st.st_uid}, neither root nor us: "
                             "refusing to use it as the database")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _private_files(path: Path, tighten: bool = True) -> None:
    """Check the database file and its side files (each a plain file of ours: see
    `_open_own`). `tighten`: create the database file 0600 before SQLite opens it (SQLite
    then gives its -wal and -shm the same mode), and make an existing one, and its side
    files, 0600 if an earlier version left them readable by all. A file that is not ours to
    change is left to its owner (a user running `status` on a database they may read)."""
    for suffix in ("", *_SIDE_FILES):
        fd = _open_own(Path(f"{path}{suffix}"), create=tighten and not suffix)
        if fd is None:
            continue  # absent
        try:
            if tighten:
                _tighten(fd)
        finally:
            os.close(fd)


def _present(path: Path) -> bool:
    """Whether anything, a link included, is at `path`; PermissionError when we may not look
    (the CLI says so: a user without rights must not read it as "no database yet")."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _unusable(path: Path, exc: peewee.DatabaseError) -> StoreError:
    """SQLite's refusal to open the database, in one line naming the file and the way out."""
    cause = exc.args[0] if exc.args else None
    code = getattr(cause, "sqlite_errorcode", None)
    code = code & 0xFF if isinstance(code, int) else None
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or "not a database" in str(exc):
        return StoreError(f"{path} is not a SQLite database ({exc}): restore it from a "
                          "backup, or move it away to start afresh")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return StoreError(f"cannot open the database {path} ({exc}): run as root or with "
                          f"access to {path.parent}")
    return StoreError(f"cannot read the database {path}: {exc}")


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


class Connection:
    """The store's database, opened: what every table's methods build on (see `Store`).

    One per thread: peewee connections are not shared. Shared with other processes: `sleep`
    is how the store waits between the tries of work the database refused as busy (see the
    module docstring), `busy_timeout` how long SQLite waits for a lock within one try
    (default BUSY_TIMEOUT_S).

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
        fresh = not _present(path)
        if readonly:
            if not fresh:
                _private_files(path, tighten=False)
            where = "file::memory:" if fresh else _readonly_uri(path)
            self._db = _Database(where, self._retrying, timeout, readonly=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _private_files(path)
            self._db = _Database(path, self._retrying, timeout)
        self._m = bind_models(self._db)
        self._data_version: int | None = None
        self._saved_snapshots: set[str] = set()
        try:
            self._retrying(lambda: self._db.connect(reuse_if_open=True))
            self._needs_migration()  # the first read: an unreadable file says so here
        except peewee.DatabaseError as exc:
            # Not ours to repair: say why in one line (a user without the right to the
            # 0600 file, not a database at all).
            self._db.close()
            raise _unusable(path, exc) from exc
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
                    raise StoreBusy(
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

    def _snapshot_columns(self) -> set[str]:
        return {column.name for column in self._db.get_columns("snapshots")}

    def _needs_migration(self) -> bool:
        return not {"active", "exclusive_bytes"} <= self._snapshot_columns()

    def _migrate(self) -> None:
        """Bring a database written by an older version up to this one's columns (in an
        IMMEDIATE transaction, asking again inside: two processes opening an old file
        at once do it once)."""
        columns = self._snapshot_columns()
        if {"active", "exclusive_bytes"} <= columns:
            return
        # Each column an older version did not have, from what it had:
        derived = {
            # Before 0.2 reconcile derived a snapshot device's wishes from its kind; now the
            # snapshotter stores them, with the rule the older version used.
            "active": "(removal IS NULL AND (kind != 'committed' OR exposed))",
            "readonly": "(kind != 'active')",
            # Commit used to measure the layer into a NOT NULL used_bytes; NULL now says
            # "not measured yet". Committed snapshots keep the figure measured then.
            "exclusive_bytes": ("CASE WHEN kind = 'committed' THEN used_bytes END"
                                if "used_bytes" in columns else "NULL"),
        }
        model = self._m.Snapshot
        wanted = [field.column_name for field in model._meta.sorted_fields]
        unknown = [name for name in wanted if name not in columns and name not in derived]
        if unknown:
            raise StoreError(f"the database {self.path} has no snapshots column "
                             f"{', '.join(unknown)}, and no older version wrote one without "
                             "it: it was not written by this program")
        # SQLite cannot drop a column's NOT NULL in place (used_bytes has no default, so a
        # row without it would be refused): the table is made anew as this version's model
        # says, and the rows copied over.
        self._sql("ALTER TABLE snapshots RENAME TO snapshots_old")
        for (index,) in self._sql("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                  "tbl_name = 'snapshots_old' AND sql IS NOT NULL").fetchall():
            self._sql(f'DROP INDEX "{index}"')
        model.create_table(safe=False)
        values = [name if name in columns else derived[name] for name in wanted]
        self._sql(f"INSERT INTO snapshots ({', '.join(wanted)}) "
                  f"SELECT {', '.join(values)} FROM snapshots_old")
        self._sql("DROP TABLE snapshots_old")

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

    def _replace_all(self, model: Any, rows: Sequence[dict[str, Any]]) -> None:
        """Make a table hold exactly `rows` (column -> value), in one transaction."""

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
            raise StoreBusy(f"the database {self.path} was busy inside a transaction "
                             f"({exc}); nothing of it was written") from exc

    def in_transaction(self) -> bool:
        """Whether a transaction is open (a write now is part of it)."""
        return bool(self._db.in_transaction())

    def written_by_others(self) -> bool:
        """Whether another connection (another process: the CLI, a second daemon) committed
        since the last time this was asked; True the first time."""
        version: int = self._sql("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

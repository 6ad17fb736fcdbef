"""Snapshotter: containerd's Snapshotter methods over the reconciler.

Each call writes the snapshot's stored spec first (so a crash leaves a wish the next pass
fulfils or undoes, never a device nobody wants), then has its device settled by partial
passes. The stored spec says what the device should be (active, read-only, parent); what a
containerd kind means for its device is decided here, in `_save`, and nowhere else.

A call that needs a device settled is an *operation*: a generator that yields the device's
name and is resumed once the device has settled (or its retries fall past the call's settle
time). `Call` drives one. Used directly, the Snapshotter runs each call to its end, sleeping
on the caller's thread between retries. The daemon instead gives it `parking=True`: a call
that must wait raises `Parked`, and the daemon resumes it from its loop after a later pass,
so the reconcile thread never sleeps and keeps serving other work meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import structlog

from reconciler.config import Settings
from reconciler.dm.errors import DmError
from reconciler.dm.filesystem import inodes_used
from reconciler.dm.metadata import exclusive_bytes
from reconciler.dm.thin import ThinDevice
from reconciler.reconcile.reconciler import Reconciler
from reconciler.snapshots.filters import Matcher
from reconciler.snapshots.model import (
    AlreadyExists,
    FailedPrecondition,
    Info,
    InvalidArgument,
    Kind,
    Mount,
    NotFound,
    Unavailable,
    Usage,
)
from reconciler.specs import snapshot_name
from reconciler.states import LIVE
from reconciler.store import SnapshotRecord, Store

T = TypeVar("T")
Operation = Generator[str, None, T]
"""A call in progress: yields the name of each device it needs settled, returns the answer."""

log = structlog.get_logger(__name__)

# containerd's limit on one label (key and value together).
MAX_LABEL_BYTES = 4096
# How long one call may wait for the device's scheduled retries (e.g. EBUSY while udev
# probes a new device) before answering with the device's error.
SETTLE_SECONDS = 10.0


class Call(Generic[T]):
    """One operation, advanced a partial pass at a time until it has its answer."""

    def __init__(self, snapshotter: Snapshotter, operation: Operation[T]) -> None:
        self._snapshotter = snapshotter
        self._operation = operation
        self._waiting_for: str | None = None
        self._deadline = 0.0
        self._finished = False
        self._result: Any = None
        self._error: BaseException | None = None

    def advance(self) -> float | None:
        """Run until the call must wait: when to advance it again, or None once finished."""
        while not self._finished:
            try:
                if self._waiting_for is None:
                    self._waiting_for = self._operation.send(None)
                    self._deadline = self._snapshotter.clock() + self._snapshotter.settle_seconds
                at = self._snapshotter.settle_once(self._waiting_for, self._deadline)
            except StopIteration as stop:
                self._finish(result=stop.value)
            except Exception as exc:  # noqa: BLE001 - the call's answer (NotFound, DmError...)
                self._operation.close()
                self._finish(error=exc)
            else:
                if at is not None:
                    return at
                self._waiting_for = None
        return None

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._finished, self._result, self._error = True, result, error

    def outcome(self) -> T:
        """The call's answer, or its error raised; only once `advance` returned None."""
        assert self._finished, "the call has not finished"
        if self._error is not None:
            raise self._error
        result: T = self._result
        return result


class Parked(Exception):
    """A call (parking mode) that waits for its device: resume `call` at time `at`."""

    def __init__(self, call: Call[Any], at: float) -> None:
        super().__init__(f"call parked until {at}")
        self.call = call
        self.at = at


def _info(record: SnapshotRecord) -> Info:
    return Info(name=record.key, kind=Kind(record.kind), parent=record.parent_key or "",
                labels=dict(record.labels), created_at=record.created_at,
                updated_at=record.updated_at)


def _check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgument(f"label {key!r}: key and value exceed {MAX_LABEL_BYTES} bytes")
    return dict(labels)


class Snapshotter:
    """Prepare, View, Mounts, Commit, Remove, Stat, Update, Usage, Walk, Cleanup, Close."""

    def __init__(
        self,
        engine: Reconciler,
        sleep: Callable[[float], None] = time.sleep,
        settle_seconds: float = SETTLE_SECONDS,
        parking: bool = False,
    ) -> None:
        # The daemon swaps in a new engine on reload; calls in progress follow it.
        self.engine = engine
        self.sleep = sleep
        self.settle_seconds = settle_seconds
        self.parking = parking

    @property
    def store(self) -> Store:
        """The engine's store."""
        return self.engine.store

    @property
    def settings(self) -> Settings:
        """The engine's settings."""
        return self.engine.settings

    def clock(self) -> float:
        """The engine's clock."""
        return self.engine.clock()

    # -- running operations ------------------------------------------------------------------

    def _run(self, operation: Operation[T]) -> T:
        call = Call(self, operation)
        at = call.advance()
        if at is not None and self.parking:
            raise Parked(call, at)
        while at is not None:
            self.sleep(max(0.0, at - self.clock()))
            at = call.advance()
        return call.outcome()

    def settle_once(self, name: str, deadline: float) -> float | None:
        """One partial pass for a device: when its next retry is due, if that comes before
        `deadline`, else None (settled, or not worth waiting for)."""
        result = self.engine.run_pass(only=[name])
        if name not in result.pending:
            return None
        device = self.store.device(name)
        at = device.retry_at if device is not None else None
        return at if at is not None and at <= deadline else None

    def _save(self, record: SnapshotRecord) -> None:
        """Store a snapshot with what its device should be, from its kind: an active
        snapshot is a writable live device, a view a read-only one, a committed one rests
        inactive unless its mounts were asked for (then read-only), and a removed one rests
        until its device is deleted."""
        record.active = record.removal is None and (
            record.kind != Kind.COMMITTED or record.exposed)
        record.readonly = record.kind != Kind.ACTIVE
        self.store.save_snapshot(record)

    # -- reading ---------------------------------------------------------------------------

    def _live(self, key: str) -> SnapshotRecord:
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        record = self.store.snapshot_by_key(key)
        if record is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return record

    def stat(self, key: str) -> Info:
        """A snapshot's name, parent, kind, labels and times."""
        return _info(self._live(key))

    def walk(self, filters: Sequence[str] = ()) -> list[Info]:
        """Every snapshot matching any of `filters` (containerd's syntax; none: all)."""
        matcher = Matcher(filters)
        return [info for info in map(_info, self.store.live_snapshots()) if matcher(info)]

    def usage(self, key: str) -> Usage:
        """Bytes and inodes this snapshot uses beyond its parent. A committed snapshot's were
        measured at commit; an active one's are read now: bytes its thin device maps that no
        other device shares, inodes from the superblock (which lags while mounted)."""
        record = self._live(key)
        if record.kind == Kind.COMMITTED:
            return Usage(size=record.used_bytes, inodes=record.used_inodes)
        used_bytes, inodes = self._measure(record.name)
        return Usage(size=used_bytes or 0, inodes=max(0, (inodes or 0) - record.base_inodes))

    def _measure(self, name: str) -> tuple[int | None, int | None]:
        """Bytes only this snapshot's device maps in the pool (thin_ls EXCLUSIVE_BYTES: what
        it wrote beyond its origin) and inodes its filesystem uses, read now (None: unknown,
        e.g. inodes of an inactive device)."""
        pool = self.engine.ensure_pool()
        device = self.store.device(name)
        pool_record = self.store.pool(self.settings.pool_name)
        if device is None or device.device_id is None or not device.provisioned \
                or pool_record is None:
            return None, None
        used = exclusive_bytes(self.engine.host, pool.name, pool_record.metadata_device,
                               pool.client)
        thin = ThinDevice(pool, name, device.device_id)
        inodes = None
        if pool.client.info(thin.kernel_name) is not None:
            inodes = inodes_used(self.engine.host, thin.path)
        return used.get(device.device_id), inodes

    def mounts(self, key: str) -> list[Mount]:
        """How to mount a snapshot. A committed one is activated read-only on demand."""
        return self._run(self._mounts_op(key))

    def _mounts_op(self, key: str) -> Operation[list[Mount]]:
        record = self._live(key)
        if record.kind == Kind.COMMITTED and not record.exposed:
            record.exposed = True
            record.updated_at = self.clock()
            self._save(record)
            yield from self._ready_or_raise(record, undo=False)
        return self._mounts(record)

    def _path(self, record: SnapshotRecord) -> str:
        return f"/dev/mapper/{self.engine.kernel_name(record.name)}"

    def _open_count(self, record: SnapshotRecord) -> int:
        """How many openers the snapshot's dm device has now (0: not mapped)."""
        try:
            info = self.engine.ensure_pool().client.info(self.engine.kernel_name(record.name))
        except DmError as exc:
            # Unknown is not zero: nothing is removed on a guess.
            raise Unavailable(f"snapshot {record.key!r}: cannot tell whether its device is "
                              f"in use: {exc}") from exc
        return 0 if info is None else info.open_count

    def _mounts(self, record: SnapshotRecord) -> list[Mount]:
        # Always a mode, never no options: `ctr snapshots mounts` prints `-o` followed by
        # the options, and mount(8) refuses a bare `-o`.
        options = ["rw" if record.kind == Kind.ACTIVE else "ro"]
        if record.filesystem == "xfs":
            # Every snapshot of a parent carries its filesystem UUID; xfs refuses duplicates.
            options.append("nouuid")
            if record.kind != Kind.ACTIVE:
                # A parent committed while still mounted was frozen, not unmounted: its data
                # is in place but xfs's log is not clean, and xfs cannot replay a log on a
                # read-only device ("cannot mount read-only"). A clean log makes this a no-op.
                options.append("norecovery")
        return [Mount(type=record.filesystem, source=self._path(record),
                      options=tuple(options))]

    # -- changing --------------------------------------------------------------------------

    def prepare(self, key: str, parent: str = "",
                labels: Mapping[str, str] | None = None) -> list[Mount]:
        """A writable snapshot of committed `parent` (or an empty filesystem), and its mounts."""
        return self._run(self._create(key, parent, labels or {}, Kind.ACTIVE))

    def view(self, key: str, parent: str = "",
             labels: Mapping[str, str] | None = None) -> list[Mount]:
        """A read-only snapshot of committed `parent`, and its mounts."""
        return self._run(self._create(key, parent, labels or {}, Kind.VIEW))

    def _create(self, key: str, parent_key: str, labels: Mapping[str, str],
                kind: Kind) -> Operation[list[Mount]]:
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        checked = _check_labels(labels)
        if self.store.snapshot_by_key(key) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        parent = None
        if parent_key:
            parent = self.store.snapshot_by_key(parent_key)
            if parent is None:
                raise NotFound(f"parent snapshot {parent_key!r} does not exist")
            if parent.kind != Kind.COMMITTED:
                raise InvalidArgument(f"parent {parent_key!r} is not a committed snapshot "
                                      f"(it is {parent.kind})")
        now = self.clock()
        seq = self.store.next_snapshot_seq()
        record = SnapshotRecord(
            name=snapshot_name(seq), seq=seq, key=key, kind=kind.value,
            parent_key=parent.key if parent else None, parent=parent.name if parent else None,
            labels=checked,
            size_bytes=parent.size_bytes if parent else self.settings.base_image_size,
            filesystem=parent.filesystem if parent else self.settings.fs_type,
            base_inodes=parent.base_inodes + parent.used_inodes if parent else 0,
            created_at=now, updated_at=now,
        )
        self._save(record)
        log.info("snapshot.created", key=key, kind=kind.value, device=record.name,
                 parent=parent_key or None, next="making its device")
        yield from self._ready_or_raise(record, undo=True)
        return self._mounts(record)

    def _ready_or_raise(self, record: SnapshotRecord, undo: bool) -> Operation[None]:
        yield record.name
        device = self.store.device(record.name)
        if device is not None and device.state in LIVE and (
            device.formatted or device.filesystem == "none"
        ):
            return
        error = (device.error if device else None) or "the device did not become active"
        if undo:
            # The snapshot was never handed out: nothing of anyone's is lost by removing it.
            record.removal = "requested"
            record.removed_at = self.clock()
            self._save(record)
            yield record.name
        log.error("snapshot.failed", key=record.key, device=record.name, error=error,
                  next="removed again" if undo else "see `reconciler status`")
        raise Unavailable(f"snapshot {record.key!r} (device {record.name}): {error}")

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active snapshot `key` into committed snapshot `name` and deactivate it."""
        self._run(self._commit(name, key, labels or {}))

    def _commit(self, name: str, key: str, labels: Mapping[str, str]) -> Operation[None]:
        if not name:
            raise InvalidArgument("committed snapshot name must not be empty")
        record = self._live(key)
        if record.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active (it is {record.kind})")
        if self.store.snapshot_by_key(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        checked = _check_labels(labels)
        used_bytes, inodes = self._measure(record.name)
        record.used_bytes = used_bytes or 0
        record.used_inodes = max(0, (inodes or 0) - record.base_inodes)
        record.key = name
        record.kind = Kind.COMMITTED.value
        record.labels = checked
        # A commit makes a new snapshot (containerd's storage.CommitActive): both times are
        # the commit's.
        record.created_at = record.updated_at = self.clock()
        self._save(record)
        log.info("snapshot.committed", key=key, name=name, device=record.name,
                 used_bytes=record.used_bytes, next="deactivating its device")
        yield record.name

    def update(self, info: Info, fieldpaths: Iterable[str] = ()) -> Info:
        """Change labels: all of them (no paths, or "labels"), or one per "labels.<key>"."""
        record = self._live(info.name)
        paths = list(fieldpaths)
        labels = dict(record.labels)
        if not paths:
            labels = dict(info.labels)
        for path in paths:
            if path == "labels":
                labels = dict(info.labels)
            elif path.startswith("labels."):
                label = path.removeprefix("labels.")
                if label in info.labels:
                    labels[label] = info.labels[label]
                else:
                    labels.pop(label, None)
            else:
                raise InvalidArgument(f"cannot update {path!r} of snapshot {info.name!r}: "
                                      "only labels can change")
        record.labels = _check_labels(labels)
        record.updated_at = self.clock()
        self._save(record)
        return _info(record)

    def remove(self, key: str) -> None:
        """Forget a snapshot and delete its device (with async_remove: at the next Cleanup)."""
        self._run(self._remove(key))

    def _remove(self, key: str) -> Operation[None]:
        record = self._live(key)
        children = self.store.snapshot_children(record.key)
        if children:
            names = ", ".join(repr(c.key) for c in children[:3])
            raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has "
                                     f"{len(children)} child snapshot(s) ({names})")
        opened = self._open_count(record)
        if opened:
            # As containerd's devmapper: its Remove fails (FailedPrecondition) and the snapshot
            # stays, rather than delete a device someone still has mounted.
            raise FailedPrecondition(
                f"cannot remove snapshot {key!r}: its device {self._path(record)} is in use "
                f"(open count {opened}); unmount it first")
        record.removal = "pending" if self.settings.async_remove else "requested"
        record.removed_at = record.updated_at = self.clock()
        self._save(record)
        log.info("snapshot.removed", key=key, device=record.name,
                 next="deactivating its device; deleted at Cleanup"
                 if self.settings.async_remove else "deleting its device")
        yield record.name

    def cleanup(self) -> None:
        """Delete the devices of snapshots removed since the last Cleanup."""
        self._run(self._cleanup())

    def _cleanup(self) -> Operation[None]:
        pending = self.store.snapshots_with_removal("pending")
        for record in pending:
            record.removal = "requested"
            self._save(record)
        for record in pending:
            yield record.name
        log.info("snapshot.cleanup", devices=[r.name for r in pending])

    def close(self) -> None:
        """Nothing to release: the store and kernel belong to the reconciler."""

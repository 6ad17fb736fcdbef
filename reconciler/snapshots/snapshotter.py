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

A snapshot without a parent is not a new filesystem made by mkfs (seconds on a real disk)
but a snapshot of a **base**: a formatted, empty filesystem of the config's fs_type,
base_image_size and fs_options, made once (when the daemon starts serving, or by the first
root Prepare) by the same steps as every device, and then left inactive (an inactive origin
needs no suspend around create_snap). It is a stored spec of kind BASE: never shown to
containerd, never removed by spec-file logic, shown by `status` as KIND base. A config that
asks for another filesystem gets a new base; the old one is retired (deleted by a later pass)
once no snapshot still waits to be taken from it: dm-thin snapshots do not need their origin.
A base that could not be made answers the Prepare Unavailable with its error, as the
device's own mkfs did before; a Faulty base is retired and the next root Prepare makes a
new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import structlog

from reconciler.config import Settings
from reconciler.dm.errors import DmError
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
from reconciler.states import LIVE, RESTING_PROVISIONED, DeviceState
from reconciler.store import DeviceRecord, SnapshotRecord, Store
from reconciler.tools.filesystem import inodes_used
from reconciler.tools.thin_ls import exclusive_bytes
from reconciler.units import format_size
from reconciler.vocabulary import Filesystem, Removal

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
    return Info(name=record.key, kind=record.kind, parent=record.parent_key or "",
                labels=dict(record.labels), created_at=record.created_at,
                updated_at=record.updated_at)


def base_key(fs_type: str, size: int, fs_options: Sequence[str]) -> str:
    """What a base holds, as its key: a base is used only while the config asks for the very
    filesystem it holds (type, size and mkfs options)."""
    shown = format_size(size)
    if "." in shown:  # rounded: two sizes must never share a key
        shown = f"{size}B"
    return " ".join([fs_type, shown, *fs_options])


def base_ready(device: DeviceRecord | None) -> bool:
    """Whether a base's device can be snapshotted now: its thin id made and formatted, and no
    step of its own in flight."""
    return (device is not None and device.provisioned and device.formatted
            and device.state in RESTING_PROVISIONED)


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
            record.kind not in (Kind.COMMITTED, Kind.BASE) or record.exposed)
        # A base is written only by its own mkfs, which a read-only activation would refuse.
        record.readonly = record.kind not in (Kind.ACTIVE, Kind.BASE)
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
        if record.filesystem == Filesystem.XFS:
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
        # No parent: a snapshot of the base, made first if need be (no mkfs on this path).
        if parent is None:
            origin = yield from self._base_op(key)
            # The call may have waited for the base while another took the key.
            if self.store.snapshot_by_key(key) is not None:
                raise AlreadyExists(f"snapshot {key!r} already exists")
        else:
            origin = parent
        now = self.clock()
        seq = self.store.next_snapshot_seq()
        record = SnapshotRecord(
            name=snapshot_name(seq), seq=seq, key=key, kind=kind,
            parent_key=parent.key if parent else None, parent=origin.name,
            labels=checked, size_bytes=origin.size_bytes, filesystem=origin.filesystem,
            # A root's inodes count from zero, as when each root had a filesystem of its own.
            base_inodes=parent.base_inodes + parent.used_inodes if parent else 0,
            created_at=now, updated_at=now,
        )
        self._save(record)
        log.info("snapshot.created", key=key, kind=kind.value, device=record.name,
                 parent=parent_key or None, next="making its device")
        yield from self._ready_or_raise(record, undo=True)
        return self._mounts(record)

    # -- the base of root snapshots -----------------------------------------------------------

    def want_base(self) -> SnapshotRecord:
        """The base the config asks for, stored now if there is none (the next pass that
        drives it makes it); bases for another config, and a Faulty one, are retired."""
        key = base_key(self.settings.fs_type, self.settings.base_image_size,
                       self.settings.fs_options)
        wanted: SnapshotRecord | None = None
        for base in self.store.bases():
            device = self.store.device(base.name)
            faulty = device is not None and device.state == DeviceState.FAULTY
            if base.key == key and not faulty and wanted is None:
                wanted = base
            elif not self._awaited(base):
                self._retire(base, "a Faulty device" if faulty and base.key == key
                             else "the config asks for another filesystem")
        if wanted is not None:
            return wanted
        now = self.clock()
        seq = self.store.next_base_seq()
        wanted = SnapshotRecord(
            name=snapshot_name(seq), seq=seq, key=key, kind=Kind.BASE,
            size_bytes=self.settings.base_image_size, filesystem=Filesystem(self.settings.fs_type),
            created_at=now, updated_at=now)
        self._save(wanted)
        log.info("snapshot.base_wanted", device=wanted.name, filesystem=key,
                 next="making it: mkfs once, then snapshots of it for every root")
        return wanted

    def _awaited(self, base: SnapshotRecord) -> bool:
        """Whether a snapshot still waits to be taken from this base (its thin id is not made
        yet): the base must stay until it is."""
        for child in self.store.snapshots_on(base.name):
            device = self.store.device(child.name)
            if device is None or device.device_id is None or not device.provisioned:
                return True
        return False

    def _retire(self, base: SnapshotRecord, why: str) -> None:
        base.removal = Removal.REQUESTED
        base.removed_at = base.updated_at = self.clock()
        self._save(base)
        log.info("snapshot.base_retired", device=base.name, filesystem=base.key, reason=why,
                 next="deleted by the next full pass; its snapshots do not need it")

    def _base_op(self, key: str) -> Operation[SnapshotRecord]:
        """The base, ready to be snapshotted: made now if need be (then this call waits for
        its mkfs once), else Unavailable with what keeps it from being made."""
        base = self.want_base()
        if base_ready(self.store.device(base.name)):
            return base
        yield base.name
        device = self.store.device(base.name)
        if base_ready(device):
            return base
        error = (device.error if device else None) or "the device was not made"
        log.error("snapshot.failed", key=key, device=base.name, error=error,
                  next="nothing stored; the next root Prepare tries the base again")
        raise Unavailable(f"snapshot {key!r}: its base filesystem (device {base.name}) "
                          f"is not ready: {error}")

    def _ready_or_raise(self, record: SnapshotRecord, undo: bool) -> Operation[None]:
        yield record.name
        device = self.store.device(record.name)
        if device is not None and device.state in LIVE and (
            device.formatted or device.filesystem == Filesystem.NONE
        ):
            return
        error = (device.error if device else None) or "the device did not become active"
        if undo:
            # The snapshot was never handed out: nothing of anyone's is lost by removing it.
            record.removal = Removal.REQUESTED
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
        record.kind = Kind.COMMITTED
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
        record.removal = Removal.PENDING if self.settings.async_remove else Removal.REQUESTED
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
        pending = self.store.snapshots_with_removal(Removal.PENDING)
        for record in pending:
            record.removal = Removal.REQUESTED
            self._save(record)
        for record in pending:
            yield record.name
        log.info("snapshot.cleanup", devices=[r.name for r in pending])

    def close(self) -> None:
        """Nothing to release: the store and kernel belong to the reconciler."""

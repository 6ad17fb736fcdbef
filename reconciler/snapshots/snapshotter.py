"""Snapshotter: containerd's Snapshotter methods over stored specs and the devices seam.

Each call writes the snapshot's stored spec first (so a crash leaves a wish the next pass
fulfils or undoes, never a device nobody wants), then waits for its device to settle. The
stored spec says what the device should be (active, read-only, parent); what a containerd
kind means for its device is decided here, in `_save`, and nowhere else.

The snapshotter holds the store, its settings, a clock and `devices`, the questions reconcile
answers about devices (`reconcile.devices`: settle, open_count, exclusive_bytes, inodes,
mount_source); it knows nothing else of the engine. A call that waits for a device is an
operation (`snapshots.calls`), run by `runner`: to its end on the caller's thread by default
(sleeping between retries), or parked by the daemon (`daemon.waiters`) so its loop never
sleeps.
Snapshots without a parent are snapshots of a base (`snapshots.base`); what a snapshot uses
is answered by `snapshots.usage` (a layer's bytes measured when asked, not in Commit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import structlog

from reconciler.config import Settings
from reconciler.dm.errors import DmError
from reconciler.reconcile.devices import Devices, Ready
from reconciler.snapshots.base import Bases
from reconciler.snapshots.calls import DeviceCall, Operation, Runner, T, run_to_end
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
    Unimplemented,
    Usage,
)
from reconciler.snapshots.sizes import max_size
from reconciler.snapshots.usage import Usages
from reconciler.specs import snapshot_name
from reconciler.store import SnapshotRecord, Store
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem, Removal

log = structlog.get_logger(__name__)

# containerd's limit on one label (key and value together).
MAX_LABEL_BYTES = 4096
# How long one call may wait for the device's scheduled retries (e.g. EBUSY while udev
# probes a new device) before answering with the device's error.
SETTLE_SECONDS = 10.0


def _info(record: SnapshotRecord) -> Info:
    return Info(name=record.key, kind=record.kind, parent=record.parent_key or "",
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
        store: Store,
        settings: Settings,
        clock: Callable[[], float],
        devices: Devices,
        sleep: Callable[[float], None] = time.sleep,
        settle_seconds: float = SETTLE_SECONDS,
        runner: Runner | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.devices = devices
        self.settle_seconds = settle_seconds
        # Without a runner of its owner's, each call runs to its end here, sleeping.
        self._runner: Runner = runner or partial(run_to_end, clock=clock, sleep=sleep)
        self.usages = Usages(store, lambda: self.devices)
        self.bases = Bases(store, clock, self._save, self.usages.measure_unmeasured)

    def reconfigure(self, settings: Settings) -> None:
        """Go on with a reloaded config (a new base is wanted by `want_base`)."""
        self.settings = settings

    # -- running operations ------------------------------------------------------------------

    def _run(self, operation: Operation[T]) -> T:
        return self._runner(DeviceCall(operation, self.devices, self.clock,
                                       self.settle_seconds))

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
        """Bytes and inodes this snapshot uses beyond its parent (`snapshots.usage`): a
        committed one's bytes measured when first asked, then fixed."""
        return self.usages.of(self._live(key))

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

    def _open_count(self, record: SnapshotRecord) -> int:
        """How many openers the snapshot's dm device has now (0: not mapped)."""
        try:
            return self.devices.open_count(record.name)
        except DmError as exc:
            # Unknown is not zero: nothing is removed on a guess.
            raise Unavailable(f"snapshot {record.key!r}: cannot tell whether its device is "
                              f"in use: {exc}") from exc

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
        return [Mount(type=record.filesystem, source=self.devices.mount_source(record.name),
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
        # containerd's max-size label, checked before anything is stored (the base of a root
        # is the config's size). A view is read-only: its filesystem could not be grown, and
        # the label speaks of active snapshots; it keeps its parent's size.
        origin_size = parent.size_bytes if parent else self.settings.base_image_size
        size = max_size(checked, Bytes(origin_size)) if kind == Kind.ACTIVE else origin_size
        # No parent: a snapshot of the base, made first if need be (no mkfs on this path).
        if parent is None:
            origin = yield from self.bases.ready(key, self.settings)
            # The call may have waited for the base while another took the key.
            if self.store.snapshot_by_key(key) is not None:
                raise AlreadyExists(f"snapshot {key!r} already exists")
        else:
            origin = parent
            self.usages.before_child_of(parent)
        now = self.clock()
        seq = self.store.next_snapshot_seq()
        record = SnapshotRecord(
            name=snapshot_name(seq), seq=seq, key=key, kind=kind,
            parent_key=parent.key if parent else None, parent=origin.name,
            # Larger than its origin's: the device is made that size and its filesystem
            # grown (the engine's grow step, as for a spec file's larger size).
            labels=checked, size_bytes=size,
            filesystem=origin.filesystem,
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
        """The base the config asks for, stored now if there is none (`base.Bases.want`)."""
        return self.bases.want(self.settings)

    def _ready_or_raise(self, record: SnapshotRecord, undo: bool) -> Operation[None]:
        verdict = yield record.name
        if isinstance(verdict, Ready):
            return
        error = verdict.error or "the device did not become active"
        if undo:
            # The snapshot was never handed out: nothing of anyone's is lost by removing it.
            record.removal = Removal.REQUESTED
            record.removed_at = self.clock()
            self._save(record)
            yield record.name
        log.error("snapshot.failed", key=record.key, device=record.name, error=error,
                  next="removed again" if undo else "see `reconciler status`")
        raise Unavailable(f"snapshot {record.key!r} (device {record.name}): {error}")

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None,
               parent: str = "") -> None:
        """Turn active snapshot `key` into committed snapshot `name` and deactivate it.
        `parent` (containerd 2.x's rebase) may only name the parent `key` already has."""
        self._run(self._commit(name, key, labels or {}, parent))

    def _commit(self, name: str, key: str, labels: Mapping[str, str],
                parent: str) -> Operation[None]:
        if not name:
            raise InvalidArgument("committed snapshot name must not be empty")
        record = self._live(key)
        if record.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active (it is {record.kind})")
        if parent and parent != (record.parent_key or ""):
            # A thin device is its parent's whole filesystem plus its own writes: there is no
            # diff to lay onto another parent, so we never declare containerd's "rebase".
            raise Unimplemented(
                f"cannot commit {key!r} onto parent {parent!r}: its parent is "
                f"{record.parent_key or 'none (a root)'!r}, and a thin-pool snapshot cannot be "
                "rebased (containerd's parallel unpack needs the \"rebase\" capability, which "
                "this snapshotter does not declare)")
        if self.store.snapshot_by_key(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        checked = _check_labels(labels)
        # Bytes are measured later, batched (`snapshots.usage`): thin_ls is a process.
        # Inodes are read now, from the superblock in-process, while the device is mapped.
        record.exclusive_bytes = None
        record.used_inodes = self.usages.inodes_beyond_base(record)
        record.key = name
        record.kind = Kind.COMMITTED
        record.labels = checked
        # A commit makes a new snapshot (containerd's storage.CommitActive): both times are
        # the commit's.
        record.created_at = record.updated_at = self.clock()
        self._save(record)
        log.info("snapshot.committed", key=key, name=name, device=record.name,
                 used_inodes=record.used_inodes,
                 next="deactivating its device; its bytes measured when asked")
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
            node = self.devices.mount_source(record.name)
            raise FailedPrecondition(
                f"cannot remove snapshot {key!r}: its device {node} is in use "
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

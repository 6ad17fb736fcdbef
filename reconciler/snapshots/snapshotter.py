"""Snapshotter: containerd's Snapshotter methods over the reconciler.

Each call writes the snapshot's stored spec first (so a crash leaves a wish the next pass
fulfils or undoes, never a device nobody wants), then drives just that device with a partial
pass. Not thread-safe, like the Reconciler it drives: the daemon runs every call on its one
reconcile thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import structlog

from reconciler.reconcile.engine import LIVE, Reconciler
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
from reconciler.store import SnapshotRecord

log = structlog.get_logger(__name__)

# containerd's limit on one label (key and value together).
MAX_LABEL_BYTES = 4096
# How long one call may wait for the device's scheduled retries (e.g. EBUSY while udev
# probes a new device) before answering with the device's error.
SETTLE_SECONDS = 10.0


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
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = engine.settings
        self.clock = engine.clock
        self.sleep = sleep
        self.settle_seconds = settle_seconds

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
        used_bytes, inodes = self.engine.measure(record.name)
        return Usage(size=used_bytes or 0, inodes=max(0, (inodes or 0) - record.base_inodes))

    def mounts(self, key: str) -> list[Mount]:
        """How to mount a snapshot. A committed one is activated read-only on demand."""
        record = self._live(key)
        if record.kind == Kind.COMMITTED and not record.exposed:
            record.exposed = True
            record.updated_at = self.clock()
            self.store.save_snapshot(record)
            self._ready_or_raise(record, undo=False)
        return self._mounts(record)

    def _mounts(self, record: SnapshotRecord) -> list[Mount]:
        options: list[str] = []
        if record.kind != Kind.ACTIVE:
            options.append("ro")
        if record.filesystem == "xfs":
            # Every snapshot of a parent carries its filesystem UUID; xfs refuses duplicates.
            options.append("nouuid")
        source = f"/dev/mapper/{self.engine.kernel_name(record.name)}"
        return [Mount(type=record.filesystem, source=source, options=tuple(options))]

    # -- changing --------------------------------------------------------------------------

    def prepare(self, key: str, parent: str = "",
                labels: Mapping[str, str] | None = None) -> list[Mount]:
        """A writable snapshot of committed `parent` (or an empty filesystem), and its mounts."""
        return self._create(key, parent, labels or {}, Kind.ACTIVE)

    def view(self, key: str, parent: str = "",
             labels: Mapping[str, str] | None = None) -> list[Mount]:
        """A read-only snapshot of committed `parent`, and its mounts."""
        return self._create(key, parent, labels or {}, Kind.VIEW)

    def _create(self, key: str, parent_key: str, labels: Mapping[str, str],
                kind: Kind) -> list[Mount]:
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
        self.store.save_snapshot(record)
        log.info("snapshot.created", key=key, kind=kind.value, device=record.name,
                 parent=parent_key or None, next="making its device")
        self._ready_or_raise(record, undo=True)
        return self._mounts(record)

    def _drive(self, name: str) -> None:
        """Partial passes for one device, waiting out its scheduled retries for a while."""
        deadline = self.clock() + self.settle_seconds
        while True:
            result = self.engine.run_pass(only=[name])
            if name not in result.pending:
                return
            device = self.store.device(name)
            at = device.retry_at if device is not None else None
            if at is None or at > deadline:
                return
            self.sleep(max(0.0, at - self.clock()))

    def _ready_or_raise(self, record: SnapshotRecord, undo: bool) -> None:
        self._drive(record.name)
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
            self.store.save_snapshot(record)
            self._drive(record.name)
        log.error("snapshot.failed", key=record.key, device=record.name, error=error,
                  next="removed again" if undo else "see `reconciler status`")
        raise Unavailable(f"snapshot {record.key!r} (device {record.name}): {error}")

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active snapshot `key` into committed snapshot `name` and deactivate it."""
        if not name:
            raise InvalidArgument("committed snapshot name must not be empty")
        record = self._live(key)
        if record.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active (it is {record.kind})")
        if self.store.snapshot_by_key(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        checked = _check_labels(labels or {})
        used_bytes, inodes = self.engine.measure(record.name)
        record.used_bytes = used_bytes or 0
        record.used_inodes = max(0, (inodes or 0) - record.base_inodes)
        record.key = name
        record.kind = Kind.COMMITTED.value
        record.labels = checked
        record.updated_at = self.clock()
        self.store.save_snapshot(record)
        log.info("snapshot.committed", key=key, name=name, device=record.name,
                 used_bytes=record.used_bytes, next="deactivating its device")
        self._drive(record.name)

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
        self.store.save_snapshot(record)
        return _info(record)

    def remove(self, key: str) -> None:
        """Forget a snapshot and delete its device (with async_remove: at the next Cleanup)."""
        record = self._live(key)
        children = self.store.snapshot_children(record.key)
        if children:
            names = ", ".join(repr(c.key) for c in children[:3])
            raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has "
                                     f"{len(children)} child snapshot(s) ({names})")
        record.removal = "pending" if self.settings.async_remove else "requested"
        record.removed_at = record.updated_at = self.clock()
        self.store.save_snapshot(record)
        log.info("snapshot.removed", key=key, device=record.name,
                 next="deactivating its device; deleted at Cleanup"
                 if self.settings.async_remove else "deleting its device")
        self._drive(record.name)

    def cleanup(self) -> None:
        """Delete the devices of snapshots removed since the last Cleanup."""
        pending = self.store.snapshots_with_removal("pending")
        for record in pending:
            record.removal = "requested"
            self.store.save_snapshot(record)
        for record in pending:
            self._drive(record.name)
        log.info("snapshot.cleanup", devices=[r.name for r in pending])

    def close(self) -> None:
        """Nothing to release: the store and kernel belong to the reconciler."""

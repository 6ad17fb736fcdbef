"""The base of root snapshots: one formatted, empty filesystem per config, snapshotted for
every snapshot without a parent, so Prepare runs no mkfs.

A base is a stored spec of kind BASE made once (when the daemon starts serving, or by the
first root Prepare) by the same steps as every device, then left inactive (an inactive
origin needs no suspend around create_snap). It is never shown to containerd, never removed
by spec-file logic, and shown by `status` as KIND base. A config that asks for another
filesystem gets a new base; the old one is retired (deleted by a later pass) once no
snapshot still waits to be taken from it: dm-thin snapshots do not need their origin. A base
that could not be made answers the Prepare Unavailable with its error; a Faulty base is
retired and the next root Prepare makes a new one. Part of the snapshotter, which owns one
`Bases`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from reconciler.config import Settings
from reconciler.reconcile.devices import Ready
from reconciler.snapshots.calls import Operation
from reconciler.snapshots.model import Kind, Unavailable
from reconciler.specs import snapshot_name
from reconciler.states import RESTING_PROVISIONED, DeviceState
from reconciler.store import DeviceRecord, SnapshotRecord, Store
from reconciler.units import format_size
from reconciler.vocabulary import Filesystem, Removal

log = structlog.get_logger(__name__)


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


class Bases:
    """The bases in the store: the one the config asks for, and those to retire."""

    def __init__(self, store: Store, clock: Callable[[], float],
                 save: Callable[[SnapshotRecord], None],
                 measure: Callable[[], object]) -> None:
        self._store = store
        self._clock = clock
        # The snapshotter's save, which decides what a kind means for its device.
        self._save = save
        # `usage.Usages.measure_unmeasured`: a retired base is deleted, and the blocks
        # its roots shared with it would then count as theirs.
        self._measure = measure

    def want(self, settings: Settings) -> SnapshotRecord:
        """The base the config asks for, stored now if there is none (the next pass that
        drives it makes it); bases for another config, and a Faulty one, are retired."""
        key = base_key(settings.fs_type, settings.base_image_size, settings.fs_options)
        wanted: SnapshotRecord | None = None
        for base in self._store.bases():
            device = self._store.device(base.name)
            faulty = device is not None and device.state == DeviceState.FAULTY
            if base.key == key and not faulty and wanted is None:
                wanted = base
            elif not self._awaited(base):
                self._retire(base, "a Faulty device" if faulty and base.key == key
                             else "the config asks for another filesystem")
        if wanted is not None:
            return wanted
        now = self._clock()
        seq = self._store.next_base_seq()
        wanted = SnapshotRecord(
            name=snapshot_name(seq), seq=seq, key=key, kind=Kind.BASE,
            size_bytes=settings.base_image_size, filesystem=Filesystem(settings.fs_type),
            created_at=now, updated_at=now)
        self._save(wanted)
        log.info("snapshot.base_wanted", device=wanted.name, filesystem=key,
                 next="making it: mkfs once, then snapshots of it for every root")
        return wanted

    def _awaited(self, base: SnapshotRecord) -> bool:
        """Whether a snapshot still waits to be taken from this base (its thin id is not made
        yet): the base must stay until it is."""
        for child in self._store.snapshots_on(base.name):
            device = self._store.device(child.name)
            if device is None or device.device_id is None or not device.provisioned:
                return True
        return False

    def _retire(self, base: SnapshotRecord, why: str) -> None:
        self._measure()
        base.removal = Removal.REQUESTED
        base.removed_at = base.updated_at = self._clock()
        self._save(base)
        log.info("snapshot.base_retired", device=base.name, filesystem=base.key, reason=why,
                 next="deleted by the next full pass; its snapshots do not need it")

    def ready(self, key: str, settings: Settings) -> Operation[SnapshotRecord]:
        """The base, ready to be snapshotted: made now if need be (then this call waits for
        its mkfs once), else Unavailable with what keeps it from being made."""
        base = self.want(settings)
        if base_ready(self._store.device(base.name)):
            return base
        verdict = yield base.name
        if isinstance(verdict, Ready):
            return base
        error = verdict.error or "the device was not made"
        log.error("snapshot.failed", key=key, device=base.name, error=error,
                  next="nothing stored; the next root Prepare tries the base again")
        raise Unavailable(f"snapshot {key!r}: its base filesystem (device {base.name}) "
                          f"is not ready: {error}")

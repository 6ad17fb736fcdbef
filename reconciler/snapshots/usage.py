"""What a snapshot uses beyond its parent (containerd's Usage), measured when asked.

Commit runs no process: it stores the committed snapshot with its bytes unmeasured (NULL) and
its inodes, read from the superblock in-process. A layer's bytes are the blocks only its thin
device maps (thin_ls's EXCLUSIVE_BYTES), and thin_ls is a process, so every unmeasured layer
is measured in one run (`Usages.measure_unmeasured`) and the figures stored, once: when a
Usage asks, and before anything would share a layer's blocks (a child's snapshot of it, a
retired base's deletion), after which thin_ls could no longer count them as the layer's. Part
of the snapshotter, which owns one `Usages`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from reconciler.reconcile.devices import Devices
from reconciler.snapshots.model import Kind, Usage
from reconciler.store import SnapshotRecord, Store

log = structlog.get_logger(__name__)


class Usages:
    """Usage answers over the store and the devices seam."""

    def __init__(self, store: Store, devices: Callable[[], Devices]) -> None:
        self._store = store
        # The snapshotter's devices, asked for each time (its owner may replace them).
        self._devices = devices

    def of(self, record: SnapshotRecord) -> Usage:
        """A live snapshot's usage. A committed one's bytes are fixed once measured (measured
        now, with every other unmeasured one, if they are not yet); an active one's are read
        now: bytes its thin device maps that no other device shares, inodes from the
        superblock (which lags while mounted)."""
        if record.kind == Kind.COMMITTED:
            size = record.exclusive_bytes
            if size is None:
                size = self.measure_unmeasured().get(record.name, 0)
            return Usage(size=size, inodes=record.used_inodes)
        # The thin_ls runs anyway: committed snapshots still unmeasured are measured with it.
        size = self.measure_unmeasured(also=[record.name]).get(record.name, 0)
        return Usage(size=size, inodes=self.inodes_beyond_base(record))

    def inodes_beyond_base(self, record: SnapshotRecord) -> int:
        """Inodes the snapshot's filesystem uses now beyond those its parent's had."""
        return max(0, (self._devices().inodes(record.name) or 0) - record.base_inodes)

    def before_child_of(self, parent: SnapshotRecord) -> None:
        """Measure `parent` (and whatever else waits) before a child's snapshot shares every
        one of its blocks."""
        if parent.exclusive_bytes is None:
            self.measure_unmeasured()

    def measure_unmeasured(self, also: Sequence[str] = ()) -> dict[str, int]:
        """Measure every committed snapshot whose bytes are not measured yet, and the devices
        `also`, in one thin_ls (none when there is nothing to measure); store the committed
        ones' figures and answer all of them, by device name."""
        unmeasured = [record.name for record in self._store.unmeasured_snapshots()]
        if not unmeasured and not also:
            return {}
        measured = self._devices().exclusive_bytes([*unmeasured, *also])
        stored = {name: measured[name] for name in unmeasured if name in measured}
        if stored:
            self._store.save_exclusive_bytes(stored)
            log.info("snapshot.usage_measured", devices=sorted(stored),
                     next="served by Usage from the store")
        return measured

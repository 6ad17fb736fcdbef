"""One thin device of our pool as the kernel sees it: activate, reload, suspend, resume, remove.

The reconcile steps say what they want (a thin id, a length, read-only or not); this module
turns that into tables and dm calls, so no step reaches through the pool's client. Each
operation is idempotent.

Ownership is the dm uuid we set on create (`RECONCILER-v1-<pool>-<thin id>`): a device under
our name with another uuid is someone else's (another tool, another pool whose names happen
to look like ours), and no operation here changes it. A device with our uuid is ours whatever
its state or table, so one left suspended or with an old length is taken back, not refused.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from reconciler.dm.errors import DeviceBusy, DeviceExists, NoSuchDevice
from reconciler.dm.parse import single_thin_table
from reconciler.dm.pool import ThinPool, mapper_path, table_matches, thin_device_name, thin_uuid
from reconciler.dm.types import DeviceInfo, ThinTable, describe_table
from reconciler.dm.udev_sync import NodeWait
from reconciler.units import Sectors
from reconciler.vocabulary import ThinId


class NotOurs(DeviceBusy):
    """A dm device under our device's name that we did not make (its uuid is not ours)."""


@dataclass(frozen=True)
class ThinDevice:
    """Thin id `thin_id` of `pool`, mapped (when active) as the dm device `<pool>-<name>`."""

    pool: ThinPool
    name: str
    thin_id: ThinId
    # What its activation and resumes answer after: udev's rules, or its node alone
    # (`reconcile.decide.node_wait`: the snapshotter's devices, mounted by node).
    node_wait: NodeWait = NodeWait.UDEV

    @property
    def kernel_name(self) -> str:
        """The dm device's name."""
        return thin_device_name(self.pool.name, self.name)

    @property
    def path(self) -> str:
        """The device node."""
        return mapper_path(self.kernel_name)

    def open_node(self) -> str:
        """The device node, once udev has made it: whatever opens the node (mkfs, fsck,
        blkdiscard) asks here, so that a pass's deferred udev work is settled first."""
        self.pool.client.settle_udev()
        return self.path

    @property
    def uuid(self) -> str:
        """The dm uuid that marks the device as ours."""
        return thin_uuid(self.pool.name, self.thin_id)

    def ours(self, info: DeviceInfo) -> bool:
        """Whether a dm device (as observed) is this thin device of ours."""
        return info.uuid == self.uuid

    def check_ours(self, info: DeviceInfo | None, what: str) -> None:
        """Raise NotOurs when the observed device under our name is someone else's."""
        if info is not None and not self.ours(info):
            raise NotOurs(
                f"{what} {self.kernel_name}",
                detail=f"a dm device named {self.kernel_name} with uuid {info.uuid!r} is not "
                f"ours ({self.uuid!r}): left alone; remove or rename it, then retry")

    def table(self, length: Sectors) -> ThinTable:
        """The table that maps this thin id with `length` sectors."""
        return self.pool.thin_table(self.thin_id, length)

    def activate(self, length: Sectors, readonly: bool, pool_number: str) -> None:
        """Create the dm device with its table. A device of that name that is ours (our
        uuid, or from before uuids: exactly our table) is taken back and resumed if a crash
        or a failed reload left it suspended (its table is then the reload's business);
        anything else under the name is someone else's and raises NotOurs."""
        wanted = self.table(length)
        try:
            self.pool.client.create(self.kernel_name, wanted.line(), self.uuid,
                                    readonly=readonly, node_wait=self.node_wait)
        except (DeviceBusy, DeviceExists) as exc:
            # dm answers EBUSY (or EEXIST) when the name is taken, or (udev still holding a
            # name on its way out) for a moment: a name gone by the time we look is the latter.
            try:
                info = self.pool.client.info(self.kernel_name)
                lines = self.pool.client.table(self.kernel_name) if info is not None else []
            except NoSuchDevice:
                info = None
            if info is None:
                raise DeviceBusy(f"activate {self.kernel_name}",
                                 detail=f"{exc}; the name was free again when looked at") \
                    from exc
            loaded = single_thin_table(lines)
            if not self.ours(info) and (loaded is None or info.uuid
                                        or not table_matches(loaded, wanted, pool_number)):
                raise NotOurs(
                    f"activate {self.kernel_name}",
                    detail=f"a dm device named {self.kernel_name} already exists (uuid "
                    f"{info.uuid!r}, table {describe_table(lines)!r}), not ours "
                    f"({self.uuid!r}, {wanted.line()!r}): left alone",
                ) from exc
            if info.removal_deferred:
                # Wanted again while a deferred remove may be pending (dmsetup cannot tell):
                # without the cancel the kernel would take it away at its holder's last close.
                self.cancel_deferred_remove()
            if info.suspended or (info.removal_deferred and self.node_wait is NodeWait.NODE):
                # A NODE device's deferred remove unlinked its node at once (udev would not
                # have): the resume makes it again.
                self.resume()

    def suspend(self) -> None:
        """Suspend I/O (a suspended device stays suspended: dm accepts it again)."""
        self.pool.client.suspend(self.kernel_name)

    def load(self, length: Sectors, readonly: bool) -> None:
        """Load the wanted table as the inactive one; the next resume swaps it in."""
        self.pool.client.load(self.kernel_name, self.table(length).line(), readonly=readonly)

    def resume(self) -> None:
        """Resume I/O, swapping in a loaded table if there is one."""
        self.pool.client.resume(self.kernel_name, self.node_wait)

    def remove(self, deferred: bool = False) -> None:
        """Remove the dm device (never forced: an open device raises DeviceBusy, or with
        `deferred` is marked to go at its last close); one already gone is left so."""
        with suppress(NoSuchDevice):
            self.pool.client.remove(self.kernel_name, deferred=deferred,
                                    node_wait=self.node_wait)

    def flush(self) -> None:
        """Suspend and resume: a mounted filesystem is frozen (its dirty data written to the
        thin device) and thawed, so what is in the pool is what its user wrote."""
        self.suspend()
        self.resume()

    def cancel_deferred_remove(self) -> None:
        """Keep the device: a pending deferred remove is dropped (harmless when none is)."""
        self.pool.client.message(self.kernel_name, ["@cancel_deferred_remove"])

    def observe(self) -> tuple[DeviceInfo, ThinTable | None] | None:
        """The device's info and thin table now (two calls), or None when it is not mapped."""
        info = self.pool.client.info(self.kernel_name)
        if info is None:
            return None
        try:
            return info, single_thin_table(self.pool.client.table(self.kernel_name))
        except NoSuchDevice:  # removed between the two calls
            return None

"""The fake kernel's device-mapper ioctls (LIST, INFO, STATUS, TABLE, CREATE, RELOAD, SUSPEND,
RESUME, REMOVE, TARGET_MSG) and what happens to the machine around them (a device held open,
a reboot).
"""

from __future__ import annotations

import errno
from pathlib import Path

from reconciler.testing.fakekernel.devices import (
    DmDevice,
    Refused,
)
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.fakekernel.messages import PoolMessages
from reconciler.testing.fakekernel.metadata import (
    PoolMetadata,
    metadata_key,
)
from reconciler.testing.fakekernel.targets import Targets


class Ioctls(PoolMessages, Targets):
    """Each ioctl changes the state or raises `Refused` with the kernel's errno."""

    # -- what happens to the machine ---------------------------------------------------------

    def hold_open(self, name: str) -> None:
        """Open a dm device, as a mount or a process would."""
        self._existing(name).holders += 1

    def release(self, name: str) -> None:
        """Close what hold_open opened."""
        device = self._existing(name)
        assert device.holders > 0, f"FakeKernel: {name} is not held open"
        device.holders -= 1
        if device.deferred_remove and self.open_count(device) == 0:
            # dm_blk_close queues the removal a deferred remove asked for.
            self.discard_device(device)

    def reboot(self) -> None:
        """Power cycle: dm devices and loop attachments are gone; files and metadata stay
        (a held metadata snapshot too: it is in the on-disk superblock)."""
        self.devices.clear()
        self.loops.clear()
        self._uuids.clear()
        self._by_minor.clear()
        self._free_minors.clear()
        self._next_minor = 0
        self._user_counts.clear()

    def pool_metadata(self, metadata_file: Path) -> PoolMetadata:
        """The metadata a pool keeps on this file."""
        return self.metadata[metadata_key(metadata_file)]

    # -- device-mapper ioctls ----------------------------------------------------------------

    def names(self) -> list[DmDevice]:
        """LIST: every device, in name order (the kernel keeps names in an rbtree)."""
        self._gate(Op.LIST, None)
        return [self.devices[name] for name in sorted(self.devices)]

    def info(self, name: str) -> DmDevice | None:
        """INFO; None for a missing device (libdevmapper turns that ENXIO into exists=0)."""
        self._gate(Op.INFO, name)
        return self.devices.get(name)

    def status(self, name: str) -> DmDevice | None:
        """STATUS; None for a missing device (hidden as for INFO)."""
        self._gate(Op.STATUS, name)
        return self.devices.get(name)

    def table(self, name: str) -> DmDevice:
        """TABLE (ENXIO for a missing device: libdevmapper does not hide this one)."""
        return self._named(Op.TABLE, name)

    def create(self, name: str, uuid: str) -> DmDevice:
        """CREATE a device without a table; a taken name or uuid is EBUSY."""
        self._gate(Op.CREATE, name)
        if name in self.devices or uuid in self._uuids:
            raise Refused(errno.EBUSY)
        device = DmDevice(name=name, uuid=uuid, minor=self._new_minor())
        self._add_device(device)
        return device

    def load(self, name: str, table: str, readonly: bool) -> None:
        """RELOAD: construct the inactive table (what the target constructors check)."""
        device = self._named(Op.LOAD, name)
        before = device.references()
        device.inactive = self._construct(device, table, readonly)
        self._retabled(device, before)

    def suspend(self, name: str) -> None:
        """SUSPEND."""
        self._named(Op.SUSPEND, name).suspended = True

    def resume(self, name: str) -> None:
        """RESUME: swap in the inactive table, if any, and run again."""
        device = self._named(Op.RESUME, name)
        table = device.inactive or device.live
        if table is not None and table.target == "thin-pool":
            device.pool = self._bind_pool(device, table)
            device.pool.low_water_triggered = False  # pool_resume re-arms the low-water event
        else:
            device.pool = None
        if device.inactive is not None:
            before = device.references()
            device.live, device.inactive = device.inactive, None
            self._retabled(device, before)
        device.suspended = False
        self.drop_unused_loops()

    def remove(self, name: str, deferred: bool = False) -> None:
        """REMOVE (never forced: an open device is EBUSY). With DM_DEFERRED_REMOVE an open
        device is marked instead and the ioctl succeeds (dev_remove turns that EBUSY into 0);
        it goes when its last opener closes it. A closed one goes at once either way."""
        device = self._named(Op.REMOVE, name)
        if self.open_count(device) > 0:
            if deferred:
                device.deferred_remove = True
                return
            raise Refused(errno.EBUSY)
        self.discard_device(device)

    def discard_device(self, device: DmDevice) -> None:
        """Drop a device without asking (libdevmapper's revert of a half-made create)."""
        self._drop_device(device)
        self.drop_unused_loops()

    def message(self, name: str, words: list[str]) -> None:
        """TARGET_MSG to sector 0: only a pool takes messages."""
        self._gate(Op.MESSAGE, name, tuple(words))
        device = self._named(None, name)
        if words and words[0].startswith("@"):
            # dm-ioctl answers "@" messages itself, for any target (message_for_md).
            if words != ["@cancel_deferred_remove"]:
                raise Refused(errno.EINVAL)
            device.deferred_remove = False
            return
        if device.pool is None or device.live is None or device.live.target != "thin-pool":
            raise Refused(errno.EINVAL)
        if device.pool.metadata_failure is not None:
            raise Refused(errno.EOPNOTSUPP)  # pool_message: "in READ_ONLY or FAIL mode"
        self._apply_message(device, device.pool.metadata, words)
        self.check_for_data_space(device, device.pool)  # a message commits

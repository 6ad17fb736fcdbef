"""The fake kernel's device table: which dm devices exist, by name, uuid and minor, who opens
whom, and the fault gate every ioctl passes first.

The base of `model.Kernel`: each other part (loop devices, targets, messages, block I/O,
ioctls) reads and changes the devices through these indexes, so that each ioctl costs O(1)
whatever the number of devices; a pool's return from out-of-space is here too, since a
message, a resume and a discard all end with that check.
"""

from __future__ import annotations

import errno
import heapq
from collections import Counter

from reconciler.testing.fakekernel.devices import (
    DM_MAJOR,
    DmDevice,
    Loop,
    PoolTarget,
    Refused,
)
from reconciler.testing.fakekernel.faults import Faults, Op
from reconciler.testing.fakekernel.metadata import PoolMetadata


class DeviceRegistry:
    """The devices, their indexes and the fault gate: the state every part of the kernel
    shares."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.devices: dict[str, DmDevice] = {}
        self.loops: dict[int, Loop] = {}
        # Indexes over self.devices, so each ioctl costs O(1) whatever the number of devices
        # (the scale benchmarks run 50,000): by uuid, by minor, free minors, and how many
        # dm devices hold each device number open through their tables.
        self._uuids: set[str] = set()
        self._by_minor: dict[int, DmDevice] = {}
        self._free_minors: list[int] = []
        self._next_minor = 0
        self._user_counts: Counter[tuple[int, int]] = Counter()
        self.metadata: dict[str, PoolMetadata] = {}
        self.unsafe_snapshots: list[tuple[int, int]] = []

    # -- plumbing ----------------------------------------------------------------------------

    def _gate(self, op: Op, name: str | None, words: tuple[str, ...] = ()) -> None:
        """An injected fault refuses the ioctl before the kernel looks at it."""
        number = self.faults.errno_for(op, name, words)
        if number is not None:
            raise Refused(number)

    def _named(self, op: Op | None, name: str) -> DmDevice:
        """The device an ioctl names, after the fault gate (if `op`); ENXIO if missing."""
        if op is not None:
            self._gate(op, name)
        if name not in self.devices:
            raise Refused(errno.ENXIO)
        return self.devices[name]

    def _existing(self, name: str) -> DmDevice:
        """A device a test helper names: it must exist."""
        assert name in self.devices, f"FakeKernel has no dm device {name}"
        return self.devices[name]

    def by_number(self, number: tuple[int, int]) -> DmDevice | None:
        """The dm device of a device number, if there is one."""
        return self._by_minor.get(number[1]) if number[0] == DM_MAJOR else None

    def _retabled(self, device: DmDevice, before: set[tuple[int, int]]) -> None:
        """Account for a change of `device`'s tables (it referenced `before`)."""
        after = device.references() if device.name in self.devices else set()
        self._user_counts.update(after - before - {device.number})
        self._user_counts.subtract(before - after - {device.number})
        for number in before - after:
            if self._user_counts[number] <= 0:
                del self._user_counts[number]

    def _add_device(self, device: DmDevice) -> None:
        self.devices[device.name] = device
        self._uuids.add(device.uuid)
        self._by_minor[device.minor] = device

    def _drop_device(self, device: DmDevice) -> None:
        before = device.references()
        del self.devices[device.name]
        self._uuids.discard(device.uuid)
        del self._by_minor[device.minor]
        heapq.heappush(self._free_minors, device.minor)
        self._retabled(device, before)

    def _new_minor(self) -> int:
        """The lowest free minor, as the kernel's idr hands them out."""
        if self._free_minors:
            return heapq.heappop(self._free_minors)
        self._next_minor += 1
        return self._next_minor - 1

    def open_count(self, device: DmDevice) -> int:
        """Openers: holders, and dm devices whose tables use it."""
        return device.holders + self._user_counts[device.number]

    @staticmethod
    def check_for_data_space(pool_device: DmDevice, pool: PoolTarget) -> None:
        """Captured: once blocks are free again (a commit sees it) the pool writes again."""
        if pool.out_of_data_space and pool.free_blocks() > 0:
            pool.out_of_data_space = False
            pool.error_if_no_space = pool.requested_error_if_no_space
            pool_device.events += 1

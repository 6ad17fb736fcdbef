"""The fake kernel's loop devices: attach, detach (auto-clear once unused) and the device
numbers of /dev/loopN and /dev/mapper nodes.
"""

from __future__ import annotations

import errno
from pathlib import Path

from reconciler.testing.fakekernel.devices import (
    LOOP_MAJOR,
    Loop,
    Refused,
)
from reconciler.testing.fakekernel.registry import DeviceRegistry


class LoopDevices(DeviceRegistry):
    """Loop devices over files, and device nodes by path."""

    # -- loop devices ------------------------------------------------------------------------

    def attach_loop(self, path: Path) -> int:
        """LOOP_CTL_GET_FREE and LOOP_SET_FD: the lowest free loop number now backs `path`."""
        number = next(n for n in range(len(self.loops) + 1) if n not in self.loops)
        self.loops[number] = Loop(path, path.stat().st_size)
        return number

    def detach_loop(self, number: int) -> None:
        """LOOP_CLR_FD: ENXIO when unattached; one in use goes when its last user does."""
        if number not in self.loops:
            raise Refused(errno.ENXIO)
        self.loops[number].autoclear = True
        self.drop_unused_loops()

    def drop_unused_loops(self) -> None:
        """Detach the auto-clearing loop devices nothing holds any more."""
        in_use = set(self._user_counts)
        for number, loop in list(self.loops.items()):
            if loop.autoclear and (LOOP_MAJOR, number) not in in_use:
                del self.loops[number]

    @staticmethod
    def loop_number(path: str) -> int | None:
        """N of a /dev/loopN path, else None."""
        rest = path.removeprefix("/dev/loop")
        return int(rest) if rest != path and rest.isdigit() else None

    def loop_at(self, path: str) -> Loop | None:
        """The attachment of a /dev/loopN path (None when unattached); other paths: a bug."""
        number = self.loop_number(path)
        assert number is not None, f"FakeKernel has no block device {path}"
        return self.loops.get(number)

    def node_number(self, path: str) -> tuple[int, int] | None:
        """(major, minor) of a device node, or None if there is none at `path`."""
        number = self.loop_number(path)
        if number is not None:
            return LOOP_MAJOR, number  # udev makes the loop nodes whether attached or not
        name = path.removeprefix("/dev/mapper/")
        if name != path and name in self.devices:
            return self.devices[name].number
        return None

"""FakeKernel: the Host the unit tier runs the product on (run, read, write, dm_library).

It wires the fake's parts together: the kernel model (`model`, with the pool metadata of
`metadata`), the programs that speak to it (`dmsetup`, `tools`), the libdevmapper that does
(`libdm`), and the faults a test injects (`faults`). Production sends it the argv it sends to
the real machine and reads back the real tools' texts, or, with `dm_driver = "libdevmapper"`,
calls the fake libdevmapper through `LibdmClient`; both reach the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler.dm.host import TIMED_OUT_RC, Completed
from reconciler.dm.libdm_bindings import DmLibrary
from reconciler.dm.udev import UdevFacts
from reconciler.testing.fakekernel.commands import Failed
from reconciler.testing.fakekernel.dmsetup import Dmsetup
from reconciler.testing.fakekernel.faults import Faults
from reconciler.testing.fakekernel.libdm import FakeLibdm
from reconciler.testing.fakekernel.metadata import PoolMetadata
from reconciler.testing.fakekernel.model import DmDevice, Kernel, Loop
from reconciler.testing.fakekernel.mounts import PROGRAMS as MOUNT_PROGRAMS
from reconciler.testing.fakekernel.mounts import Mounts
from reconciler.testing.fakekernel.tools import PROGRAMS, Tools
from reconciler.testing.fakekernel.udev import FakeUdev

WRITE_PATTERN = b"\xa5"  # what the capture's dd wrote


class FakeKernel:
    """An in-memory Linux with device-mapper, loop devices, dmsetup, libdevmapper, losetup and
    the thin and filesystem tools."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.model = Kernel(self.faults)
        self.calls: list[tuple[str, ...]] = []
        self._dmsetup = Dmsetup(self.model)
        self._tools = Tools(self.model)
        self._mounts = Mounts(self.model, self._tools.filesystem)
        # None by default; a test places one (alive, in or out of our IPC namespace...).
        self.udev = FakeUdev()
        self._libdm = FakeLibdm(self.model, self.udev)

    # -- what tests look at and do -----------------------------------------------------------

    @property
    def devices(self) -> dict[str, DmDevice]:
        """The dm devices by name."""
        return self.model.devices

    @property
    def loops(self) -> dict[int, Loop]:
        """The attached loop devices by number."""
        return self.model.loops

    @property
    def unsafe_snapshots(self) -> list[tuple[int, int]]:
        """(new, origin) of each snapshot taken of an active origin that was not suspended."""
        return self.model.unsafe_snapshots

    def pool_metadata(self, metadata_file: Path) -> PoolMetadata:
        """The metadata a pool keeps on this file."""
        return self.model.pool_metadata(metadata_file)

    def filesystem(self, name: str) -> str | None:
        """The filesystem mkfs left on a thin device ("ext4", "xfs"), read from its blocks."""
        return self._tools.filesystem(name)

    def filesystem_size(self, name: str) -> int | None:
        """The size a thin device's filesystem says it has, from its superblock."""
        return self._tools.filesystem_size(name)

    def mounted(self) -> dict[str, str]:
        """The mounts made with `mount` and not unmounted: mount point to dm device name."""
        return dict(self._mounts.points)

    def fail_next(self, argv_prefix: tuple[str, ...], rc: int, stderr: str,
                  times: int = 1) -> None:
        """Make the next `times` commands starting with `argv_prefix` fail with this text
        (a program's own failure; for a dm ioctl's errno use `faults.fail`)."""
        self.faults.fail_command(argv_prefix, rc, stderr, times)

    def hold_open(self, name: str) -> None:
        """Open a dm device, as a mount or a process would."""
        self.model.hold_open(name)

    def release(self, name: str) -> None:
        """Close what hold_open opened."""
        self.model.release(name)

    def write_blocks(self, name: str, offset_bytes: int, length_bytes: int) -> None:
        """Write `length_bytes` of a pattern at `offset_bytes` into a dm device (as dd would)."""
        self.write(f"/dev/mapper/{name}", offset_bytes, WRITE_PATTERN * length_bytes)

    def fail_metadata(self, pool: str, mode: str, needs_check: bool = True) -> None:
        """The pool's metadata device failed under it: the pool goes read-only ("ro") or
        fails ("Fail"), as dm-thin does after a metadata I/O error, flagged needs_check."""
        assert mode in ("ro", "Fail"), f"FakeKernel: no metadata failure mode {mode!r}"
        target = self.model.devices[pool].pool
        assert target is not None, f"FakeKernel: {pool} is no loaded pool"
        target.metadata_failure, target.needs_check = mode, needs_check

    def reboot(self) -> None:
        """Power cycle: dm devices and loop attachments are gone; files and metadata stay
        (a held metadata snapshot too: it is in the on-disk superblock)."""
        self.model.reboot()
        self._mounts.points.clear()

    # -- Host --------------------------------------------------------------------------------

    def run(self, argv: Sequence[str]) -> Completed:
        """Answer one command as the real tool would."""
        words = tuple(argv)
        self.calls.append(words)
        injected = self.faults.command_failure(words)
        if injected is not None:
            return injected
        program, args = words[0], list(words[1:])
        try:
            if program == "dmsetup":
                stdout, stderr = self._dmsetup.run(args), ""
                if self.udev.dmsetup_hangs(args):
                    # The ioctls were made; the wait for the cookie is what never ends,
                    # until SystemHost's timeout kills the process.
                    return Completed(words, TIMED_OUT_RC, stdout,
                                     "dmsetup: timed out after 600s and was killed\n",
                                     timed_out=True)
            elif program in PROGRAMS:
                stdout, stderr = self._tools.run(program, args)
            elif program in MOUNT_PROGRAMS:
                stdout, stderr = self._mounts.run(program, args)
            else:
                raise AssertionError(f"FakeKernel does not know the command {list(words)!r}")
        except Failed as failure:
            return Completed(words, failure.rc, failure.stdout, failure.stderr)
        return Completed(words, 0, stdout, stderr)

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Loop devices read their backing file; thin devices their mapped blocks or zeros."""
        return self.model.read(path, offset, length)

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Loop devices write their backing file; thin devices map (and copy) blocks."""
        self.model.write(path, offset, data)

    def dm_library(self) -> DmLibrary:
        """The libdevmapper of this kernel, for `LibdmClient` (`dm_driver = "libdevmapper"`)."""
        return self._libdm

    def udev_facts(self) -> UdevFacts:
        """This kernel's udev (`self.udev`), which a test places."""
        return self.udev

"""The fake kernel's mounts: `mount`, `umount` and `xfs_growfs`, as the product sends them to
grow an xfs filesystem (which xfs does only while mounted) on a temporary mount point.

A mount opens its dm device (the kernel's open count, which the reconciler reads) until it is
unmounted; the mount point must be a directory that exists, the filesystem must be the type
asked for, and xfs_growfs grows the filesystem's data section to its device's length, writing
the new size into the superblock where xfs keeps it (`sb_dblocks`).

What is approximate: no files or directories are kept; xfs's UUID check (what `nouuid`
turns off) is not modelled, so the option is only looked for by the tests; texts not captured
come from util-linux's and xfsprogs' sources, and each such place says so.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from reconciler.testing.fakekernel.commands import Failed
from reconciler.testing.fakekernel.model import SECTOR, Kernel

PROGRAMS = ("mount", "umount", "xfs_growfs")
XFS_MAGIC = b"XFSB"


def xfs_geometry(superblock: bytes) -> tuple[int, int] | None:
    """(data blocks, block size) of an xfs superblock (big-endian sb_blocksize at 4,
    sb_dblocks at 8), or None if it is not one."""
    if not superblock.startswith(XFS_MAGIC) or len(superblock) < 16:
        return None
    block_size, blocks = struct.unpack_from(">IQ", superblock, 4)
    return blocks, block_size


class Mounts:
    """Mount points (path: dm device name) over a kernel model."""

    def __init__(self, kernel: Kernel, filesystem: Callable[[str], str | None]) -> None:
        self.kernel = kernel
        # Tools.filesystem: which filesystem a device holds, from its blocks.
        self._filesystem = filesystem
        self.points: dict[str, str] = {}

    def run(self, program: str, args: list[str]) -> tuple[str, str]:
        """Answer one command of a program in PROGRAMS."""
        if program == "mount":
            return self._mount(args), ""
        if program == "umount":
            return self._umount(args), ""
        assert program == "xfs_growfs", program
        return self._growfs(args), ""

    def _mount(self, args: list[str]) -> str:
        match args:
            case ["-t", fs_type, "-o", _options, source, target]:
                pass
            case _:
                raise AssertionError(f"FakeKernel does not know mount {args!r}")
        name = source.removeprefix("/dev/mapper/")
        if name == source or name not in self.kernel.devices:
            # util-linux 2.38's words (not captured).
            raise Failed(f"mount: {target}: special device {source} does not exist.\n", rc=32)
        if not os.path.isdir(target):
            raise Failed(f"mount: {target}: mount point does not exist.\n", rc=32)
        if self._filesystem(name) != fs_type:
            raise Failed(f"mount: {target}: wrong fs type, bad option, bad superblock on "
                         f"{source}, missing codepage or helper program, or other error.\n",
                         rc=32)
        if target in self.points:
            raise Failed(f"mount: {target}: {source} already mounted on {target}.\n", rc=32)
        self.kernel.hold_open(name)
        self.points[target] = name
        return ""

    def _umount(self, args: list[str]) -> str:
        assert len(args) == 1, f"FakeKernel: umount {args}"
        name = self.points.pop(args[0], None)
        if name is None:
            raise Failed(f"umount: {args[0]}: not mounted.\n", rc=32)
        self.kernel.release(name)
        return ""

    def _growfs(self, args: list[str]) -> str:
        assert len(args) == 1, f"FakeKernel: xfs_growfs {args}"
        name = self.points.get(args[0])
        if name is None:
            # xfsprogs 6.1's words (not captured).
            raise Failed(f"xfs_growfs: {args[0]} is not a mounted XFS filesystem\n", rc=1)
        path = f"/dev/mapper/{name}"
        device = self.kernel.open_mapper(path)
        geometry = xfs_geometry(self.kernel.thin_read(device, 0, 16))
        if geometry is None:
            raise Failed(f"xfs_growfs: {args[0]} is not a mounted XFS filesystem\n", rc=1)
        blocks, block_size = geometry
        assert device.live is not None
        if device.live.readonly:
            raise Failed(f"xfs_growfs: XFS_IOC_FSGROWFSDATA xfsctl failed: "
                         f"{os.strerror(errno.EROFS)}\n", rc=1)
        wanted = device.live.length * SECTOR // block_size
        head = bytearray(self.kernel.thin_read(device, 0, 16))
        struct.pack_into(">Q", head, 8, wanted)
        self.kernel.write(path, 0, bytes(head))
        return f"data blocks changed from {blocks} to {wanted}\n" if wanted != blocks else ""

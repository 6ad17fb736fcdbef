"""The fake kernel's programs besides dmsetup: losetup, stat, blockdev, blkdiscard, mkfs.ext4,
mkfs.xfs, e2fsck, resize2fs, thin_check and thin_ls, each answering the argv production sends
with the real tool's exact texts and exit codes, from the kernel model.

What is approximate:
- mkfs maps a handful of blocks (its signature and a few scattered metadata writes), after
  discarding the device as mkfs does by default; e2fsck prints nothing on success; a
  filesystem is recognised by its superblock alone.
- texts the capture does not hold come from the real tools run on files (thin_ls and
  thin_check on thin_restore'd metadata, mkfs, e2fsck, resize2fs, losetup, stat, blockdev) or
  from the tools' sources; each such place says so.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from reconciler.testing.fakekernel.commands import Failed
from reconciler.testing.fakekernel.metadata import (
    METADATA_BLOCK,
    PoolMetadata,
    Thin,
    has_magic,
    metadata_key,
    read_at,
)
from reconciler.testing.fakekernel.model import SECTOR, DmDevice, Kernel, Loop, Refused
from reconciler.testing.fakekernel.mounts import xfs_geometry

THIN_CHECK_STEPS = ("examining superblock\nexamining devices tree\nexamining mapping tree\n"
                    "checking space map counts\n")
CORRUPT_SUPERBLOCK = "bad checksum in superblock, wanted 1490015127\n"
LIVE_METADATA = ("syscall 'open' failed: Device or resource busy\n"
                 "Note: you cannot run this tool with these options on live metadata.\n")
THIN_LS_FIELDS = {"DEV", "MAPPED_BLOCKS", "EXCLUSIVE_BLOCKS", "SHARED_BLOCKS", "MAPPED_SECTORS",
                  "EXCLUSIVE_SECTORS", "SHARED_SECTORS", "MAPPED_BYTES", "EXCLUSIVE_BYTES",
                  "SHARED_BYTES"}
MKFS_FLAGS = {"ext4": ["-q", "-F"], "xfs": ["-q", "-f"]}
EXT4_MAGIC = 0xEF53
EXT4_SUPERBLOCK = 1024
RESIZE2FS_BANNER = "resize2fs 1.47.0 (5-Feb-2023)\n"
# mkfs.xfs 6.1.0 on a path that does not exist (the usage text follows the error).
XFS_USAGE = (
    "Usage: mkfs.xfs\n/* blocksize */\t\t[-b size=num]\n/* config file */\t[-c options=xxx]\n"
    "/* metadata */\t\t[-m crc=0|1,finobt=0|1,uuid=xxx,rmapbt=0|1,reflink=0|1,\n"
    "\t\t\t    inobtcount=0|1,bigtime=0|1]\n"
    "/* data subvol */\t[-d agcount=n,agsize=n,file,name=xxx,size=num,\n"
    "\t\t\t    (sunit=value,swidth=value|su=num,sw=num|noalign),\n\t\t\t    sectsize=num\n"
    "/* force overwrite */\t[-f]\n"
    "/* inode size */\t[-i perblock=n|size=num,maxpct=n,attr=0|1|2,\n"
    "\t\t\t    projid32bit=0|1,sparse=0|1,nrext64=0|1]\n/* no discard */\t[-K]\n"
    "/* log subvol */\t[-l agnum=n,internal,size=num,logdev=xxx,version=n\n"
    "\t\t\t    sunit=value|su=num,sectsize=num,lazy-count=0|1]\n"
    "/* label */\t\t[-L label (maximum 12 characters)]\n"
    "/* naming */\t\t[-n size=num,version=2|ci,ftype=0|1]\n/* no-op info only */\t[-N]\n"
    "/* prototype file */\t[-p fname]\n/* quiet */\t\t[-q]\n"
    "/* realtime subvol */\t[-r extsize=num,size=num,rtdev=xxx]\n"
    "/* sectorsize */\t[-s size=num]\n/* version */\t\t[-V]\n\t\t\tdevicename\n"
    "<devicename> is required unless -d name=xxx is given.\n"
    "<num> is xxx (bytes), xxxs (sectors), xxxb (fs blocks), xxxk (xxx KiB),\n"
    "      xxxm (xxx MiB), xxxg (xxx GiB), xxxt (xxx TiB) or xxxp (xxx PiB).\n"
    "<value> is xxx (512 byte blocks).\n"
)
E2FSCK_NOT_EXT4 = (
    "The superblock could not be read or does not describe a valid ext2/ext3/ext4\n"
    "filesystem.  If the device is valid and it really contains an ext2/ext3/ext4\n"
    "filesystem (and not swap or ufs or something else), then the superblock\n"
    "is corrupt, and you might try running e2fsck with an alternate superblock:\n"
    "    e2fsck -b 8193 <device>\n or\n    e2fsck -b 32768 <device>\n\n"
)

PROGRAMS = ("losetup", "stat", "blockdev", "blkdiscard", "mkfs.ext4", "mkfs.xfs", "e2fsck",
            "resize2fs", "thin_check", "thin_ls", "debugfs")
DEBUGFS_BANNER = "debugfs 1.47.0 (5-Feb-2023)\n"
# xfsprogs 6.1's smallest data section (captured: 200 MiB refused, 300 MiB made).
XFS_MIN_BYTES = 300 * 1024 * 1024
XFS_BLOCK = 4096  # mkfs.xfs's default block size


class Tools:
    """The programs of PROGRAMS on a kernel model: (stdout, stderr), or `Failed`."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def run(self, program: str, args: list[str]) -> tuple[str, str]:
        """Answer one command of a program in PROGRAMS."""
        if program == "losetup":
            return self._losetup(args), ""
        if program == "stat":
            return self._stat(args), ""
        if program == "blockdev":
            return self._blockdev(args), ""
        if program in ("mkfs.ext4", "mkfs.xfs"):
            return self._mkfs(program.removeprefix("mkfs."), args), ""
        if program == "blkdiscard":
            return self._blkdiscard(args), ""
        if program == "thin_check":
            return self._thin_check(args)
        if program == "thin_ls":
            return self._thin_ls(args), ""
        if program == "e2fsck":
            return self._e2fsck(args), ""
        if program == "debugfs":
            return self._debugfs(args)
        assert program == "resize2fs", program
        return self._resize2fs(args)

    def filesystem(self, name: str) -> str | None:
        """The filesystem mkfs left on a thin device ("ext4", "xfs"), read from its blocks."""
        head = self.kernel.thin_read(self.kernel.open_mapper(f"/dev/mapper/{name}"), 0, 2048)
        if head.startswith(b"XFSB"):
            return "xfs"
        return "ext4" if _ext4_blocks(head) is not None else None

    def filesystem_size(self, name: str) -> int | None:
        """The size a thin device's filesystem says it has (blocks times block size, from
        its superblock), or None when it holds none."""
        head = self.kernel.thin_read(self.kernel.open_mapper(f"/dev/mapper/{name}"), 0, 2048)
        geometry = xfs_geometry(head) or _ext4_blocks(head)
        return None if geometry is None else geometry[0] * geometry[1]

    # -- losetup, stat, blockdev, blkdiscard -------------------------------------------------

    def _losetup(self, args: list[str]) -> str:
        match args:
            case ["--find", "--show", path]:
                return self._attach(Path(path))
            case ["--noheadings", "--output", "NAME", "--associated", path]:
                wanted = Path(path).resolve()
                return "".join(f"/dev/loop{number}\n" for number, loop in sorted(
                    self.kernel.loops.items()) if loop.path.resolve() == wanted)
            case ["--detach", path]:
                return self._detach(path)
        raise AssertionError(f"FakeKernel does not know losetup {args!r}")

    def _attach(self, path: Path) -> str:
        if not path.is_file():
            raise Failed(f"losetup: {path}: failed to set up loop device: "
                         f"{os.strerror(errno.ENOENT)}\n")
        return f"/dev/loop{self.kernel.attach_loop(path)}\n"

    def _detach(self, path: str) -> str:
        number = self.kernel.loop_number(path)
        assert number is not None, f"FakeKernel: losetup --detach {path}"
        try:
            self.kernel.detach_loop(number)
        except Refused as refused:
            raise Failed(f"losetup: {path}: detach failed: {os.strerror(refused.number)}\n"
                         ) from None
        return ""

    def _stat(self, args: list[str]) -> str:
        assert args[:3] == ["-L", "-c", "%t:%T"] and len(args) == 4, f"FakeKernel: stat {args}"
        number = self.kernel.node_number(args[3])
        if number is None:
            if Path(args[3]).exists():
                return "0:0\n"  # not a device node
            raise Failed(f"stat: cannot statx '{args[3]}': {os.strerror(errno.ENOENT)}\n")
        return f"{number[0]:x}:{number[1]:x}\n"

    def _blockdev(self, args: list[str]) -> str:
        assert args[:1] == ["--getsz"] and len(args) == 2, f"FakeKernel: blockdev {args}"
        path = args[1]
        name = path.removeprefix("/dev/mapper/")
        if name != path and name in self.kernel.devices:
            live = self.kernel.devices[name].live
            return f"{live.length if live else 0}\n"
        if self.kernel.loop_number(path) is not None:
            loop = self.kernel.loop_at(path)
            return f"{loop.size // SECTOR if loop else 0}\n"
        if Path(path).is_file():
            return f"{Path(path).stat().st_size // SECTOR}\n"
        raise Failed(f"blockdev: cannot open {path}: {os.strerror(errno.ENOENT)}\n")

    def _blkdiscard(self, args: list[str]) -> str:
        assert len(args) == 1, f"FakeKernel: blkdiscard {args}"
        path = args[0]
        name = path.removeprefix("/dev/mapper/")
        if name == path or name not in self.kernel.devices:
            raise Failed(f"blkdiscard: cannot open {path}: {os.strerror(errno.ENOENT)}\n")
        device = self.kernel.open_mapper(path)
        assert device.live is not None
        if device.live.readonly:
            raise Failed(f"blkdiscard: cannot open {path}: {os.strerror(errno.EROFS)}\n")
        if self.kernel.open_count(device):
            # util-linux opens the device O_EXCL: a mounted one is refused.
            raise Failed(f"blkdiscard: cannot open {path}: {os.strerror(errno.EBUSY)}\n")
        self.kernel.discard(device)
        return ""

    # -- filesystems -------------------------------------------------------------------------

    def _mkfs_device(self, fs_type: str, path: str) -> DmDevice:
        name = path.removeprefix("/dev/mapper/")
        if name == path or name not in self.kernel.devices:
            if fs_type == "xfs":
                raise Failed(f"Error accessing specified device {path}: "
                             f"{os.strerror(errno.ENOENT)}\n{XFS_USAGE}")
            raise Failed(f"The file {path} does not exist and no size was specified.\n")
        device = self.kernel.open_mapper(path)
        assert device.live is not None
        if device.live.readonly:
            # Not captured: the texts of e2fsprogs' and xfsprogs' sources for EROFS.
            if fs_type == "xfs":
                raise Failed(f"mkfs.xfs: cannot open {path}: {os.strerror(errno.EROFS)}\n")
            raise Failed(f"{path}: {os.strerror(errno.EROFS)} while setting up superblock\n")
        return device

    def _mkfs(self, fs_type: str, args: list[str]) -> str:
        flags = MKFS_FLAGS[fs_type]
        assert args[:2] == flags and len(args) >= 3, f"FakeKernel: mkfs.{fs_type} {args}"
        path, options = args[-1], args[2:-1]
        device = self._mkfs_device(fs_type, path)
        assert device.live is not None
        if "nodiscard" not in " ".join(options) and "-K" not in options:
            self.kernel.discard(device)
        size = device.live.length * SECTOR
        if fs_type == "xfs" and size < XFS_MIN_BYTES:
            raise Failed(f"Filesystem must be larger than 300MB.\n{XFS_USAGE}")
        try:
            self.kernel.write(path, 0, _superblock(fs_type, size))
            # A filesystem's metadata is spread over its groups: a few scattered blocks.
            for part in range(1, 8):
                self.kernel.write(path, part * size // 8 // METADATA_BLOCK * METADATA_BLOCK,
                                  bytes(METADATA_BLOCK))
        except OSError as exc:  # a full pool; not captured: the tools' texts for a failed write
            reason = os.strerror(exc.errno or errno.EIO)
            if fs_type == "xfs":
                raise Failed(f"mkfs.xfs: pwrite failed: {reason}\n") from None
            raise Failed(f"mkfs.ext4: {reason} while writing out and closing file system\n"
                         ) from None
        return ""

    def _ext4_device(self, path: str) -> DmDevice | None:
        name = path.removeprefix("/dev/mapper/")
        if name == path or name not in self.kernel.devices:
            return None
        return self.kernel.open_mapper(path)

    def _e2fsck(self, args: list[str]) -> str:
        assert args[:2] == ["-f", "-p"] and len(args) == 3, f"FakeKernel: e2fsck {args}"
        path = args[2]
        device = self._ext4_device(path)
        if device is None:
            raise Failed(f"e2fsck: {os.strerror(errno.ENOENT)} while trying to open {path}\n",
                         rc=8, stdout="Possibly non-existent device?\n")
        if _ext4_blocks(self.kernel.thin_read(device, 0, 2048)) is None:
            raise Failed(f"e2fsck: Bad magic number in super-block while trying to open {path}\n",
                         rc=8, stdout=f"{path}: \n{E2FSCK_NOT_EXT4}")
        return ""  # the real one prints inode and block counts the fake does not keep

    def _debugfs(self, args: list[str]) -> tuple[str, str]:
        """`debugfs -w -R "rmdir lost+found" DEVICE`: what production sends after mkfs.ext4.
        The fake keeps no directories; it answers as the real one does on a fresh ext4 (only
        its banner) and on anything else (its error, still with exit code 0)."""
        assert args[:3] == ["-w", "-R", "rmdir lost+found"] and len(args) == 4, \
            f"FakeKernel: debugfs {args}"
        path = args[3]
        device = self._ext4_device(path)
        if device is None or _ext4_blocks(self.kernel.thin_read(device, 0, 2048)) is None:
            return "", (f"{DEBUGFS_BANNER}debugfs: Bad magic number in super-block while "
                        f"trying to open {path}\n")
        return "", DEBUGFS_BANNER

    def _resize2fs(self, args: list[str]) -> tuple[str, str]:
        assert len(args) == 1, f"FakeKernel: resize2fs {args}"
        path = args[0]
        device = self._ext4_device(path)
        if device is None:
            raise Failed(f"{RESIZE2FS_BANNER}open: {os.strerror(errno.ENOENT)} while opening "
                         f"{path}\n")
        superblock = self.kernel.thin_read(device, 0, 2048)
        geometry = _ext4_blocks(superblock)
        if geometry is None:
            raise Failed(f"{RESIZE2FS_BANNER}resize2fs: Bad magic number in super-block while "
                         f"trying to open {path}\n",
                         stdout="Couldn't find valid filesystem superblock.\n")
        blocks, block_size = geometry
        assert device.live is not None
        wanted = device.live.length * SECTOR // block_size
        unit = f"({block_size // 1024}k) blocks"
        if wanted == blocks:
            return "", (f"{RESIZE2FS_BANNER}The filesystem is already {wanted} {unit} long.  "
                        "Nothing to do!\n\n")
        self.kernel.write(path, 0, _superblock("ext4", device.live.length * SECTOR))
        return (f"Resizing the filesystem on {path} to {wanted} {unit}.\n"
                f"The filesystem on {path} is now {wanted} {unit} long.\n\n", RESIZE2FS_BANNER)

    # -- thin_check, thin_ls -----------------------------------------------------------------

    def _tool_metadata(self, path: str) -> tuple[Loop, PoolMetadata, bool]:
        """The metadata on a device a thin tool reads, and whether a pool has it open."""
        number = self.kernel.loop_number(path)
        loop = self.kernel.loops.get(number) if number is not None else None
        if loop is None:
            raise Failed("Couldn't stat path\n")
        first = read_at(loop.path, 0, METADATA_BLOCK)
        key = metadata_key(loop.path)
        if not has_magic(first):
            raise Failed(CORRUPT_SUPERBLOCK)
        assert key in self.kernel.metadata, \
            f"FakeKernel: {loop.path} holds metadata it did not write"
        live = any(d.live and d.live.metadata_key == key for d in self.kernel.devices.values())
        return loop, self.kernel.metadata[key], live

    def _thin_check(self, args: list[str]) -> tuple[str, str]:
        assert len(args) == 1 and not args[0].startswith("-"), f"FakeKernel: thin_check {args}"
        try:
            _loop, meta, live = self._tool_metadata(args[0])
        except Failed as failure:
            if failure.stderr == CORRUPT_SUPERBLOCK:  # thin_check words it as it goes
                raise Failed(f"examining superblock\n  superblock is corrupt\n    "
                             f"{CORRUPT_SUPERBLOCK}") from None
            raise
        if live:
            raise Failed(LIVE_METADATA)  # opened exclusively, like thin_ls (captured there)
        # Real thin_check 0.9.0 prints the free count as the device's blocks less one.
        report = (f"TRANSACTION_ID={meta.transaction_id}\n"
                  f"METADATA_FREE_BLOCKS={meta.total_blocks - 1}\n")
        return report, THIN_CHECK_STEPS

    def _thin_ls(self, args: list[str]) -> str:
        snap, headers, fields, path = _thin_ls_options(args)
        _loop, meta, live = self._tool_metadata(path)
        if live and not snap:
            raise Failed(LIVE_METADATA)
        if snap and meta.held is None:
            raise Failed("no current metadata snap\n")
        thins = meta.held.thins if snap and meta.held is not None else meta.thins
        references: dict[int, int] = {}
        for thin in thins.values():
            for physical in thin.mappings.values():
                references[physical] = references.get(physical, 0) + 1
        rows = [fields] if headers else []
        rows += [_thin_ls_row(thin_id, thins[thin_id], references, meta.block_sectors, fields)
                 for thin_id in sorted(thins)]
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(len(fields))]
        return "".join("".join(f"{cell:>{width}} " for cell, width in zip(row, widths,
                                                                           strict=True)) + "\n"
                       for row in rows)


def _superblock(fs_type: str, size: int) -> bytes:
    """The start of a filesystem: enough for the fake's e2fsck, resize2fs and a reader to
    recognise it (ext4: block count, block size and magic where ext4 keeps them)."""
    if fs_type == "xfs":
        # sb_blocksize and sb_dblocks, where xfs keeps them (big-endian): xfs_growfs's
        # starting point, and the filesystem's size a test reads.
        return b"XFSB" + struct.pack(">IQ", XFS_BLOCK, size // XFS_BLOCK) + bytes(
            METADATA_BLOCK - 16)
    block = 1024 if size < 512 << 20 else 4096  # mke2fs.conf's "small" type below 512 MiB
    data = bytearray(METADATA_BLOCK)
    # mke2fs's default of one inode per 16 KiB; a new filesystem uses its first 11.
    inodes = size // 16384
    struct.pack_into("<I", data, EXT4_SUPERBLOCK, inodes)
    struct.pack_into("<I", data, EXT4_SUPERBLOCK + 16, inodes - 11)
    struct.pack_into("<I", data, EXT4_SUPERBLOCK + 4, size // block)
    struct.pack_into("<I", data, EXT4_SUPERBLOCK + 24, block.bit_length() - 11)
    struct.pack_into("<H", data, EXT4_SUPERBLOCK + 56, EXT4_MAGIC)
    return bytes(data)


def _ext4_blocks(superblock: bytes) -> tuple[int, int] | None:
    """(block count, block size) of an ext4 superblock, or None if it is not one."""
    if struct.unpack_from("<H", superblock, EXT4_SUPERBLOCK + 56)[0] != EXT4_MAGIC:
        return None
    blocks = struct.unpack_from("<I", superblock, EXT4_SUPERBLOCK + 4)[0]
    return blocks, 1024 << struct.unpack_from("<I", superblock, EXT4_SUPERBLOCK + 24)[0]


def _thin_ls_options(args: list[str]) -> tuple[bool, bool, list[str], str]:
    """(metadata snap, headers, fields, device) of a thin_ls argv."""
    snap, headers, fields = False, True, ["DEV"]
    rest = list(args)
    while len(rest) > 1:
        word = rest.pop(0)
        if word in ("--metadata-snap", "-m"):
            snap = True
        elif word == "--no-headers":
            headers = False
        elif word in ("-o", "--format") and len(rest) > 1:
            fields = rest.pop(0).split(",")
        else:
            raise AssertionError(f"FakeKernel does not know thin_ls {args!r}")
    assert len(rest) == 1 and set(fields) <= THIN_LS_FIELDS, \
        f"FakeKernel does not know thin_ls {args!r}"
    return snap, headers, fields, rest[0]


def _thin_ls_row(thin_id: int, thin: Thin, references: dict[int, int], block_sectors: int,
                 fields: list[str]) -> list[str]:
    """One thin's cells; a block is shared when more than one thin maps it."""
    mine = list(thin.mappings.values())
    blocks = {"MAPPED": len(mine),
              "EXCLUSIVE": sum(1 for b in mine if references[b] == 1),
              "SHARED": sum(1 for b in mine if references[b] > 1)}
    unit = {"BLOCKS": 1, "SECTORS": block_sectors, "BYTES": block_sectors * SECTOR}
    cells = []
    for name in fields:
        if name == "DEV":
            cells.append(str(thin_id))
        else:
            kind, _sep, scale = name.partition("_")
            cells.append(str(blocks[kind] * unit[scale]))
    return cells

"""FakeKernel: device-mapper, loop devices and the tools reconciler runs, in memory.

Why it exists: the unit tier must run every parser and every error path of production without
root or a kernel. FakeKernel implements `Host`, so it sits *under* the parsers: production sends
the argv it sends to the real machine and gets back the exact stdout, stderr and exit codes the
real tools gave, as captured from a real kernel in fixtures/dmsetup/*.json (checked byte for
byte by tests/test_fake_parity.py). It also keeps the kernel's rules, so a reconciler bug that
would fail on a real machine fails here too: 24-bit thin ids, EEXIST for an id that exists,
ENODATA for one that does not, transaction ids that move only from the current value, EBUSY for
a taken name, an open device or an active thin being deleted, metadata that outlives the pool
device (and a reboot), copy-on-write snapshots, and a pool whose data space runs out.

Data is real: a thin device's blocks live in the pool's data file (sparse, under the test's tmp
dir) at the block the fake allocated, so reads return what was written, snapshots read their
origin's bytes, and a filesystem written by the fake mkfs is found again after a reboot.

What is approximate (no capture can pin it down):
- metadata blocks in use: the kernel's reserve (a tenth of the device, at most 4096 blocks),
  a fixed part, one space-map bitmap per 16320 blocks, one btree node per mapping tree (a
  snapshot shares its origin's tree until either is written) and one for a held metadata
  snapshot. This reproduces every captured value; bigger pools are estimates.
- the held metadata root is always block 46, the number the capture shows.
- the queue_if_no_space wait: a write to a full pool that queues in the real kernel fails at
  once here, as if dm_thin_pool's no_space_timeout had already expired (the state the capture
  shows afterwards).
- everything is committed at once: a crash loses no metadata or data here.
- the event counter counts what the capture shows: a pool's first allocation under its low
  water mark and each change of its no-space state.
- mkfs maps a handful of blocks (its signature and a few scattered metadata writes), after
  discarding the device as mkfs does by default; e2fsck prints nothing on success.
- texts the capture does not hold come from the real tools run on files (thin_ls and
  thin_check on thin_restore'd metadata, mkfs, e2fsck, resize2fs, losetup, stat, blockdev) or,
  for a few kernel refusals, from the kernel's source; each such place says so.

Anything it does not know raises AssertionError: a fake that accepted what production should
never send would hide bugs.
"""

from __future__ import annotations

import copy
import errno
import heapq
import math
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.dm.host import Completed

DM_MAJOR = 254
LOOP_MAJOR = 7
SECTOR = 512
METADATA_BLOCK = 4096
THIN_MAGIC = 27022010
THIN_MAGIC_OFFSET = 32
MAX_THIN_ID = (1 << 24) - 1
HELD_ROOT = 46  # the captured block number of a held metadata snapshot
BITMAP_ENTRIES = 16320  # space-map entries per 4 KiB bitmap block: (4096 - 16) * 4
TREE_LEAF_ENTRIES = 252  # mappings per 4 KiB btree leaf
METADATA_FIXED_BLOCKS = 7  # superblock, space-map and device-tree roots: calibrated (418)
WRITE_PATTERN = b"\xa5"  # what the capture's dd wrote

INFO_ARGV = ("info", "-c", "--noheadings", "--nameprefixes", "-o",
             "name,uuid,major,minor,attr,open,segments,events")
VERSION = "Library version:   1.02.185 (2022-05-18)\nDriver version:    4.47.0\n"
NO_DEVICES = "No devices found\n"
NO_SUCH_DEVICE = "Device does not exist.\nCommand failed.\n"
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


class _Fail(Exception):
    """A command fails: this exit code, stderr and (rarely) stdout."""

    def __init__(self, stderr: str, rc: int = 1, stdout: str = "") -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.rc = rc
        self.stdout = stdout


class _Refused(Exception):
    """The kernel refuses an ioctl with this errno; dmsetup words it per operation."""

    def __init__(self, number: int) -> None:
        super().__init__(os.strerror(number))
        self.number = number


def _ioctl_failed(op: str, target: str, number: int) -> _Fail:
    """libdevmapper's text: `target` is "NAME UUID", "NAME " (no uuid) or "NAME (254:N)"."""
    return _Fail(f"device-mapper: {op} ioctl on {target} failed: {os.strerror(number)}\n"
                 "Command failed.\n")


def _io_error(number: int, path: str) -> OSError:
    return OSError(number, os.strerror(number), path)


# -- what a pool's metadata device holds ---------------------------------------------------


@dataclass
class Thin:
    """One thin id: its virtual -> physical block mappings and the btree holding them."""

    mappings: dict[int, int] = field(default_factory=dict)
    tree: int = 0


@dataclass
class MetadataSnapshot:
    """What `reserve_metadata_snap` froze: the thin ids as they were then."""

    thins: dict[int, Thin]
    transaction_id: int


@dataclass
class PoolMetadata:
    """A thin-pool's metadata; keyed by the metadata's backing file, it outlives the pool device
    and reboots, as the on-disk metadata does."""

    total_blocks: int
    block_sectors: int
    data_blocks: int = 0
    transaction_id: int = 0
    thins: dict[int, Thin] = field(default_factory=dict)
    refcounts: dict[int, int] = field(default_factory=dict)
    held: MetadataSnapshot | None = None
    next_tree: int = 1
    alloc_hint: int = 0

    @property
    def held_root(self) -> int | None:
        """The metadata block of the held snapshot, if one is held."""
        return None if self.held is None else HELD_ROOT

    def used_blocks(self) -> int:
        """Metadata blocks in use as the pool status counts them (approximate: module doc)."""
        reserve = min(4096, self.total_blocks // 10)  # the kernel counts its reserve as used
        space_maps = _bitmaps(self.total_blocks) + _bitmaps(self.data_blocks)
        trees: dict[int, int] = {}
        for thin in self.thins.values():
            trees[thin.tree] = max(trees.get(thin.tree, 0), len(thin.mappings))
        nodes = sum(_tree_nodes(count) for count in trees.values())
        held = 0 if self.held is None else 1
        return reserve + METADATA_FIXED_BLOCKS + space_maps + nodes + held

    def new_tree(self) -> int:
        """A btree of its own (for a new thin, or one whose shared tree is written)."""
        self.next_tree += 1
        return self.next_tree

    def unref(self, physical: int) -> None:
        """Drop one reference to a data block; the last one frees it."""
        self.refcounts[physical] -= 1
        if self.refcounts[physical] == 0:
            del self.refcounts[physical]

    def unmap(self, thin: Thin, virtual: int) -> None:
        """Forget one mapping (a discard); a shared btree is copied first."""
        self.diverge(thin)
        self.unref(thin.mappings.pop(virtual))

    def diverge(self, thin: Thin) -> None:
        """Changing a btree shared with a snapshot copies it (for the metadata count)."""
        if any(other is not thin and other.tree == thin.tree for other in self.thins.values()):
            thin.tree = self.new_tree()


def _bitmaps(blocks: int) -> int:
    return max(1, math.ceil(blocks / BITMAP_ENTRIES))


def _tree_nodes(mappings: int) -> int:
    leaves = max(1, math.ceil(mappings / TREE_LEAF_ENTRIES))
    return leaves if leaves == 1 else leaves + math.ceil(leaves / TREE_LEAF_ENTRIES)


# -- kernel objects ------------------------------------------------------------------------


@dataclass
class Loop:
    """An attached loop device: its backing file and the size it had when attached."""

    path: Path
    size: int
    autoclear: bool = False  # detached while in use: goes when its last user does


@dataclass(frozen=True)
class Table:
    """A loaded one-target table, devices resolved to (major, minor) as the kernel keeps them."""

    length: int
    target: str
    devices: tuple[tuple[int, int], ...]
    args: tuple[str, ...]
    readonly: bool
    metadata_key: str = ""  # thin-pool only: the metadata's backing file

    def params(self) -> str:
        """The parameters as `dmsetup table` prints them."""
        numbers = [f"{major}:{minor}" for major, minor in self.devices]
        if self.target == "thin-pool":
            block, low, *features = self.args
            return " ".join([*numbers, block, low, str(len(features)), *features]) + " "
        return " ".join([*numbers, *self.args])


@dataclass
class PoolTarget:
    """A live thin-pool target: geometry and the no-space state the status shows."""

    metadata: PoolMetadata
    data_path: Path
    data_blocks: int
    block_sectors: int
    low_water_blocks: int
    requested_error_if_no_space: bool
    error_if_no_space: bool
    out_of_data_space: bool = False
    low_water_triggered: bool = False

    @property
    def block_bytes(self) -> int:
        """Bytes per data block."""
        return self.block_sectors * SECTOR

    def free_blocks(self) -> int:
        """Data blocks not mapped by any thin."""
        return self.data_blocks - len(self.metadata.refcounts)


@dataclass
class DmDevice:
    """One device-mapper device."""

    name: str
    uuid: str
    minor: int
    live: Table | None = None
    inactive: Table | None = None
    suspended: bool = False
    holders: int = 0  # opened by hold_open (a mount, a process)
    events: int = 0
    pool: PoolTarget | None = None

    @property
    def number(self) -> tuple[int, int]:
        """(major, minor)."""
        return DM_MAJOR, self.minor

    def references(self) -> set[tuple[int, int]]:
        """Devices its tables hold open (an inactive table holds them too)."""
        return {d for table in (self.live, self.inactive) if table for d in table.devices}


class FakeKernel:
    """An in-memory Linux with device-mapper, loop devices, dmsetup, losetup and thin tools."""

    def __init__(self) -> None:
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
        self.calls: list[tuple[str, ...]] = []
        self.unsafe_snapshots: list[tuple[int, int]] = []
        self._failures: list[tuple[tuple[str, ...], int, str, int]] = []

    # -- test helpers ------------------------------------------------------------------------

    def fail_next(self, argv_prefix: tuple[str, ...], rc: int, stderr: str,
                  times: int = 1) -> None:
        """Make the next `times` commands starting with `argv_prefix` fail with this text."""
        self._failures.append((argv_prefix, rc, stderr, times))

    def hold_open(self, name: str) -> None:
        """Open a dm device, as a mount or a process would."""
        self._existing(name).holders += 1

    def release(self, name: str) -> None:
        """Close what hold_open opened."""
        device = self._existing(name)
        assert device.holders > 0, f"FakeKernel: {name} is not held open"
        device.holders -= 1

    def write_blocks(self, name: str, offset_bytes: int, length_bytes: int) -> None:
        """Write `length_bytes` of a pattern at `offset_bytes` into a dm device (as dd would)."""
        self.write(f"/dev/mapper/{name}", offset_bytes, WRITE_PATTERN * length_bytes)

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

    def filesystem(self, name: str) -> str | None:
        """The filesystem mkfs left on a thin device ("ext4", "xfs"), read from its blocks."""
        head = self._thin_read(self._open_mapper(f"/dev/mapper/{name}"), 0, 2048)
        if head.startswith(b"XFSB"):
            return "xfs"
        return "ext4" if _ext4_blocks(head) is not None else None

    def pool_metadata(self, metadata_file: Path) -> PoolMetadata:
        """The metadata a pool keeps on this file."""
        return self.metadata[_metadata_key(metadata_file)]

    # -- Host --------------------------------------------------------------------------------

    def run(self, argv: Sequence[str]) -> Completed:
        """Answer one command as the real tool would."""
        words = tuple(argv)
        self.calls.append(words)
        injected = self._injected(words)
        if injected is not None:
            return injected
        try:
            stdout, stderr = self._dispatch(words[0], list(words[1:]))
        except _Fail as failure:
            return Completed(words, failure.rc, failure.stdout, failure.stderr)
        return Completed(words, 0, stdout, stderr)

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Loop devices read their backing file; thin devices their mapped blocks or zeros."""
        if path.startswith("/dev/mapper/"):
            device = self._open_mapper(path)
            return self._thin_read(device, offset, length)
        loop = self._loop_at(path)
        if loop is None:
            return b""  # an unattached loop device has no size
        with loop.path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(max(0, min(length, loop.size - offset)))

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Loop devices write their backing file; thin devices map (and copy) blocks."""
        if path.startswith("/dev/mapper/"):
            device = self._open_mapper(path)
            if device.live is not None and device.live.readonly:
                raise _io_error(errno.EROFS, path)
            try:
                self._thin_write(device, offset, data)
            except OSError as exc:  # what fit was written, as with a real partial write
                raise _io_error(exc.errno or errno.EIO, path) from None
            return
        loop = self._loop_at(path)
        if loop is None or offset + len(data) > loop.size:
            raise _io_error(errno.ENOSPC, path)
        with loop.path.open("r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    # -- plumbing ----------------------------------------------------------------------------

    def _dispatch(self, program: str, args: list[str]) -> tuple[str, str]:
        if program == "dmsetup":
            return self._dmsetup(args), ""
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
        if program == "resize2fs":
            return self._resize2fs(args)
        raise AssertionError(f"FakeKernel does not know the command {[program, *args]!r}")

    def _injected(self, words: tuple[str, ...]) -> Completed | None:
        for index, (prefix, rc, stderr, times) in enumerate(self._failures):
            if words[: len(prefix)] == prefix:
                if times <= 1:
                    del self._failures[index]
                else:
                    self._failures[index] = (prefix, rc, stderr, times - 1)
                return Completed(words, rc, "", stderr)
        return None

    def _existing(self, name: str) -> DmDevice:
        """A device a test helper names: it must exist."""
        assert name in self.devices, f"FakeKernel has no dm device {name}"
        return self.devices[name]

    def _named(self, name: str, op: str) -> DmDevice:
        """The device an ioctl names, or dmsetup's ENXIO text."""
        if name not in self.devices:
            raise _ioctl_failed(op, f"{name} ", errno.ENXIO)
        return self.devices[name]

    def _by_number(self, number: tuple[int, int]) -> DmDevice | None:
        return self._by_minor.get(number[1]) if number[0] == DM_MAJOR else None

    def _users(self) -> Counter[tuple[int, int]]:
        """How many dm devices hold each device number open through their tables."""
        return self._user_counts

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

    def _open_count(self, device: DmDevice,
                    users: Counter[tuple[int, int]] | None = None) -> int:
        del users  # kept current by _retabled
        return device.holders + self._user_counts[device.number]

    @staticmethod
    def _loop_number(path: str) -> int | None:
        rest = path.removeprefix("/dev/loop")
        return int(rest) if rest != path and rest.isdigit() else None

    def _loop_at(self, path: str) -> Loop | None:
        """The attachment of a /dev/loopN path (None when unattached); other paths: a bug."""
        number = self._loop_number(path)
        assert number is not None, f"FakeKernel has no block device {path}"
        return self.loops.get(number)

    def _number(self, path: str) -> tuple[int, int] | None:
        """(major, minor) of a device node, or None if there is none at `path`."""
        number = self._loop_number(path)
        if number is not None:
            return LOOP_MAJOR, number  # udev makes the loop nodes whether attached or not
        name = path.removeprefix("/dev/mapper/")
        if name != path and name in self.devices:
            return self.devices[name].number
        return None

    def _open_mapper(self, path: str) -> DmDevice:
        """The dm device at /dev/mapper/NAME for I/O (opening a missing node fails)."""
        name = path.removeprefix("/dev/mapper/")
        if name not in self.devices:
            raise _io_error(errno.ENOENT, path)
        device = self.devices[name]
        assert device.live is not None and device.live.target == "thin", \
            f"FakeKernel does I/O on thin devices only, not {path}"
        pool = self._thin_pool(device.live)
        # Real I/O would block until resume; in a single-threaded test that is a hang.
        assert not device.suspended and not pool.suspended, \
            f"FakeKernel: I/O on suspended {path} would block"
        return device

    def _drop_unused_loops(self) -> None:
        in_use = set(self._user_counts)
        for number, loop in list(self.loops.items()):
            if loop.autoclear and (LOOP_MAJOR, number) not in in_use:
                del self.loops[number]

    # -- dmsetup -----------------------------------------------------------------------------

    def _dmsetup(self, args: list[str]) -> str:
        match args:
            case ["version"]:
                return VERSION
            case ["ls"]:
                return self._all(lambda d: f"{d.name}\t({DM_MAJOR}:{d.minor})\n")
            case ["status"]:
                return self._all(lambda d: f"{d.name}: {self._line(d, 'status')}")
            case ["table"]:
                return self._all(lambda d: f"{d.name}: {self._line(d, 'table')}")
            case [*words] if tuple(words) == INFO_ARGV:
                users = self._users()
                return self._all(lambda d: self._info_columns(d, users))
            case [*words, name] if tuple(words) == INFO_ARGV:
                return self._info_columns(self._shown(name))
            case ["info", name]:
                return self._info_plain(self._shown(name))
            case ["status", name]:
                return self._line(self._shown(name), "status")
            case ["table", name]:
                return self._line(self._named(name, "table"), "table")
            case ["create", name, *options]:
                return self._create(name, options)
            case ["load", name, *options]:
                return self._load(name, options)
            case ["suspend", name]:
                self._named(name, "suspend").suspended = True
                return ""
            case ["resume", name]:
                return self._resume(self._named(name, "resume"))
            case ["remove", name]:
                return self._remove(self._named(name, "remove"))
            case ["message", name, "0", *words] if words:
                return self._message(self._named(name, "message"), words)
        raise AssertionError(f"FakeKernel does not know dmsetup {args!r}")

    def _all(self, show: Callable[[DmDevice], str]) -> str:
        """Every device, in name order (the kernel keeps names in an rbtree)."""
        if not self.devices:
            return NO_DEVICES
        return "".join(show(self.devices[name]) for name in sorted(self.devices))

    def _shown(self, name: str) -> DmDevice:
        """status and info look the name up themselves and say so when it is missing."""
        if name not in self.devices:
            raise _Fail(NO_SUCH_DEVICE)
        return self.devices[name]

    def _line(self, device: DmDevice, what: str) -> str:
        table = device.live
        if table is None:
            return "\n"
        params = self._status(device, table) if what == "status" else table.params()
        return f"0 {table.length} {table.target} {params}\n"

    def _info_columns(self, device: DmDevice,
                      users: Counter[tuple[int, int]] | None = None) -> str:
        live = device.live
        attr = "".join([
            "L" if live else "-",
            "I" if device.inactive else "-",
            "s" if device.suspended else "-",
            "r" if live and live.readonly else "w",
        ])
        return (f"DM_NAME='{device.name}':DM_UUID='{device.uuid}':DM_MAJOR='{DM_MAJOR}':"
                f"DM_MINOR='{device.minor}':DM_ATTR='{attr}':"
                f"DM_OPEN='{self._open_count(device, users)}':DM_SEGMENTS='{1 if live else 0}':"
                f"DM_EVENTS='{device.events}'\n")

    def _info_plain(self, device: DmDevice) -> str:
        tables = {(True, False): "LIVE", (True, True): "LIVE & INACTIVE",
                  (False, True): "INACTIVE", (False, False): "None"}
        live = device.live
        # Not captured beyond a plain active device: " (READ-ONLY)" is from dmsetup's source.
        state = ("SUSPENDED" if device.suspended else "ACTIVE") + (
            " (READ-ONLY)" if live and live.readonly else "")
        return (f"Name:              {device.name}\n"
                f"State:             {state}\n"
                f"Read Ahead:        256\n"
                f"Tables present:    {tables[(live is not None, device.inactive is not None)]}\n"
                f"Open count:        {self._open_count(device)}\n"
                f"Event number:      {device.events}\n"
                f"Major, minor:      {DM_MAJOR}, {device.minor}\n"
                f"Number of targets: {1 if live else 0}\n"
                f"UUID: {device.uuid}\n\n")

    def _status(self, device: DmDevice, table: Table) -> str:
        if table.target == "thin-pool":
            assert device.pool is not None
            return self._pool_status(device.pool)
        if table.target == "thin":
            return self._thin_status(table)
        return ""

    @staticmethod
    def _pool_status(pool: PoolTarget) -> str:
        meta = pool.metadata
        held = "-" if meta.held_root is None else str(meta.held_root)
        mode = "out_of_data_space" if pool.out_of_data_space else "rw"
        policy = "error_if_no_space" if pool.error_if_no_space else "queue_if_no_space"
        watermark = min(1024, meta.total_blocks // 4)
        return (f"{meta.transaction_id} {meta.used_blocks()}/{meta.total_blocks} "
                f"{len(meta.refcounts)}/{pool.data_blocks} {held} {mode} discard_passdown "
                f"{policy} - {watermark} ")

    def _thin_status(self, table: Table) -> str:
        pool = self._thin_pool(table)
        assert pool.pool is not None
        thin = pool.pool.metadata.thins[int(table.args[0])]
        block = pool.pool.block_sectors
        if not thin.mappings:
            return "0 -"
        return f"{len(thin.mappings) * block} {(max(thin.mappings) + 1) * block - 1}"

    def _thin_pool(self, table: Table) -> DmDevice:
        pool = self._by_number(table.devices[0])
        assert pool is not None, "FakeKernel: a thin outlived its pool"
        return pool

    # -- create, load, resume, remove --------------------------------------------------------

    @staticmethod
    def _table_options(options: list[str], allowed: set[str]) -> tuple[dict[str, str], bool]:
        """--uuid U, --table T and --readonly, in any order, each at most once."""
        values: dict[str, str] = {}
        readonly = False
        rest = list(options)
        while rest:
            word = rest.pop(0)
            if word == "--readonly" and not readonly:
                readonly = True
            elif word in allowed and word not in values and rest:
                values[word] = rest.pop(0)
            else:
                raise AssertionError(f"FakeKernel does not know the dmsetup option {word!r}")
        assert "--table" in values, f"FakeKernel: dmsetup without --table: {options!r}"
        return values, readonly

    def _create(self, name: str, options: list[str]) -> str:
        values, readonly = self._table_options(options, {"--uuid", "--table"})
        assert "--uuid" in values, "FakeKernel: production always names a uuid"
        uuid = values["--uuid"]
        if name in self.devices or uuid in self._uuids:
            raise _ioctl_failed("create", f"{name} {uuid}", errno.EBUSY)
        minor = self._new_minor()
        device = DmDevice(name=name, uuid=uuid, minor=minor)
        self._add_device(device)
        # dmsetup create is create, reload and resume; a failed step removes the device again.
        step = "reload"
        try:
            device.inactive = self._construct(device, values["--table"], readonly)
            self._retabled(device, set())
            step = "resume"
            self._activate(device)
        except _Refused as refused:
            self._drop_device(device)
            self._drop_unused_loops()
            raise _ioctl_failed(step, f"{name} ({DM_MAJOR}:{minor})", refused.number) from None
        return ""

    def _load(self, name: str, options: list[str]) -> str:
        device = self._named(name, "reload")
        values, readonly = self._table_options(options, {"--table"})
        before = device.references()
        try:
            device.inactive = self._construct(device, values["--table"], readonly)
        except _Refused as refused:
            raise _ioctl_failed("reload", f"{name} ", refused.number) from None
        self._retabled(device, before)
        return ""

    def _resume(self, device: DmDevice) -> str:
        try:
            self._activate(device)
        except _Refused as refused:
            raise _ioctl_failed("resume", f"{device.name} ", refused.number) from None
        return ""

    def _activate(self, device: DmDevice) -> None:
        """Resume: swap in the inactive table, if any, and run again."""
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
        self._drop_unused_loops()

    def _remove(self, device: DmDevice) -> str:
        if self._open_count(device) > 0:
            raise _ioctl_failed("remove", f"{device.name} ", errno.EBUSY)
        self._drop_device(device)
        self._drop_unused_loops()
        return ""

    # -- tables ------------------------------------------------------------------------------

    def _construct(self, device: DmDevice, text: str, readonly: bool) -> Table:
        """What the target constructors check when a table is loaded."""
        words = text.split()
        assert "\n" not in text and len(words) >= 3 and words[0] == "0" \
            and words[1].isdigit() and int(words[1]) > 0, f"FakeKernel: unsupported table {text!r}"
        length, target, args = int(words[1]), words[2], words[3:]
        if target == "thin-pool":
            return self._construct_pool(device, length, args, readonly)
        if target == "thin":
            return self._construct_thin(length, args, readonly)
        assert target == "zero" and not args, f"FakeKernel does not model the table {text!r}"
        return Table(length, target, (), (), readonly)

    def _device_number(self, path: str) -> tuple[int, int]:
        number = self._number(path)
        if number is None:
            raise _Refused(errno.ENODEV)  # dm_get_device; from the kernel's source
        return number

    def _construct_pool(self, device: DmDevice, length: int, args: list[str],
                        readonly: bool) -> Table:
        assert len(args) >= 4 and args[2].isdigit() and args[3].isdigit(), \
            f"FakeKernel: thin-pool arguments {args!r}"
        meta_number, data_number = (self._device_number(path) for path in args[:2])
        block, features = int(args[2]), args[4:]
        assert not features or features[0] == str(len(features) - 1), args
        assert set(features[1:]) <= {"error_if_no_space"}, \
            f"FakeKernel does not model the pool features {features[1:]!r}"
        if block % 128 or not 128 <= block <= 2097152:
            raise _Refused(errno.EINVAL)
        meta_loop, data_loop = (self.loops.get(n[1]) if n[0] == LOOP_MAJOR else None
                                for n in (meta_number, data_number))
        assert meta_loop is not None and data_loop is not None, \
            "FakeKernel builds pools on attached loop devices only"
        if length * SECTOR > data_loop.size:
            raise _Refused(errno.EINVAL)  # device too small for the target
        key = _metadata_key(meta_loop.path)
        if any(d is not device and d.live and d.live.metadata_key == key
               for d in self.devices.values()):
            raise _Refused(errno.EBUSY)  # the metadata is another pool's
        self._open_metadata(meta_loop, block)
        return Table(length, "thin-pool", (meta_number, data_number),
                     (args[2], args[3], *features[1:]), readonly, metadata_key=key)

    def _open_metadata(self, loop: Loop, block_sectors: int) -> PoolMetadata:
        """Format an all-zero superblock, as the kernel does; otherwise open what is there."""
        key = _metadata_key(loop.path)
        first = _read_at(loop.path, 0, METADATA_BLOCK)
        if not any(first):
            _write_at(loop.path, THIN_MAGIC_OFFSET, struct.pack("<Q", THIN_MAGIC))
            self.metadata[key] = PoolMetadata(total_blocks=loop.size // METADATA_BLOCK,
                                              block_sectors=block_sectors)
        elif not _has_magic(first):
            raise _Refused(errno.EILSEQ)  # superblock validator; from the kernel's source
        meta = self.metadata.get(key)
        assert meta is not None, f"FakeKernel: {loop.path} holds metadata it did not write"
        if meta.block_sectors != block_sectors:
            raise _Refused(errno.EINVAL)  # captured: the data block size cannot change
        meta.total_blocks = loop.size // METADATA_BLOCK
        return meta

    def _bind_pool(self, device: DmDevice, table: Table) -> PoolTarget:
        """The pool target of a table being resumed; it keeps its state across reloads."""
        meta = self.metadata[table.metadata_key]
        data_blocks = table.length // meta.block_sectors
        if data_blocks < meta.data_blocks:
            raise _Refused(errno.EINVAL)  # a pool cannot shrink; from the kernel's source
        meta.data_blocks = data_blocks
        error_if_no_space = "error_if_no_space" in table.args
        data_loop = self.loops[table.devices[1][1]]
        current = device.pool
        if current is None or current.metadata is not meta:
            current = PoolTarget(metadata=meta, data_path=data_loop.path,
                                 data_blocks=data_blocks, block_sectors=meta.block_sectors,
                                 low_water_blocks=int(table.args[1]),
                                 requested_error_if_no_space=error_if_no_space,
                                 error_if_no_space=error_if_no_space)
        current.data_blocks = data_blocks
        current.requested_error_if_no_space = error_if_no_space
        if not current.out_of_data_space:
            current.error_if_no_space = error_if_no_space
        self._check_for_data_space(device, current)
        return current

    def _construct_thin(self, length: int, args: list[str], readonly: bool) -> Table:
        assert len(args) == 2 and args[1].isdigit(), f"FakeKernel: thin arguments {args!r}"
        number = self._device_number(args[0])
        pool = self._by_number(number)
        if pool is None or pool.pool is None:
            raise _Refused(errno.EINVAL)  # not a pool
        if int(args[1]) not in pool.pool.metadata.thins:
            raise _Refused(errno.ENODATA)  # captured
        return Table(length, "thin", (number,), (args[1],), readonly)

    # -- pool messages -----------------------------------------------------------------------

    def _message(self, device: DmDevice, words: list[str]) -> str:
        if device.pool is None or device.live is None or device.live.target != "thin-pool":
            raise _ioctl_failed("message", f"{device.name} ", errno.EINVAL)
        try:
            self._apply_message(device, device.pool.metadata, words)
        except _Refused as refused:
            raise _ioctl_failed("message", f"{device.name} ", refused.number) from None
        self._check_for_data_space(device, device.pool)  # a message commits
        return ""

    def _apply_message(self, device: DmDevice, meta: PoolMetadata, words: list[str]) -> None:
        verb, numbers = words[0], words[1:]
        arity = {"create_thin": 1, "create_snap": 2, "delete": 1, "set_transaction_id": 2,
                 "reserve_metadata_snap": 0, "release_metadata_snap": 0}
        assert arity.get(verb) == len(numbers), \
            f"FakeKernel does not know the pool message {words!r}"
        if not all(n.isdigit() for n in numbers):
            raise _Refused(errno.EINVAL)
        ids = [int(n) for n in numbers]
        if verb in ("create_thin", "create_snap", "delete") and max(ids) > MAX_THIN_ID:
            raise _Refused(errno.EINVAL)  # captured: thin ids have 24 bits
        if verb == "create_thin":
            self._new_id(meta, ids[0])
            meta.thins[ids[0]] = Thin(tree=meta.new_tree())
        elif verb == "create_snap":
            self._create_snap(device, meta, ids[0], ids[1])
        elif verb == "delete":
            self._delete(device, meta, ids[0])
        elif verb == "set_transaction_id":
            if ids[0] != meta.transaction_id:
                raise _Refused(errno.EINVAL)
            meta.transaction_id = ids[1]
        elif verb == "reserve_metadata_snap":
            if meta.held is not None:
                raise _Refused(errno.EBUSY)  # captured: one snapshot at a time
            meta.held = MetadataSnapshot(copy.deepcopy(meta.thins), meta.transaction_id)
        elif verb == "release_metadata_snap":
            if meta.held is None:
                raise _Refused(errno.EINVAL)  # captured: nothing to release
            meta.held = None

    @staticmethod
    def _new_id(meta: PoolMetadata, thin_id: int) -> None:
        if thin_id in meta.thins:
            raise _Refused(errno.EEXIST)  # captured

    def _create_snap(self, pool: DmDevice, meta: PoolMetadata, new: int, origin: int) -> None:
        self._new_id(meta, new)
        if origin not in meta.thins:
            raise _Refused(errno.ENODATA)
        # Captured: the kernel does not refuse an active origin that is not suspended, but its
        # in-flight writes may be missing from the snapshot: tests assert we never do it.
        if any(not d.suspended for d in self._thin_users(pool, origin)):
            self.unsafe_snapshots.append((new, origin))
        source = meta.thins[origin]
        meta.thins[new] = Thin(dict(source.mappings), tree=source.tree)
        for physical in source.mappings.values():
            meta.refcounts[physical] += 1

    def _delete(self, pool: DmDevice, meta: PoolMetadata, thin_id: int) -> None:
        if thin_id not in meta.thins:
            raise _Refused(errno.ENODATA)
        if self._thin_users(pool, thin_id):
            raise _Refused(errno.EBUSY)  # captured: an active thin cannot be deleted
        for physical in meta.thins.pop(thin_id).mappings.values():
            meta.unref(physical)

    def _thin_users(self, pool: DmDevice, thin_id: int) -> list[DmDevice]:
        """Devices whose live or inactive table opens this thin id of this pool."""
        wanted = (pool.number, str(thin_id))
        return [d for d in self.devices.values()
                for t in (d.live, d.inactive)
                if t and t.target == "thin" and (t.devices[0], t.args[0]) == wanted]

    # -- the data path -----------------------------------------------------------------------

    def _thin_blocks(self, device: DmDevice, offset: int,
                     length: int) -> Iterator[tuple[int, int, int]]:
        """(virtual block, offset in it, byte count) for a byte range of a thin device."""
        assert device.live is not None
        assert offset >= 0 and offset + length <= device.live.length * SECTOR, \
            f"FakeKernel: I/O past the end of {device.name}"
        pool = self._thin_pool(device.live).pool
        assert pool is not None
        position, end = offset, offset + length
        while position < end:
            virtual, inner = divmod(position, pool.block_bytes)
            count = min(end - position, pool.block_bytes - inner)
            yield virtual, inner, count
            position += count

    def _thin_of(self, device: DmDevice) -> tuple[DmDevice, PoolTarget, Thin]:
        assert device.live is not None
        pool_device = self._thin_pool(device.live)
        assert pool_device.pool is not None
        pool = pool_device.pool
        return pool_device, pool, pool.metadata.thins[int(device.live.args[0])]

    def _thin_read(self, device: DmDevice, offset: int, length: int) -> bytes:
        _pool_device, pool, thin = self._thin_of(device)
        chunks = []
        for virtual, inner, count in self._thin_blocks(device, offset, length):
            physical = thin.mappings.get(virtual)
            if physical is None:
                chunks.append(bytes(count))
            else:
                chunks.append(_read_at(pool.data_path, physical * pool.block_bytes + inner,
                                       count))
        return b"".join(chunks)

    def _thin_write(self, device: DmDevice, offset: int, data: bytes) -> None:
        pool_device, pool, thin = self._thin_of(device)
        done = 0
        for virtual, inner, count in self._thin_blocks(device, offset, len(data)):
            physical = self._provision(pool_device, pool, thin, virtual,
                                       whole=count == pool.block_bytes)
            _write_at(pool.data_path, physical * pool.block_bytes + inner,
                      data[done:done + count])
            done += count

    def _provision(self, pool_device: DmDevice, pool: PoolTarget, thin: Thin, virtual: int,
                   whole: bool) -> int:
        """The data block a write lands in: its own one, or a new one (copied if shared)."""
        meta = pool.metadata
        current = thin.mappings.get(virtual)
        if current is not None and meta.refcounts[current] == 1:
            return current
        new = self._allocate(pool_device, pool)
        block = pool.block_bytes
        if current is not None and not whole:
            _write_at(pool.data_path, new * block, _read_at(pool.data_path, current * block,
                                                             block))
        elif not whole:
            _write_at(pool.data_path, new * block, bytes(block))  # a new block reads as zeros
        meta.diverge(thin)
        if current is not None:
            meta.unref(current)  # copy on write: the shared block stays with the others
        thin.mappings[virtual] = new
        return new

    def _allocate(self, pool_device: DmDevice, pool: PoolTarget) -> int:
        meta = pool.metadata
        free = pool.free_blocks()
        if free <= pool.low_water_blocks and not pool.low_water_triggered:
            pool.low_water_triggered = True
            pool_device.events += 1  # captured: the first allocation under the low water mark
        if free == 0:
            self._out_of_data_space(pool_device, pool)
        for step in range(pool.data_blocks):
            candidate = (meta.alloc_hint + step) % pool.data_blocks
            if candidate not in meta.refcounts:
                meta.refcounts[candidate] = 1
                meta.alloc_hint = candidate + 1
                return candidate
        raise AssertionError("FakeKernel: free blocks counted but none found")

    @staticmethod
    def _out_of_data_space(pool_device: DmDevice, pool: PoolTarget) -> None:
        """Captured: the pool says out_of_data_space and the write fails with ENOSPC; a
        queue_if_no_space pool fails it too once no_space_timeout expires (here: at once)."""
        if not pool.out_of_data_space:
            pool.out_of_data_space = True
            pool_device.events += 1
        if not pool.error_if_no_space:
            pool.error_if_no_space = True
            pool_device.events += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @staticmethod
    def _check_for_data_space(pool_device: DmDevice, pool: PoolTarget) -> None:
        """Captured: once blocks are free again (a commit sees it) the pool writes again."""
        if pool.out_of_data_space and pool.free_blocks() > 0:
            pool.out_of_data_space = False
            pool.error_if_no_space = pool.requested_error_if_no_space
            pool_device.events += 1

    def _blkdiscard(self, args: list[str]) -> str:
        assert len(args) == 1, f"FakeKernel: blkdiscard {args}"
        path = args[0]
        name = path.removeprefix("/dev/mapper/")
        if name == path or name not in self.devices:
            raise _Fail(f"blkdiscard: cannot open {path}: {os.strerror(errno.ENOENT)}\n")
        device = self._open_mapper(path)
        assert device.live is not None
        if device.live.readonly:
            raise _Fail(f"blkdiscard: cannot open {path}: {os.strerror(errno.EROFS)}\n")
        if self._open_count(device):
            # util-linux opens the device O_EXCL: a mounted one is refused.
            raise _Fail(f"blkdiscard: cannot open {path}: {os.strerror(errno.EBUSY)}\n")
        self._discard(device)
        return ""

    def _discard(self, device: DmDevice) -> None:
        """Unmap every block of a thin device (mkfs discards first by default)."""
        pool_device, pool, thin = self._thin_of(device)
        for virtual in list(thin.mappings):
            pool.metadata.unmap(thin, virtual)
        self._check_for_data_space(pool_device, pool)  # the periodic commit, a second later

    # -- losetup, stat, blockdev -------------------------------------------------------------

    def _losetup(self, args: list[str]) -> str:
        match args:
            case ["--find", "--show", path]:
                return self._attach(Path(path))
            case ["--noheadings", "--output", "NAME", "--associated", path]:
                wanted = Path(path).resolve()
                return "".join(f"/dev/loop{number}\n" for number, loop in sorted(
                    self.loops.items()) if loop.path.resolve() == wanted)
            case ["--detach", path]:
                return self._detach(path)
        raise AssertionError(f"FakeKernel does not know losetup {args!r}")

    def _attach(self, path: Path) -> str:
        if not path.is_file():
            raise _Fail(f"losetup: {path}: failed to set up loop device: "
                        f"{os.strerror(errno.ENOENT)}\n")
        number = next(n for n in range(len(self.loops) + 1) if n not in self.loops)
        self.loops[number] = Loop(path, path.stat().st_size)
        return f"/dev/loop{number}\n"

    def _detach(self, path: str) -> str:
        number = self._loop_number(path)
        assert number is not None, f"FakeKernel: losetup --detach {path}"
        if number not in self.loops:
            raise _Fail(f"losetup: {path}: detach failed: {os.strerror(errno.ENXIO)}\n")
        # The kernel detaches a loop device in use lazily, when its last user closes it.
        self.loops[number].autoclear = True
        self._drop_unused_loops()
        return ""

    def _stat(self, args: list[str]) -> str:
        assert args[:3] == ["-L", "-c", "%t:%T"] and len(args) == 4, f"FakeKernel: stat {args}"
        number = self._number(args[3])
        if number is None:
            if Path(args[3]).exists():
                return "0:0\n"  # not a device node
            raise _Fail(f"stat: cannot statx '{args[3]}': {os.strerror(errno.ENOENT)}\n")
        return f"{number[0]:x}:{number[1]:x}\n"

    def _blockdev(self, args: list[str]) -> str:
        assert args[:1] == ["--getsz"] and len(args) == 2, f"FakeKernel: blockdev {args}"
        path = args[1]
        name = path.removeprefix("/dev/mapper/")
        if name != path and name in self.devices:
            live = self.devices[name].live
            return f"{live.length if live else 0}\n"
        if self._loop_number(path) is not None:
            loop = self._loop_at(path)
            return f"{loop.size // SECTOR if loop else 0}\n"
        if Path(path).is_file():
            return f"{Path(path).stat().st_size // SECTOR}\n"
        raise _Fail(f"blockdev: cannot open {path}: {os.strerror(errno.ENOENT)}\n")

    # -- filesystems -------------------------------------------------------------------------

    def _mkfs_device(self, fs_type: str, path: str) -> DmDevice:
        name = path.removeprefix("/dev/mapper/")
        if name == path or name not in self.devices:
            if fs_type == "xfs":
                raise _Fail(f"Error accessing specified device {path}: "
                            f"{os.strerror(errno.ENOENT)}\n{XFS_USAGE}")
            raise _Fail(f"The file {path} does not exist and no size was specified.\n")
        device = self._open_mapper(path)
        assert device.live is not None
        if device.live.readonly:
            # Not captured: the texts of e2fsprogs' and xfsprogs' sources for EROFS.
            if fs_type == "xfs":
                raise _Fail(f"mkfs.xfs: cannot open {path}: {os.strerror(errno.EROFS)}\n")
            raise _Fail(f"{path}: {os.strerror(errno.EROFS)} while setting up superblock\n")
        return device

    def _mkfs(self, fs_type: str, args: list[str]) -> str:
        flags = MKFS_FLAGS[fs_type]
        assert args[:2] == flags and len(args) >= 3, f"FakeKernel: mkfs.{fs_type} {args}"
        path, options = args[-1], args[2:-1]
        device = self._mkfs_device(fs_type, path)
        assert device.live is not None
        if "nodiscard" not in " ".join(options) and "-K" not in options:
            self._discard(device)
        size = device.live.length * SECTOR
        try:
            self.write(path, 0, _superblock(fs_type, size))
            # A filesystem's metadata is spread over its groups: a few scattered blocks.
            for part in range(1, 8):
                self.write(path, part * size // 8 // METADATA_BLOCK * METADATA_BLOCK,
                           bytes(METADATA_BLOCK))
        except OSError as exc:  # a full pool; not captured: the tools' texts for a failed write
            reason = os.strerror(exc.errno or errno.EIO)
            if fs_type == "xfs":
                raise _Fail(f"mkfs.xfs: pwrite failed: {reason}\n") from None
            raise _Fail(f"mkfs.ext4: {reason} while writing out and closing file system\n"
                        ) from None
        return ""

    def _ext4_device(self, path: str) -> DmDevice | None:
        name = path.removeprefix("/dev/mapper/")
        if name == path or name not in self.devices:
            return None
        return self._open_mapper(path)

    def _e2fsck(self, args: list[str]) -> str:
        assert args[:2] == ["-f", "-p"] and len(args) == 3, f"FakeKernel: e2fsck {args}"
        path = args[2]
        device = self._ext4_device(path)
        if device is None:
            raise _Fail(f"e2fsck: {os.strerror(errno.ENOENT)} while trying to open {path}\n",
                        rc=8, stdout="Possibly non-existent device?\n")
        if _ext4_blocks(self._thin_read(device, 0, 2048)) is None:
            raise _Fail(f"e2fsck: Bad magic number in super-block while trying to open {path}\n",
                        rc=8, stdout=f"{path}: \n{E2FSCK_NOT_EXT4}")
        return ""  # the real one prints inode and block counts the fake does not keep

    def _resize2fs(self, args: list[str]) -> tuple[str, str]:
        assert len(args) == 1, f"FakeKernel: resize2fs {args}"
        path = args[0]
        device = self._ext4_device(path)
        if device is None:
            raise _Fail(f"{RESIZE2FS_BANNER}open: {os.strerror(errno.ENOENT)} while opening "
                        f"{path}\n")
        superblock = self._thin_read(device, 0, 2048)
        geometry = _ext4_blocks(superblock)
        if geometry is None:
            raise _Fail(f"{RESIZE2FS_BANNER}resize2fs: Bad magic number in super-block while "
                        f"trying to open {path}\n",
                        stdout="Couldn't find valid filesystem superblock.\n")
        blocks, block_size = geometry
        assert device.live is not None
        wanted = device.live.length * SECTOR // block_size
        unit = f"({block_size // 1024}k) blocks"
        if wanted == blocks:
            return "", (f"{RESIZE2FS_BANNER}The filesystem is already {wanted} {unit} long.  "
                        "Nothing to do!\n\n")
        self.write(path, 0, _superblock("ext4", device.live.length * SECTOR))
        return (f"Resizing the filesystem on {path} to {wanted} {unit}.\n"
                f"The filesystem on {path} is now {wanted} {unit} long.\n\n", RESIZE2FS_BANNER)

    # -- thin_check, thin_ls -----------------------------------------------------------------

    def _tool_metadata(self, path: str) -> tuple[Loop, PoolMetadata, bool]:
        """The metadata on a device a thin tool reads, and whether a pool has it open."""
        number = self._loop_number(path)
        loop = self.loops.get(number) if number is not None else None
        if loop is None:
            raise _Fail("Couldn't stat path\n")
        first = _read_at(loop.path, 0, METADATA_BLOCK)
        key = _metadata_key(loop.path)
        if not _has_magic(first):
            raise _Fail(CORRUPT_SUPERBLOCK)
        assert key in self.metadata, f"FakeKernel: {loop.path} holds metadata it did not write"
        live = any(d.live and d.live.metadata_key == key for d in self.devices.values())
        return loop, self.metadata[key], live

    def _thin_check(self, args: list[str]) -> tuple[str, str]:
        assert len(args) == 1 and not args[0].startswith("-"), f"FakeKernel: thin_check {args}"
        try:
            _loop, meta, live = self._tool_metadata(args[0])
        except _Fail as failure:
            if failure.stderr == CORRUPT_SUPERBLOCK:  # thin_check words it as it goes
                raise _Fail(f"examining superblock\n  superblock is corrupt\n    "
                            f"{CORRUPT_SUPERBLOCK}") from None
            raise
        if live:
            raise _Fail(LIVE_METADATA)  # opened exclusively, like thin_ls (captured there)
        # Real thin_check 0.9.0 prints the free count as the device's blocks less one.
        report = (f"TRANSACTION_ID={meta.transaction_id}\n"
                  f"METADATA_FREE_BLOCKS={meta.total_blocks - 1}\n")
        return report, THIN_CHECK_STEPS

    def _thin_ls(self, args: list[str]) -> str:
        snap, headers, fields, path = _thin_ls_options(args)
        _loop, meta, live = self._tool_metadata(path)
        if live and not snap:
            raise _Fail(LIVE_METADATA)
        if snap and meta.held is None:
            raise _Fail("no current metadata snap\n")
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


def _metadata_key(path: Path) -> str:
    """Metadata is found by its file, however the file was named to losetup."""
    return str(path.resolve())


def _has_magic(block: bytes) -> bool:
    return len(block) >= THIN_MAGIC_OFFSET + 8 and struct.unpack_from(
        "<Q", block, THIN_MAGIC_OFFSET)[0] == THIN_MAGIC


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    return data + bytes(length - len(data))


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _superblock(fs_type: str, size: int) -> bytes:
    """The start of a filesystem: enough for the fake's e2fsck, resize2fs and a reader to
    recognise it (ext4: block count, block size and magic where ext4 keeps them)."""
    if fs_type == "xfs":
        return b"XFSB" + bytes(METADATA_BLOCK - 4)
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


__all__ = ["FakeKernel", "PoolMetadata", "Thin"]

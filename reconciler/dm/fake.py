"""FakeKernel: device-mapper, loop devices and the thin tools, in memory, for the unit tier.

It implements `Host`, so it sits under the parsers: production code sends the same argv it
sends to the real machine and gets back dmsetup's exact texts and exit codes (checked against
captured real outputs by tests/test_fake_parity.py). It keeps the kernel's rules: 24-bit thin
ids, EEXIST on an existing id, ENODATA for a missing one, transaction ids that move only from
the current value, EBUSY for a taken name, an open device or an active thin being deleted,
copy-on-write snapshots sharing blocks, and a pool whose data fills up.

What it only approximates: metadata blocks in use (a base for the metadata device's size plus
one for any thin and one for a held metadata snapshot: the captured values, not a btree), and
what mkfs writes (a few blocks). It keeps no data bytes, only which blocks are mapped.
Anything it does not know raises AssertionError: a fake that accepted what the real tools
refuse would hide bugs.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.dm.host import Completed

DM_MAJOR = 254
LOOP_MAJOR = 7
MAX_THIN_ID = (1 << 24) - 1
THIN_MAGIC = 27022010
METADATA_BLOCK = 4096
INFO_ARGV = ("info", "-c", "--noheadings", "--nameprefixes", "-o",
             "name,uuid,major,minor,attr,open,segments,events")
_CHECK_STEPS = ("examining superblock\nexamining devices tree\nexamining mapping tree\n"
                "checking space map counts\n")


class _Fail(Exception):
    """A command fails with this exit code and stderr."""

    def __init__(self, stderr: str, rc: int = 1) -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.rc = rc


def _ioctl_error(op: str, target: str, number: int) -> _Fail:
    return _Fail(f"device-mapper: {op} ioctl on {target} failed: {os.strerror(number)}\n"
                 "Command failed.\n")


@dataclass
class Thin:
    """One thin id's mappings: virtual block -> physical block."""

    blocks: dict[int, int] = field(default_factory=dict)


@dataclass
class PoolMetadata:
    """What a thin-pool's metadata device holds; outlives the pool device (and reboots)."""

    total_blocks: int
    # Fixed when the metadata is formatted; the kernel refuses a table with another one.
    block_sectors: int = 0
    transaction_id: int = 0
    thins: dict[int, Thin] = field(default_factory=dict)
    refcounts: dict[int, int] = field(default_factory=dict)
    held_root: int | None = None
    live: bool = False

    def used_blocks(self) -> int:
        # Calibrated on captured values (418 of 4096, 3299 of 32768 when empty).
        base = round(self.total_blocks * 2881 / 28672 + 6.4)
        return base + (1 if self.thins else 0) + (1 if self.held_root is not None else 0)


@dataclass
class Table:
    """A loaded table: one target."""

    length: int
    target: str
    params: list[str]
    readonly: bool


@dataclass
class DmDevice:
    """One device-mapper device."""

    name: str
    uuid: str
    minor: int
    live: Table | None = None
    inactive: Table | None = None
    suspended: bool = False
    open_count: int = 0
    filesystem: str | None = None


@dataclass
class PoolState:
    """A live thin-pool target's view of its devices."""

    metadata_key: str
    data_blocks: int
    block_sectors: int
    error_if_no_space: bool
    out_of_space: bool = False


class FakeKernel:
    """An in-memory Linux with device-mapper, loop devices, dmsetup, losetup and thin tools."""

    def __init__(self) -> None:
        self.devices: dict[str, DmDevice] = {}
        self.loops: dict[int, Path] = {}
        self.metadata: dict[str, PoolMetadata] = {}
        self.pools: dict[str, PoolState] = {}
        self.calls: list[tuple[str, ...]] = []
        self.unsafe_snapshots: list[tuple[int, int]] = []
        self._failures: list[tuple[tuple[str, ...], int, str, int]] = []

    # -- test helpers ----------------------------------------------------------------------

    def fail_next(self, prefix: tuple[str, ...], rc: int, stderr: str, times: int = 1) -> None:
        """Make the next `times` commands starting with `prefix` fail with this text."""
        self._failures.append((prefix, rc, stderr, times))

    def hold_open(self, name: str) -> None:
        """Open a dm device, as a mount or a process would."""
        self._device(name).open_count += 1

    def release(self, name: str) -> None:
        """Close what hold_open opened."""
        self._device(name).open_count -= 1

    def write_blocks(self, name: str, offset: int, length: int) -> None:
        """Write `length` bytes at `offset` into a thin device (maps blocks, copies on write)."""
        device = self._device(name)
        assert device.live is not None and device.live.target == "thin", name
        pool_name, thin_id = self._thin_target(device.live)
        pool = self.pools[pool_name]
        meta = self.metadata[pool.metadata_key]
        block_bytes = pool.block_sectors * 512
        first, last = offset // block_bytes, (offset + length - 1) // block_bytes
        for virtual in range(first, last + 1):
            self._map(pool, meta, meta.thins[thin_id], virtual)

    def reboot(self) -> None:
        """Power cycle: every dm device and loop attachment is gone; files and metadata stay."""
        self.devices.clear()
        self.loops.clear()
        self.pools.clear()
        for meta in self.metadata.values():
            meta.live = False
            meta.held_root = None

    # -- Host ------------------------------------------------------------------------------

    def run(self, argv: Sequence[str]) -> Completed:
        """Answer one command as the real tool would."""
        words = tuple(argv)
        self.calls.append(words)
        injected = self._injected(words)
        if injected is not None:
            return injected
        handlers: dict[str, Callable[[list[str]], str | tuple[str, str]]] = {
            "dmsetup": self._dmsetup, "losetup": self._losetup, "stat": self._stat,
            "blockdev": self._blockdev, "mkfs.ext4": lambda a: self._mkfs("ext4", a),
            "mkfs.xfs": lambda a: self._mkfs("xfs", a), "thin_check": self._thin_check,
            "thin_ls": self._thin_ls, "e2fsck": self._fsck, "resize2fs": self._fsck,
        }
        handler = handlers.get(words[0])
        if handler is None:
            raise AssertionError(f"FakeKernel does not know the command {words!r}")
        try:
            output = handler(list(words[1:]))
        except _Fail as failure:
            return Completed(words, failure.rc, "", failure.stderr)
        stdout, stderr = output if isinstance(output, tuple) else (output, "")
        return Completed(words, 0, stdout, stderr)

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Reads of loop devices read their backing file."""
        with self._backing(path).open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Writes to loop devices go to their backing file; to dm devices they map blocks."""
        if path.startswith("/dev/mapper/"):
            self.write_blocks(path.removeprefix("/dev/mapper/"), offset, len(data))
            return
        with self._backing(path).open("r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    # -- plumbing --------------------------------------------------------------------------

    def _injected(self, words: tuple[str, ...]) -> Completed | None:
        for index, (prefix, rc, stderr, times) in enumerate(self._failures):
            if words[: len(prefix)] == prefix:
                if times <= 1:
                    del self._failures[index]
                else:
                    self._failures[index] = (prefix, rc, stderr, times - 1)
                return Completed(words, rc, "", stderr)
        return None

    def _backing(self, path: str) -> Path:
        if path.startswith("/dev/loop") and path[9:].isdigit() and int(path[9:]) in self.loops:
            return self.loops[int(path[9:])]
        raise AssertionError(f"FakeKernel has no block device {path}")

    def _device(self, name: str) -> DmDevice:
        if name not in self.devices:
            raise AssertionError(f"FakeKernel has no dm device {name}")
        return self.devices[name]

    def _number(self, path: str) -> tuple[int, int]:
        """major, minor of a device path (or of a "major:minor" string)."""
        if ":" in path:
            major, minor = path.split(":")
            return int(major), int(minor)
        if path.startswith("/dev/loop") and path[9:].isdigit() and int(path[9:]) in self.loops:
            return LOOP_MAJOR, int(path[9:])
        if path.startswith("/dev/mapper/") and path[12:] in self.devices:
            return DM_MAJOR, self.devices[path[12:]].minor
        raise _Fail(f"stat: cannot statx '{path}': No such file or directory\n")

    def _dm_by_number(self, text: str) -> DmDevice | None:
        major, minor = self._number(text)
        if major != DM_MAJOR:
            return None
        return next((d for d in self.devices.values() if d.minor == minor), None)

    def _loop_path(self, text: str) -> Path:
        major, minor = self._number(text)
        if major != LOOP_MAJOR or minor not in self.loops:
            raise AssertionError(f"FakeKernel: pool device {text} is not an attached loop")
        return self.loops[minor]

    def _thin_target(self, table: Table) -> tuple[str, int]:
        pool = self._dm_by_number(table.params[0])
        assert pool is not None
        return pool.name, int(table.params[1])

    # -- dmsetup ---------------------------------------------------------------------------

    def _dmsetup(self, args: list[str]) -> str:
        command = args[0] if args else ""
        if tuple(args[: len(INFO_ARGV)]) == INFO_ARGV:
            return self._info_columns(args[len(INFO_ARGV):])
        if command in ("ls", "status", "table") and len(args) <= 2:
            return self._listing(command, args[1:])
        if command == "info" and len(args) == 2:
            return self._info_plain(args[1])
        if command == "create":
            return self._create(args[1:])
        if command == "load":
            return self._load(args[1:])
        if command in ("suspend", "resume", "remove") and len(args) == 2:
            action: Callable[[str], str] = getattr(self, f"_{command}")
            return action(args[1])
        if command == "message" and len(args) >= 4 and args[2] == "0":
            return self._message(args[1], args[3:])
        raise AssertionError(f"FakeKernel does not know dmsetup {args!r}")

    def _sorted(self) -> list[DmDevice]:
        return [self.devices[name] for name in sorted(self.devices)]

    def _listing(self, command: str, names: list[str]) -> str:
        if names:
            name = names[0]
            if name not in self.devices:
                if command == "status":
                    raise _Fail("Device does not exist.\nCommand failed.\n")
                raise _ioctl_error(command, f"{name} ", errno.ENXIO)
            return self._lines(command, self.devices[name], named=False)
        if not self.devices:
            return "No devices found\n"
        return "".join(self._lines(command, d, named=True) for d in self._sorted())

    def _lines(self, command: str, device: DmDevice, named: bool) -> str:
        if command == "ls":
            return f"{device.name}\t({DM_MAJOR}:{device.minor})\n"
        prefix = f"{device.name}: " if named else ""
        if device.live is None:
            return f"{prefix}\n"
        table = device.live
        text = self._status_params(device) if command == "status" else self._table_params(table)
        return f"{prefix}0 {table.length} {table.target}{text}\n"

    def _table_params(self, table: Table) -> str:
        if table.target == "thin-pool":
            meta, data, block, low = table.params[:4]
            features = table.params[5:]  # params[4] is their count
            numbers = [":".join(map(str, self._number(p))) for p in (meta, data)]
            return f" {numbers[0]} {numbers[1]} {block} {low} {len(features)} " + "".join(
                f"{f} " for f in features)
        if table.target == "thin":
            pool = ":".join(map(str, self._number(table.params[0])))
            return f" {pool} {table.params[1]}"
        return "".join(f" {p}" for p in table.params)

    def _status_params(self, device: DmDevice) -> str:
        table = device.live
        assert table is not None
        if table.target == "thin-pool":
            pool = self.pools[device.name]
            meta = self.metadata[pool.metadata_key]
            mode = "out_of_data_space" if pool.out_of_space else "rw"
            held = "-" if meta.held_root is None else str(meta.held_root)
            policy = "error_if_no_space" if pool.error_if_no_space else "queue_if_no_space"
            watermark = min(1024, meta.total_blocks // 4)
            return (f" {meta.transaction_id} {meta.used_blocks()}/{meta.total_blocks} "
                    f"{len(meta.refcounts)}/{pool.data_blocks} {held} {mode} "
                    f"discard_passdown {policy} - {watermark} ")
        if table.target == "thin":
            pool_name, thin_id = self._thin_target(table)
            pool = self.pools[pool_name]
            thin = self.metadata[pool.metadata_key].thins.get(thin_id)
            if thin is None:
                return " Fail"
            mapped = len(thin.blocks) * pool.block_sectors
            highest = "-" if not thin.blocks else str(
                (max(thin.blocks) + 1) * pool.block_sectors - 1)
            return f" {mapped} {highest}"
        return ""

    def _info_columns(self, names: list[str]) -> str:
        if names:
            if names[0] not in self.devices:
                raise _Fail("Device does not exist.\nCommand failed.\n")
            devices = [self.devices[names[0]]]
        elif not self.devices:
            return "No devices found\n"
        else:
            devices = self._sorted()
        lines = []
        for d in devices:
            readonly = d.live is not None and d.live.readonly
            attr = ("L" if d.live else "-") + ("I" if d.inactive else "-") + (
                "s" if d.suspended else "-") + ("r" if readonly else "w")
            lines.append(
                f"DM_NAME='{d.name}':DM_UUID='{d.uuid}':DM_MAJOR='{DM_MAJOR}':"
                f"DM_MINOR='{d.minor}':DM_ATTR='{attr}':DM_OPEN='{d.open_count}':"
                f"DM_SEGMENTS='{1 if d.live else 0}':DM_EVENTS='0'\n"
            )
        return "".join(lines)

    def _info_plain(self, name: str) -> str:
        if name not in self.devices:
            raise _Fail("Device does not exist.\nCommand failed.\n")
        d = self.devices[name]
        tables = "LIVE" if d.live else "None"
        if d.inactive:
            tables = "LIVE & INACTIVE" if d.live else "INACTIVE"
        return (f"Name:              {d.name}\n"
                f"State:             {'SUSPENDED' if d.suspended else 'ACTIVE'}\n"
                f"Read Ahead:        256\nTables present:    {tables}\n"
                f"Open count:        {d.open_count}\nEvent number:      0\n"
                f"Major, minor:      {DM_MAJOR}, {d.minor}\n"
                f"Number of targets: {1 if d.live else 0}\nUUID: {d.uuid}\n\n")

    @staticmethod
    def _options(args: list[str]) -> tuple[str, dict[str, str], bool]:
        name, rest = args[0], args[1:]
        options: dict[str, str] = {}
        readonly = False
        while rest:
            word = rest.pop(0)
            if word == "--readonly":
                readonly = True
            elif word in ("--uuid", "--table") and rest:
                options[word] = rest.pop(0)
            else:
                raise AssertionError(f"FakeKernel does not know the option {word!r}")
        return name, options, readonly

    def _parse_table(self, text: str, readonly: bool) -> Table:
        words = text.split()
        assert len(words) >= 3 and words[0] == "0", f"FakeKernel: unsupported table {text!r}"
        assert words[2] in ("thin", "thin-pool", "zero"), f"FakeKernel: target {words[2]!r}"
        return Table(int(words[1]), words[2], words[3:], readonly)

    def _create(self, args: list[str]) -> str:
        name, options, readonly = self._options(args)
        uuid = options.get("--uuid", "")
        if name in self.devices or (uuid and any(d.uuid == uuid for d in self.devices.values())):
            raise _ioctl_error("create", f"{name} {uuid}", errno.EBUSY)
        table = self._parse_table(options["--table"], readonly)
        taken = {d.minor for d in self.devices.values()}
        minor = next(m for m in range(len(taken) + 1) if m not in taken)
        device = DmDevice(name=name, uuid=uuid, minor=minor)
        self.devices[name] = device
        try:
            self._activate_table(device, table)
        except _Fail as failure:
            del self.devices[name]  # dmsetup removes what it could not load
            target = f"{name} ({DM_MAJOR}:{minor})"
            raise _Fail(failure.stderr.replace("{target}", target)) from None
        device.live = table
        return ""

    def _check_table(self, device: DmDevice, table: Table) -> None:
        """What the kernel checks when a table is loaded."""
        if table.target == "thin":
            pool = self._dm_by_number(table.params[0])
            if pool is None or pool.name not in self.pools:
                raise _Fail("device-mapper: reload ioctl on {target} failed: "
                            f"{os.strerror(errno.EINVAL)}\nCommand failed.\n")
            meta = self.metadata[self.pools[pool.name].metadata_key]
            if int(table.params[1]) not in meta.thins:
                raise _Fail("device-mapper: reload ioctl on {target} failed: "
                            f"{os.strerror(errno.ENODATA)}\nCommand failed.\n")

    def _activate_table(self, device: DmDevice, table: Table) -> None:
        self._check_table(device, table)
        if table.target == "thin-pool":
            self._start_pool(device, table)
        elif table.target == "thin":
            pool = self._dm_by_number(table.params[0])
            assert pool is not None
            pool.open_count += 1

    def _start_pool(self, device: DmDevice, table: Table) -> None:
        meta_path = self._loop_path(table.params[0])
        data_path = self._loop_path(table.params[1])
        key = str(meta_path)
        with meta_path.open("r+b") as handle:
            first = handle.read(METADATA_BLOCK)
            magic = struct.unpack_from("<Q", first, 32)[0] if len(first) >= 40 else 0
            if magic != THIN_MAGIC:
                if any(first):
                    raise _Fail("device-mapper: reload ioctl on {target} failed: "
                                f"{os.strerror(errno.EINVAL)}\nCommand failed.\n")
                # A zeroed superblock is formatted, as the kernel does.
                handle.seek(32)
                handle.write(struct.pack("<Q", THIN_MAGIC))
                self.metadata[key] = PoolMetadata(
                    total_blocks=meta_path.stat().st_size // METADATA_BLOCK)
        meta = self.metadata.setdefault(
            key, PoolMetadata(total_blocks=meta_path.stat().st_size // METADATA_BLOCK))
        block_sectors = int(table.params[2])
        if meta.block_sectors and meta.block_sectors != block_sectors:
            raise _Fail("device-mapper: reload ioctl on {target} failed: "
                        f"{os.strerror(errno.EINVAL)}\nCommand failed.\n")
        meta.block_sectors = block_sectors
        meta.live = True
        features = table.params[5:] if len(table.params) > 4 else []
        self.pools[device.name] = PoolState(
            metadata_key=key,
            data_blocks=min(table.length, data_path.stat().st_size // 512) // block_sectors,
            block_sectors=block_sectors,
            error_if_no_space="error_if_no_space" in features,
        )

    def _load(self, args: list[str]) -> str:
        name, options, readonly = self._options(args)
        if name not in self.devices:
            raise _ioctl_error("reload", f"{name} ", errno.ENXIO)
        device = self.devices[name]
        table = self._parse_table(options["--table"], readonly)
        try:
            self._check_table(device, table)
        except _Fail as failure:
            raise _Fail(failure.stderr.replace("{target}", f"{name} ")) from None
        device.inactive = table
        return ""

    def _suspend(self, name: str) -> str:
        if name not in self.devices:
            raise _ioctl_error("suspend", f"{name} ", errno.ENXIO)
        self.devices[name].suspended = True
        return ""

    def _resume(self, name: str) -> str:
        if name not in self.devices:
            raise _ioctl_error("resume", f"{name} ", errno.ENXIO)
        device = self.devices[name]
        if device.inactive is not None:
            device.live, device.inactive = device.inactive, None
        device.suspended = False
        return ""

    def _remove(self, name: str) -> str:
        if name not in self.devices:
            raise _ioctl_error("remove", f"{name} ", errno.ENXIO)
        device = self.devices[name]
        if device.open_count > 0:
            raise _ioctl_error("remove", f"{name} ", errno.EBUSY)
        if device.live is not None and device.live.target == "thin":
            pool = self._dm_by_number(device.live.params[0])
            if pool is not None:
                pool.open_count -= 1
        if name in self.pools:
            self.metadata[self.pools.pop(name).metadata_key].live = False
        del self.devices[name]
        return ""

    # -- pool messages ---------------------------------------------------------------------

    def _message(self, name: str, words: list[str]) -> str:
        if name not in self.devices:
            raise _ioctl_error("message", f"{name} ", errno.ENXIO)
        if name not in self.pools:
            raise _ioctl_error("message", f"{name} ", errno.EINVAL)
        pool = self.pools[name]
        meta = self.metadata[pool.metadata_key]
        try:
            self._apply_message(name, meta, words)
        except OSError as exc:
            raise _ioctl_error("message", f"{name} ", exc.errno or errno.EIO) from None
        return ""

    def _apply_message(self, pool_name: str, meta: PoolMetadata, words: list[str]) -> None:
        verb, numbers = words[0], words[1:]
        if not all(n.isdigit() for n in numbers):
            raise OSError(errno.EINVAL, "bad number")
        ids = [int(n) for n in numbers]
        if verb == "create_thin" and len(ids) == 1:
            self._new_id(meta, ids[0])
            meta.thins[ids[0]] = Thin()
        elif verb == "create_snap" and len(ids) == 2:
            new, origin = ids
            self._new_id(meta, new)
            if origin not in meta.thins:
                raise OSError(errno.ENODATA, "no origin")
            if self._active_unsuspended(pool_name, origin):
                self.unsafe_snapshots.append((new, origin))
            meta.thins[new] = Thin(dict(meta.thins[origin].blocks))
            for physical in meta.thins[new].blocks.values():
                meta.refcounts[physical] += 1
        elif verb == "delete" and len(ids) == 1:
            if ids[0] not in meta.thins:
                raise OSError(errno.ENODATA, "no such thin")
            if self._active(pool_name, ids[0]):
                raise OSError(errno.EBUSY, "active")
            for physical in meta.thins.pop(ids[0]).blocks.values():
                self._unref(meta, physical)
        elif verb == "set_transaction_id" and len(ids) == 2:
            if ids[0] != meta.transaction_id:
                raise OSError(errno.EINVAL, "wrong transaction id")
            meta.transaction_id = ids[1]
        elif verb == "reserve_metadata_snap" and not ids:
            if meta.held_root is not None:
                raise OSError(errno.EBUSY, "held")
            meta.held_root = 46  # any block number; the captured one
        elif verb == "release_metadata_snap" and not ids:
            if meta.held_root is None:
                raise OSError(errno.EINVAL, "none held")
            meta.held_root = None
        else:
            raise AssertionError(f"FakeKernel does not know the pool message {words!r}")

    @staticmethod
    def _new_id(meta: PoolMetadata, thin_id: int) -> None:
        if thin_id > MAX_THIN_ID:
            raise OSError(errno.EINVAL, "id too large")
        if thin_id in meta.thins:
            raise OSError(errno.EEXIST, "exists")

    def _thin_devices(self, pool_name: str, thin_id: int) -> list[DmDevice]:
        found = []
        for device in self.devices.values():
            table = device.live
            if table is not None and table.target == "thin":
                owner, number = self._thin_target(table)
                if owner == pool_name and number == thin_id:
                    found.append(device)
        return found

    def _active(self, pool_name: str, thin_id: int) -> bool:
        return bool(self._thin_devices(pool_name, thin_id))

    def _active_unsuspended(self, pool_name: str, thin_id: int) -> bool:
        return any(not d.suspended for d in self._thin_devices(pool_name, thin_id))

    @staticmethod
    def _unref(meta: PoolMetadata, physical: int) -> None:
        meta.refcounts[physical] -= 1
        if meta.refcounts[physical] == 0:
            del meta.refcounts[physical]

    def _map(self, pool: PoolState, meta: PoolMetadata, thin: Thin, virtual: int) -> None:
        current = thin.blocks.get(virtual)
        if current is not None and meta.refcounts[current] == 1:
            return  # already ours alone: written in place
        free = next((b for b in range(pool.data_blocks) if b not in meta.refcounts), None)
        if free is None:
            pool.out_of_space = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if current is not None:
            self._unref(meta, current)  # copy on write: the shared block stays with the others
        meta.refcounts[free] = 1
        thin.blocks[virtual] = free

    # -- other tools -----------------------------------------------------------------------

    def _losetup(self, args: list[str]) -> str:
        if args[:2] == ["--find", "--show"] and len(args) == 3:
            number = next(n for n in range(len(self.loops) + 1) if n not in self.loops)
            self.loops[number] = Path(args[2])
            return f"/dev/loop{number}\n"
        if args[:4] == ["--noheadings", "--output", "NAME", "--associated"] and len(args) == 5:
            matches = [n for n, p in sorted(self.loops.items()) if p == Path(args[4])]
            return "".join(f"/dev/loop{n}\n" for n in matches)
        if args[0] == "--detach" and len(args) == 2:
            number = int(args[1].removeprefix("/dev/loop"))
            self.loops.pop(number)
            return ""
        raise AssertionError(f"FakeKernel does not know losetup {args!r}")

    def _stat(self, args: list[str]) -> str:
        assert args[:3] == ["-L", "-c", "%t:%T"] and len(args) == 4, args
        major, minor = self._number(args[3])
        return f"{major:x}:{minor:x}\n"

    def _blockdev(self, args: list[str]) -> str:
        assert args[0] == "--getsz" and len(args) == 2, args
        path = args[1]
        if path.startswith("/dev/mapper/"):
            device = self._device(path.removeprefix("/dev/mapper/"))
            return f"{device.live.length if device.live else 0}\n"
        return f"{self._backing(path).stat().st_size // 512}\n"

    def _mapper(self, path: str) -> DmDevice:
        name = path.removeprefix("/dev/mapper/")
        if not path.startswith("/dev/mapper/") or name not in self.devices:
            raise _Fail(f"The file {path} does not exist and no size was specified.\n")
        return self.devices[name]

    def _mkfs(self, fs_type: str, args: list[str]) -> str:
        device = self._mapper(args[-1])
        assert device.live is not None
        if device.live.readonly:
            raise _Fail(f"mkfs: cannot open {args[-1]}: Read-only file system\n")
        # A filesystem's metadata lands at its start and spread over its groups.
        block_bytes = self.pools[self._thin_target(device.live)[0]].block_sectors * 512
        size = device.live.length * 512
        for offset in range(0, size, max(block_bytes, size // 8)):
            self.write_blocks(device.name, offset, 1)
        device.filesystem = fs_type
        return ""

    def _fsck(self, args: list[str]) -> str:
        device = self._mapper(args[-1])
        if device.filesystem is None:
            raise _Fail(f"{args[-1]}: Bad magic number in super-block\n", rc=8)
        return ""

    def _metadata_of(self, path: str) -> PoolMetadata:
        key = str(self._backing(path))
        if key not in self.metadata:
            raise _Fail(_CHECK_STEPS.split("\n")[0] + "\n  superblock is corrupt\n"
                        "    bad checksum in superblock, wanted 1490015127\n")
        return self.metadata[key]

    def _thin_check(self, args: list[str]) -> tuple[str, str]:
        assert len(args) == 1, args
        meta = self._metadata_of(args[0])
        if meta.live:
            raise _Fail("syscall 'open' failed: Device or resource busy\n"
                        "Note: you cannot run this tool with these options on live metadata.\n")
        report = f"TRANSACTION_ID={meta.transaction_id}\nMETADATA_FREE_BLOCKS=" \
                 f"{meta.total_blocks - 1}\n"
        return report, _CHECK_STEPS

    def _thin_ls(self, args: list[str]) -> str:
        snap = "--metadata-snap" in args
        rest = [a for a in args if a != "--metadata-snap"]
        assert rest[:3] == ["--no-headers", "-o", "DEV"] and len(rest) == 4, args
        meta = self._metadata_of(rest[3])
        if meta.live and not (snap and meta.held_root is not None):
            raise _Fail("syscall 'open' failed: Device or resource busy\n"
                        "Note: you cannot run this tool with these options on live metadata.\n")
        return "".join(f"{thin_id} \n" for thin_id in sorted(meta.thins))


__all__ = ["FakeKernel", "PoolMetadata"]

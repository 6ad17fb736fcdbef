"""The fake kernel's model: dm devices, their tables, pool targets, loop devices and block I/O.

This is the kernel side of the fake, below any program's text: each ioctl is a method that
either changes the state or raises `Refused` with the errno the kernel would return. The fake
dmsetup (`dmsetup`) words those errnos as dmsetup does and the fake libdevmapper (`libdm`)
returns them, so both drivers meet the same kernel. Injected faults (`faults`) are applied
here, at the ioctl, for the same reason.

It keeps the kernel's rules, so a reconciler bug that would fail on a real machine fails here
too: 24-bit thin ids, EEXIST for an id that exists, ENODATA for one that does not, transaction
ids that move only from the current value, EBUSY for a taken name, an open device or an active
thin being deleted, copy-on-write snapshots, and a pool whose data space runs out. Data is
real: a thin device's blocks live in the pool's data file (sparse, under the test's tmp dir) at
the block the model allocated, so reads return what was written and snapshots read their
origin's bytes.

What is approximate (no capture can pin it down):
- the queue_if_no_space wait: a write to a full pool that queues in the real kernel fails at
  once here, as if dm_thin_pool's no_space_timeout had already expired (the state the capture
  shows afterwards).
- everything is committed at once: a crash loses no data here.
- the event counter counts what the capture shows: a pool's first allocation under its low
  water mark and each change of its no-space state.
- a few refusals are not captured; their errnos come from the kernel's source, and each such
  place says so.

Anything it does not know raises AssertionError: a fake that accepted what production should
never send would hide bugs.
"""

from __future__ import annotations

import errno
import functools
import heapq
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.testing.fakekernel.faults import Faults, Op
from reconciler.testing.fakekernel.metadata import (
    MAX_THIN_ID,
    METADATA_BLOCK,
    THIN_MAGIC_OFFSET,
    MetadataSnapshot,
    PoolMetadata,
    Thin,
    has_magic,
    magic,
    metadata_key,
    read_at,
    write_at,
)

DM_MAJOR = 254
LOOP_MAJOR = 7
SECTOR = 512

# One target line as the kernel returns it: start, length, target type, parameters.
KernelLine = tuple[int, int, str, str]


class Refused(Exception):
    """The kernel refuses an ioctl with this errno."""

    def __init__(self, number: int) -> None:
        super().__init__(os.strerror(number))
        self.number = number


def io_error(number: int, path: str) -> OSError:
    """The OSError a failed read or write of `path` raises."""
    return OSError(number, os.strerror(number), path)


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
        """The parameters as the kernel prints them back (`dmsetup table`)."""
        return self._params

    @functools.cached_property
    def _params(self) -> str:
        # Made once per loaded table: a listing prints 10,000 of them on every resync.
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
    deferred_remove: bool = False  # removed while open: goes at its last close
    events: int = 0
    pool: PoolTarget | None = None

    @property
    def number(self) -> tuple[int, int]:
        """(major, minor)."""
        return DM_MAJOR, self.minor

    def references(self) -> set[tuple[int, int]]:
        """Devices its tables hold open (an inactive table holds them too)."""
        return {d for table in (self.live, self.inactive) if table for d in table.devices}


class Kernel:
    """Device-mapper, loop devices and block I/O, in memory; ioctls raise `Refused`."""

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
        self._apply_message(device, device.pool.metadata, words)
        self.check_for_data_space(device, device.pool)  # a message commits

    # -- what the ioctls answer --------------------------------------------------------------

    def line(self, device: DmDevice, kind: Literal["status", "table"]) -> KernelLine | None:
        """The live table's one target line with the table's or the status's parameters."""
        table = device.live
        if table is None:
            return None
        params = self._status(device, table) if kind == "status" else table.params()
        return 0, table.length, table.target, params

    def open_count(self, device: DmDevice) -> int:
        """Openers: holders, and dm devices whose tables use it."""
        return device.holders + self._user_counts[device.number]

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
        number = self.node_number(path)
        if number is None:
            raise Refused(errno.ENODEV)  # dm_get_device; from the kernel's source
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
            raise Refused(errno.EINVAL)
        meta_loop, data_loop = (self.loops.get(n[1]) if n[0] == LOOP_MAJOR else None
                                for n in (meta_number, data_number))
        assert meta_loop is not None and data_loop is not None, \
            "FakeKernel builds pools on attached loop devices only"
        if length * SECTOR > data_loop.size:
            raise Refused(errno.EINVAL)  # device too small for the target
        key = metadata_key(meta_loop.path)
        if any(d is not device and d.live and d.live.metadata_key == key
               for d in self.devices.values()):
            raise Refused(errno.EBUSY)  # the metadata is another pool's
        self._open_metadata(meta_loop, block)
        return Table(length, "thin-pool", (meta_number, data_number),
                     (args[2], args[3], *features[1:]), readonly, metadata_key=key)

    def _open_metadata(self, loop: Loop, block_sectors: int) -> PoolMetadata:
        """Format an all-zero superblock, as the kernel does; otherwise open what is there."""
        key = metadata_key(loop.path)
        first = read_at(loop.path, 0, METADATA_BLOCK)
        if not any(first):
            write_at(loop.path, THIN_MAGIC_OFFSET, magic())
            self.metadata[key] = PoolMetadata(total_blocks=loop.size // METADATA_BLOCK,
                                              block_sectors=block_sectors)
        elif not has_magic(first):
            raise Refused(errno.EILSEQ)  # superblock validator; from the kernel's source
        meta = self.metadata.get(key)
        assert meta is not None, f"FakeKernel: {loop.path} holds metadata it did not write"
        if meta.block_sectors != block_sectors:
            raise Refused(errno.EINVAL)  # captured: the data block size cannot change
        meta.total_blocks = loop.size // METADATA_BLOCK
        return meta

    def _bind_pool(self, device: DmDevice, table: Table) -> PoolTarget:
        """The pool target of a table being resumed; it keeps its state across reloads."""
        meta = self.metadata[table.metadata_key]
        data_blocks = table.length // meta.block_sectors
        if data_blocks < meta.data_blocks:
            raise Refused(errno.EINVAL)  # a pool cannot shrink; from the kernel's source
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
        self.check_for_data_space(device, current)
        return current

    def _construct_thin(self, length: int, args: list[str], readonly: bool) -> Table:
        assert len(args) == 2 and args[1].isdigit(), f"FakeKernel: thin arguments {args!r}"
        number = self._device_number(args[0])
        pool = self.by_number(number)
        if pool is None or pool.pool is None:
            raise Refused(errno.EINVAL)  # not a pool
        if int(args[1]) not in pool.pool.metadata.thins:
            raise Refused(errno.ENODATA)  # captured
        return Table(length, "thin", (number,), (args[1],), readonly)

    # -- status ------------------------------------------------------------------------------

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
        pool = self.thin_pool(table)
        assert pool.pool is not None
        thin = pool.pool.metadata.thins[int(table.args[0])]
        block = pool.pool.block_sectors
        if not thin.mappings:
            return "0 -"
        return f"{len(thin.mappings) * block} {(max(thin.mappings) + 1) * block - 1}"

    def thin_pool(self, table: Table) -> DmDevice:
        """The pool device a thin table points at."""
        pool = self.by_number(table.devices[0])
        assert pool is not None, "FakeKernel: a thin outlived its pool"
        return pool

    # -- pool messages -----------------------------------------------------------------------

    def _apply_message(self, device: DmDevice, meta: PoolMetadata, words: list[str]) -> None:
        verb, numbers = words[0], words[1:]
        arity = {"create_thin": 1, "create_snap": 2, "delete": 1, "set_transaction_id": 2,
                 "reserve_metadata_snap": 0, "release_metadata_snap": 0}
        assert arity.get(verb) == len(numbers), \
            f"FakeKernel does not know the pool message {words!r}"
        if not all(n.isdigit() for n in numbers):
            raise Refused(errno.EINVAL)
        ids = [int(n) for n in numbers]
        if verb in ("create_thin", "create_snap", "delete") and max(ids) > MAX_THIN_ID:
            raise Refused(errno.EINVAL)  # captured: thin ids have 24 bits
        if verb == "create_thin":
            self._new_id(meta, ids[0])
            meta.thins[ids[0]] = Thin(tree=meta.new_tree())
        elif verb == "create_snap":
            self._create_snap(device, meta, ids[0], ids[1])
        elif verb == "delete":
            self._delete(device, meta, ids[0])
        elif verb == "set_transaction_id":
            if ids[0] != meta.transaction_id:
                raise Refused(errno.EINVAL)
            meta.transaction_id = ids[1]
        elif verb == "reserve_metadata_snap":
            if meta.held is not None:
                raise Refused(errno.EBUSY)  # captured: one snapshot at a time
            # Each thin's mappings copied (what deepcopy did, 20x faster at 10,000 thins).
            frozen = {i: Thin(dict(t.mappings), t.tree) for i, t in meta.thins.items()}
            meta.held = MetadataSnapshot(frozen, meta.transaction_id)
        elif verb == "release_metadata_snap":
            if meta.held is None:
                raise Refused(errno.EINVAL)  # captured: nothing to release
            meta.held = None

    @staticmethod
    def _new_id(meta: PoolMetadata, thin_id: int) -> None:
        if thin_id in meta.thins:
            raise Refused(errno.EEXIST)  # captured

    def _create_snap(self, pool: DmDevice, meta: PoolMetadata, new: int, origin: int) -> None:
        self._new_id(meta, new)
        if origin not in meta.thins:
            raise Refused(errno.ENODATA)
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
            raise Refused(errno.ENODATA)
        if self._thin_users(pool, thin_id):
            raise Refused(errno.EBUSY)  # captured: an active thin cannot be deleted
        for physical in meta.thins.pop(thin_id).mappings.values():
            meta.unref(physical)

    def _thin_users(self, pool: DmDevice, thin_id: int) -> list[DmDevice]:
        """Devices whose live or inactive table opens this thin id of this pool."""
        wanted = (pool.number, str(thin_id))
        return [d for d in self.devices.values()
                for t in (d.live, d.inactive)
                if t and t.target == "thin" and (t.devices[0], t.args[0]) == wanted]

    # -- block I/O ---------------------------------------------------------------------------

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Loop devices read their backing file; thin devices their mapped blocks or zeros."""
        if path.startswith("/dev/mapper/"):
            device = self.open_mapper(path)
            return self.thin_read(device, offset, length)
        loop = self.loop_at(path)
        if loop is None:
            return b""  # an unattached loop device has no size
        with loop.path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(max(0, min(length, loop.size - offset)))

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Loop devices write their backing file; thin devices map (and copy) blocks."""
        if path.startswith("/dev/mapper/"):
            device = self.open_mapper(path)
            if device.live is not None and device.live.readonly:
                raise io_error(errno.EROFS, path)
            try:
                self._thin_write(device, offset, data)
            except OSError as exc:  # what fit was written, as with a real partial write
                raise io_error(exc.errno or errno.EIO, path) from None
            return
        loop = self.loop_at(path)
        if loop is None or offset + len(data) > loop.size:
            raise io_error(errno.ENOSPC, path)
        with loop.path.open("r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    def open_mapper(self, path: str) -> DmDevice:
        """The dm device at /dev/mapper/NAME for I/O (opening a missing node fails)."""
        name = path.removeprefix("/dev/mapper/")
        if name not in self.devices:
            raise io_error(errno.ENOENT, path)
        device = self.devices[name]
        assert device.live is not None and device.live.target == "thin", \
            f"FakeKernel does I/O on thin devices only, not {path}"
        pool = self.thin_pool(device.live)
        # Real I/O would block until resume; in a single-threaded test that is a hang.
        assert not device.suspended and not pool.suspended, \
            f"FakeKernel: I/O on suspended {path} would block"
        return device

    def discard(self, device: DmDevice) -> None:
        """BLKDISCARD of a whole thin device: unmap every block."""
        pool_device, pool, thin = self._thin_of(device)
        for virtual in list(thin.mappings):
            pool.metadata.unmap(thin, virtual)
        self.check_for_data_space(pool_device, pool)  # the periodic commit, a second later

    def _thin_blocks(self, device: DmDevice, offset: int,
                     length: int) -> Iterator[tuple[int, int, int]]:
        """(virtual block, offset in it, byte count) for a byte range of a thin device."""
        assert device.live is not None
        assert offset >= 0 and offset + length <= device.live.length * SECTOR, \
            f"FakeKernel: I/O past the end of {device.name}"
        pool = self.thin_pool(device.live).pool
        assert pool is not None
        position, end = offset, offset + length
        while position < end:
            virtual, inner = divmod(position, pool.block_bytes)
            count = min(end - position, pool.block_bytes - inner)
            yield virtual, inner, count
            position += count

    def _thin_of(self, device: DmDevice) -> tuple[DmDevice, PoolTarget, Thin]:
        assert device.live is not None
        pool_device = self.thin_pool(device.live)
        assert pool_device.pool is not None
        pool = pool_device.pool
        return pool_device, pool, pool.metadata.thins[int(device.live.args[0])]

    def thin_read(self, device: DmDevice, offset: int, length: int) -> bytes:
        """Bytes of a thin device: its mapped blocks, zeros where nothing is mapped."""
        _pool_device, pool, thin = self._thin_of(device)
        chunks = []
        for virtual, inner, count in self._thin_blocks(device, offset, length):
            physical = thin.mappings.get(virtual)
            if physical is None:
                chunks.append(bytes(count))
            else:
                chunks.append(read_at(pool.data_path, physical * pool.block_bytes + inner,
                                      count))
        return b"".join(chunks)

    def _thin_write(self, device: DmDevice, offset: int, data: bytes) -> None:
        pool_device, pool, thin = self._thin_of(device)
        done = 0
        for virtual, inner, count in self._thin_blocks(device, offset, len(data)):
            physical = self._provision(pool_device, pool, thin, virtual,
                                       whole=count == pool.block_bytes)
            write_at(pool.data_path, physical * pool.block_bytes + inner,
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
            write_at(pool.data_path, new * block, read_at(pool.data_path, current * block,
                                                          block))
        elif not whole:
            write_at(pool.data_path, new * block, bytes(block))  # a new block reads as zeros
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
    def check_for_data_space(pool_device: DmDevice, pool: PoolTarget) -> None:
        """Captured: once blocks are free again (a commit sees it) the pool writes again."""
        if pool.out_of_data_space and pool.free_blocks() > 0:
            pool.out_of_data_space = False
            pool.error_if_no_space = pool.requested_error_if_no_space
            pool_device.events += 1

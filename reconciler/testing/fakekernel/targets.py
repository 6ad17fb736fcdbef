"""The fake kernel's targets: what the thin-pool and thin constructors check when a table is
loaded, a pool target bound on resume, and the status line each target answers.
"""

from __future__ import annotations

import errno
from typing import Literal

from reconciler.testing.fakekernel.devices import (
    LOOP_MAJOR,
    SECTOR,
    DmDevice,
    KernelLine,
    Loop,
    PoolTarget,
    Refused,
    Table,
)
from reconciler.testing.fakekernel.loops import LoopDevices
from reconciler.testing.fakekernel.metadata import (
    METADATA_BLOCK,
    THIN_MAGIC_OFFSET,
    PoolMetadata,
    has_magic,
    magic,
    metadata_key,
    read_at,
    write_at,
)


class Targets(LoopDevices):
    """Table construction and status text for the thin-pool, thin and zero targets."""

    # -- what the ioctls answer --------------------------------------------------------------

    def line(self, device: DmDevice, kind: Literal["status", "table"]) -> KernelLine | None:
        """The live table's one target line with the table's or the status's parameters."""
        table = device.live
        if table is None:
            return None
        if kind == "status":
            params = self._status(device, table)
        elif table.target == "thin" and self._pool_failed(table):
            params = "Fail"  # thin_status hides the table too while its pool is in Fail mode
        else:
            params = table.params()
        return 0, table.length, table.target, params

    def _pool_failed(self, table: Table) -> bool:
        pool = self.thin_pool(table).pool
        return pool is not None and pool.metadata_failure == "Fail"

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
        if pool.metadata_failure == "Fail":
            return "Fail"  # dm-thin's pool_status shows nothing else in Fail mode
        meta = pool.metadata
        held = "-" if meta.held_root is None else str(meta.held_root)
        mode = pool.metadata_failure or ("out_of_data_space" if pool.out_of_data_space
                                         else "rw")
        policy = "error_if_no_space" if pool.error_if_no_space else "queue_if_no_space"
        check = "needs_check" if pool.needs_check else "-"
        watermark = min(1024, meta.total_blocks // 4)
        return (f"{meta.transaction_id} {meta.used_blocks()}/{meta.total_blocks} "
                f"{len(meta.refcounts)}/{pool.data_blocks} {held} {mode} discard_passdown "
                f"{policy} {check} {watermark} ")

    def _thin_status(self, table: Table) -> str:
        if self._pool_failed(table):
            return "Fail"  # dm-thin's thin_status, its pool in Fail mode
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

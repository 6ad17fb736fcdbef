"""The fake kernel's block I/O: reads and writes of loop devices (their backing files) and thin
devices (mapped blocks, copy on write, allocation until the pool runs out of space).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from reconciler.testing.fakekernel.devices import (
    SECTOR,
    DmDevice,
    PoolTarget,
    io_error,
)
from reconciler.testing.fakekernel.metadata import (
    Thin,
    read_at,
    write_at,
)
from reconciler.testing.fakekernel.targets import Targets


class BlockIO(Targets):
    """Data through loop and thin devices."""

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

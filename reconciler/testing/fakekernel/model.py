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

from reconciler.testing.fakekernel.blockio import BlockIO
from reconciler.testing.fakekernel.devices import (
    DM_MAJOR,
    LOOP_MAJOR,
    SECTOR,
    DmDevice,
    KernelLine,
    Loop,
    PoolTarget,
    Refused,
    Table,
    io_error,
)
from reconciler.testing.fakekernel.ioctls import Ioctls

# The objects are defined in `devices`; the fake's other modules import them from here.
__all__ = ["DM_MAJOR", "LOOP_MAJOR", "SECTOR", "DmDevice", "Kernel", "KernelLine", "Loop",
           "PoolTarget", "Refused", "Table", "io_error"]


class Kernel(Ioctls, BlockIO):
    """Device-mapper, loop devices and block I/O, in memory; ioctls raise `Refused`.

    Made of one part per concern, each in its own module: the device table and fault gate
    (`registry`), loop devices (`loops`), table construction and status (`targets`), pool
    messages (`messages`), block I/O (`blockio`) and the ioctls themselves (`ioctls`).
    """

"""containerd's `containerd.io/snapshot/max-size` label, read into a device size.

containerd (2.4, `core/snapshots/snapshotter.go`) defines the label as the size, in bytes (a
decimal int64), that an active snapshot's filesystem should be limited to, for snapshotters
that back an active snapshot with a block image. Ours does: the label sizes the snapshot's
thin device, and the filesystem is grown to fill it. Part of the snapshotter, which asks
`max_size` at Prepare before it stores anything.

Where containerd's erofs snapshotter falls back to its default on a value it cannot read, we
refuse it: a caller that asked for a size and silently got another would find out only when
its writes fail with ENOSPC. A thin device is never shrunk, so a value below the parent's size
is refused too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from reconciler.snapshots.model import InvalidArgument
from reconciler.units import MAX_SIZE, SECTOR_SIZE, Bytes, brief_repr, format_size

MAX_SIZE_LABEL = "containerd.io/snapshot/max-size"

# ASCII digits only: Python's int() would also take signs, spaces, underscores and other
# scripts' digits, none of which is containerd's "decimal int64". Twenty digits hold any
# int64; more are refused before int() (whose digit limit raises an error of its own).
_DECIMAL = re.compile(r"[0-9]{1,20}")


def max_size(labels: Mapping[str, str], parent_size: Bytes) -> Bytes:
    """The size an active snapshot's device should have: `parent_size` without the label,
    else the label's bytes, rounded down to a whole 512-byte sector (the unit of a dm table;
    down, as the label is a maximum). InvalidArgument naming the label when the value is not
    a plain decimal, is zero, is below `parent_size` or is beyond units.MAX_SIZE (1 EiB, the
    bound of every size the reconciler stores and gives the kernel)."""
    value = labels.get(MAX_SIZE_LABEL)
    if value is None:
        return parent_size
    if not _DECIMAL.fullmatch(value):
        raise InvalidArgument(f"label {MAX_SIZE_LABEL!r}: {brief_repr(value)} is not a size "
                              "in bytes (a decimal integer, as containerd sends it)")
    asked = int(value)
    if asked > MAX_SIZE:
        raise InvalidArgument(f"label {MAX_SIZE_LABEL!r}: {brief_repr(value)} is larger than "
                              f"the largest size a device may have, {format_size(MAX_SIZE)}")
    size = Bytes(asked - asked % SECTOR_SIZE)
    if size <= 0:
        raise InvalidArgument(f"label {MAX_SIZE_LABEL!r}: {brief_repr(value)} is not a size "
                              f"of at least one {SECTOR_SIZE}-byte sector")
    if size < parent_size:
        raise InvalidArgument(
            f"label {MAX_SIZE_LABEL!r}: {brief_repr(value)} bytes is smaller than the "
            f"parent's filesystem ({parent_size} bytes, {format_size(parent_size)}); "
            "a snapshot is never smaller than its parent")
    return size

"""containerd's snapshotter contract over the reconciler: keyed snapshots, kinds, labels.

A snapshot is a device with a stored spec, driven by the same reconciler (and so the same
state machines, crash recovery and `status`) as the devices of spec files.
"""

from reconciler.snapshots.model import (
    AlreadyExists,
    FailedPrecondition,
    Info,
    InvalidArgument,
    Kind,
    Mount,
    NotFound,
    SnapshotError,
    Unavailable,
    Unimplemented,
    Usage,
)
from reconciler.snapshots.snapshotter import Snapshotter

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "Info",
    "InvalidArgument",
    "Kind",
    "Mount",
    "NotFound",
    "SnapshotError",
    "Snapshotter",
    "Unavailable",
    "Unimplemented",
    "Usage",
]

"""The words every layer uses, and the closed sets the store keeps: one base-layer module.

A device's life (states, triggers, steps, and their groups), the pool's metadata changes, a
snapshot's kind and removal, the filesystems we make, and the checked thin id are defined
once, here, so that the machine, the reconcile engine, the snapshotter, `status` and the store
cannot disagree about which states are in flight or which device is ready. It sits in the base
layer and imports nothing of ours: the store's records carry these types, and every layer
above may use them without pulling in `transitions` or peewee. Strings are for the wire and
the file: each enum's values are what the database, JSON and gRPC hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import SupportsIndex

# The labels of a device that has none, one mapping shared by all (a spec's and a record's),
# read-only so that no holder can fill it in for the others: at 50,000 devices an empty dict
# each was 6 MB.
NO_LABELS: Mapping[str, str] = MappingProxyType({})


class DeviceState(StrEnum):
    """Where a device is in its life; the values are what the store and `status` show."""

    UNKNOWN = "Unknown"
    CREATING = "Creating"
    CREATED = "Created"
    ACTIVATING = "Activating"
    ACTIVATED = "Activated"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RESUMING = "Resuming"
    RESUMED = "Resumed"
    DEACTIVATING = "Deactivating"
    DEACTIVATED = "Deactivated"
    REMOVING = "Removing"
    REMOVED = "Removed"
    FAULTY = "Faulty"


class Trigger(StrEnum):
    """What moves a machine; the values are what the transition history shows."""

    CREATE = "create"
    CREATED = "created"
    ACTIVATE = "activate"
    ACTIVATED = "activated"
    SUSPEND = "suspend"
    SUSPENDED = "suspended"
    RESUME = "resume"
    RESUMED = "resumed"
    DEACTIVATE = "deactivate"
    DEACTIVATED = "deactivated"
    VANISHED = "vanished"
    REMOVE = "remove"
    REMOVED = "removed"
    ADOPT = "adopt"
    RECREATE = "recreate"
    RETRY = "retry"
    FAIL = "fail"


class Step(StrEnum):
    """One unit of work the reconciler does to a device, usually one kernel effect.

    The values are what `status` shows as a Faulty device's `error_step`, and the `step`
    label of the retries metric: identifiers, never spaces.
    """

    CREATE = "create"
    ACTIVATE = "activate"
    MKFS = "mkfs"
    RELOAD = "reload"
    GROW_FS = "grow_filesystem"
    DEACTIVATE = "deactivate"
    REMOVE = "remove"
    VANISHED = "vanished"
    RECREATE = "recreate"
    RETRY = "retry"


S = DeviceState

# States written before a kernel call and left there until it is done: a device found in one
# of them (after a crash, or a failed attempt) had a step in flight, which runs again.
# Suspended is one of them: it sits between the suspend and the resume of a reload.
IN_FLIGHT: frozenset[DeviceState] = frozenset({
    S.CREATING, S.ACTIVATING, S.SUSPENDING, S.SUSPENDED, S.RESUMING, S.DEACTIVATING,
    S.REMOVING,
})
# The resting states of an active device: mapped in the kernel and running.
LIVE: frozenset[DeviceState] = frozenset({S.ACTIVATED, S.RESUMED})
# States whose device may be the origin of a new snapshot (its thin id exists, no step of its
# own is in flight).
RESTING_PROVISIONED: frozenset[DeviceState] = frozenset({
    S.CREATED, S.ACTIVATED, S.RESUMED, S.DEACTIVATED,
})
# The step that finishes what each in-flight state started.
RESUMES: dict[DeviceState, Step] = {
    S.CREATING: Step.CREATE,
    S.ACTIVATING: Step.ACTIVATE,
    S.SUSPENDING: Step.RELOAD,
    S.SUSPENDED: Step.RELOAD,
    S.RESUMING: Step.RELOAD,
    S.DEACTIVATING: Step.DEACTIVATE,
    S.REMOVING: Step.REMOVE,
}


def is_ready(state: DeviceState, formatted: bool, filesystem: Filesystem,
             mapped: bool, suspended: bool) -> bool:
    """Whether a device can be used now: mapped, running, and its filesystem made.

    Activated comes before mkfs (a step of its own), so the state alone would let a caller
    mount while mkfs still holds the device, or before there is a filesystem to mount.
    """
    return (mapped and state in LIVE and not suspended
            and (formatted or filesystem == Filesystem.NONE))


class PlanAction(StrEnum):
    """What `reconciler plan` says the next pass does to a device, as one word (`plan
    --json`'s `action`; its `summary` says the same in prose, with the details)."""

    CREATE_POOL = "create_pool"  # the pool itself ("(pool)"): nothing else is planned yet
    CREATE = "create"
    SNAPSHOT = "snapshot"  # a create with a parent
    ACTIVATE = "activate"
    MKFS = "mkfs"
    RELOAD = "reload"  # a new size or mode: the table loaded again
    GROW = "grow"  # the filesystem grown to the device's size
    DEACTIVATE = "deactivate"  # the spec wants it inactive: it stays
    REMOVE = "remove"  # no spec wants it (or gc --faulty): deactivated if live, then deleted
    VANISHED = "vanished"  # gone from the kernel behind our back: noted, then made again
    RECREATE = "recreate"  # a removed name whose spec came back
    RETRY = "retry"  # a Faulty device whose spec changed
    WAIT = "wait"  # it cannot go on yet (its parent, the pool's reserve): not an error
    HELD = "held"  # a removal the guard holds until an operator confirms it
    NONE = "none"  # nothing: converged, Faulty, its spec rejected or for other nodes


class Filesystem(StrEnum):
    """What mkfs makes on a device without parent (a snapshot keeps its parent's); NONE: the
    device stays raw."""

    EXT4 = "ext4"
    XFS = "xfs"
    NONE = "none"


class PoolOp(StrEnum):
    """The metadata changes we make to a pool (each moves its transaction id by one)."""

    CREATE_THIN = "create_thin"
    CREATE_SNAP = "create_snap"
    DELETE = "delete"


class Kind(StrEnum):
    """What a snapshot is for: written to, read, or a fixed parent for others."""

    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"
    # Ours, never containerd's: a formatted, empty filesystem of the config's fs_type and
    # base_image_size, made once; each snapshot without a parent is a snapshot of it, so
    # Prepare runs no mkfs. The store leaves bases out of what containerd's calls read.
    BASE = "base"


class Removal(StrEnum):
    """How a snapshot was removed by the API (a live one has none)."""

    # Its device is kept until Cleanup (the config's async_remove).
    PENDING = "pending"
    # Its device is to be removed by the next pass.
    REQUESTED = "requested"


# dm-thin device ids are 24 bits wide.
THIN_ID_BITS = 24
MAX_THIN_ID = (1 << THIN_ID_BITS) - 1


class ThinIdError(ValueError):
    """A number that cannot be a dm-thin device id."""


class ThinId(int):
    """A dm-thin device id: checked once, here, to be in 0 .. 2**24-1, the kernel's range.

    An int (it is written, formatted and compared as one), but only this constructor makes
    one: a value typed ThinId was checked wherever it came from (a row, a request, the
    allocator)."""

    __slots__ = ()

    def __new__(cls, value: SupportsIndex) -> ThinId:
        """The id `value`, or ThinIdError when it is not an integer in dm-thin's range."""
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise ThinIdError(f"thin id {value!r}: not an integer")
        number = value.__index__()
        if not 0 <= number <= MAX_THIN_ID:
            raise ThinIdError(f"thin id {number}: dm-thin ids are {THIN_ID_BITS}-bit, "
                              f"0 to {MAX_THIN_ID}")
        return super().__new__(cls, number)

"""The words every layer uses for a device's life: states, triggers, steps, and their groups.

Defined once, here, so that the machine, the reconcile engine, the snapshotter and `status`
cannot disagree about which states are in flight or which device is ready. Plain enums: this
module imports nothing, so any layer may use it without pulling in `transitions`.
"""

from __future__ import annotations

from enum import StrEnum


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

    The values are what `status` shows as a Faulty device's `error_step`.
    """

    CREATE = "create"
    ACTIVATE = "activate"
    MKFS = "mkfs"
    RELOAD = "reload"
    GROW_FS = "grow filesystem"
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


def is_ready(state: DeviceState, formatted: bool, filesystem: str,
             mapped: bool, suspended: bool) -> bool:
    """Whether a device can be used now: mapped, running, and its filesystem made.

    Activated comes before mkfs (a step of its own), so the state alone would let a caller
    mount while mkfs still holds the device, or before there is a filesystem to mount.
    """
    return (mapped and state in LIVE and not suspended
            and (formatted or filesystem == "none"))

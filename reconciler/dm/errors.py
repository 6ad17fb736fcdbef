"""Errors from the kernel boundary, classified once, carrying the retry decision.

The class comes from the errno text that dmsetup (and the kernel behind it) prints, and from
the exit code: callers never match stderr themselves. `temporary` says whether trying again
later can help (a busy device) or not (an id that already exists, a full pool).
"""

from __future__ import annotations

import errno

from reconciler.dm.host import Completed
from reconciler.failures import ClassifiedError, errno_in


class DmError(ClassifiedError):
    """A kernel-facing command failed."""

    errno_name = "EIO"
    temporary = False

    def __init__(self, what: str, completed: Completed | None = None, detail: str = "") -> None:
        self.what = what
        self.completed = completed
        text = detail or (completed.stderr.strip() if completed else "")
        self.detail = " ".join(text.split())
        super().__init__(f"{what}: {self.detail}" if self.detail else what)


class DeviceExists(DmError):
    """EEXIST: the pool already has a thin id of that number. (A taken dm *name* is EBUSY.)"""

    errno_name = "EEXIST"


class DeviceBusy(DmError):
    """EBUSY: the device is held open (mounted, or udev still probing it), or a dm name is
    already taken (create), or an active thin's id is deleted."""

    errno_name = "EBUSY"
    temporary = True


class NoSuchDevice(DmError):
    """ENXIO: no dm device of that name."""

    errno_name = "ENXIO"


class NoData(DmError):
    """ENODATA: the pool has no thin device with that id."""

    errno_name = "ENODATA"


class NoSpace(DmError):
    """ENOSPC: the pool (data or metadata) is full."""

    errno_name = "ENOSPC"


class InvalidArgument(DmError):
    """EINVAL: the kernel refused the request as malformed (a bad table, a wrong txn id)."""

    errno_name = "EINVAL"


class TimedOut(DmError):
    """A program ran past its time limit and was killed (e.g. mkfs on a pool that queues
    I/O while it has no space): the step's error, worth trying again."""

    errno_name = "ETIMEDOUT"
    temporary = True


class CommandFailed(DmError):
    """Any other failure: the text is kept, and it is not retried."""


class ParseError(DmError):
    """Kernel text did not have the form we expect; names the field and what it means."""


_BY_ERRNO: dict[int, type[DmError]] = {
    errno.EEXIST: DeviceExists,
    errno.EBUSY: DeviceBusy,
    errno.ENXIO: NoSuchDevice,
    errno.ENODATA: NoData,
    errno.ENOSPC: NoSpace,
    errno.EINVAL: InvalidArgument,
}
# dmsetup's own words when it finds no device before asking the kernel anything.
_NOT_FOUND_TEXTS = ("Device does not exist", "No such device or address")


def classify(what: str, completed: Completed) -> DmError:
    """The DmError for a failed command, from the strerror text in its stderr."""
    if completed.timed_out:
        return TimedOut(what, completed)
    text = completed.stderr
    number = errno_in(text)
    if number is not None:
        return _BY_ERRNO[number](what, completed)
    if any(marker in text for marker in _NOT_FOUND_TEXTS) or (
        "Device " in text and " not found" in text
    ):
        return NoSuchDevice(what, completed)
    return CommandFailed(what, completed)

"""Errors classified once where they arise, each carrying the retry decision.

Two families fail at the host boundary: the kernel's device-mapper (`reconciler.dm`'s
DmError) and the programs run on devices and pool files (`reconciler.tools`' ToolError:
mkfs, e2fsck, resize2fs, blkdiscard, debugfs, losetup, thin_ls). Both are a ClassifiedError:
`errno_name` names the cause, `temporary` says whether trying again later can help. Whoever
decides retry-or-Faulty, or reports a failed pass or request, catches this base and reads
those two, never the family. A bottom-layer module: it imports nothing of ours.
"""

from __future__ import annotations

import errno
import os


class ClassifiedError(Exception):
    """A failure at the host boundary, with its errno name and whether it is temporary."""

    errno_name = "EIO"
    temporary = False


# The errnos a failing command's stderr is read for (by their strerror text), in the order
# they are tried, and whether each is temporary (a busy device: later it may be free).
ERRNOS: tuple[tuple[int, bool], ...] = (
    (errno.EEXIST, False),
    (errno.EBUSY, True),
    (errno.ENXIO, False),
    (errno.ENODATA, False),
    (errno.ENOSPC, False),
    (errno.EINVAL, False),
)


def errno_in(text: str) -> int | None:
    """The first of ERRNOS whose strerror text appears in `text` (a command's stderr)."""
    return next((number for number, _ in ERRNOS if os.strerror(number) in text), None)

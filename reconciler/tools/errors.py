"""ToolError: a program of ours (not dmsetup) failed, classified from its exit and stderr.

Classified as the dm layer classifies dmsetup's failures (reconciler.failures reads the
errno text once for both): a program killed at its time limit, or one that says its device
is busy, is worth trying again; anything else is permanent.
"""

from __future__ import annotations

import errno

from reconciler.dm.host import Completed
from reconciler.failures import ERRNOS, ClassifiedError, errno_in


class ToolError(ClassifiedError):
    """A program run on a device or pool file failed (or said what we cannot read)."""

    def __init__(self, what: str, completed: Completed | None = None, detail: str = "", *,
                 errno_name: str = "EIO", temporary: bool = False) -> None:
        self.what = what
        self.completed = completed
        self.errno_name = errno_name
        self.temporary = temporary
        text = detail or (completed.stderr.strip() if completed else "")
        self.detail = " ".join(text.split())
        super().__init__(f"{what}: {self.detail}" if self.detail else what)


_TEMPORARY = dict(ERRNOS)


def tool_failed(what: str, completed: Completed) -> ToolError:
    """The ToolError for a failed program, from its time limit and the errno in its stderr."""
    if completed.timed_out:
        return ToolError(what, completed, errno_name="ETIMEDOUT", temporary=True)
    number = errno_in(completed.stderr)
    if number is None:
        return ToolError(what, completed)
    return ToolError(what, completed, errno_name=errno.errorcode[number],
                     temporary=_TEMPORARY[number])

"""ToolError: a program's failure classified as the dm layer classifies dmsetup's."""

from __future__ import annotations

import errno
import os

import pytest

from reconciler.dm.errors import DmError, classify
from reconciler.dm.host import Completed
from reconciler.failures import ERRNOS, ClassifiedError
from reconciler.tools.errors import ToolError, tool_failed
from reconciler.tools.loopback import parse_losetup_name


def _failed(stderr: str, timed_out: bool = False) -> Completed:
    return Completed(argv=("mkfs.ext4", "/dev/x"), rc=1, stdout="", stderr=stderr,
                     timed_out=timed_out)


@pytest.mark.parametrize(("number", "temporary"), ERRNOS)
def test_a_programs_errno_decides_as_dmsetups_does(number: int, temporary: bool) -> None:
    """The same stderr gives a ToolError and a DmError with one errno name and one
    temporary-or-permanent decision."""
    completed = _failed(f"mkfs.ext4: {os.strerror(number)} while trying to open /dev/x")
    tool = tool_failed("mkfs.ext4 /dev/x", completed)
    dm = classify("mkfs.ext4 /dev/x", completed)
    assert (tool.errno_name, tool.temporary) == (errno.errorcode[number], temporary)
    assert (tool.errno_name, tool.temporary) == (dm.errno_name, dm.temporary)
    assert str(tool) == str(dm)


def test_a_program_killed_at_its_time_limit_is_temporary() -> None:
    """A timed-out program (mkfs on a pool queueing I/O) is worth trying again."""
    tool = tool_failed("mkfs.xfs /dev/x", _failed("", timed_out=True))
    assert (tool.errno_name, tool.temporary) == ("ETIMEDOUT", True)


def test_any_other_failure_is_permanent_and_keeps_its_text() -> None:
    """A failure without a known errno is permanent (EIO), its stderr in its message."""
    tool = tool_failed("resize2fs /dev/x", _failed("  Bad magic\n number  "))
    assert (tool.errno_name, tool.temporary) == ("EIO", False)
    assert str(tool) == "resize2fs /dev/x: Bad magic number"


def test_a_tool_error_is_not_a_dm_error_but_both_are_classified() -> None:
    """A failed program is no kernel error; the base both share is what the drive catches."""
    tool = tool_failed("mkfs.ext4 /dev/x", _failed("oops"))
    assert isinstance(tool, ClassifiedError)
    assert not isinstance(tool, DmError)
    assert issubclass(DmError, ClassifiedError)


def test_losetup_output_that_is_no_loop_device_is_refused() -> None:
    """losetup naming anything but a /dev/loop device is a ToolError naming the field."""
    assert parse_losetup_name("/dev/loop3\n") == "/dev/loop3"
    assert parse_losetup_name("\n") is None
    with pytest.raises(ToolError, match="'NAME' \\(loop device path\\)"):
        parse_losetup_name("/dev/sda\n")

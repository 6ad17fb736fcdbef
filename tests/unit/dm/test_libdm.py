"""LibdmClient's pure parts, on any host: struct layouts, table parsing, errno classes, the log
capture and the bounded udev wait (the kernel-facing behaviour is in test_kernel_driver.py)."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, cast

import pytest

from reconciler.dm import libdm_bindings as libdm
from reconciler.dm.errors import (
    CommandFailed,
    DeviceBusy,
    DeviceExists,
    InvalidArgument,
    NoData,
    NoSpace,
    NoSuchDevice,
)
from reconciler.dm.libdm import LibdmClient
from reconciler.dm.libdm_bindings import (
    DmInfoStruct,
    DmNamesHeader,
    LibdmUnavailable,
    LogRecord,
    dev_major_minor,
    error_for,
    load_libdm,
    parse_table,
    walk_names,
)


def _library() -> ctypes.CDLL:
    try:
        return load_libdm()
    except LibdmUnavailable:
        pytest.skip("libdevmapper is not installed here")


def test_dm_info_layout_matches_libdevmapper_h() -> None:
    """struct dm_info: eight ints, read_only, target_count, then the two newer flags."""
    offsets = {name: getattr(DmInfoStruct, name).offset for name, _ in DmInfoStruct._fields_}
    assert offsets == {
        "exists": 0, "suspended": 4, "live_table": 8, "inactive_table": 12, "open_count": 16,
        "event_nr": 20, "major": 24, "minor": 28, "read_only": 32, "target_count": 36,
        "deferred_remove": 40, "internal_suspend": 44, "_reserved": 48,
    }


def test_dm_names_layout() -> None:
    """struct dm_names: a u64 dev, a u32 offset to the next entry, the name at byte 12."""
    assert DmNamesHeader.dev.offset == 0
    assert DmNamesHeader.next.offset == 8
    assert libdm.DM_NAMES_NAME_OFFSET == 12


def test_names_walk_over_a_built_buffer() -> None:
    """Entries laid out as the kernel does are read back by name and device number."""
    buffer = ctypes.create_string_buffer(64)
    first = DmNamesHeader.from_buffer(buffer, 0)
    first.dev, first.next = (253 << 8) | 3, 32
    ctypes.memmove(ctypes.addressof(buffer) + 12, b"pool\0", 5)
    second = DmNamesHeader.from_buffer(buffer, 32)
    second.dev, second.next = (253 << 8) | 4, 0
    ctypes.memmove(ctypes.addressof(buffer) + 44, b"thin\0", 5)
    assert walk_names(ctypes.addressof(buffer)) == [
        ("pool", (253 << 8) | 3), ("thin", (253 << 8) | 4)
    ]


def test_names_walk_of_no_devices() -> None:
    """The kernel answers "no devices" with one entry of dev 0."""
    buffer = ctypes.create_string_buffer(16)
    assert walk_names(ctypes.addressof(buffer)) == []


def test_device_numbers_as_libdevmapper_splits_them() -> None:
    """MAJOR()/MINOR() of the kernel's dev encoding, minors above 255 included."""
    assert dev_major_minor(os.makedev(253, 7)) == (253, 7)
    assert dev_major_minor(os.makedev(253, 1000)) == (253, 1000)


def test_parse_table_as_dmsetup_reads_it() -> None:
    """Surrounding space trimmed, the params kept word for word, comments and blanks skipped."""
    assert parse_table("  0 2048 thin /dev/mapper/p 1  ") == [
        (0, 2048, "thin", "/dev/mapper/p 1")
    ]
    assert parse_table("0 10 error") == [(0, 10, "error", "")]
    assert parse_table("# nothing\n\n0 8 zero\n8 8 error # tail") == [
        (0, 8, "zero", ""), (8, 8, "error", "")
    ]
    with pytest.raises(CommandFailed, match="Invalid format on line 1"):
        parse_table("thin 0 2048", "create x")


@pytest.mark.parametrize(("number", "cls"), [
    (errno.ENXIO, NoSuchDevice), (errno.EBUSY, DeviceBusy), (errno.EEXIST, DeviceExists),
    (errno.EINVAL, InvalidArgument), (errno.ENOSPC, NoSpace), (errno.ENODATA, NoData),
    (errno.EPERM, CommandFailed), (errno.ENOMEM, CommandFailed),
])
def test_errno_decides_the_class(number: int, cls: type[Exception]) -> None:
    """The errno, not the text, picks the DmError class; unknown errnos are CommandFailed."""
    error = error_for("remove x", number, f"failed: {os.strerror(number)}")
    assert type(error) is cls
    assert os.strerror(number) in str(error)


def test_log_record_text_marks_the_arguments_it_cannot_read() -> None:
    """printf conversions become "?", "%%" a percent sign."""
    record = LogRecord(3, "libdm-iface.c", 1, -1,
                       "device-mapper: %s ioctl on %s %s%s%.0d%s failed: %s at 100%%")
    assert record.text() == "device-mapper: ? ioctl on ? ???? failed: ? at 100%"
    assert LogRecord(3, "", 0, 0, "%" + "lu blocks").text() == "? blocks"


def test_messages_are_captured_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    """libdevmapper's log function (called here as the library calls it) fills the capture."""
    lib = _library()
    log_function = libdm.LOG_FUNCTION.in_dll(lib, "dm_log_with_errno")
    libdm.capture.records.clear()
    log_function(3, b"libdm-common.c", 42, -1, b"Device %s not found")
    log_function(7, b"libdm-common.c", 43, 0, b"a debug line")
    assert [r.text() for r in libdm.capture.errors()] == ["Device ? not found"]
    assert libdm.capture.records[0].line == 42
    assert capfd.readouterr().err == ""


def test_missing_library_is_libdm_unavailable() -> None:
    """No library of the given names: LibdmUnavailable, an OSError naming what was tried."""
    with pytest.raises(LibdmUnavailable, match=r"libdevmapper-nonexistent\.so") as caught:
        load_libdm(("libdevmapper-nonexistent.so.9",))
    assert isinstance(caught.value, OSError)


class _NeverReadyUdev:
    """The udev calls of libdevmapper, for a udev that never confirms."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def dm_udev_wait_immediate(self, cookie: int, ready: object) -> int:
        self.calls.append("wait_immediate")
        return 1

    def dm_udev_complete(self, cookie: int) -> int:
        self.calls.append("complete")
        return 1

    def dm_udev_wait(self, cookie: int) -> int:
        self.calls.append(f"wait {cookie:#x}")
        return 1

    def dm_task_update_nodes(self) -> None:
        self.calls.append("update_nodes")


def test_udev_wait_is_bounded() -> None:
    """A udev that never confirms costs udev_timeout, then the cookie is released by us; one
    still not ready after that is abandoned (nodes made), never waited for without a bound."""
    fake = _NeverReadyUdev()
    client = LibdmClient(lib=cast(ctypes.CDLL, fake), udev_timeout=0.05)
    client.udev.wait(0x0D4D1234, "x")
    assert fake.calls[-4:] == ["complete", "wait_immediate", "wait_immediate", "update_nodes"]
    assert fake.calls.count("wait_immediate") >= 3
    assert not any(c.startswith("wait 0x") for c in fake.calls)


class _SemaphoreUdev:
    """libdevmapper's cookie semaphore, for a udev that runs but never confirms (no dm rules):
    created at 1, one more per task on the cookie; dm_udev_complete takes one off without
    waiting; dm_udev_wait takes the creator's share and then waits for zero, forever here."""

    def __init__(self, events: int) -> None:
        self.value: int | None = 1 + events

    def dm_udev_wait_immediate(self, cookie: int, ready: object) -> int:
        assert self.value is not None, "the cookie is gone"
        ready_now = self.value <= 1
        if ready_now:
            self.value = None  # the creator's share taken, the semaphore destroyed
        ctypes.cast(cast(Any, ready), ctypes.POINTER(ctypes.c_int))[0] = int(ready_now)
        return 1

    def dm_udev_complete(self, cookie: int) -> int:
        assert self.value is not None, "the cookie is gone"
        if self.value == 0:
            return 0  # IPC_NOWAIT: it never goes below zero
        self.value -= 1
        return 1

    def dm_udev_wait(self, cookie: int) -> int:
        assert self.value is not None, "the cookie is gone"
        self.value -= 1
        assert self.value == 0, "dm_udev_wait would block forever"
        self.value = None
        return 1


@pytest.mark.parametrize("events", [1, 2, 5])
def test_an_unconfirmed_batch_is_released_whole(events: int) -> None:
    """A batch's cookie carries one event per call; udev confirming none of them, the timeout
    releases every one (one release and a blocking wait would hang the daemon for good)."""
    udev = _SemaphoreUdev(events)
    client = LibdmClient(lib=cast(ctypes.CDLL, udev), udev_timeout=0.02)
    client.udev.wait(0x0D4D0001, "x", events)
    assert udev.value is None


def test_no_cookie_still_runs_the_node_operations() -> None:
    """Without udev (cookie 0) dm_udev_wait(0) runs, which makes or deletes the nodes."""
    fake = _NeverReadyUdev()
    LibdmClient(lib=cast(ctypes.CDLL, fake)).udev.wait(0, "x")
    assert fake.calls == ["wait 0x0"]


def test_every_library_function_we_call_has_its_c_signature() -> None:
    """ctypes passes an undeclared pointer argument as a C int: a 64-bit task handle is cut
    and libdevmapper crashes the process (seen with dm_task_deferred_remove). Every function
    of the DmLibrary protocol is declared."""
    from reconciler.dm.libdm_bindings import _SIGNATURES, DmLibrary

    called = {name for name in vars(DmLibrary) if name.startswith("dm_")}
    assert called <= set(_SIGNATURES), called - set(_SIGNATURES)

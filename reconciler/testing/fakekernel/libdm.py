"""The fake libdevmapper: the C functions `LibdmClient` calls through ctypes, answered from the
kernel model, so the production default driver runs unchanged in the unit tier.

`FakeKernel.dm_library()` offers it, as `SystemHost.dm_library()` offers the real library;
`make_client` then gives the fake kernel a `LibdmClient` when the settings ask for
libdevmapper. Where LibdmClient reads through pointers the answers are real ctypes memory: the
`struct dm_info` it passes is filled in place, `struct dm_names` entries are laid out in a
buffer as the kernel lays them out, and target types and parameters are C strings whose
addresses are written into its `char *` out-parameters. A task owns those buffers until
`dm_task_destroy`, as libdevmapper's do.

What libdevmapper itself adds on top of the ioctl is kept: INFO and STATUS of a missing device
succeed with `exists` 0 (it hides that ENXIO), TABLE does not. udev is the kernel's
`FakeUdev`: synchronisation is on only while it runs (libdevmapper asks libudev), and a
cookie is confirmed at once by a udev in the daemon's IPC namespace, never by one elsewhere:
then it is ready only once the daemon released each of its events (`dm_udev_complete`), and a
blocking `dm_udev_wait` on it would never return (an AssertionError here). What is left out:
the library's log messages (LibdmClient words its errors from the errno alone), and every
function LibdmClient does not call.
"""

from __future__ import annotations

import ctypes
import errno
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from reconciler.dm.libdm_bindings import (
    DM_DEVICE_CREATE,
    DM_DEVICE_INFO,
    DM_DEVICE_LIST,
    DM_DEVICE_RELOAD,
    DM_DEVICE_REMOVE,
    DM_DEVICE_RESUME,
    DM_DEVICE_STATUS,
    DM_DEVICE_SUSPEND,
    DM_DEVICE_TABLE,
    DM_DEVICE_TARGET_MSG,
    DM_NAMES_NAME_OFFSET,
    DmInfoStruct,
    DmNamesHeader,
)
from reconciler.testing.fakekernel.model import DmDevice, Kernel, KernelLine, Refused
from reconciler.testing.fakekernel.udev import FakeUdev

FIRST_COOKIE = 0x0D4D0001  # libdevmapper's cookies start with its 0x0D4D prefix


def encode_dev(major: int, minor: int) -> int:
    """A dev_t as the kernel encodes it in `struct dm_names` (new_encode_dev)."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


@dataclass
class _Task:
    """One dm_task: what was set on it, and after dm_task_run what the kernel answered."""

    kind: int
    name: str | None = None
    uuid: str | None = None
    readonly: bool = False
    targets: list[KernelLine] = field(default_factory=list)
    message: str | None = None
    sector: int | None = None
    deferred: bool = False  # REMOVE with DM_DEFERRED_REMOVE
    cookie: int = 0  # the udev cookie its event is counted on (0: none)
    number: int = 0  # the errno of the failed run
    device: DmDevice | None = None  # INFO, STATUS, TABLE: the device found, if any
    lines: list[KernelLine] = field(default_factory=list)
    devices: list[DmDevice] = field(default_factory=list)  # LIST
    # C memory handed out by the task (names buffer, target strings): freed with it.
    buffers: list[ctypes.Array[ctypes.c_char]] = field(default_factory=list)


class FakeLibdm:
    """libdevmapper's task, target and udev functions over a kernel model (a `DmLibrary`)."""

    def __init__(self, kernel: Kernel, udev: FakeUdev) -> None:
        self.kernel = kernel
        self.udev = udev
        self._tasks: dict[int, _Task] = {}
        self._next_task = 1
        self._udev_sync = False
        self._next_cookie = FIRST_COOKIE
        # Events counted on each cookie not yet waited for, and each wait: (cookie, events).
        self.cookie_events: Counter[int] = Counter()
        self.waited: list[tuple[int, int]] = []
        # Every cookie made, and those udev never confirmed (released by the caller).
        self.cookies: list[int] = []
        self.unconfirmed: list[int] = []
        # Each task given a cookie (or none, unsynchronised): (kind, name, DM_UDEV_* flags).
        self.udev_flags: list[tuple[int, str | None, int]] = []

    def _task(self, dmt: int) -> _Task:
        assert dmt in self._tasks, f"FakeKernel: libdevmapper task {dmt} is not alive"
        return self._tasks[dmt]

    # -- tasks -------------------------------------------------------------------------------

    def dm_task_create(self, kind: int, /) -> int | None:
        """A new task of an ioctl kind; its handle."""
        handle = self._next_task
        self._next_task += 1
        self._tasks[handle] = _Task(kind)
        return handle

    def dm_task_destroy(self, dmt: int, /) -> None:
        """Free the task and the memory it handed out."""
        del self._tasks[dmt]

    def dm_task_set_name(self, dmt: int, name: bytes, /) -> int:
        """The device the task is about."""
        self._task(dmt).name = _text(name)
        return 1

    def dm_task_set_uuid(self, dmt: int, uuid: bytes, /) -> int:
        """The uuid of a device being created."""
        self._task(dmt).uuid = _text(uuid)
        return 1

    def dm_task_set_ro(self, dmt: int, /) -> int:
        """Load the table read-only."""
        self._task(dmt).readonly = True
        return 1

    def dm_task_add_target(self, dmt: int, start: int, length: int, target: bytes,
                           params: bytes, /) -> int:
        """One more target line of the table being loaded."""
        self._task(dmt).targets.append((start, length, _text(target), _text(params)))
        return 1

    def dm_task_deferred_remove(self, dmt: int, /) -> int:
        """Ask a REMOVE to mark an open device instead of failing."""
        self._task(dmt).deferred = True
        return 1

    def dm_task_set_sector(self, dmt: int, sector: int, /) -> int:
        """The sector a target message goes to."""
        self._task(dmt).sector = sector
        return 1

    def dm_task_set_message(self, dmt: int, message: bytes, /) -> int:
        """The text of a target message."""
        self._task(dmt).message = _text(message)
        return 1

    def dm_task_set_cookie(self, dmt: int, cookie: Any, flags: int, /) -> int:
        """A udev cookie for the task, written to `*cookie` (0 without udev sync); a cookie
        already in `*cookie` is shared, one more event counted on it, as libdevmapper does.
        The flags go with the task whatever the synchronisation, as libdevmapper's do."""
        slot = ctypes.cast(cookie, ctypes.POINTER(ctypes.c_uint32))
        value = 0
        if self.dm_udev_get_sync_support():
            value = slot[0]
            if value == 0:
                value, self._next_cookie = self._next_cookie, self._next_cookie + 1
                self.cookies.append(value)
            self.cookie_events[value] += 1
        slot[0] = value
        task = self._task(dmt)
        task.cookie = value
        self.udev_flags.append((task.kind, task.name, flags))
        return 1

    def dm_task_run(self, dmt: int, /) -> int:
        """Send the task's ioctl to the kernel model: 1, or 0 with the errno kept."""
        task = self._task(dmt)
        try:
            self._run(task)
        except Refused as refused:
            task.number = refused.number
            if task.cookie:
                # No uevent: libdevmapper takes the task's event off the cookie itself.
                self.cookie_events[task.cookie] -= 1
            return 0
        return 1

    def dm_task_get_errno(self, dmt: int, /) -> int:
        """The errno of the task's failed ioctl (0 if it did not fail)."""
        return self._task(dmt).number

    # -- what a task answered ----------------------------------------------------------------

    def dm_task_get_info(self, dmt: int, info: Any, /) -> int:
        """Fill the caller's `struct dm_info` with the device the task found."""
        device = self._task(dmt).device
        out = ctypes.cast(info, ctypes.POINTER(DmInfoStruct))[0]
        ctypes.memset(ctypes.addressof(out), 0, ctypes.sizeof(DmInfoStruct))
        if device is None:
            return 1  # exists stays 0
        live = device.live
        out.exists = 1
        out.suspended = int(device.suspended)
        out.live_table = int(live is not None)
        out.inactive_table = int(device.inactive is not None)
        out.open_count = self.kernel.open_count(device)
        out.event_nr = device.events
        out.major, out.minor = device.number
        out.read_only = int(live is not None and live.readonly)
        out.target_count = 1 if live is not None else 0
        out.deferred_remove = int(device.deferred_remove)
        return 1

    def dm_task_get_name(self, dmt: int, /) -> bytes | None:
        """The name of the device the task found."""
        device = self._task(dmt).device
        return None if device is None else _raw(device.name)

    def dm_task_get_uuid(self, dmt: int, /) -> bytes | None:
        """The uuid of the device the task found."""
        device = self._task(dmt).device
        return None if device is None else _raw(device.uuid)

    def dm_task_get_names(self, dmt: int, /) -> int | None:
        """The address of the LIST task's `struct dm_names` entries (one of dev 0 if none)."""
        task = self._task(dmt)
        entries = []
        for device in task.devices:
            name = _raw(device.name) + b"\0"
            size = (DM_NAMES_NAME_OFFSET + len(name) + 7) & ~7  # entries are 8-byte aligned
            entries.append((encode_dev(*device.number), name, size))
        buffer = ctypes.create_string_buffer(max(16, sum(size for *_, size in entries)))
        task.buffers.append(buffer)
        offset = 0
        for index, (dev, name, size) in enumerate(entries):
            head = DmNamesHeader.from_buffer(buffer, offset)
            head.dev = dev
            head.next = size if index + 1 < len(entries) else 0
            ctypes.memmove(ctypes.addressof(buffer) + offset + DM_NAMES_NAME_OFFSET, name,
                           len(name))
            offset += size
        return ctypes.addressof(buffer)

    def dm_get_next_target(self, dmt: int, following: int | None, start: Any, length: Any,
                           target_type: Any, params: Any, /) -> int | None:
        """One target line of a STATUS or TABLE task into the out-parameters; the handle of
        the next one, or None after the last (a device without a table has one empty one)."""
        task = self._task(dmt)
        index = following or 0
        line: KernelLine | None = task.lines[index] if index < len(task.lines) else None
        ctypes.cast(start, ctypes.POINTER(ctypes.c_uint64))[0] = line[0] if line else 0
        ctypes.cast(length, ctypes.POINTER(ctypes.c_uint64))[0] = line[1] if line else 0
        for out, text in ((target_type, line[2] if line else None),
                          (params, line[3] if line else None)):
            address = None
            if text is not None:
                buffer = ctypes.create_string_buffer(_raw(text))
                task.buffers.append(buffer)
                address = ctypes.addressof(buffer)
            ctypes.cast(out, ctypes.POINTER(ctypes.c_void_p))[0] = address
        return index + 1 if index + 1 < len(task.lines) else None

    # -- udev --------------------------------------------------------------------------------

    def dm_task_update_nodes(self) -> None:
        """Run the stacked /dev/mapper node operations (the model's nodes are always there)."""

    def dm_udev_set_sync_support(self, sync: int, /) -> None:
        """Whether tasks wait for udev."""
        self._udev_sync = bool(sync)

    def dm_udev_get_sync_support(self) -> int:
        """Whether tasks wait for udev: asked to, and udev runs (libdevmapper asks libudev)."""
        return int(self._udev_sync and self.udev.alive)

    def _ready(self, cookie: int) -> bool:
        """Whether the cookie is confirmed (then gone): by udev, or each event released.
        With synchronisation off, libdevmapper answers ready without looking: the cookie's
        semaphore is left behind (its events stay counted here)."""
        if cookie and not self.dm_udev_get_sync_support():
            self.waited.append((cookie, 0))
            return True
        if cookie and not self.udev.confirms() and self.cookie_events.get(cookie, 0) > 0:
            return False
        self.waited.append((cookie, self.cookie_events.pop(cookie, 0)))
        return True

    def dm_udev_wait(self, cookie: int, /) -> int:
        """Wait for udev's confirmation of a cookie (0: none, the nodes made at once)."""
        assert self._ready(cookie), \
            f"FakeKernel: dm_udev_wait({cookie:#x}) would block forever: udev cannot confirm it"
        return 1

    def dm_udev_wait_immediate(self, cookie: int, ready: Any, /) -> int:
        """Whether the cookie is confirmed, in `*ready` (then it is gone)."""
        ctypes.cast(ready, ctypes.POINTER(ctypes.c_int))[0] = int(self._ready(cookie))
        return 1

    def dm_udev_complete(self, cookie: int, /) -> int:
        """Release one event of a cookie udev did not confirm (0: none left to release)."""
        if self.cookie_events.get(cookie, 0) <= 0:
            return 0
        self.cookie_events[cookie] -= 1
        if cookie not in self.unconfirmed:
            self.unconfirmed.append(cookie)
        return 1

    # -- the ioctls --------------------------------------------------------------------------

    def _run(self, task: _Task) -> None:
        kernel = self.kernel
        kind, name = task.kind, task.name or ""
        if kind == DM_DEVICE_LIST:
            task.devices = kernel.names()
        elif kind in (DM_DEVICE_INFO, DM_DEVICE_STATUS):
            try:
                task.device = (kernel.info if kind == DM_DEVICE_INFO else kernel.status)(name)
            except Refused as refused:
                if refused.number != errno.ENXIO:
                    raise
                task.device = None  # libdevmapper hides ENXIO here: exists = 0
            if task.device is not None and kind == DM_DEVICE_STATUS:
                task.lines = _lines(kernel.line(task.device, "status"))
        elif kind == DM_DEVICE_TABLE:
            task.device = kernel.table(name)
            task.lines = _lines(kernel.line(task.device, "table"))
        elif kind == DM_DEVICE_CREATE:
            assert task.uuid is not None and not task.targets, \
                "FakeKernel: LibdmClient creates with a uuid and loads the table after"
            task.device = kernel.create(name, task.uuid)
        elif kind == DM_DEVICE_RELOAD:
            assert len(task.targets) == 1, f"FakeKernel: one-target tables only: {task.targets}"
            start, length, target, params = task.targets[0]
            kernel.load(name, f"{start} {length} {target} {params}", task.readonly)
        elif kind == DM_DEVICE_SUSPEND:
            kernel.suspend(name)
        elif kind == DM_DEVICE_RESUME:
            kernel.resume(name)
        elif kind == DM_DEVICE_REMOVE:
            kernel.remove(name, deferred=task.deferred)
        elif kind == DM_DEVICE_TARGET_MSG:
            assert task.sector == 0 and task.message, f"FakeKernel: message {task.message!r}"
            kernel.message(name, task.message.split())
        else:
            raise AssertionError(f"FakeKernel: libdevmapper task kind {kind}")


def _lines(line: KernelLine | None) -> list[KernelLine]:
    return [] if line is None else [line]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")

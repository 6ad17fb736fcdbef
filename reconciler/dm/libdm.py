"""LibdmClient: DmClient's operations, run in-process by libdevmapper through ctypes.

The same methods, values and errors as `DmClient` (reconciler.dm.client), without a `dmsetup`
process per call: the tasks are the ones dmsetup itself builds (DM_DEVICE_CREATE with a table,
RELOAD, SUSPEND, RESUME, REMOVE, TARGET_MSG, LIST, INFO, STATUS, TABLE), so the kernel sees
the same ioctls. Errors are classified from the ioctl's errno (`dm_task_get_errno`), never from
text; the text in the error repeats dmsetup's ("device-mapper: remove ioctl on NAME failed:
Device or resource busy").

libdevmapper keeps process-wide state (the control fd, stacked /dev/mapper node operations, its
log function, its udev decision) and is not thread-safe: every call holds one module lock.
Here the client's operations; the ctypes bindings are `dm.libdm_bindings`, the wait for
udev's confirmation `dm.libdm_udev`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import structlog

from reconciler.dm.errors import CommandFailed, DmError, NoSuchDevice
from reconciler.dm.libdm_bindings import (
    DEFAULT_UDEV_TIMEOUT,
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
    IOCTL_NAMES,
    LOCK,
    LOG_ERR,
    LOG_WARN,
    DmInfoStruct,
    DmLibrary,
    LibdmUnavailable,
    capture,
    dev_major_minor,
    error_for,
    load_libdm,
    parse_table,
    raw_of,
    text_of,
    walk_names,
)
from reconciler.dm.libdm_udev import PROBE_SECONDS, UdevCookies, probe_cookie
from reconciler.dm.types import DeviceInfo, DeviceListing, TargetLine
from reconciler.dm.udev import SystemUdev, UdevFacts, UdevGate
from reconciler.dm.udev_sync import RULES_OFF, NodeWait, UdevSync
from reconciler.units import Sectors

# What importers find here besides the client: the library's loader (the driver's choice
# asks it) and its failure. The bindings themselves are dm.libdm_bindings'.
__all__ = ["LibdmClient", "LibdmUnavailable", "load_libdm"]

log = structlog.get_logger(__name__)


def _targets(lib: DmLibrary, dmt: int) -> list[TargetLine]:
    """The target lines a STATUS or TABLE task brought back."""
    lines = []
    start = ctypes.c_uint64()
    length = ctypes.c_uint64()
    target = ctypes.c_char_p()
    params = ctypes.c_char_p()
    following: int | None = None
    while True:
        following = lib.dm_get_next_target(
            dmt, following, ctypes.byref(start), ctypes.byref(length),
            ctypes.byref(target), ctypes.byref(params),
        )
        # A device without a live table yields one empty entry, as in dmsetup.
        if target.value is not None:
            lines.append(TargetLine(Sectors(start.value), Sectors(length.value),
                                    text_of(target.value), text_of(params.value)))
        if not following:
            return lines


class LibdmClient:
    """list, status, table, info, create, load, suspend, resume, remove, message: in-process.

    A drop-in for DmClient: the same methods, results and DmError classes.
    """

    def __init__(self, lib: DmLibrary | None = None,
                 udev_timeout: float = DEFAULT_UDEV_TIMEOUT,
                 udev_facts: UdevFacts | None = None) -> None:
        """Loads libdevmapper unless given one (raises LibdmUnavailable when it cannot).

        udev_timeout bounds the wait for udev's confirmation after create, resume and remove;
        udev_facts (the real machine's unless given) say whether udev runs and where, from
        which the gate decides, before each of them, whether they wait for it.
        """
        self.lib: DmLibrary = lib if lib is not None else load_libdm()
        # The probe cookie, when /proc cannot tell: bounded by udev_timeout or a few seconds.
        gate = UdevGate(udev_facts if udev_facts is not None else SystemUdev(),
                        lambda: probe_cookie(self.lib, min(PROBE_SECONDS, self.udev.timeout)))
        self.udev = UdevCookies(self.lib, udev_timeout, gate)

    def udev_sync(self) -> UdevSync:
        """Whether create, resume and remove wait for udev (proved at the first ask, and
        again when udev appears or goes)."""
        return self.udev.gate.sync()

    # The task plumbing.

    @contextmanager
    def _task(self, kind: int) -> Iterator[int]:
        """A dm_task under the library lock, destroyed however the block ends."""
        with LOCK:
            capture.records.clear()
            dmt: int | None = self.lib.dm_task_create(kind)
            if not dmt:
                raise CommandFailed(f"{IOCTL_NAMES[kind]} task",
                                    detail="libdevmapper could not allocate a task")
            failed = False
            try:
                yield dmt
            except DmError:
                failed = True
                raise
            finally:
                self.lib.dm_task_destroy(dmt)
                # A failure's error messages are in its exception already.
                self._log_records(LOG_WARN if failed else LOG_ERR)

    def _log_records(self, worst: int) -> None:
        for record in capture.records:
            if worst <= record.level <= LOG_WARN:
                log.warning("libdm.message", message=record.text(), source=record.file,
                            line=record.line)

    def _failure(self, what: str, dmt: int, kind: int, name: str) -> DmError:
        """The DmError for a failed dm_task_run (or setter): from errno, with dmsetup's words."""
        number = int(self.lib.dm_task_get_errno(dmt))
        errors = [record.text() for record in capture.errors()
                  if not record.format.startswith("device-mapper: %s ioctl on")]
        if number:
            detail = (f"device-mapper: {IOCTL_NAMES[kind]} ioctl on {name} failed: "
                      f"{os.strerror(number)}")
            return error_for(what, number, "; ".join([detail, *errors]))
        detail = "; ".join(errors) or f"libdevmapper: {IOCTL_NAMES[kind]} of {name} failed"
        return CommandFailed(what, detail=detail)

    def _check(self, ok: int, what: str, dmt: int, kind: int, name: str) -> None:
        if not ok:
            raise self._failure(what, dmt, kind, name)

    def _named(self, what: str, dmt: int, kind: int, name: str) -> None:
        self._check(self.lib.dm_task_set_name(dmt, raw_of(name)), what, dmt, kind, name)

    def _info_of(self, dmt: int) -> DmInfoStruct:
        info = DmInfoStruct()
        if not self.lib.dm_task_get_info(dmt, ctypes.byref(info)):
            raise CommandFailed("info", detail="libdevmapper: dm_task_get_info failed")
        return info

    def _names(self) -> list[tuple[str, int]]:
        """(name, dev) of every device, in the kernel's order (dmsetup's `ls` order)."""
        with self._task(DM_DEVICE_LIST) as dmt:
            self._check(self.lib.dm_task_run(dmt), "list devices", dmt, DM_DEVICE_LIST, "")
            address: int | None = self.lib.dm_task_get_names(dmt)
            if not address:
                raise CommandFailed("list devices", detail="libdevmapper returned no names")
            return walk_names(address)

    def _targets_of(self, kind: int, name: str, missing_ok: bool) -> list[TargetLine] | None:
        what = f"{'status' if kind == DM_DEVICE_STATUS else 'table'} {name}"
        with self._task(kind) as dmt:
            self._named(what, dmt, kind, name)
            if not self.lib.dm_task_run(dmt):
                error = self._failure(what, dmt, kind, name)
                if missing_ok and isinstance(error, NoSuchDevice):
                    capture.records.clear()  # gone since the list: not worth a warning
                    return None
                raise error
            # STATUS of a missing device succeeds with exists=0 (libdevmapper hides ENXIO).
            if not self._info_of(dmt).exists:
                if missing_ok:
                    return None
                raise NoSuchDevice(what, detail="Device does not exist.")
            return _targets(self.lib, dmt)

    def _device_info(self, name: str) -> DeviceInfo | None:
        what = f"info {name}"
        with self._task(DM_DEVICE_INFO) as dmt:
            self._named(what, dmt, DM_DEVICE_INFO, name)
            # No dm_task_no_open_count: the open count is one of the things we ask for.
            self._check(self.lib.dm_task_run(dmt), what, dmt, DM_DEVICE_INFO, name)
            info = self._info_of(dmt)
            if not info.exists:
                return None
            return DeviceInfo(
                name=text_of(self.lib.dm_task_get_name(dmt)),
                uuid=text_of(self.lib.dm_task_get_uuid(dmt)),
                major=int(info.major),
                minor=int(info.minor),
                live_table=bool(info.live_table),
                inactive_table=bool(info.inactive_table),
                suspended=bool(info.suspended),
                readonly=bool(info.read_only),
                open_count=int(info.open_count),
                segments=int(info.target_count),
                events=int(info.event_nr),
                deferred_remove=bool(info.deferred_remove),
            )

    # udev: the cookie of each create, resume and remove (UdevCookies keeps the rest).

    def _udev_task(self, what: str, kind: int, name: str, node_wait: NodeWait,
                   setter: Callable[[int], int] | None = None) -> None:
        """A resume or remove (with what `setter` sets), synchronised with udev as
        `UdevCookies.decide` says (asked before the task: a proof may run tasks of its own),
        then udev waited for (or the nodes made); inside `deferred_udev` the call joins the
        batch's cookie. NODE: no cookie (`UdevCookies.cookieless`) and udev's rules off."""
        synced = self.udev.decide()
        with self._task(kind) as dmt:
            self._named(what, dmt, kind, name)
            if setter is not None:
                self._check(setter(dmt), what, dmt, kind, name)
            node_only = synced and node_wait is NodeWait.NODE
            flags = RULES_OFF if node_wait is NodeWait.NODE else 0
            cookie = ctypes.c_uint32(0 if node_only else self.udev.shared_cookie())
            with self.udev.cookieless(name) if node_only else nullcontext():
                # A cookie already set is shared (one more event on its semaphore). Rules on
                # (dmsetup's way): libdevmapper makes the node if udev did not; off: always.
                self._check(self.lib.dm_task_set_cookie(dmt, ctypes.byref(cookie), flags),
                            what, dmt, kind, name)
                ok = self.lib.dm_task_run(dmt)
            if not node_only:
                # Failed or not, the cookie is waited for (by the batch when deferred): a
                # failed run released its share; the wait destroys it, runs the node ops.
                self.udev.ran(cookie.value, name)
            self._check(ok, what, dmt, kind, name)

    def deferred_udev(self) -> AbstractContextManager[None]:
        """Within: create, resume and remove share one udev cookie, waited for once by
        `settle_udev` (or on the way out); see UdevCookies.deferred."""
        return self.udev.deferred()

    def settle_udev(self) -> None:
        """Wait for udev to finish every deferred call (its /dev/mapper nodes made or gone)."""
        self.udev.settle()

    # The public operations, as DmClient's.

    def list_devices(self) -> list[DeviceListing]:
        """Every dm device's name and number."""
        listings = []
        for name, dev in self._names():
            major, minor = dev_major_minor(dev)
            listings.append(DeviceListing(name, major, minor))
        return listings

    def info_all(self) -> list[DeviceInfo]:
        """Info of every dm device (one list, then one info ioctl each, as dmsetup does)."""
        infos = []
        for name, _ in self._names():
            info = self._device_info(name)
            if info is not None:  # removed since the list
                infos.append(info)
        return infos

    def info(self, name: str) -> DeviceInfo | None:
        """Info of one device, or None if there is no such device."""
        return self._device_info(name)

    def status_all(self) -> dict[str, list[TargetLine]]:
        """Status lines of every dm device."""
        return self._all(DM_DEVICE_STATUS)

    def status(self, name: str) -> list[TargetLine]:
        """Status lines of one device."""
        lines = self._targets_of(DM_DEVICE_STATUS, name, missing_ok=False)
        assert lines is not None
        return lines

    def table_all(self) -> dict[str, list[TargetLine]]:
        """Live tables of every dm device."""
        return self._all(DM_DEVICE_TABLE)

    def table(self, name: str) -> list[TargetLine]:
        """Live table of one device."""
        lines = self._targets_of(DM_DEVICE_TABLE, name, missing_ok=False)
        assert lines is not None
        return lines

    def _all(self, kind: int) -> dict[str, list[TargetLine]]:
        # The kernel has no "status of all" ioctl: dmsetup too lists, then asks each device.
        result = {}
        for name, _ in self._names():
            lines = self._targets_of(kind, name, missing_ok=True)
            if lines is not None:  # removed since the list
                result[name] = lines
        return result

    def _add_targets(self, what: str, dmt: int, kind: int, name: str,
                     targets: list[tuple[int, int, str, str]]) -> None:
        for start, length, target, params in targets:
            self._check(self.lib.dm_task_add_target(dmt, start, length, raw_of(target),
                                                    raw_of(params)), what, dmt, kind, name)

    def create(self, name: str, table: str, uuid: str, readonly: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Create a device and load and resume its table (the resume as `node_wait` says)."""
        what = f"create {name}"
        targets = parse_table(table, what)
        # The three steps libdevmapper's create-with-table takes, done one by one: it loses the
        # errno of a failed step when it reverts (1.02.185), and the errno is the error class.
        with LOCK:
            with self._task(DM_DEVICE_CREATE) as dmt:
                self._named(what, dmt, DM_DEVICE_CREATE, name)
                self._check(self.lib.dm_task_set_uuid(dmt, raw_of(uuid)), what, dmt,
                            DM_DEVICE_CREATE, name)
                self._check(self.lib.dm_task_run(dmt), what, dmt, DM_DEVICE_CREATE, name)
            if not targets:
                return
            try:
                self._load(what, name, targets, readonly)
                self._resume(what, name, node_wait)
            except DmError as error:
                raise self._revert_create(name, error) from None

    def _revert_create(self, name: str, error: DmError) -> DmError:
        """Remove a device whose table did not load or resume; the error to raise."""
        try:
            self.remove(name)
        except DmError as failed:
            return type(error)(error.what, detail=f"{error.detail}; failed to revert "
                                                  f"device creation: {failed.detail}")
        return error

    def load(self, name: str, table: str, readonly: bool = False) -> None:
        """Load an inactive table; it takes effect at the next resume."""
        what = f"load {name}"
        self._load(what, name, parse_table(table, what), readonly)

    def _load(self, what: str, name: str, targets: list[tuple[int, int, str, str]],
              readonly: bool) -> None:
        with self._task(DM_DEVICE_RELOAD) as dmt:
            self._named(what, dmt, DM_DEVICE_RELOAD, name)
            if readonly:
                self._check(self.lib.dm_task_set_ro(dmt), what, dmt, DM_DEVICE_RELOAD, name)
            self._add_targets(what, dmt, DM_DEVICE_RELOAD, name, targets)
            self._check(self.lib.dm_task_run(dmt), what, dmt, DM_DEVICE_RELOAD, name)

    def suspend(self, name: str) -> None:
        """Suspend a device (I/O queues; a filesystem on it is frozen first)."""
        what = f"suspend {name}"
        with self._task(DM_DEVICE_SUSPEND) as dmt:
            self._named(what, dmt, DM_DEVICE_SUSPEND, name)
            self._check(self.lib.dm_task_run(dmt), what, dmt, DM_DEVICE_SUSPEND, name)

    def resume(self, name: str, node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Resume a device, swapping in its inactive table if one was loaded."""
        self._resume(f"resume {name}", name, node_wait)

    def _resume(self, what: str, name: str, node_wait: NodeWait) -> None:
        self._udev_task(what, DM_DEVICE_RESUME, name, node_wait)

    def remove(self, name: str, deferred: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Remove a device (never forced: a busy one says so); `deferred`: an open one goes at
        its last close (under NODE, libdevmapper unlinks its node now either way)."""
        self._udev_task(f"remove{' --deferred' if deferred else ''} {name}", DM_DEVICE_REMOVE,
                        name, node_wait, self.lib.dm_task_deferred_remove if deferred else None)

    def message(self, name: str, words: Sequence[str]) -> None:
        """Send a target message (sector 0), e.g. create_thin to a pool."""
        text = " ".join(words)
        what = f"message {name} {text}"
        kind = DM_DEVICE_TARGET_MSG
        with self._task(kind) as dmt:
            self._named(what, dmt, kind, name)
            self._check(self.lib.dm_task_set_sector(dmt, 0), what, dmt, kind, name)
            self._check(self.lib.dm_task_set_message(dmt, raw_of(text)), what, dmt, kind, name)
            self._check(self.lib.dm_task_run(dmt), what, dmt, kind, name)

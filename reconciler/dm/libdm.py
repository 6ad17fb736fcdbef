"""LibdmClient: DmClient's operations, run in-process by libdevmapper through ctypes.

The same methods, values and errors as `DmClient` (reconciler.dm.client), without a `dmsetup`
process per call: the tasks are the ones dmsetup itself builds (DM_DEVICE_CREATE with a table,
RELOAD, SUSPEND, RESUME, REMOVE, TARGET_MSG, LIST, INFO, STATUS, TABLE), so the kernel sees
the same ioctls. Errors are classified from the ioctl's errno (`dm_task_get_errno`), never from
text; the text in the error repeats dmsetup's ("device-mapper: remove ioctl on NAME failed:
Device or resource busy").

libdevmapper keeps process-wide state (the control fd, stacked /dev/mapper node operations, its
log function, its udev decision) and is not thread-safe: every call holds one module lock.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from reconciler.dm.errors import _BY_ERRNO, CommandFailed, DmError, NoSuchDevice
from reconciler.dm.types import DeviceInfo, DeviceListing, TargetLine
from reconciler.sockets import Probe, probe
from reconciler.units import Sectors

log = structlog.get_logger(__name__)

# The soname first: the unversioned libdevmapper.so exists only with the -dev package.
LIBRARY_NAMES = ("libdevmapper.so.1.02.1", "libdevmapper.so.1.02", "libdevmapper.so")

# enum in libdevmapper.h; the numbers are ABI and have not changed since 2005.
DM_DEVICE_CREATE = 0
DM_DEVICE_RELOAD = 1
DM_DEVICE_REMOVE = 2
DM_DEVICE_SUSPEND = 4
DM_DEVICE_RESUME = 5
DM_DEVICE_INFO = 6
DM_DEVICE_STATUS = 10
DM_DEVICE_TABLE = 11
DM_DEVICE_LIST = 13
DM_DEVICE_TARGET_MSG = 17

# The ioctl names libdevmapper prints in "device-mapper: <name> ioctl on ..." (_cmd_data_v4).
IOCTL_NAMES = {
    DM_DEVICE_CREATE: "create",
    DM_DEVICE_RELOAD: "reload",
    DM_DEVICE_REMOVE: "remove",
    DM_DEVICE_SUSPEND: "suspend",
    DM_DEVICE_RESUME: "resume",
    DM_DEVICE_INFO: "info",
    DM_DEVICE_STATUS: "status",
    DM_DEVICE_TABLE: "table",
    DM_DEVICE_LIST: "names",
    DM_DEVICE_TARGET_MSG: "message",
}

# Log levels of libdevmapper's log function (misc/dm-logging.h); higher bits are flags.
LOG_LEVEL_MASK = 0x7
LOG_ERR = 3
LOG_WARN = 4

# Where libudev (and so libdevmapper and dmsetup) looks to decide whether udev runs: udevd's
# control socket (SOCK_SEQPACKET), under /run/udev, which a pod mounts from the host.
UDEV_CONTROL = "/run/udev/control"
DEFAULT_UDEV_TIMEOUT = 60.0
UDEV_POLL_MAX = 0.002  # seconds between two looks at a udev cookie, at most


class LibdmUnavailable(OSError):
    """libdevmapper cannot be loaded (not installed, or without a function we call)."""


class DmInfoStruct(ctypes.Structure):
    """`struct dm_info` of libdevmapper.h (the DM_1_02_97 version dm_task_get_info fills)."""

    _fields_ = (
        ("exists", ctypes.c_int),
        ("suspended", ctypes.c_int),
        ("live_table", ctypes.c_int),
        ("inactive_table", ctypes.c_int),
        ("open_count", ctypes.c_int32),
        ("event_nr", ctypes.c_uint32),
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("read_only", ctypes.c_int),
        ("target_count", ctypes.c_int32),
        ("deferred_remove", ctypes.c_int),
        ("internal_suspend", ctypes.c_int),
        # dlsym finds the newest symbol version of dm_task_get_info; should a later library
        # grow the struct, it writes into this slack instead of past our buffer.
        ("_reserved", ctypes.c_int * 16),
    )


class DmNamesHeader(ctypes.Structure):
    """The fixed head of `struct dm_names`: dev, then the offset of the next entry."""

    _fields_ = (
        ("dev", ctypes.c_uint64),
        ("next", ctypes.c_uint32),
    )


# offsetof(struct dm_names, name): a char[] right after `next`, not at sizeof() (16).
DM_NAMES_NAME_OFFSET = 12

# void (*)(int level, const char *file, int line, int dm_errno_or_class, const char *f, ...)
# ctypes cannot take C varargs, so only the fixed arguments are read: the format is kept, its
# arguments are not (the fixed ones arrive in the same registers either way).
LOG_FUNCTION = ctypes.CFUNCTYPE(
    None, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p
)

_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "dm_task_create": (_P, (ctypes.c_int,)),
    "dm_task_destroy": (None, (_P,)),
    "dm_task_set_name": (ctypes.c_int, (_P, ctypes.c_char_p)),
    "dm_task_set_uuid": (ctypes.c_int, (_P, ctypes.c_char_p)),
    "dm_task_set_ro": (ctypes.c_int, (_P,)),
    "dm_task_deferred_remove": (ctypes.c_int, (_P,)),
    "dm_task_add_target": (
        ctypes.c_int, (_P, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p)
    ),
    "dm_task_set_sector": (ctypes.c_int, (_P, ctypes.c_uint64)),
    "dm_task_set_message": (ctypes.c_int, (_P, ctypes.c_char_p)),
    "dm_task_set_cookie": (ctypes.c_int, (_P, ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint16)),
    "dm_task_run": (ctypes.c_int, (_P,)),
    "dm_task_get_errno": (ctypes.c_int, (_P,)),
    "dm_task_get_info": (ctypes.c_int, (_P, ctypes.POINTER(DmInfoStruct))),
    "dm_task_get_name": (ctypes.c_char_p, (_P,)),
    "dm_task_get_uuid": (ctypes.c_char_p, (_P,)),
    "dm_task_get_names": (_P, (_P,)),
    "dm_get_next_target": (_P, (
        _P, _P, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p),
    )),
    "dm_task_update_nodes": (None, ()),
    "dm_udev_set_sync_support": (None, (ctypes.c_int,)),
    "dm_udev_get_sync_support": (ctypes.c_int, ()),
    "dm_udev_wait": (ctypes.c_int, (ctypes.c_uint32,)),
    "dm_udev_wait_immediate": (ctypes.c_int, (ctypes.c_uint32, ctypes.POINTER(ctypes.c_int))),
    "dm_udev_complete": (ctypes.c_int, (ctypes.c_uint32,)),
    "dm_log_with_errno_init": (None, (LOG_FUNCTION,)),
}



class DmLibrary(Protocol):
    """The libdevmapper functions LibdmClient calls, as _SIGNATURES declares them to ctypes.

    The loaded library (a ctypes.CDLL) is one; a Host may offer another that answers the same
    calls (`Host.dm_library`, the fake kernel's). Pointer arguments are what ctypes.byref()
    gives, whose type typeshed keeps private: Any.
    """

    def __hash__(self) -> int: ...  # one client per library (driver.make_client)
    def dm_task_create(self, kind: int, /) -> int | None: ...
    def dm_task_destroy(self, dmt: int, /) -> None: ...
    def dm_task_set_name(self, dmt: int, name: bytes, /) -> int: ...
    def dm_task_set_uuid(self, dmt: int, uuid: bytes, /) -> int: ...
    def dm_task_set_ro(self, dmt: int, /) -> int: ...
    def dm_task_deferred_remove(self, dmt: int, /) -> int: ...
    def dm_task_add_target(self, dmt: int, start: int, length: int, target: bytes,
                           params: bytes, /) -> int: ...
    def dm_task_set_sector(self, dmt: int, sector: int, /) -> int: ...
    def dm_task_set_message(self, dmt: int, message: bytes, /) -> int: ...
    def dm_task_set_cookie(self, dmt: int, cookie: Any, flags: int, /) -> int: ...
    def dm_task_run(self, dmt: int, /) -> int: ...
    def dm_task_get_errno(self, dmt: int, /) -> int: ...
    def dm_task_get_info(self, dmt: int, info: Any, /) -> int: ...
    def dm_task_get_name(self, dmt: int, /) -> bytes | None: ...
    def dm_task_get_uuid(self, dmt: int, /) -> bytes | None: ...
    def dm_task_get_names(self, dmt: int, /) -> int | None: ...
    def dm_get_next_target(self, dmt: int, following: int | None, start: Any, length: Any,
                           target_type: Any, params: Any, /) -> int | None: ...
    def dm_task_update_nodes(self) -> None: ...
    def dm_udev_set_sync_support(self, sync: int, /) -> None: ...
    def dm_udev_get_sync_support(self) -> int: ...
    def dm_udev_wait(self, cookie: int, /) -> int: ...
    def dm_udev_wait_immediate(self, cookie: int, ready: Any, /) -> int: ...
    def dm_udev_complete(self, cookie: int, /) -> int: ...


# One lock for the library, not per client: its state is per process.
_LOCK = threading.RLock()
_loaded: dict[tuple[str, ...], ctypes.CDLL] = {}


@dataclass(frozen=True)
class LogRecord:
    """One message libdevmapper logged: its level, source line, errno or class, and format."""

    level: int
    file: str
    line: int
    errno_or_class: int
    format: str

    def text(self) -> str:
        """The format with its unknown arguments shown as "?" (ctypes cannot read varargs)."""
        return _CONVERSION_RE.sub(lambda m: "%" if m.group(0) == "%%" else "?", self.format)


_CONVERSION_RE = re.compile(
    r"%%|%[-+ #0']*(?:\*|\d+)?(?:\.(?:\*|\d+)?)?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspn]"
)


class _LogCapture:
    """libdevmapper's messages of the current call, instead of its default print to stderr."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        # Kept here so the C callback is not collected while libdevmapper holds its address.
        self.callback = LOG_FUNCTION(self._log)

    def _log(self, level: int, file: bytes | None, line: int, errno_or_class: int,
             fmt: bytes | None) -> None:
        level &= LOG_LEVEL_MASK
        # Debug and info lines (several per ioctl) are dropped here rather than stored.
        if level > LOG_WARN:
            return
        self.records.append(LogRecord(
            level, _text(file), line, errno_or_class, _text(fmt)
        ))

    def errors(self) -> list[LogRecord]:
        """The error-level records of the current call."""
        return [record for record in self.records if record.level <= LOG_ERR]


_capture = _LogCapture()


def _text(raw: bytes | None) -> str:
    # Names are bytes to the kernel; surrogateescape gives them back unchanged on the way in.
    return raw.decode("utf-8", "surrogateescape") if raw is not None else ""


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def load_libdm(names: Sequence[str] = LIBRARY_NAMES) -> ctypes.CDLL:
    """libdevmapper with the signatures we call declared and its logging captured.

    Loaded once per process. Raises LibdmUnavailable (an OSError) when no library of these
    names loads or one lacks a function we need, so a caller can fall back to dmsetup.
    """
    with _LOCK:
        if tuple(names) in _loaded:
            return _loaded[tuple(names)]
        problems = []
        for name in names:
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError as exc:
                problems.append(f"{name}: {exc}")
                continue
            missing = [func for func in _SIGNATURES if not hasattr(lib, func)]
            if missing:
                problems.append(f"{name}: lacks {', '.join(missing)}")
                continue
            for func, (restype, argtypes) in _SIGNATURES.items():
                function = getattr(lib, func)
                function.restype = restype
                function.argtypes = argtypes
            lib.dm_log_with_errno_init(_capture.callback)
            _loaded[tuple(names)] = lib
            return lib
        raise LibdmUnavailable(f"libdevmapper is not available: {'; '.join(problems)}")


def udev_running(control: str = UDEV_CONTROL) -> bool:
    """Whether udev runs: a connect to its control socket is accepted.

    libudev (and so libdevmapper's own check, `dm_udev_get_sync_support` before we set it)
    looks at the file alone, which a stopped udevd leaves behind: every wait for udev would
    then last until the timeout. Listing /proc/net/unix instead (what this did before) sees
    only this network namespace's sockets: in a pod without host networking udevd's socket is
    never listed, though /run/udev is the host's. A connect works across namespaces: accepted
    (or EAGAIN: a full backlog) is a live udevd; refused is a stale file; a plain file,
    or a socket of another type, is not udevd. When the connect cannot tell (EACCES: not
    root), the file decides, as it does for libudev. udevd takes the empty connection as a
    client that left (it reads nothing and closes it).
    """
    # Never waits: asked before every create, resume and remove, and a udevd that is alive
    # but not accepting (stopped, busy) fills its backlog with these connects.
    found = probe(Path(control), socket.SOCK_SEQPACKET, timeout=0)
    return found in (Probe.LIVE, Probe.SLOW, Probe.UNKNOWN)


_TABLE_LINE_RE = re.compile(
    r"^(?P<start>\d+)\s+(?P<length>\d+)\s+(?P<target>\S+)\s*(?P<params>.*)$", re.DOTALL
)


def parse_table(table: str, what: str = "parse table") -> list[tuple[int, int, str, str]]:
    """Table lines as dmsetup reads them: `<start> <length> <target> <params>`, `#` comments.

    dmsetup --table takes one line; several lines (one target each) are accepted here too.
    """
    targets = []
    for number, raw in enumerate(table.splitlines() or [""], start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _TABLE_LINE_RE.match(line)
        if match is None:
            raise CommandFailed(what, detail=f"Invalid format on line {number} of table: {line!r}")
        params = match["params"].split("#", 1)[0]
        targets.append((int(match["start"]), int(match["length"]), match["target"], params))
    return targets


def walk_names(address: int) -> list[tuple[str, int]]:
    """(name, dev) of each `struct dm_names` entry from `address`, following `next` offsets."""
    result: list[tuple[str, int]] = []
    while True:
        head = DmNamesHeader.from_address(address)
        if head.dev == 0:  # the kernel's entry for "no devices"
            return result
        result.append((_text(ctypes.string_at(address + DM_NAMES_NAME_OFFSET)), int(head.dev)))
        if head.next == 0:
            return result
        address += head.next


def dev_major_minor(dev: int) -> tuple[int, int]:
    """Major and minor of a dev_t as libdevmapper's MAJOR()/MINOR() read the kernel's encoding."""
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def error_for(what: str, number: int, detail: str) -> DmError:
    """The DmError subclass for an errno (the same classes classify() finds in dmsetup's text)."""
    cls = _BY_ERRNO.get(number, CommandFailed)
    return cls(what, detail=detail)


class LibdmClient:
    """list, status, table, info, create, load, suspend, resume, remove, message: in-process.

    A drop-in for DmClient: the same methods, results and DmError classes.
    """

    def __init__(self, lib: DmLibrary | None = None,
                 udev_timeout: float = DEFAULT_UDEV_TIMEOUT,
                 udev_check: Callable[[], bool] = udev_running) -> None:
        """Loads libdevmapper unless given one (raises LibdmUnavailable when it cannot).

        udev_timeout bounds the wait for udev's confirmation after create, resume and remove;
        udev_check says, before each of them, whether udev runs now.
        """
        self.lib: DmLibrary = lib if lib is not None else load_libdm()
        self.udev_timeout = udev_timeout
        self.udev_check = udev_check
        self._warned_udev_cached = False
        # How deep inside `deferred_udev` we are; the cookie its calls share (None: no call
        # yet; 0: they ran without udev, their node operations stacked), and for whom.
        self._batches = 0
        self._pending: int | None = None
        self._pending_names: list[str] = []

    # The task plumbing.

    @contextmanager
    def _task(self, kind: int) -> Iterator[int]:
        """A dm_task under the library lock, destroyed however the block ends."""
        with _LOCK:
            _capture.records.clear()
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
        for record in _capture.records:
            if worst <= record.level <= LOG_WARN:
                log.warning("libdm.message", message=record.text(), source=record.file,
                            line=record.line)

    def _failure(self, what: str, dmt: int, kind: int, name: str) -> DmError:
        """The DmError for a failed dm_task_run (or setter): from errno, with dmsetup's words."""
        number = int(self.lib.dm_task_get_errno(dmt))
        errors = [record.text() for record in _capture.errors()
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
        self._check(self.lib.dm_task_set_name(dmt, _raw(name)), what, dmt, kind, name)

    def _info_of(self, dmt: int) -> DmInfoStruct:
        info = DmInfoStruct()
        if not self.lib.dm_task_get_info(dmt, ctypes.byref(info)):
            raise CommandFailed("info", detail="libdevmapper: dm_task_get_info failed")
        return info

    def _targets(self, dmt: int) -> list[TargetLine]:
        lines = []
        start = ctypes.c_uint64()
        length = ctypes.c_uint64()
        target = ctypes.c_char_p()
        params = ctypes.c_char_p()
        following: int | None = None
        while True:
            following = self.lib.dm_get_next_target(
                dmt, following, ctypes.byref(start), ctypes.byref(length),
                ctypes.byref(target), ctypes.byref(params),
            )
            # A device without a live table yields one empty entry, as in dmsetup.
            if target.value is not None:
                lines.append(TargetLine(Sectors(start.value), Sectors(length.value),
                                        _text(target.value), _text(params.value)))
            if not following:
                return lines

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
                    _capture.records.clear()  # gone since the list: not worth a warning
                    return None
                raise error
            # STATUS of a missing device succeeds with exists=0 (libdevmapper hides ENXIO).
            if not self._info_of(dmt).exists:
                if missing_ok:
                    return None
                raise NoSuchDevice(what, detail="Device does not exist.")
            return self._targets(dmt)

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
                name=_text(self.lib.dm_task_get_name(dmt)),
                uuid=_text(self.lib.dm_task_get_uuid(dmt)),
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

    # udev.

    def _udev_sync(self) -> bool:
        """Decide, now, whether this call waits for udev; tell libdevmapper the same."""
        running = self.udev_check()
        self.lib.dm_udev_set_sync_support(1 if running else 0)
        synced = bool(self.lib.dm_udev_get_sync_support())
        if running and not synced and not self._warned_udev_cached:
            # libdevmapper decides once per process whether udev runs; it decided "no".
            self._warned_udev_cached = True
            log.warning("libdm.udev_not_used",
                        reason="libdevmapper found udev not running when first used; "
                               "it creates /dev/mapper nodes itself until the daemon restarts")
        return synced

    def _run_with_cookie(self, what: str, dmt: int, kind: int, name: str) -> None:
        """dm_task_run with udev synchronisation, then wait for udev (or make the nodes);
        inside `deferred_udev`, the call joins the batch's cookie and the wait is the batch's."""
        self._udev_sync()
        deferred = self._batches > 0
        cookie = ctypes.c_uint32((self._pending or 0) if deferred else 0)
        # Flags 0, as dmsetup: udev rules run, and libdevmapper falls back to making the
        # /dev/mapper node itself if udev did not. A cookie already set is shared: libdevmapper
        # counts one more event on its semaphore.
        self._check(self.lib.dm_task_set_cookie(dmt, ctypes.byref(cookie), 0), what, dmt,
                    kind, name)
        ok = self.lib.dm_task_run(dmt)
        if deferred:
            # Failed or not, the cookie is waited for by the batch: libdevmapper released this
            # call's share of it if the run failed.
            self._pending = cookie.value
            self._pending_names.append(name)
        else:
            # Waited for even when the run failed: libdevmapper released its own share of the
            # cookie then, and the wait destroys the semaphore and runs the stacked node
            # operations.
            self._wait_for_udev(cookie.value, name)
        self._check(ok, what, dmt, kind, name)

    @contextmanager
    def deferred_udev(self) -> Iterator[None]:
        """Within: create, resume and remove do not wait for udev one by one; they share one
        cookie, waited for once by `settle_udev` (or on the way out). udev then handles a
        burst's events together instead of one after another (3x faster measured for 20
        devices under emulation). Whoever opens a device node inside calls `settle_udev`."""
        self._batches += 1
        try:
            yield
        finally:
            self._batches -= 1
            if self._batches == 0:
                self.settle_udev()

    def settle_udev(self) -> None:
        """Wait for udev to finish every deferred call (its /dev/mapper nodes made or gone)."""
        cookie, names = self._pending, self._pending_names
        if cookie is None:
            return
        self._pending, self._pending_names = None, []
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        self._wait_for_udev(cookie, shown, len(names))

    def _wait_for_udev(self, cookie: int, name: str, events: int = 1) -> None:
        """Wait until udev confirmed the `events` calls that share `cookie` (bounded by
        udev_timeout), then let libdevmapper destroy the cookie and make or delete nodes."""
        if cookie == 0:
            # Without udev: this creates or deletes the /dev/mapper node itself.
            self.lib.dm_udev_wait(0)
            return
        deadline = time.monotonic() + self.udev_timeout
        delay = 0.0005
        while True:
            if self._udev_ready(cookie):
                return
            if time.monotonic() >= deadline:
                break
            # Polled, not a blocking dm_udev_wait: only udev ends that semop, and a thread
            # left in it could later run libdevmapper's node operations beside our next call.
            # A poll is one semctl (0.2 ms under emulation); 2 ms apart, a wait overshoots
            # udev by 1 ms on average (10 ms apart cost 5-40 ms per call in the VM).
            time.sleep(delay)
            delay = min(delay * 2, UDEV_POLL_MAX)
        # udev never confirmed (it was stopped, or the dm rules are missing): release the
        # cookie ourselves rather than hang the daemon, one release per unconfirmed call (a
        # single release and a blocking wait would wait forever for a batch's others);
        # libdevmapper then makes the nodes.
        log.warning("libdm.udev_timeout", device=name, cookie=hex(cookie),
                    seconds=self.udev_timeout, events=events)
        for _ in range(events):
            if not self.lib.dm_udev_complete(cookie):
                break  # nothing left to release
            if self._udev_ready(cookie):
                return
        if self._udev_ready(cookie):
            return
        # More holds on it than calls made: left to its holder, never waited for here.
        log.error("libdm.udev_cookie_abandoned", device=name, cookie=hex(cookie),
                  next="nodes made by libdevmapper; `dmsetup udevcomplete_all` clears it")
        self.lib.dm_task_update_nodes()

    def _udev_ready(self, cookie: int) -> bool:
        """Whether udev confirmed every call on `cookie`; if so (or the cookie is broken),
        libdevmapper has destroyed it and run the stacked node operations."""
        ready = ctypes.c_int(0)
        if not self.lib.dm_udev_wait_immediate(cookie, ctypes.byref(ready)):
            # The semaphore is gone or broken; still do the node operations.
            self.lib.dm_task_update_nodes()
            return True
        return bool(ready.value)

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
            self._check(self.lib.dm_task_add_target(dmt, start, length, _raw(target),
                                                    _raw(params)), what, dmt, kind, name)

    def create(self, name: str, table: str, uuid: str, readonly: bool = False) -> None:
        """Create a device and load and resume its table."""
        what = f"create {name}"
        targets = parse_table(table, what)
        # The three steps libdevmapper's create-with-table takes, done one by one: it loses the
        # errno of a failed step when it reverts (1.02.185), and the errno is the error class.
        with _LOCK:
            with self._task(DM_DEVICE_CREATE) as dmt:
                self._named(what, dmt, DM_DEVICE_CREATE, name)
                self._check(self.lib.dm_task_set_uuid(dmt, _raw(uuid)), what, dmt,
                            DM_DEVICE_CREATE, name)
                self._check(self.lib.dm_task_run(dmt), what, dmt, DM_DEVICE_CREATE, name)
            if not targets:
                return
            try:
                self._load(what, name, targets, readonly)
                self._resume(what, name)
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

    def resume(self, name: str) -> None:
        """Resume a device, swapping in its inactive table if one was loaded."""
        self._resume(f"resume {name}", name)

    def _resume(self, what: str, name: str) -> None:
        with self._task(DM_DEVICE_RESUME) as dmt:
            self._named(what, dmt, DM_DEVICE_RESUME, name)
            self._run_with_cookie(what, dmt, DM_DEVICE_RESUME, name)

    def remove(self, name: str, deferred: bool = False) -> None:
        """Remove a device (never forced: a busy device stays and says so). With `deferred`,
        an open device is marked instead and the kernel removes it at its last close."""
        what = f"remove{' --deferred' if deferred else ''} {name}"
        with self._task(DM_DEVICE_REMOVE) as dmt:
            self._named(what, dmt, DM_DEVICE_REMOVE, name)
            if deferred:
                self._check(self.lib.dm_task_deferred_remove(dmt), what, dmt,
                            DM_DEVICE_REMOVE, name)
            self._run_with_cookie(what, dmt, DM_DEVICE_REMOVE, name)

    def message(self, name: str, words: Sequence[str]) -> None:
        """Send a target message (sector 0), e.g. create_thin to a pool."""
        text = " ".join(words)
        what = f"message {name} {text}"
        kind = DM_DEVICE_TARGET_MSG
        with self._task(kind) as dmt:
            self._named(what, dmt, kind, name)
            self._check(self.lib.dm_task_set_sector(dmt, 0), what, dmt, kind, name)
            self._check(self.lib.dm_task_set_message(dmt, _raw(text)), what, dmt, kind, name)
            self._check(self.lib.dm_task_run(dmt), what, dmt, kind, name)

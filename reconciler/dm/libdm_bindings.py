"""libdevmapper through ctypes: the library's functions and structs, its log, and the
helpers that read what it hands back (names lists, tables, device numbers, errnos).

The bindings only; `dm.libdm`'s LibdmClient runs the operations with them and
`dm.libdm_udev` waits for udev. libdevmapper keeps process-wide state and is not
thread-safe: every call holds the one module lock here (`LOCK`).
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from reconciler.dm.errors import _BY_ERRNO, CommandFailed, DmError

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

# The udev_timeout config key's default: how long a create, resume or remove waits for udev.
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
LOCK = threading.RLock()
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
            level, text_of(file), line, errno_or_class, text_of(fmt)
        ))

    def errors(self) -> list[LogRecord]:
        """The error-level records of the current call."""
        return [record for record in self.records if record.level <= LOG_ERR]


capture = _LogCapture()


def text_of(raw: bytes | None) -> str:
    # Names are bytes to the kernel; surrogateescape gives them back unchanged on the way in.
    return raw.decode("utf-8", "surrogateescape") if raw is not None else ""


def raw_of(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def load_libdm(names: Sequence[str] = LIBRARY_NAMES) -> ctypes.CDLL:
    """libdevmapper with the signatures we call declared and its logging captured.

    Loaded once per process. Raises LibdmUnavailable (an OSError) when no library of these
    names loads or one lacks a function we need, so a caller can fall back to dmsetup.
    """
    with LOCK:
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
            lib.dm_log_with_errno_init(capture.callback)
            _loaded[tuple(names)] = lib
            return lib
        raise LibdmUnavailable(f"libdevmapper is not available: {'; '.join(problems)}")


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
        result.append((text_of(ctypes.string_at(address + DM_NAMES_NAME_OFFSET)), int(head.dev)))
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

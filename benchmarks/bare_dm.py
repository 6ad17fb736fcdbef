"""The bare floor as a process of its own (issue 26): libdevmapper's C functions called through
ctypes with nothing of ours imported, so that the process's start is what a bare tool pays.

    python bare_dm.py create POOL FIRST COUNT [--batched]   # create_thin + create (load, resume)
    python bare_dm.py remove POOL FIRST COUNT [--batched]   # remove + delete

Thin ids FIRST..FIRST+COUNT-1 on the pool POOL (a /dev/mapper name), devices `POOL-tID` of
64 MiB. libdevmapper decides itself whether udev runs: with udev, each create and remove
carries a cookie waited for at once (the per-call floor), or with --batched all share one
cookie waited for at the end (the floor for a pass: `(ab)`); without udev it makes the
/dev/mapper nodes itself. Used by benchmarks/floor.py (section h of benchmarks/kernel.py).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

SECTORS = 2048 * 64
CREATE, REMOVE, MESSAGE = 0, 2, 17
_SIGNATURES = {
    "dm_task_create": (ctypes.c_void_p, [ctypes.c_int]),
    "dm_task_destroy": (None, [ctypes.c_void_p]),
    "dm_task_set_name": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "dm_task_set_uuid": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "dm_task_add_target": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                          ctypes.c_char_p, ctypes.c_char_p]),
    "dm_task_set_sector": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64]),
    "dm_task_set_message": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "dm_task_set_cookie": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                          ctypes.c_uint16]),
    "dm_task_run": (ctypes.c_int, [ctypes.c_void_p]),
    "dm_task_get_errno": (ctypes.c_int, [ctypes.c_void_p]),
    "dm_udev_wait": (ctypes.c_int, [ctypes.c_uint32]),
}


def library() -> ctypes.CDLL:
    """libdevmapper with the few signatures this loop calls."""
    lib = ctypes.CDLL("libdevmapper.so.1.02.1", use_errno=True)
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def run_task(lib: ctypes.CDLL, kind: int, name: str, *, shared: ctypes.c_uint32 | None,
             table: tuple[int, str, str] | None = None, uuid: str | None = None,
             message: str | None = None, cookie: bool = False) -> None:
    """One dm task, nothing more: `table` is (length, target, params); with `cookie`, a udev
    cookie, the batch's `shared` one or one of its own waited for at once. Raises OSError
    with the task's errno. benchmarks/kernel.py's in-process floor (BareLibdm) runs this too."""
    dmt = lib.dm_task_create(kind)
    try:
        lib.dm_task_set_name(dmt, name.encode())
        if uuid is not None:
            lib.dm_task_set_uuid(dmt, uuid.encode())
        if table is not None:
            length, target, params = table
            lib.dm_task_add_target(dmt, 0, length, target.encode(), params.encode())
        if message is not None:
            lib.dm_task_set_sector(dmt, 0)
            lib.dm_task_set_message(dmt, message.encode())
        value = shared if shared is not None else ctypes.c_uint32(0)
        if cookie:
            lib.dm_task_set_cookie(dmt, ctypes.byref(value), 0)
        ok = lib.dm_task_run(dmt)
        number = lib.dm_task_get_errno(dmt)
    finally:
        lib.dm_task_destroy(dmt)
    if cookie and shared is None:
        lib.dm_udev_wait(value.value)
    if not ok:
        raise OSError(number, os.strerror(number), f"{name}: task {kind}")


class Bare:
    """One dm task per call; `shared` is the batch's cookie (None: a cookie per call)."""

    def __init__(self, batched: bool) -> None:
        self.lib = library()
        self.shared = ctypes.c_uint32(0) if batched else None

    def task(self, kind: int, name: str, *, table: str | None = None, uuid: str | None = None,
             message: str | None = None, cookie: bool = False) -> None:
        target = None
        if table is not None:
            kind_of_target, params = table.split(maxsplit=1)
            target = (SECTORS, kind_of_target, params)
        run_task(self.lib, kind, name, shared=self.shared, table=target, uuid=uuid,
                 message=message, cookie=cookie)

    def remove(self, name: str) -> None:
        """udev may still hold a node it is probing: EBUSY, retried as dmsetup's --retry."""
        for attempt in range(100):
            try:
                self.task(REMOVE, name, cookie=True)
                return
            except OSError as exc:
                if exc.errno != 16 or attempt == 99:
                    raise
                time.sleep(0.02)

    def finish(self) -> None:
        if self.shared is not None:
            self.lib.dm_udev_wait(self.shared.value)


def main(argv: list[str]) -> int:
    what, pool, first, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    bare = Bare("--batched" in argv[4:])
    for thin in range(first, first + count):
        name = f"{pool}-t{thin}"
        if what == "create":
            bare.task(MESSAGE, pool, message=f"create_thin {thin}")
            bare.task(CREATE, name, table=f"thin /dev/mapper/{pool} {thin}",
                      uuid=f"BARE-{pool}-{thin}", cookie=True)
        else:
            bare.remove(name)
            bare.task(MESSAGE, pool, message=f"delete {thin}")
    bare.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

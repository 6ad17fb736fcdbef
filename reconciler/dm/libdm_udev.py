"""Waiting for udev after the dm calls that make or remove /dev/mapper nodes, as dmsetup does.

Each create, resume and remove carries a udev cookie (a semaphore libdevmapper counts the
call's udev event on); udev confirms it when its rules ran. Inside `deferred` the calls of a
burst share one cookie, waited for once. A udev that never confirms costs `timeout`, then
the cookie is released here and libdevmapper makes the nodes: the daemon never hangs on it.
Whether a call uses a cookie at all is the gate's (`dm.udev.UdevGate`): where udev cannot
confirm our cookies (another IPC namespace), none is made and libdevmapper makes the nodes.
`probe_cookie` is the gate's proof when /proc cannot tell: one cookie udev confirms, or not.
Used by `dm.libdm`'s LibdmClient, under its library lock.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from reconciler.dm.libdm_bindings import (
    DM_DEVICE_CREATE,
    DM_DEVICE_RELOAD,
    DM_DEVICE_REMOVE,
    DM_DEVICE_RESUME,
    LOCK,
    UDEV_POLL_MAX,
    DmLibrary,
    capture,
    raw_of,
)
from reconciler.dm.udev import UdevGate
from reconciler.dm.udev_sync import CookieProbe

log = structlog.get_logger(__name__)


class UdevCookies:
    """The udev side of one LibdmClient: whether udev runs, the batch's shared cookie, the
    bounded wait for udev's confirmation."""

    def __init__(self, lib: DmLibrary, timeout: float, gate: UdevGate) -> None:
        self.lib = lib
        self.timeout = timeout
        self.gate = gate
        self._warned_cached = False
        # How deep inside `deferred` we are; the cookie its calls share (None: no call
        # yet; 0: they ran without udev, their node operations stacked), and for whom.
        self._batches = 0
        self._pending: int | None = None
        self._pending_names: list[str] = []
        # The events counted on the pending cookie (calls made without one are named above
        # but counted on nothing).
        self._pending_events = 0

    def decide(self) -> bool:
        """Decide, now, whether this call waits for udev; tell libdevmapper the same."""
        waits = self.gate.sync().waits
        self.lib.dm_udev_set_sync_support(1 if waits else 0)
        synced = bool(self.lib.dm_udev_get_sync_support())
        if waits and not synced and not self._warned_cached:
            # libdevmapper decides once per process whether udev runs; it decided "no".
            self._warned_cached = True
            log.warning("libdm.udev_not_used",
                        reason="libdevmapper found udev not running when first used; "
                               "it creates /dev/mapper nodes itself until the daemon restarts")
        return synced

    def shared_cookie(self) -> int:
        """The cookie a call starts with: the batch's inside `deferred`, else a new one (0)."""
        return (self._pending or 0) if self._batches > 0 else 0

    def ran(self, cookie: int, name: str) -> None:
        """A call on `cookie` ran (or failed): wait for udev now, or leave it to the batch."""
        if self._batches > 0:
            self._pending = cookie
            self._pending_names.append(name)
            self._pending_events += 1 if cookie else 0
        else:
            self.wait(cookie, name)

    @contextmanager
    def cookieless(self, name: str) -> Iterator[None]:
        """Within, one task runs without a cookie while udev is synchronised with
        (`NodeWait.NODE`): its dm_task_set_cookie makes no semaphore and its uevent carries
        no cookie for udev to confirm (udev's rules still run, unwaited for). Synchronisation
        is back on before anything waits (libdevmapper's wait on a batch's cookie answers at
        once, leaving the semaphore behind, while it is off); then the node is made."""
        self.lib.dm_udev_set_sync_support(0)
        try:
            yield
        finally:
            self.lib.dm_udev_set_sync_support(1)
        self.made_node(name)

    def made_node(self, name: str) -> None:
        """A call without a cookie ran while udev is synchronised with (`NodeWait.NODE`):
        its node is made now, or inside `deferred` when the batch settles (with the batch's
        cookie, if it has one: running the node operations stacked so far before udev
        confirmed them would make /dev/mapper nodes of the batch's other devices in udev's
        place). A step that opens a node settles first, and a pass settles as it ends."""
        if self._batches > 0:
            if self._pending is None:
                self._pending = 0  # nothing to wait for unless a cookie joins later
            self._pending_names.append(name)
        else:
            self.lib.dm_udev_wait(0)  # the stacked node operations, without udev

    @contextmanager
    def deferred(self) -> Iterator[None]:
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
                self.settle()

    def settle(self) -> None:
        """Wait for udev to finish every deferred call (its /dev/mapper nodes made or gone)."""
        cookie, names, events = self._pending, self._pending_names, self._pending_events
        if cookie is None:
            return
        self._pending, self._pending_names, self._pending_events = None, [], 0
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        self.wait(cookie, shown, max(events, 1))

    def wait(self, cookie: int, name: str, events: int = 1) -> None:
        """Wait until udev confirmed the `events` calls that share `cookie` (bounded by
        udev_timeout), then let libdevmapper destroy the cookie and make or delete nodes."""
        if cookie == 0:
            # Without udev: this creates or deletes the /dev/mapper node itself.
            self.lib.dm_udev_wait(0)
            return
        deadline = time.monotonic() + self.timeout
        delay = 0.0005
        while True:
            if self._ready(cookie):
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
                    seconds=self.timeout, events=events)
        for _ in range(events):
            if not self.lib.dm_udev_complete(cookie):
                break  # nothing left to release
            if self._ready(cookie):
                return
        if self._ready(cookie):
            return
        # More holds on it than calls made: left to its holder, never waited for here.
        log.error("libdm.udev_cookie_abandoned", device=name, cookie=hex(cookie),
                  next="nodes made by libdevmapper; `dmsetup udevcomplete_all` clears it")
        self.lib.dm_task_update_nodes()

    def _ready(self, cookie: int) -> bool:
        """Whether udev confirmed every call on `cookie`; if so (or the cookie is broken),
        libdevmapper has destroyed it and run the stacked node operations."""
        return _confirmed(self.lib, cookie) is not False


def _confirmed(lib: DmLibrary, cookie: int) -> bool | None:
    """Whether udev confirmed every call on `cookie` (then libdevmapper has destroyed it and
    run the stacked node operations); None: the semaphore is gone or broken (the node
    operations are run all the same)."""
    ready = ctypes.c_int(0)
    if not lib.dm_udev_wait_immediate(cookie, ctypes.byref(ready)):
        lib.dm_task_update_nodes()
        return None
    return bool(ready.value)


# The probe cookie's bound (udev_timeout when shorter): udev handles one event in
# milliseconds, in a second or two under load; a udev slower than this is not waited for.
PROBE_SECONDS = 5.0
# The probe device: 8 sectors of zeros, named for this process, resumed with udev's rules for
# other subsystems, disks and the rest skipped (libdevmapper's DM_UDEV_DISABLE_SUBSYSTEM_,
# _DISK_ and _OTHER_RULES_FLAG): udev makes its node and confirms its cookie (95-dm-notify
# runs whatever the flags), and nothing reads or claims it.
PROBE_PREFIX = "reconciler-udev-probe"
PROBE_TABLE = (0, 8, "zero", "")
PROBE_FLAGS = 0x0002 | 0x0004 | 0x0008
# A probe device's removal right after its resume may meet udev still holding it (EBUSY).
PROBE_REMOVE_TRIES = 10
PROBE_REMOVE_PAUSE = 0.1


def _one_task(lib: DmLibrary, kind: int, name: str, *setters: Callable[[int], int]) -> bool:
    """A task on `name`, with what `setters` set on it, run; whether every step succeeded."""
    dmt = lib.dm_task_create(kind)
    if not dmt:
        return False
    try:
        return bool(lib.dm_task_set_name(dmt, raw_of(name))
                    and all(setter(dmt) for setter in setters) and lib.dm_task_run(dmt))
    finally:
        lib.dm_task_destroy(dmt)


def probe_cookie(lib: DmLibrary, timeout: float) -> CookieProbe:
    """Whether udev confirms a cookie of ours within `timeout`: a device made, resumed with a
    cookie, waited for, and removed again (without udev). NOT_RUN when no cookie could be
    made: libdevmapper will not synchronise (it found no udev at its first use), or an ioctl
    was refused."""
    # os.urandom, not secrets: the name needs no more than uniqueness, and `secrets` would
    # import hmac (OpenSSL) into every process that loads the driver.
    name = f"{PROBE_PREFIX}-{os.getpid()}-{os.urandom(3).hex()}"
    with LOCK:
        capture.records.clear()
        lib.dm_udev_set_sync_support(1)
        if not lib.dm_udev_get_sync_support():
            return CookieProbe.NOT_RUN
        if not _one_task(lib, DM_DEVICE_CREATE, name,
                         lambda dmt: lib.dm_task_set_uuid(dmt, raw_of(name))):
            log.info("udev.probe_not_run", device=name,
                     errors=[r.text() for r in capture.errors()])
            return CookieProbe.NOT_RUN
        try:
            return _probe_resume(lib, name, timeout)
        finally:
            _remove_probe(lib, name)


def _probe_resume(lib: DmLibrary, name: str, timeout: float) -> CookieProbe:
    """The probe device's table loaded and resumed with a cookie; udev's answer in time."""
    start, length, target, params = PROBE_TABLE
    cookie = ctypes.c_uint32(0)
    resumed = _one_task(lib, DM_DEVICE_RELOAD, name, lambda dmt: lib.dm_task_add_target(
        dmt, start, length, raw_of(target), raw_of(params))) and _one_task(
        lib, DM_DEVICE_RESUME, name,
        lambda dmt: lib.dm_task_set_cookie(dmt, ctypes.byref(cookie), PROBE_FLAGS))
    if not resumed:
        # A failed run released its share of the cookie: this destroys it.
        if cookie.value:
            _confirmed(lib, cookie.value)
        log.info("udev.probe_not_run", device=name, errors=[r.text() for r in capture.errors()])
        return CookieProbe.NOT_RUN
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        answer = _confirmed(lib, cookie.value)
        if answer is None:
            return CookieProbe.NOT_RUN
        if answer:
            return CookieProbe.CONFIRMED
        if time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, UDEV_POLL_MAX)
    # Our one event released by us, then the cookie destroyed (its node operations run).
    lib.dm_udev_complete(cookie.value)
    _confirmed(lib, cookie.value)
    return CookieProbe.UNCONFIRMED


def _remove_probe(lib: DmLibrary, name: str) -> None:
    """Remove the probe device without waiting for udev (libdevmapper deletes its node)."""
    lib.dm_udev_set_sync_support(0)
    cookie = ctypes.c_uint32(0)  # stays 0: no udev synchronisation
    for attempt in range(PROBE_REMOVE_TRIES):
        removed = _one_task(lib, DM_DEVICE_REMOVE, name,
                            lambda dmt: lib.dm_task_set_cookie(dmt, ctypes.byref(cookie), 0))
        lib.dm_udev_wait(0)  # the node operations (cookie 0: without udev)
        if removed:
            return
        if attempt + 1 < PROBE_REMOVE_TRIES:
            time.sleep(PROBE_REMOVE_PAUSE)
    log.error("udev.probe_device_left", device=name,
              errors=[r.text() for r in capture.errors()],
              next=f"nothing uses it: `dmsetup remove {name}`")

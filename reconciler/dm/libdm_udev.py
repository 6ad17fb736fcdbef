"""Waiting for udev after the dm calls that make or remove /dev/mapper nodes, as dmsetup does.

Each create, resume and remove carries a udev cookie (a semaphore libdevmapper counts the
call's udev event on); udev confirms it when its rules ran. Inside `deferred` the calls of a
burst share one cookie, waited for once. A udev that never confirms costs `timeout`, then
the cookie is released here and libdevmapper makes the nodes: the daemon never hangs on it.
Used by `dm.libdm`'s LibdmClient, under its library lock.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from reconciler.dm.libdm_bindings import UDEV_POLL_MAX, DmLibrary

log = structlog.get_logger(__name__)


class UdevCookies:
    """The udev side of one LibdmClient: whether udev runs, the batch's shared cookie, the
    bounded wait for udev's confirmation."""

    def __init__(self, lib: DmLibrary, timeout: float, check: Callable[[], bool]) -> None:
        self.lib = lib
        self.timeout = timeout
        self.check = check
        self._warned_cached = False
        # How deep inside `deferred` we are; the cookie its calls share (None: no call
        # yet; 0: they ran without udev, their node operations stacked), and for whom.
        self._batches = 0
        self._pending: int | None = None
        self._pending_names: list[str] = []

    def decide(self) -> bool:
        """Decide, now, whether this call waits for udev; tell libdevmapper the same."""
        running = self.check()
        self.lib.dm_udev_set_sync_support(1 if running else 0)
        synced = bool(self.lib.dm_udev_get_sync_support())
        if running and not synced and not self._warned_cached:
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
        else:
            self.wait(cookie, name)

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
        cookie, names = self._pending, self._pending_names
        if cookie is None:
            return
        self._pending, self._pending_names = None, []
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        self.wait(cookie, shown, len(names))

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
        ready = ctypes.c_int(0)
        if not self.lib.dm_udev_wait_immediate(cookie, ctypes.byref(ready)):
            # The semaphore is gone or broken; still do the node operations.
            self.lib.dm_task_update_nodes()
            return True
        return bool(ready.value)

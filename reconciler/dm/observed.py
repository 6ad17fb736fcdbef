"""Kernel calls as an observer sees them: each call's operation, duration and errno.

The daemon's metrics count kernel calls by operation, time them and count their errors by
errno; the dm layer knows nothing of metrics (only the daemon's metrics module imports
prometheus_client), so it offers this small hook instead. `ObservedDriver` wraps either
driver (DmClient or LibdmClient) and tells a `KernelCallObserver` about every call it
passes on, on the calling thread (the reconcile loop's), without changing what the call
returns or raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Protocol, TypeVar

from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import DmError
from reconciler.dm.types import DeviceInfo, DeviceListing, TargetLine
from reconciler.dm.udev_sync import NodeWait, UdevSync

T = TypeVar("T")

# The errno label of a failure that is no kernel error (text we could not parse, a bug).
NOT_AN_ERRNO = "other"


class KernelOp(StrEnum):
    """The driver's operations, as the metrics label them (DmDriver's method names)."""

    LIST_DEVICES = "list_devices"
    INFO_ALL = "info_all"
    INFO = "info"
    STATUS_ALL = "status_all"
    STATUS = "status"
    TABLE_ALL = "table_all"
    TABLE = "table"
    CREATE = "create"
    LOAD = "load"
    SUSPEND = "suspend"
    RESUME = "resume"
    REMOVE = "remove"
    MESSAGE = "message"


class KernelCallObserver(Protocol):
    """Told of each kernel call once it returned or raised."""

    def kernel_call(self, op: KernelOp, seconds: float, errno: str | None) -> None:
        """`errno`: None when the call succeeded, else the error's errno name (EBUSY...)."""
        ...


class ObservedDriver:
    """A DmDriver that passes every call on to `inner` and tells `observer` how it went."""

    def __init__(self, inner: DmDriver, observer: KernelCallObserver,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self._observer = observer
        # A duration, not a time of day: the monotonic performance counter.
        self._timer = timer

    def _call(self, op: KernelOp, call: Callable[[], T]) -> T:
        start = self._timer()
        try:
            result = call()
        except Exception as exc:
            errno = exc.errno_name if isinstance(exc, DmError) else NOT_AN_ERRNO
            self._observer.kernel_call(op, self._timer() - start, errno)
            raise
        self._observer.kernel_call(op, self._timer() - start, None)
        return result

    def list_devices(self) -> list[DeviceListing]:
        """Every dm device's name and number."""
        return self._call(KernelOp.LIST_DEVICES, self.inner.list_devices)

    def info_all(self) -> list[DeviceInfo]:
        """Info of every dm device."""
        return self._call(KernelOp.INFO_ALL, self.inner.info_all)

    def info(self, name: str) -> DeviceInfo | None:
        """Info of one device, or None if there is no such device."""
        return self._call(KernelOp.INFO, lambda: self.inner.info(name))

    def status_all(self) -> dict[str, list[TargetLine]]:
        """Status lines of every dm device."""
        return self._call(KernelOp.STATUS_ALL, self.inner.status_all)

    def status(self, name: str) -> list[TargetLine]:
        """Status lines of one device."""
        return self._call(KernelOp.STATUS, lambda: self.inner.status(name))

    def table_all(self) -> dict[str, list[TargetLine]]:
        """Live tables of every dm device."""
        return self._call(KernelOp.TABLE_ALL, self.inner.table_all)

    def table(self, name: str) -> list[TargetLine]:
        """Live table of one device."""
        return self._call(KernelOp.TABLE, lambda: self.inner.table(name))

    def create(self, name: str, table: str, uuid: str, readonly: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Create a device and load and resume its table."""
        self._call(KernelOp.CREATE,
                   lambda: self.inner.create(name, table, uuid, readonly, node_wait))

    def load(self, name: str, table: str, readonly: bool = False) -> None:
        """Load an inactive table."""
        self._call(KernelOp.LOAD, lambda: self.inner.load(name, table, readonly))

    def suspend(self, name: str) -> None:
        """Suspend a device."""
        self._call(KernelOp.SUSPEND, lambda: self.inner.suspend(name))

    def resume(self, name: str, node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Resume a device."""
        self._call(KernelOp.RESUME, lambda: self.inner.resume(name, node_wait))

    def remove(self, name: str, deferred: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Remove a device (never forced); `deferred`: an open one goes at its last close."""
        self._call(KernelOp.REMOVE, lambda: self.inner.remove(name, deferred, node_wait))

    def message(self, name: str, words: Sequence[str]) -> None:
        """Send a target message (sector 0)."""
        self._call(KernelOp.MESSAGE, lambda: self.inner.message(name, words))

    @contextmanager
    def deferred_udev(self) -> Iterator[None]:
        """The inner driver's (a wait for udev is no kernel call: not observed)."""
        with self.inner.deferred_udev():
            yield

    def settle_udev(self) -> None:
        """The inner driver's (not observed, likewise)."""
        self.inner.settle_udev()

    def udev_sync(self) -> UdevSync:
        """The inner driver's (a probe cookie, if one is made, is not observed either)."""
        return self.inner.udev_sync()

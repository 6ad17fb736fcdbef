"""Which implementation of the kernel boundary a Host gets: libdevmapper in-process, or dmsetup.

Both have DmClient's methods (`DmDriver`). libdevmapper is the default on a real machine: one
ioctl per call instead of a process (measured in docs/performance.md). dmsetup is used when
the config asks for it, when the library cannot be loaded (with a warning), and whenever the
Host is not exactly the real machine: the fake kernel, the crash switch (`RECONCILER_CRASH_AT`)
and hosts that count commands work at the level of dmsetup's argv.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import structlog

from reconciler.dm.client import DmClient
from reconciler.dm.host import Host, SystemHost
from reconciler.dm.types import DeviceInfo, DeviceListing, TargetLine

log = structlog.get_logger(__name__)

DRIVERS = ("libdevmapper", "dmsetup")


class DmDriver(Protocol):
    """list, status, table, info, create, load, suspend, resume, remove, message."""

    def list_devices(self) -> list[DeviceListing]:
        """Every dm device's name and number."""
        ...

    def info_all(self) -> list[DeviceInfo]:
        """Info of every dm device."""
        ...

    def info(self, name: str) -> DeviceInfo | None:
        """Info of one device, or None if there is no such device."""
        ...

    def status_all(self) -> dict[str, list[TargetLine]]:
        """Status lines of every dm device."""
        ...

    def status(self, name: str) -> list[TargetLine]:
        """Status lines of one device."""
        ...

    def table_all(self) -> dict[str, list[TargetLine]]:
        """Live tables of every dm device."""
        ...

    def table(self, name: str) -> list[TargetLine]:
        """Live table of one device."""
        ...

    def create(self, name: str, table: str, uuid: str, readonly: bool = False) -> None:
        """Create a device and load and resume its table."""
        ...

    def load(self, name: str, table: str, readonly: bool = False) -> None:
        """Load an inactive table."""
        ...

    def suspend(self, name: str) -> None:
        """Suspend a device."""
        ...

    def resume(self, name: str) -> None:
        """Resume a device."""
        ...

    def remove(self, name: str) -> None:
        """Remove a device (never forced)."""
        ...

    def message(self, name: str, words: Sequence[str]) -> None:
        """Send a target message (sector 0)."""
        ...


@functools.cache
def _libdm_client() -> DmDriver | None:
    """The process's one LibdmClient (libdevmapper's state is process-wide), or None when the
    library cannot be loaded (warned about once)."""
    # Imported here: loading the library is the point where it can fail.
    from reconciler.dm.libdm import LibdmClient, LibdmUnavailable

    try:
        return LibdmClient()
    except LibdmUnavailable as exc:
        log.warning("dm.driver_fallback", wanted="libdevmapper", using="dmsetup",
                    error=str(exc), next="every kernel call runs a dmsetup process")
        return None


def make_client(host: Host, driver: str = "libdevmapper") -> DmDriver:
    """The client for `host`: `driver` on the real machine, dmsetup otherwise."""
    if driver not in DRIVERS:
        raise ValueError(f"unknown dm driver {driver!r} (known: {', '.join(DRIVERS)})")
    # Exactly the real machine: a subclass that overrides run() (a test counting commands,
    # the crash switch) wants to see every call as an argv.
    if driver == "dmsetup" or type(host) is not SystemHost:
        return DmClient(host)
    return _libdm_client() or DmClient(host)

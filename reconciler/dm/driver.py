"""Which implementation of the kernel boundary a Host gets: libdevmapper in-process, or dmsetup.

Both have DmClient's methods (`DmDriver`). libdevmapper is the default: one ioctl per call
instead of a process (measured in docs/performance.md). It is used wherever the Host offers
the libdevmapper its dmsetup stands for (`LibraryHost.dm_library`: the real machine's, or the
fake kernel's in tests). dmsetup is used when the config asks for it, when the library cannot
be loaded (with a warning), and for hosts that work at the level of dmsetup's argv: a wrapper
such as the crash switch (`RECONCILER_CRASH_AT`) offers no library, and a subclass that
overrides run() (a host counting commands) wants to see every call.

Either way the client waits for udev only where udev was shown to confirm its cookies
(`dm.udev.UdevGate`, from the host's `udev_facts`); the dmsetup client proves it with
libdevmapper's probe cookie too when the host offers the library.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, cast

import structlog

from reconciler.dm.client import DmClient
from reconciler.dm.host import Host, LibraryHost
from reconciler.dm.libdm import LibdmClient, LibdmUnavailable
from reconciler.dm.libdm_bindings import DEFAULT_UDEV_TIMEOUT, DmLibrary
from reconciler.dm.libdm_udev import PROBE_SECONDS, probe_cookie
from reconciler.dm.types import DeviceInfo, DeviceListing, TargetLine
from reconciler.dm.udev import UdevFacts, UdevGate, udev_facts_of
from reconciler.dm.udev_sync import CookieProbe, NodeWait, UdevSync

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

    def create(self, name: str, table: str, uuid: str, readonly: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Create a device and load and resume its table (its resume waiting for udev, or
        only for its node: `node_wait`)."""
        ...

    def load(self, name: str, table: str, readonly: bool = False) -> None:
        """Load an inactive table."""
        ...

    def suspend(self, name: str) -> None:
        """Suspend a device."""
        ...

    def resume(self, name: str, node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Resume a device (waiting for udev, or only for its node: `node_wait`)."""
        ...

    def remove(self, name: str, deferred: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Remove a device (never forced); `deferred`: an open one goes at its last close;
        `node_wait` as the device's activation had it."""
        ...

    def message(self, name: str, words: Sequence[str]) -> None:
        """Send a target message (sector 0)."""
        ...

    def deferred_udev(self) -> AbstractContextManager[None]:
        """Within: create, resume and remove may leave their wait for udev to the end."""
        ...

    def settle_udev(self) -> None:
        """Wait for udev to finish what deferred_udev left (before opening a node)."""
        ...

    def udev_sync(self) -> UdevSync:
        """Whether create, resume and remove wait for udev (dm.udev.UdevGate)."""
        ...


def library_host(host: Host) -> LibraryHost | None:
    """`host`, if it offers a libdevmapper that stands for its run(): the class that offers the
    library defines the run() in use. A subclass that overrides run() wants every call as an
    argv, and a wrapper (the crash switch) offers no library."""
    offering = next((cls for cls in type(host).__mro__ if "dm_library" in vars(cls)), None)
    if offering is None or type(host).run is not vars(offering).get("run"):
        return None
    return cast(LibraryHost, host)


@functools.lru_cache(maxsize=1)
def _libdm_client(library: DmLibrary, facts: UdevFacts) -> LibdmClient:
    """The one LibdmClient of a library: libdevmapper's state is process-wide, so the real one
    gets one client per process. Only the latest library is kept, since a process has one real
    library and a test's fake one should not outlive its kernel."""
    return LibdmClient(lib=library, udev_facts=facts)


@functools.cache
def _warn_fallback(error: str) -> None:
    """Say once per process (and reason) that dmsetup stands in for libdevmapper."""
    log.warning("dm.driver_fallback", wanted="libdevmapper", using="dmsetup",
                error=error, next="every kernel call runs a dmsetup process")


def _dmsetup_client(host: Host, offering: LibraryHost | None,
                    udev_timeout: float) -> DmClient:
    """dmsetup's client, whose udev gate probes with the library when the host has one
    (loaded only if a probe is needed: udev runs where /proc cannot see it)."""
    facts = udev_facts_of(host)
    if offering is None:
        return DmClient(host, UdevGate(facts))
    source = offering  # narrowed, for the closure

    def probe() -> CookieProbe:
        try:
            library = source.dm_library()
        except LibdmUnavailable:
            return CookieProbe.NOT_RUN
        return probe_cookie(library, min(PROBE_SECONDS, udev_timeout))

    return DmClient(host, UdevGate(facts, probe))


def make_client(host: Host, driver: str = "libdevmapper",
                udev_timeout: float = DEFAULT_UDEV_TIMEOUT) -> DmDriver:
    """The client for `host`: `driver` where the host offers a libdevmapper, dmsetup otherwise.
    `udev_timeout` bounds each wait for udev (libdevmapper's; dmsetup has no bound of its own
    and is told not to wait where udev cannot answer)."""
    if driver not in DRIVERS:
        raise ValueError(f"unknown dm driver {driver!r} (known: {', '.join(DRIVERS)})")
    offering = library_host(host)
    if driver == "dmsetup" or offering is None:
        return _dmsetup_client(host, offering, udev_timeout)
    try:
        library = offering.dm_library()
    except LibdmUnavailable as exc:
        _warn_fallback(str(exc))
        return _dmsetup_client(host, None, udev_timeout)
    client = _libdm_client(library, udev_facts_of(host))
    # The process's one client takes the latest config's bound (`run` reads it once).
    client.udev.timeout = udev_timeout
    return client

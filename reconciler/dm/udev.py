"""What the daemon knows of udev, and whether it waits for it (`UdevGate`), for both drivers.

The inputs of `dm.udev_sync`'s decision come from the machine: whether udev runs (a connect
to its control socket) and where udevd's IPC namespace is against ours (/proc). A Host says
whose machine that is (`UdevHost.udev_facts`): SystemHost the real one's (`SystemUdev`), the
fake kernel its model's. The probe cookie, the third input, needs libdevmapper
(`dm.libdm_udev.probe_cookie`); `dm.driver.make_client` hands it to the gate when the host
offers the library.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

from reconciler.dm.udev_sync import (
    CookieProbe,
    UdevNamespaces,
    UdevSync,
    needs_probe,
    udev_sync,
)
from reconciler.sockets import Probe, probe

log = structlog.get_logger(__name__)

# Where libudev (and so libdevmapper and dmsetup) looks to decide whether udev runs: udevd's
# control socket (SOCK_SEQPACKET), under /run/udev, which a pod mounts from the host.
UDEV_CONTROL = "/run/udev/control"
# udevd's command name: systemd's and eudev's (systemd's workers inherit its namespaces).
UDEVD_NAMES = frozenset({"systemd-udevd", "udevd"})


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


def ipc_namespaces(proc: str = "/proc") -> UdevNamespaces:
    """udevd's IPC namespace against ours: every udevd process `proc` shows is compared.

    In a PID namespace of its own (a pod without hostPID) the daemon sees no udevd, and a
    namespace link it may not read (another user namespace) is no answer either: UNKNOWN.
    """
    try:
        ours = os.readlink(f"{proc}/self/ns/ipc")
        entries = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return UdevNamespaces.UNKNOWN
    seen = set()
    for pid in entries:
        try:
            with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as comm:
                if comm.read().strip() not in UDEVD_NAMES:
                    continue
            seen.add(os.readlink(f"{proc}/{pid}/ns/ipc"))
        except OSError:
            continue  # gone since the listing, or not ours to read
    if not seen or (ours in seen and len(seen) > 1):
        return UdevNamespaces.UNKNOWN
    return UdevNamespaces.SAME if ours in seen else UdevNamespaces.OTHER


class UdevFacts(Protocol):
    """What a machine says about its udev: whether it runs, and where."""

    def __hash__(self) -> int: ...  # one libdevmapper client per library and udev

    def running(self) -> bool:
        """Whether udevd runs (its control socket accepts)."""
        ...

    def namespaces(self) -> UdevNamespaces:
        """udevd's IPC namespace against ours."""
        ...


@dataclass(frozen=True)
class SystemUdev:
    """The real machine's udev (frozen: equal facts key one libdevmapper client)."""

    control: str = UDEV_CONTROL
    proc: str = "/proc"

    def running(self) -> bool:
        """Whether udevd runs (its control socket accepts)."""
        return udev_running(self.control)

    def namespaces(self) -> UdevNamespaces:
        """udevd's IPC namespace against ours, from /proc."""
        return ipc_namespaces(self.proc)


@runtime_checkable
class UdevHost(Protocol):
    """A Host that says whose udev it is (the real machine's, or a fake kernel's model)."""

    def udev_facts(self) -> UdevFacts:
        """This host's udev."""
        ...


def udev_facts_of(host: object) -> UdevFacts:
    """The udev of `host`, or the real machine's for a host that does not say."""
    return host.udev_facts() if isinstance(host, UdevHost) else SystemUdev()


class UdevGate:
    """Whether create, resume and remove wait for udev: decided (`dm.udev_sync`) at the first
    ask and again whenever udev appears or goes, kept in between. Asked before each of them
    and at the start of each pass; what it costs then is one connect to udev's socket."""

    def __init__(self, facts: UdevFacts,
                 probe_cookie: Callable[[], CookieProbe] | None = None) -> None:
        self.facts = facts
        self.probe_cookie = probe_cookie
        self._running: bool | None = None
        self._sync = UdevSync.NOT_RUNNING

    def sync(self) -> UdevSync:
        """The decision for udev as it is now (proved again if it appeared or went)."""
        running = self.facts.running()
        if running == self._running:
            return self._sync
        namespaces = self.facts.namespaces() if running else UdevNamespaces.UNKNOWN
        cookie = CookieProbe.NOT_RUN
        if needs_probe(running, namespaces) and self.probe_cookie is not None:
            cookie = self.probe_cookie()
        self._running, self._sync = running, udev_sync(running, namespaces, cookie)
        # Info only: what an operator must act on is the udev_unreachable condition.
        log.info("udev.sync_decided", sync=self._sync.value, namespaces=namespaces.value,
                 probe=cookie.value, waits=self._sync.waits)
        return self._sync

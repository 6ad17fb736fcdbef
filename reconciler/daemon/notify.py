"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET per message.

What the daemon tells its service manager: READY=1 after the first pass, STATUS= after each
pass, WATCHDOG=1 at least every half of WATCHDOG_USEC when the manager asks for it,
RELOADING=1 (with MONOTONIC_USEC=, as `Type=notify-reload` wants) then READY=1 around a
reload, STOPPING=1 on the way out. Telling is best effort: no socket, a socket nobody reads
(EAGAIN: the datagram is dropped, never waited on), a bad address — logged once, then
ignored. Nothing here raises into the loop.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


def _send(address: str, message: str) -> None:
    """One datagram, never blocking (raises OSError or ValueError for a bad address)."""
    # A leading "@" names a socket in the abstract namespace.
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        sock.connect(target)
        sock.sendall(message.encode())


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """The manager's watchdog timeout in seconds, when it asks this process for pings:
    WATCHDOG_USEC set and positive, and WATCHDOG_PID unset or ours (sd_watchdog_enabled)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner != str(pid):
        return None  # meant for another process (our parent, or a child of ours)
    return int(usec) / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """The daemon's messages to its service manager; a no-op without $NOTIFY_SOCKET."""

    def __init__(self, environ: Mapping[str, str] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        interval = watchdog_interval(env, os.getpid()) if self.address else None
        # Pinged every half of the manager's timeout: one late wake-up is not a miss.
        self.watchdog_every = None if interval is None else interval / 2
        self.monotonic = monotonic
        self._last_ping: float | None = None
        self._failed = False

    def send(self, *fields: str) -> bool:
        """One message of `fields` (KEY=value lines); False when it could not be sent."""
        if self.address is None:
            return False
        try:
            _send(self.address, "\n".join(fields))
        except (OSError, ValueError) as exc:
            if not self._failed:  # once: a manager that stopped listening would flood the log
                log.warning("notify.failed", socket=self.address, error=str(exc),
                            message=fields[0],
                            next="ignored: the daemon goes on; later failures are not logged")
                self._failed = True
            return False
        return True

    def ready(self) -> None:
        """Started, or done reloading (also when the reload was refused)."""
        self.send("READY=1")

    def status(self, text: str) -> None:
        """A one-line summary for `systemctl status`."""
        # One line: a newline would start another field of the message.
        self.send("STATUS=" + " ".join(text.split()))

    def reloading(self) -> None:
        """A reload starts (SIGHUP taken); READY=1 must follow when it is done."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        """The daemon is on its way out."""
        self.send("STOPPING=1")

    def watchdog_due_in(self) -> float | None:
        """Seconds until the next WATCHDOG=1 is due (0: now); None without a watchdog."""
        if self.watchdog_every is None:
            return None
        if self._last_ping is None:
            return 0.0
        return max(0.0, self._last_ping + self.watchdog_every - self.monotonic())

    def kick(self) -> None:
        """WATCHDOG=1 if it is due; cheap enough to call between any two steps."""
        if self.watchdog_every is None:
            return
        now = self.monotonic()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_every:
            return
        self._last_ping = now
        self.send("WATCHDOG=1")


def sd_notify(state: str) -> bool:
    """Tell the service manager `state` when it is listening ($NOTIFY_SOCKET read now);
    False when there is no socket or the message could not be sent. Never raises."""
    return Notifier().send(state)

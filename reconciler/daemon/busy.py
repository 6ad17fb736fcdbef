"""Callers beyond a unix listener's limit, told to come back without a reset and without
blocking the thread that accepts: used by the control socket (reconciler.daemon.control).

Closing a unix stream socket whose receive queue holds bytes unread resets its peer: a caller
that sent its request and is then told "busy" and closed on may read ECONNRESET instead of
the answer. So each caller beyond the limit is read to the end of its line (or of its time,
`timeout`) first, on the accept thread's selector, and only then told and closed; the answer
is a line that fits in an empty socket buffer, sent without waiting. At most `most` are read
at once; one beyond them is told at once (a reset is then possible: the last resort).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time


def tell(conn: socket.socket, answer: bytes) -> None:
    """Send `answer` without waiting (a caller that left is told nothing), and close."""
    with conn:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(answer)


class BusyCallers:
    """Callers being read to the end of their line before they are told `answer`."""

    def __init__(self, selector: selectors.BaseSelector, answer: bytes, most: int,
                 timeout: float) -> None:
        self._selector = selector
        self._answer = answer
        self._most = most
        self._timeout = timeout
        self._deadlines: dict[socket.socket, float] = {}

    def add(self, conn: socket.socket) -> None:
        """Read `conn`'s line from now on; told at once when `most` are read already."""
        if len(self._deadlines) >= self._most:
            tell(conn, self._answer)
            return
        conn.setblocking(False)
        self._deadlines[conn] = time.monotonic() + self._timeout
        self._selector.register(conn, selectors.EVENT_READ)

    def readable(self, conn: socket.socket) -> None:
        """Read what `conn` sent; told once its line (or its end) is in."""
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk or b"\n" in chunk:
            self._tell(conn)

    def next_at(self) -> float | None:
        """When the first one being read runs out of time (None: nobody is)."""
        return min(self._deadlines.values(), default=None)

    def expire(self, now: float) -> None:
        """Tell those whose time ran out."""
        for conn in [c for c, at in self._deadlines.items() if at <= now]:
            self._tell(conn)

    def close(self) -> None:
        """Tell everyone still being read (the listener stops)."""
        for conn in list(self._deadlines):
            self._tell(conn)

    def _tell(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._deadlines[conn]
        tell(conn, self._answer)

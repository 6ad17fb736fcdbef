"""A bounded HTTP server for a WSGI app: the listener of reconciler.daemon.metrics.

The metrics listener is reachable by anyone on the network it binds (the DaemonSet binds
0.0.0.0), so what a client can make it hold is bounded. wsgiref's server as the standard
library gives it serves one connection at a time and waits on each without end; socketserver's
threading mix-in starts a thread per connection without a limit, and its accept loop spins
when an accept fails for want of descriptors. This one, built on wsgiref's:

- serves at most MAX_CONNECTIONS at once, each on a thread of its own; one beyond them is
  answered 503 at once and closed, never queued;
- gives each connection REQUEST_DEADLINE for the whole of its request and
  answer, however slowly its bytes come: one request per connection (HTTP/1.0, as wsgiref
  speaks), and past the deadline the socket is shut down under the thread serving it, which
  ends that thread;
- pauses its accept loop while descriptors are short (reconciler.daemon.descriptors);
- logs nothing per request: once when it first refuses a connection, once when it serves
  again (with the count refused), and a request that fails for a reason other than its
  client (a bug in the app).
"""

from __future__ import annotations

import contextlib
import math
import socket
import sys
import threading
import time
from socketserver import TCPServer
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import WSGIApplication

import structlog

from reconciler.daemon.descriptors import AcceptBackoff

log = structlog.get_logger(__name__)

# Connections served at once (each holds a thread and a descriptor): scrapes and probes come
# a few at a time.
MAX_CONNECTIONS = 64
# The whole of one request and its answer; a scrape of 10,000 devices' series takes well
# under a second.
REQUEST_DEADLINE = 10.0
# Connections the kernel queues before an accept (the accept loop takes them at once).
BACKLOG = 128
# How often the accept loop looks for connections past their deadline.
POLL_INTERVAL = 0.25


def busy_answer(limit: int) -> bytes:
    """The whole answer to a connection beyond `limit`, sent without reading its request."""
    body = f"busy: {limit} connections are being served; ask again\n".encode()
    return (b"HTTP/1.0 503 Service Unavailable\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body)


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, without a line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class BoundedWSGIServer(WSGIServer):
    """wsgiref's server with a connection limit, a per-connection deadline and an accept
    loop that waits out a shortage of descriptors; `serve_forever` runs it."""

    request_queue_size = BACKLOG

    def __init__(self, family: socket.AddressFamily, sockaddr: Any,
                 app: WSGIApplication) -> None:
        self.address_family = family
        self.limit = MAX_CONNECTIONS
        self.deadline = REQUEST_DEADLINE
        self._slots = threading.BoundedSemaphore(self.limit)
        # Connections being served and when each must end (inf: shut down already).
        self._open: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._backoff = AcceptBackoff("metrics")
        self._stopping = threading.Event()
        self._refused = 0  # connections refused since the limit was last reached
        super().__init__(sockaddr, _Handler)
        self.set_app(app)

    def server_bind(self) -> None:
        # HTTPServer's own calls getfqdn() (a DNS lookup) only to name itself in CGI variables.
        TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()

    def serve_forever(self, poll_interval: float = POLL_INTERVAL) -> None:
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        self._stopping.set()  # ends a pause of the accept loop at once
        super().shutdown()

    def server_close(self) -> None:
        """Close the listener, and end the connections being served (their threads end)."""
        super().server_close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            conn, address = self.socket.accept()
        except OSError as exc:  # socketserver drops the attempt; we pause first
            self._stopping.wait(self._backoff.failed(exc))
            raise
        self._backoff.accepted()
        return conn, address

    def process_request(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        if not self._slots.acquire(blocking=False):
            self._refuse(conn)
            return
        if self._refused:
            log.warning("metrics.connections_available", limit=self.limit,
                        refused=self._refused)
            self._refused = 0
        conn.settimeout(self.deadline)  # no recv or send outlasts it; the reaper ends the rest
        with self._lock:
            self._open[conn] = time.monotonic() + self.deadline
        try:
            threading.Thread(target=self._serve, args=(conn, client_address),
                             name="metrics-request", daemon=True).start()
        except RuntimeError:  # no thread to be had: refused like one beyond the limit
            self._end(conn)
            self._refuse(conn)

    def service_actions(self) -> None:
        """Shut down connections past their deadline (serve_forever calls this each turn);
        under the lock, so that no socket is shut down after its thread closed it."""
        now = time.monotonic()
        with self._lock:
            for conn, deadline in self._open.items():
                if deadline <= now:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
                    self._open[conn] = math.inf

    def handle_error(self, request: Any, client_address: Any) -> None:
        """What process_request raised (socketserver's stderr traceback, as a log line)."""
        error = sys.exc_info()[1]
        log.warning("metrics.request_failed", error=f"{type(error).__name__}: {error}",
                    next="serving on")

    def _serve(self, conn: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(conn, client_address)
        except OSError:  # the client left, or was cut at its deadline
            pass
        except Exception:  # a bug in serving one request must not go unseen, nor spread
            log.exception("metrics.request_failed", next="serving on")
        finally:
            self._end(conn)
            self.shutdown_request(conn)

    def _end(self, conn: socket.socket) -> None:
        with self._lock:
            del self._open[conn]
        self._slots.release()

    def _refuse(self, conn: socket.socket) -> None:
        if self._refused == 0:
            log.warning("metrics.connections_full", limit=self.limit,
                        next="answering 503 to more until one ends; logged again then")
        self._refused += 1
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(busy_answer(self.limit))
        self.shutdown_request(conn)

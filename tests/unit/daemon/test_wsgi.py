"""The metrics listener's bounds: a connection limit answered 503 at once, a deadline for the
whole request however slowly it comes, an accept loop that pauses on EMFILE, and GET/HEAD."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.config import ListenAddress
from reconciler.daemon.health import Answer
from reconciler.daemon.metrics import HEALTHZ, READYZ, Metrics, MetricsServer
from reconciler.daemon.wsgi import busy_answer

LOOPBACK = ListenAddress("127.0.0.1", 0)


def _serving(monkeypatch: pytest.MonkeyPatch, deadline: float) -> Iterator[MetricsServer]:
    """A metrics server on a loopback port, limited to 2 connections of `deadline` s each."""
    monkeypatch.setattr("reconciler.daemon.wsgi.MAX_CONNECTIONS", 2)
    monkeypatch.setattr("reconciler.daemon.wsgi.REQUEST_DEADLINE", deadline)
    served = MetricsServer(LOOPBACK, Metrics(), {HEALTHZ: lambda: Answer(True, "ok: alive"),
                                                 READYZ: lambda: Answer(False, "not yet")})
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetricsServer]:
    """Connections of 1 s each."""
    yield from _serving(monkeypatch, 1.0)


@pytest.fixture
def patient_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetricsServer]:
    """Connections of 5 s each: under load, a third connection may be accepted more than
    1 s after the first two, which their cut would have made room for."""
    yield from _serving(monkeypatch, 5.0)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _exchange(port: int, request: bytes) -> bytes:
    """Send `request`, read the answer to its end."""
    with _connect(port) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_connection_beyond_the_limit_is_answered_503_at_once(
        patient_server: MetricsServer) -> None:
    """With the limit's connections held idle, the next one is told 503 busy without being
    read; once they are cut at their deadline, requests are served again."""
    server = patient_server
    held = [_connect(server.port) for _ in range(2)]
    try:
        answer = _exchange(server.port, b"")
        assert answer == busy_answer(2)
        for conn in held:  # cut at the deadline: the server closes them
            assert conn.recv(1) == b""
    finally:
        for conn in held:
            conn.close()
    assert _exchange(server.port, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nok: alive\n")


def test_a_request_trickling_in_is_cut_at_the_whole_request_deadline(
        server: MetricsServer) -> None:
    """A client sending a byte every 0.1 s (each recv well within any per-recv timeout) is
    cut off at the 1 s deadline for the whole request, long before it is done."""
    sent = 0
    with _connect(server.port) as conn:
        for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 100:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            time.sleep(0.1)
            conn.setblocking(False)
            try:
                if conn.recv(1) == b"":
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            finally:
                conn.setblocking(True)
    assert sent < 40


def test_head_and_methods(server: MetricsServer) -> None:
    """HEAD answers GET's status and headers without a body; POST is 405 naming GET, HEAD;
    /readyz keeps its status and reason."""
    head = _exchange(server.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    metrics = _exchange(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert metrics.startswith(b"HTTP/1.0 200 OK\r\n") and metrics.endswith(b"\r\n\r\n")
    post = _exchange(server.port, b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
    assert b"Allow: GET, HEAD\r\n" in post
    ready = _exchange(server.port, b"GET /readyz HTTP/1.0\r\n\r\n")
    assert ready.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert ready.endswith(b"\r\n\r\nnot yet\n")


def test_the_metrics_accept_loop_pauses_on_emfile_and_serves_after(
        server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepts failing with EMFILE are logged once (not per try) and the request waiting
    meanwhile is answered when they succeed again."""
    real_accept = socket.socket.accept
    failures = 5

    def accept(self: socket.socket) -> tuple[socket.socket, Any]:
        nonlocal failures
        if self.family == socket.AF_INET and failures > 0:
            failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_accept(self)

    with capture_logs() as events:
        monkeypatch.setattr(socket.socket, "accept", accept)
        try:
            answer = _exchange(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        finally:
            monkeypatch.undo()
    assert answer.endswith(b"ok: alive\n")
    names = [e["event"] for e in events if e["event"].startswith("accept.")]
    assert names == ["accept.descriptors_exhausted", "accept.descriptors_recovered"]


def test_stop_ends_the_connections_being_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection still being served (its request not in) is closed when the server
    stops, not left to its deadline."""
    monkeypatch.setattr("reconciler.daemon.wsgi.REQUEST_DEADLINE", 600.0)
    served = MetricsServer(LOOPBACK, Metrics(), {HEALTHZ: lambda: Answer(True, "ok: alive"),
                                                 READYZ: lambda: Answer(True, "ok: ready")})
    served.start()
    try:
        conn = _connect(served.port)
        conn.sendall(b"GET /healthz HTTP/1.0\r\n")  # the blank line never comes
        assert _exchange(served.port, b"GET /readyz HTTP/1.0\r\n\r\n").endswith(b"ok: ready\n")
    finally:
        served.stop()
    with conn:
        assert conn.recv(1) == b""

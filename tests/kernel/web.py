"""HTTP as the kernel tier's tests speak it to a daemon's metrics listener and to Prometheus:
a free loopback port to give `metrics_address`, and one request's status, headers and body
(an error status too; 0 when nothing answers)."""

from __future__ import annotations

import http.client
import socket
import urllib.parse


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(url: str, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request: the status, the headers (lower-case names) and the body as sent; status
    0 when nothing answers."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        conn.request(method, path or "/", headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


def get(url: str) -> tuple[int, str]:
    """GET url: the status code and the body as text (an error status's too)."""
    code, _, body = request(url)
    return code, body.decode()

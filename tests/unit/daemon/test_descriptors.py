"""File descriptors: the soft limit raised to the hard one at start, and accept loops that
pause on EMFILE (one log line per shortage) instead of spinning."""

from __future__ import annotations

import errno
import itertools
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.daemon.control import Command, ControlAnswer, ControlRequest, ControlServer, ask
from reconciler.daemon.descriptors import (
    FIRST_PAUSE,
    MAX_PAUSE,
    AcceptBackoff,
    raise_descriptor_limit,
)
from reconciler.testing.world import FakeClock


def _emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


def test_pauses_grow_to_the_cap_and_a_shortage_is_logged_once() -> None:
    """Each failed accept for want of descriptors doubles the pause up to MAX_PAUSE; the
    shortage is logged when it starts and when an accept succeeds, not per failure."""
    clock = FakeClock()
    backoff = AcceptBackoff("test", clock=clock)
    with capture_logs() as events:
        pauses = []
        for _ in range(12):
            pauses.append(backoff.failed(_emfile()))
            clock.sleep(pauses[-1])
        backoff.accepted()
        assert backoff.failed(OSError(errno.ECONNABORTED, "aborted")) == 0.0
    assert pauses[0] == FIRST_PAUSE and pauses[-1] == MAX_PAUSE
    assert all(b == min(MAX_PAUSE, 2 * a) for a, b in itertools.pairwise(pauses))
    assert [e["event"] for e in events] == ["accept.descriptors_exhausted",
                                            "accept.descriptors_recovered", "accept.failed"]
    assert events[1]["failed_accepts"] == 12
    assert events[1]["seconds"] == pytest.approx(sum(pauses))
    assert not backoff.short


@pytest.fixture
def nofile() -> Iterator[tuple[int, int]]:
    """RLIMIT_NOFILE as it was, restored after the test."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_limit_is_raised_to_the_hard_one_and_both_logged(
        nofile: tuple[int, int]) -> None:
    """At start the soft limit becomes the hard one; the log says both."""
    _, hard = nofile
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    with capture_logs() as events:
        assert raise_descriptor_limit() == (hard, hard)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert events[0]["event"] == "daemon.descriptor_limit"
    assert (events[0]["soft"], events[0]["hard"]) == (hard, hard)
    assert events[0].get("raised_from") == (min(1024, hard) if hard > 1024 else None)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory of its own (sun_path holds 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rd", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_control_accept_loop_pauses_on_emfile_and_serves_after(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepts that fail with EMFILE (descriptors short) are logged once, not per try, and
    the caller waiting meanwhile is served when they succeed again."""
    real_accept = socket.socket.accept
    failures = 5

    def accept(self: socket.socket) -> tuple[socket.socket, Any]:
        nonlocal failures
        if self.family == socket.AF_UNIX and failures > 0:
            failures -= 1
            raise _emfile()
        return real_accept(self)

    path = short_dir / "control.sock"
    server = ControlServer(path, lambda r: ControlAnswer(ok=True, done=f"handled {r.command}"))
    server.start()
    try:
        with capture_logs() as events:
            monkeypatch.setattr(socket.socket, "accept", accept)
            reply = ask(path, ControlRequest(Command.RESYNC), timeout=30)
    finally:
        monkeypatch.undo()
        server.stop()
    assert reply.done == "handled resync"
    names = [e["event"] for e in events if e["event"].startswith("accept.")]
    assert names == ["accept.descriptors_exhausted", "accept.descriptors_recovered"]
    assert [e["failed_accepts"] for e in events
            if e["event"] == "accept.descriptors_recovered"] == [5]

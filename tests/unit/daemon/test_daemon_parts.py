"""The daemon's parts that need no kernel: wake-ups, the root lock, sd_notify."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from pathlib import Path

import pytest

from reconciler.daemon import lock as lock_module
from reconciler.daemon.lock import AlreadyRunning, RootLock, holder_pid, lock_held
from reconciler.daemon.notify import sd_notify
from reconciler.daemon.wakeups import Wakeups


def test_a_burst_of_events_becomes_one_batch() -> None:
    """100 events for 10 names arrive as one batch of 10 names."""
    wakeups = Wakeups(settle=0.01)
    for i in range(100):
        wakeups.add(f"dev{i % 10}")
    batch = wakeups.take(timeout=1.0)
    assert batch.names == {f"dev{i}" for i in range(10)}
    assert wakeups.take(timeout=0).empty


def test_events_from_another_thread_wake_the_taker() -> None:
    """A name added by another thread ends the wait."""
    wakeups = Wakeups(settle=0.01)
    timer = threading.Timer(0.05, wakeups.add, args=("late",))
    timer.start()
    batch = wakeups.take(timeout=5.0)
    timer.join()
    assert batch.names == {"late"}


def test_stop_and_reload_are_flags_not_names() -> None:
    """stop/reload/resync set flags on the batch."""
    wakeups = Wakeups()
    wakeups.reload()
    wakeups.stop()
    batch = wakeups.take(timeout=0)
    assert (batch.reload, batch.stop, batch.resync, batch.names) == (True, True, False, set())


def test_a_second_daemon_for_the_same_root_is_refused(tmp_path: Path) -> None:
    """The root lock is exclusive and names the holder's pid."""
    first = RootLock(tmp_path)
    first.acquire()
    try:
        assert holder_pid(tmp_path) == os.getpid()
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            RootLock(tmp_path).acquire()
    finally:
        first.release()
    assert holder_pid(tmp_path) is None


def test_the_lock_is_tested_not_the_pid_written_in_it(tmp_path: Path) -> None:
    """A holder whose pid text means nothing here (another PID namespace, or none written
    yet) still counts as a running daemon for lock_held; holder_pid has no pid to give."""
    assert not lock_held(tmp_path)
    path = tmp_path / lock_module.LOCK_NAME
    path.write_text("")
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert lock_held(tmp_path)
        assert holder_pid(tmp_path) is None
    finally:
        os.close(fd)
    assert not lock_held(tmp_path)


def test_a_daemon_starting_while_a_probe_tests_the_lock_still_takes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe holds the lock shared for a moment: acquire tries again instead of failing
    (the probe lets go at the first wait); a real holder still refuses after the tries."""
    path = tmp_path / lock_module.LOCK_NAME
    path.write_text("")
    probe = os.open(path, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)
    waits: list[float] = []

    def probe_lets_go(seconds: float) -> None:
        waits.append(seconds)
        fcntl.flock(probe, fcntl.LOCK_UN)

    monkeypatch.setattr(lock_module, "sleep", probe_lets_go)
    lock = RootLock(tmp_path)
    try:
        lock.acquire()
        assert waits == [lock_module.LOCK_RETRY_S]
        assert holder_pid(tmp_path) == os.getpid()
    finally:
        lock.release()
        os.close(probe)
    first = RootLock(tmp_path)
    first.acquire()
    waits.clear()
    monkeypatch.setattr(lock_module, "sleep", waits.append)
    try:
        with pytest.raises(AlreadyRunning):
            RootLock(tmp_path).acquire()
        assert len(waits) == lock_module.LOCK_TRIES - 1
    finally:
        first.release()


def test_sd_notify_sends_to_the_notify_socket(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """READY=1 arrives as one datagram on $NOTIFY_SOCKET; no socket, no message."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert server.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")

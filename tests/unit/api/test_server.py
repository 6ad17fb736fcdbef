"""The gRPC socket is ours alone: a server never takes over a socket another process serves,
replaces only a stale one, and on stop removes only the socket it bound."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from reconciler.api.proto import snapshots_pb2 as pb
from reconciler.api.proto import snapshots_pb2_grpc
from reconciler.api.server import ApiServer, SocketUnavailable
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.snapshots import NotFound, Snapshotter
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.world import make_settings, run_in_process


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path in a short directory of its own (sun_path holds 108 bytes)."""
    short = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    try:
        yield short / "snap.sock"
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _answering(who: str) -> Callable[[Callable[[Snapshotter], Any]], Any]:
    """A runner whose every call is refused with NotFound naming `who`: which server
    answered is then in the reply."""
    def run(fn: Callable[[Snapshotter], Any]) -> Any:
        del fn
        raise NotFound(f"answered by {who}")
    return run


def _who_answers(path: Path) -> str:
    """The details of the reply of whichever server serves `path`."""
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Stat(pb.StatSnapshotRequest(key="k"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details: str = caught.value.details()
    return details


def _inode(path: Path) -> int:
    return os.lstat(path).st_ino


def _accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def test_a_second_server_refuses_a_socket_another_serves(socket_path: Path) -> None:
    """A second server on the same path raises SocketUnavailable and leaves the first's live
    socket in place, serving; stopping the second does not remove it either."""
    first = ApiServer(socket_path, _answering("first"))
    first.start()
    try:
        inode = _inode(socket_path)
        second = ApiServer(socket_path, _answering("second"))
        with pytest.raises(SocketUnavailable, match="served by another process"):
            second.start()
        second.stop(0)
        assert _inode(socket_path) == inode
        assert _who_answers(socket_path) == "answered by first"
        assert sorted(p.name for p in socket_path.parent.iterdir()) == ["snap.sock"]
    finally:
        first.stop(0)
    assert not socket_path.exists()


def test_a_stale_socket_is_replaced(socket_path: Path) -> None:
    """A socket nobody listens on (its daemon was killed) is replaced by ours, mode 0600."""
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()
    inode = _inode(socket_path)
    server = ApiServer(socket_path, _answering("new"))
    server.start()
    try:
        mode = os.lstat(socket_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert _inode(socket_path) != inode
        assert _who_answers(socket_path) == "answered by new"
    finally:
        server.stop(0)
    assert not socket_path.exists()


def test_stop_leaves_a_socket_that_is_no_longer_ours(socket_path: Path) -> None:
    """When another process has replaced our socket, stopping leaves its socket alone."""
    server = ApiServer(socket_path, _answering("ours"))
    server.start()
    socket_path.unlink()
    other = socket.socket(socket.AF_UNIX)
    try:
        other.bind(str(socket_path))
        other.listen()
        inode = _inode(socket_path)
        server.stop(0)
        assert _inode(socket_path) == inode
        assert _accepts(socket_path)
    finally:
        other.close()


def test_a_file_at_the_socket_path_is_left_alone(socket_path: Path) -> None:
    """Something other than a socket at the path is refused and kept as it is."""
    socket_path.write_text("not a socket\n")
    server = ApiServer(socket_path, _answering("ours"))
    with pytest.raises(SocketUnavailable, match="not a socket"):
        server.start()
    server.stop(0)
    assert socket_path.read_text() == "not a socket\n"
    assert sorted(p.name for p in socket_path.parent.iterdir()) == ["snap.sock"]


def test_run_refuses_a_socket_another_daemon_serves(
    socket_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reconciler run` with another root but the same grpc_socket as a running daemon exits
    1 with one line naming the socket; the first daemon keeps serving it, and still removes
    it when it stops."""
    settings = make_settings(tmp_path / "first", "rtpool", grpc_socket=str(socket_path))
    first = Daemon(settings, FakeKernel(), wakeups=Wakeups(settle=0.01))
    thread = threading.Thread(target=first.serve, name="reconcile", daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        inode = _inode(socket_path)
        config = write_config(tmp_path / "second.toml", root_path=tmp_path / "second",
                              pool_name="other", dm_driver="dmsetup", grpc_socket=socket_path,
                              loopback_data_size="256MiB", loopback_metadata_size="8MiB")
        capsys.readouterr()
        assert run_in_process(["-c", str(config), "run"], FakeKernel()) == 1
        # The log is JSON lines on stderr; what is said to the operator is the rest.
        said = [line for line in capsys.readouterr().err.splitlines()
                if not line.startswith("{")]
        assert len(said) == 1 and str(socket_path) in said[0]
        assert "another process" in said[0]
        assert _inode(socket_path) == inode
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
            listed = [i.name for r in stub.List(pb.ListSnapshotsRequest(), timeout=10)
                      for i in r.info]
        assert listed == []
    finally:
        first.request_stop()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert not socket_path.exists()

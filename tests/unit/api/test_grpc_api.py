"""containerd's snapshots gRPC service, served by a running daemon over the fake kernel and
called through the generated client stub, as containerd's proxy plugin calls it."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from reconciler.api.proto import snapshots_pb2 as pb
from reconciler.api.proto import snapshots_pb2_grpc
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import FakeClock, make_settings


@dataclass
class Served:
    daemon: Daemon
    stub: Any
    socket: Path
    thread: threading.Thread


@contextmanager
def serving(tmp_path: Path, clock: Callable[[], float] = time.time) -> Iterator[Served]:
    """A daemon serving the API on a unix socket (short path: sun_path holds 108 bytes)."""
    short = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    socket = short / "snap.sock"
    settings = make_settings(tmp_path, "rtpool", grpc_socket=str(socket))
    daemon = Daemon(settings, FakeKernel(), clock=clock, wakeups=Wakeups(settle=0.01))
    thread = threading.Thread(target=daemon.serve, name="reconcile", daemon=True)
    thread.start()
    channel = grpc.insecure_channel(f"unix:{socket}")
    grpc.channel_ready_future(channel).result(timeout=20)
    try:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
        yield Served(daemon, stub, socket, thread)
    finally:
        channel.close()
        daemon.request_stop()
        thread.join(timeout=20)
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A daemon serving the API, on the real clock."""
    with serving(tmp_path) as running:
        yield running


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


def test_socket_is_private(served: Served) -> None:
    """The socket is a unix socket of mode 0600."""
    mode = os.stat(served.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_lifecycle_over_grpc(served: Served) -> None:
    """Prepare, Mounts, Commit, Stat, List (filtered, streamed), Update, Usage, View, Remove,
    with containerd's keys (which hold '/') and its error codes."""
    stub = served.stub
    key = "default/1/extract-123 sha256:abc"
    prepared = stub.Prepare(pb.PrepareSnapshotRequest(
        snapshotter="reconciler", key=key, labels={"containerd.io/snapshot/a": "1"}))
    (mount,) = prepared.mounts
    assert (mount.type, mount.source, list(mount.options)) == (
        "ext4", "/dev/mapper/rtpool-snap-1", ["rw"])
    assert stub.Mounts(pb.MountsRequest(key=key)).mounts == prepared.mounts
    stub.Commit(pb.CommitSnapshotRequest(name="sha256:layer1", key=key,
                                         labels={"containerd.io/snapshot/a": "2"}))
    info = stub.Stat(pb.StatSnapshotRequest(key="sha256:layer1")).info
    assert info.kind == pb.COMMITTED and info.parent == ""
    assert dict(info.labels) == {"containerd.io/snapshot/a": "2"}
    assert info.created_at.seconds > 1_700_000_000
    assert code_of(lambda: stub.Stat(pb.StatSnapshotRequest(key=key))) == \
        grpc.StatusCode.NOT_FOUND

    view = stub.View(pb.ViewSnapshotRequest(key="default/2/view", parent="sha256:layer1"))
    assert list(view.mounts[0].options) == ["ro"]
    stub.Prepare(pb.PrepareSnapshotRequest(key="default/3/rw", parent="sha256:layer1"))
    assert code_of(lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="default/3/rw"))) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: stub.Prepare(pb.PrepareSnapshotRequest(
        key="x", parent="default/3/rw"))) == grpc.StatusCode.INVALID_ARGUMENT

    everything = [i.name for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info]
    assert sorted(everything) == ["default/2/view", "default/3/rw", "sha256:layer1"]
    children = [i.name for r in stub.List(pb.ListSnapshotsRequest(
        filters=["parent==sha256:layer1,kind==active"])) for i in r.info]
    assert children == ["default/3/rw"]

    updated = stub.Update(pb.UpdateSnapshotRequest(
        info=pb.Info(name="sha256:layer1", labels={"containerd.io/snapshot/b": "x"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels.containerd.io/snapshot/b"])))
    assert dict(updated.info.labels) == {"containerd.io/snapshot/a": "2",
                                         "containerd.io/snapshot/b": "x"}
    assert code_of(lambda: stub.Update(pb.UpdateSnapshotRequest(
        info=pb.Info(name="sha256:layer1"),
        update_mask=field_mask_pb2.FieldMask(paths=["parent"])))) == \
        grpc.StatusCode.INVALID_ARGUMENT

    usage = stub.Usage(pb.UsageRequest(key="sha256:layer1"))
    # Nothing written beyond the base's filesystem: no block is its own. Inodes count from
    # zero for a root (an empty ext4 has 11 in use).
    assert usage.size == 0 and usage.inodes == 11
    assert code_of(lambda: stub.Remove(pb.RemoveSnapshotRequest(key="sha256:layer1"))) == \
        grpc.StatusCode.FAILED_PRECONDITION
    for gone in ("default/2/view", "default/3/rw", "sha256:layer1"):
        stub.Remove(pb.RemoveSnapshotRequest(key=gone))
    stub.Cleanup(pb.CleanupRequest())
    assert list(stub.List(pb.ListSnapshotsRequest())) == []


def test_stat_while_a_list_stream_is_open(served: Served) -> None:
    """containerd's garbage collector calls Stat with a List stream still open: both answer."""
    stub = served.stub
    for i in range(110):
        stub.Prepare(pb.PrepareSnapshotRequest(key=f"k{i}"))  # fresh filesystems, no parent
    stream = stub.List(pb.ListSnapshotsRequest())
    first = next(stream)
    assert len(first.info) == 100, "streamed in batches of 100"
    assert stub.Stat(pb.StatSnapshotRequest(key="k7")).info.name == "k7"
    rest = [i.name for r in stream for i in r.info]
    assert len(rest) == 10


def test_requests_after_stop_are_refused_not_hung(served: Served) -> None:
    """Once the daemon stops, a request fails fast instead of waiting forever."""
    served.daemon.request_stop()
    served.thread.join(timeout=20)
    assert not served.thread.is_alive()
    channel = grpc.insecure_channel(f"unix:{served.socket}")
    stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Stat(pb.StatSnapshotRequest(key="x"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_commit_onto_another_parent_is_refused_not_ignored(served: Served) -> None:
    """containerd 2.x's CommitSnapshotRequest.parent (its "rebase", which we do not declare) is
    honoured when it names the snapshot's own parent and refused as UNIMPLEMENTED otherwise,
    the active snapshot left as it was: a thin device holds its parent's whole filesystem, so
    no commit can put it on another parent."""
    stub = served.stub
    stub.Prepare(pb.PrepareSnapshotRequest(key="base-work"))
    stub.Commit(pb.CommitSnapshotRequest(name="layer-1", key="base-work"))
    stub.Prepare(pb.PrepareSnapshotRequest(key="unpack-2"))  # a root, as parallel unpack asks
    refused = code_of(lambda: stub.Commit(pb.CommitSnapshotRequest(
        name="layer-2", key="unpack-2", parent="layer-1")))
    assert refused == grpc.StatusCode.UNIMPLEMENTED
    info = stub.Stat(pb.StatSnapshotRequest(key="unpack-2")).info
    assert (info.kind, info.parent) == (pb.ACTIVE, "")
    assert code_of(lambda: stub.Stat(pb.StatSnapshotRequest(key="layer-2"))) == \
        grpc.StatusCode.NOT_FOUND

    stub.Prepare(pb.PrepareSnapshotRequest(key="child-work", parent="layer-1"))
    stub.Commit(pb.CommitSnapshotRequest(name="layer-2", key="child-work", parent="layer-1"))
    committed = stub.Stat(pb.StatSnapshotRequest(key="layer-2")).info
    assert (committed.kind, committed.parent) == (pb.COMMITTED, "layer-1")


def test_max_size_over_grpc(served: Served) -> None:
    """containerd's max-size label through the service: a larger size is taken (the label
    stays in Stat's and List's labels); a value below the base's is INVALID_ARGUMENT whose
    message names the label, and no snapshot is left of it."""
    stub = served.stub
    label = "containerd.io/snapshot/max-size"
    big = {label: str(4 * 64 << 20)}
    stub.Prepare(pb.PrepareSnapshotRequest(key="default/1/big", labels=big))
    assert dict(stub.Stat(pb.StatSnapshotRequest(key="default/1/big")).info.labels) == big
    listed = [dict(i.labels) for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info]
    assert listed == [big]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Prepare(pb.PrepareSnapshotRequest(key="default/2/small", labels={label: "4096"}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert label in caught.value.details()
    assert code_of(lambda: stub.Stat(pb.StatSnapshotRequest(key="default/2/small"))) == \
        grpc.StatusCode.NOT_FOUND


def test_calls_waiting_for_one_device_do_not_hold_up_a_call_for_another(
    tmp_path: Path,
) -> None:
    """21 Prepares (containerd 2.x's suite runs 21 cases at once) waiting for their devices'
    retries (create_snap: EBUSY, on a clock that does not move) are all parked at once, and a
    Stat of another snapshot is answered while every one of them still waits."""
    clock = FakeClock()
    with serving(tmp_path, clock) as served:
        served.stub.Prepare(pb.PrepareSnapshotRequest(key="ready"))
        kernel = served.daemon.host
        assert isinstance(kernel, FakeKernel)
        kernel.faults.fail(Op.MESSAGE, "rtpool", errno=errno.EBUSY, times=10_000,
                           verb="create_snap")
        waiting = [served.stub.Prepare.future(pb.PrepareSnapshotRequest(key=f"w{i}"))
                   for i in range(21)]
        deadline = time.monotonic() + 30
        while served.daemon.waiters.waiting < len(waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.daemon.waiters.waiting == len(waiting), "every Prepare is parked"

        info = served.stub.Stat(pb.StatSnapshotRequest(key="ready"), timeout=30).info
        assert info.name == "ready"
        assert [f.done() for f in waiting] == [False] * len(waiting), "still waiting"

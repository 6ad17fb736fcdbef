"""The `containerd.services.snapshots.v1.Snapshots` service on a unix socket.

gRPC runs each request on one of its worker threads; the Snapshotter belongs to the
reconcile thread, so every request is handed to that thread (`Runner`) and its answer waited
for. A List is gathered there in one go and streamed from the worker afterwards, so no lock
or turn of the reconcile thread is held while containerd reads the stream (its garbage
collector calls Stat while a List is still open).

The socket path is ours alone. gRPC itself unlinks whatever socket is at the path it binds,
and unlinks that path again when it stops, whoever's socket is there by then: a second daemon
configured with the same `grpc_socket` would take over the first one's live socket, and the
first would delete the second's on its way out. So the server binds gRPC at a private name
beside the path and takes the path as `reconciler.sockets.OwnedSocket` takes any of ours
(renamed into place only after a connect has shown that nothing serves there; unlinked on
stop only while it is still the socket it bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from google.protobuf import empty_pb2

from reconciler.api.proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from reconciler.snapshots import (
    AlreadyExists,
    FailedPrecondition,
    Info,
    InvalidArgument,
    Kind,
    Mount,
    NotFound,
    SnapshotError,
    Snapshotter,
    Unavailable,
    Unimplemented,
)
from reconciler.sockets import OwnedSocket, SocketUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")
# Runs a function of the Snapshotter on the thread that owns it and returns its result.
Runner = Callable[[Callable[[Snapshotter], T]], T]

# containerd's own List sends at most this many infos per message.
LIST_BATCH = 100
# A call holds its gRPC worker thread for as long as it waits, a call parked until its
# device's retry included: with few workers, calls waiting for one device would keep calls
# for others from being read at all (containerd 2.x's suite runs 21 at once). The executor
# starts a thread only when every one it has is busy, so the bound costs nothing idle.
WORKERS = 256



class CallObserver(Protocol):
    """Told of each call once answered: its method, status code (OK, NOT_FOUND...) and
    duration (the daemon's metrics; this layer knows nothing of them)."""

    def grpc_call(self, method: str, code: str, seconds: float) -> None:
        """One call, answered (a List: gathered; its stream is the client's to read)."""
        ...


_CODES: dict[type[SnapshotError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}
_KINDS = {Kind.VIEW: snapshots_pb2.VIEW, Kind.ACTIVE: snapshots_pb2.ACTIVE,
          Kind.COMMITTED: snapshots_pb2.COMMITTED}
_KINDS_BACK = {value: kind for kind, value in _KINDS.items()}


def _mounts(mounts: list[Mount]) -> list[Any]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options))
            for m in mounts]


def _info(info: Info) -> Any:
    message = snapshots_pb2.Info(name=info.name, parent=info.parent, kind=_KINDS[info.kind],
                                 labels=dict(info.labels))
    message.created_at.FromNanoseconds(int(info.created_at * 1e9))
    message.updated_at.FromNanoseconds(int(info.updated_at * 1e9))
    return message


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    """Each method: unpack the request, run the Snapshotter call, pack the answer; errors
    become containerd's status codes."""

    def __init__(self, run: Runner[Any], observer: CallObserver | None = None) -> None:
        self._run = run
        self._observer = observer

    def _call(self, context: grpc.ServicerContext, method: str,
              fn: Callable[[Snapshotter], T]) -> T:
        start = time.perf_counter()
        try:
            result: T = self._run(fn)
        except SnapshotError as exc:
            code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)),
                        grpc.StatusCode.UNKNOWN)
            log.info("api.refused", method=method, code=code.name, error=str(exc))
            self._observe(method, code, start)
            context.abort(code, str(exc))
        except Exception as exc:  # any other failure is the daemon's, not the caller's
            log.exception("api.failed", method=method, error=str(exc))
            self._observe(method, grpc.StatusCode.UNKNOWN, start)
            context.abort(grpc.StatusCode.UNKNOWN, f"{method}: {exc}")
        else:
            self._observe(method, grpc.StatusCode.OK, start)
            return result
        raise AssertionError("context.abort raises")  # pragma: no cover

    def _observe(self, method: str, code: grpc.StatusCode, start: float) -> None:
        if self._observer is not None:
            self._observer.grpc_call(method, code.name, time.perf_counter() - start)

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """A writable snapshot of a committed parent."""
        mounts = self._call(context, "Prepare", lambda s: s.prepare(
            request.key, request.parent, dict(request.labels)))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(mounts))

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """A read-only snapshot of a committed parent."""
        mounts = self._call(context, "View", lambda s: s.view(
            request.key, request.parent, dict(request.labels)))
        return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(mounts))

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """How to mount a snapshot."""
        mounts = self._call(context, "Mounts", lambda s: s.mounts(request.key))
        return snapshots_pb2.MountsResponse(mounts=_mounts(mounts))

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Active snapshot `key` becomes committed snapshot `name`."""
        self._call(context, "Commit", lambda s: s.commit(
            request.name, request.key, dict(request.labels), request.parent))
        return empty_pb2.Empty()

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Remove a snapshot without children."""
        self._call(context, "Remove", lambda s: s.remove(request.key))
        return empty_pb2.Empty()

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """One snapshot's info."""
        info = self._call(context, "Stat", lambda s: s.stat(request.key))
        return snapshots_pb2.StatSnapshotResponse(info=_info(info))

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Change labels, as the field mask says."""
        wanted = Info(name=request.info.name, kind=_KINDS_BACK.get(request.info.kind,
                                                                   Kind.ACTIVE),
                      parent=request.info.parent, labels=dict(request.info.labels))
        paths = list(request.update_mask.paths)
        info = self._call(context, "Update", lambda s: s.update(wanted, paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(info))

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        """Every snapshot matching any filter, streamed in batches."""
        filters = list(request.filters)
        infos = self._call(context, "List", lambda s: s.walk(filters))
        for start in range(0, len(infos), LIST_BATCH):
            yield snapshots_pb2.ListSnapshotsResponse(
                info=[_info(i) for i in infos[start:start + LIST_BATCH]])

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Bytes and inodes a snapshot uses beyond its parent."""
        usage = self._call(context, "Usage", lambda s: s.usage(request.key))
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Delete the devices of removed snapshots (async_remove)."""
        self._call(context, "Cleanup", lambda s: s.cleanup())
        return empty_pb2.Empty()


class ApiServer:
    """The gRPC server on its unix socket (owner only: mode 0600)."""

    def __init__(self, socket_path: Path, run: Runner[Any], workers: int = WORKERS,
                 observer: CallObserver | None = None) -> None:
        self.socket_path = socket_path
        self._server = grpc.server(futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="grpc"))
        snapshots_pb2_grpc.add_SnapshotsServicer_to_server(  # type: ignore[no-untyped-call]
            SnapshotsService(run, observer), self._server)
        # gRPC unlinks the name it bound when it stops: through a directory descriptor
        # closed by then, that name could be another directory's, so the path must fit.
        self._socket = OwnedSocket(socket_path, f"grpc_socket {socket_path}",
                                   through_directory=False)

    def start(self) -> None:
        """Take the socket path (replacing only a stale socket) and start serving; raises
        SocketUnavailable, touching nothing at the path, when another process serves there."""
        def bind(address: str) -> None:
            self._server.add_insecure_port(f"unix:{address}")
            self._server.start()

        self._socket.claim(bind, lambda: self._server.stop(0).wait())
        log.info("api.serving", socket=str(self.socket_path),
                 service="containerd.services.snapshots.v1.Snapshots")

    def stop(self, grace: float = 2.0) -> None:
        """Stop taking requests; those in flight get `grace` seconds. The socket path is
        unlinked only while it is still the socket this server bound."""
        self._server.stop(grace).wait()
        if not self._socket.release():
            log.warning("api.socket_left", socket=str(self.socket_path),
                        reason="no longer the socket this daemon bound (another process "
                        "replaced it): not ours to remove")


__all__ = ["ApiServer", "SnapshotsService", "SocketUnavailable"]

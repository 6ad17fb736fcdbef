"""The fake kernel in a process of its own, and the Host that speaks to it over a pipe.

Why: a real daemon does not share its process with the kernel's model of 10,000 devices, so
a measure of the daemon's memory (benchmarks/scale.py) must not either. `RemoteKernel.start`
forks a server holding a FakeKernel (or a subclass the caller names) and answers `run`,
`read` and `write` from it; the daemon's side holds only a pipe. It offers no libdevmapper
(`dm_library`), so reconciler drives it through dmsetup's argv, whose texts cross the pipe as
they would cross a real dmsetup's stdout.

`call(name, *args)` runs any method of the server's kernel and returns its (picklable)
answer: how a benchmark or a test reads the kernel's call log, or holds a device open.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Self

from reconciler.dm.host import Completed
from reconciler.dm.udev import UdevFacts
from reconciler.testing.fakekernel.host import FakeKernel

STOP = "stop"


def _serve(conn: Connection, make: Callable[[], FakeKernel]) -> None:
    """The server's loop: one request, one answer (the value, or the exception raised)."""
    kernel = make()
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request[0] == STOP:
            conn.send((True, None))
            return
        method, args = request
        try:
            answer: tuple[bool, Any] = (True, getattr(kernel, method)(*args))
        except Exception as exc:  # noqa: BLE001 - raised again on the caller's side
            answer = (False, exc)
        conn.send(answer)


class RemoteKernel:
    """A Host whose kernel is a FakeKernel in another process (see the module doc)."""

    def __init__(self, conn: Connection, process: multiprocessing.process.BaseProcess) -> None:
        self._conn = conn
        self._process = process
        # One request on the pipe at a time: a daemon thread and its watcher share the host.
        self._lock = threading.Lock()

    @classmethod
    def start(cls, make: Callable[[], FakeKernel] = FakeKernel) -> Self:
        """Fork the server (`make` builds its kernel there) and connect to it."""
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, make), daemon=True)
        process.start()
        theirs.close()
        return cls(ours, process)

    def call(self, method: str, *args: Any) -> Any:
        """Run a method of the server's kernel; its exception is raised here."""
        with self._lock:
            self._conn.send((method, args))
            ok, value = self._conn.recv()
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        """End the server process."""
        if self._process.is_alive():
            with self._lock:
                self._conn.send((STOP,))
                self._conn.recv()
        self._process.join(timeout=10)
        self._conn.close()

    # -- Host --------------------------------------------------------------------------------

    def run(self, argv: Sequence[str]) -> Completed:
        """Answer one command as the real tool would (in the server's kernel)."""
        completed: Completed = self.call("run", tuple(argv))
        return completed

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Read bytes from a device of the server's kernel."""
        data: bytes = self.call("read", path, offset, length)
        return data

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Write bytes to a device of the server's kernel."""
        self.call("write", path, offset, data)

    def udev_facts(self) -> UdevFacts:
        """A copy of the server's kernel's udev, as it is now."""
        facts: UdevFacts = self.call("udev_facts")
        return facts

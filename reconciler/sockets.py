"""Unix socket paths: whether something serves at one, and taking one that is ours to take.

Used by every socket the daemon serves (containerd's gRPC API in `reconciler.api.server`, the
operator's control socket in `reconciler.daemon.control`) and by what probes a socket it does
not own (udev's control socket, in `reconciler.dm.libdm`). Base layer: imports nothing of ours.

What we never made we never touch. A socket is bound at a private name beside its path and
renamed into place only after a connect has shown that nothing serves there: a refused connect
is a stale socket (its process is gone), which the rename replaces atomically; a live socket,
a file, a link or a directory is refused, untouched. On the way out the path is unlinked only
while it is still the inode we bound (another process may have replaced it since).

A unix socket's path holds at most 107 bytes. A longer one (a deep root_path) is reached
through its directory: `/proc/self/fd/<fd of the directory>/<name>`, which bind and connect
resolve like any path.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

# sockaddr_un.sun_path on Linux: 108 bytes, the final NUL included.
SUN_PATH_MAX = 108
# How long a probe waits for a connect to a live socket (a full backlog).
PROBE_TIMEOUT = 1.0
# Numbers the private names of this process's sockets (tests run several at once).
_PRIVATE = itertools.count(1)


class SocketUnavailable(RuntimeError):
    """A socket path cannot be served by us: another process serves there, or something
    other than a socket is in the way. Nothing at the path was touched."""


class Probe(Enum):
    """What a connect found at a socket path."""

    ABSENT = "absent"  # nothing at the path
    NOT_SOCKET = "not a socket"  # a file, link, directory...
    STALE = "stale"  # a socket nobody listens on (connect refused)
    LIVE = "live"  # a process accepted the connect
    SLOW = "slow"  # the connect did not finish in time: a live listener with a full backlog
    OTHER_TYPE = "another socket type"  # a listener of another type (EPROTOTYPE)
    UNKNOWN = "unknown"  # the connect failed otherwise (EACCES...): cannot tell


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """An address for `path` that fits in sun_path: the path itself, or the path through an
    O_PATH descriptor of its directory, held open while inside."""
    text = os.fsdecode(path)
    if len(os.fsencode(text)) < SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{fd}/{path.name}"
        if len(os.fsencode(short)) >= SUN_PATH_MAX:
            raise SocketUnavailable(f"{path}: its name is too long for a unix socket")
        yield short
    finally:
        os.close(fd)


def probe(path: Path, kind: socket.SocketKind = socket.SOCK_STREAM,
          timeout: float = PROBE_TIMEOUT) -> Probe:
    """Connect to `path` (and close at once) to learn whether a process serves there.
    `timeout` 0 never waits: a listener whose backlog is full is SLOW at once."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return Probe.ABSENT
    if not stat.S_ISSOCK(mode):
        return Probe.NOT_SOCKET
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        with reachable(path) as address:
            sock.connect(address)
    except ConnectionRefusedError:
        return Probe.STALE
    except FileNotFoundError:
        return Probe.ABSENT  # gone since the lstat
    except (TimeoutError, BlockingIOError):  # BlockingIOError: a full backlog, timeout 0
        return Probe.SLOW
    except OSError as exc:
        return Probe.OTHER_TYPE if exc.errno == errno.EPROTOTYPE else Probe.UNKNOWN
    finally:
        sock.close()
    return Probe.LIVE


def check_not_served(path: Path, what: str) -> None:
    """Raise SocketUnavailable unless `path` is free or holds a stale socket; `what` names
    the path in the message (e.g. "grpc_socket /run/x.sock")."""
    found = probe(path)
    if found in (Probe.ABSENT, Probe.STALE):
        return
    if found is Probe.NOT_SOCKET:
        raise SocketUnavailable(f"{what} exists and is not a socket: not ours to replace")
    if found is Probe.SLOW:
        raise SocketUnavailable(f"{what} is served by another process (it accepts "
                                "connections but is slow to): not taking it over")
    if found in (Probe.UNKNOWN, Probe.OTHER_TYPE):
        raise SocketUnavailable(f"{what} cannot be probed ({found.value}): not taking it over")
    raise SocketUnavailable(f"{what} is served by another process: not taking it over")


@dataclass
class OwnedSocket:
    """A socket path this process took (`claim`) and gives back (`release`) only while the
    path still holds the inode it bound."""

    path: Path
    what: str
    # Whether a path too long for sun_path may be bound through its directory's descriptor
    # (not for a binder that keeps the address and unlinks it later: gRPC).
    through_directory: bool = True
    # (st_dev, st_ino) of the socket we bound, while it is ours to unlink.
    _bound: tuple[int, int] | None = None

    def claim(self, bind: Callable[[str], None], undo: Callable[[], None]) -> None:
        """Check the path, `bind(address)` a listener at a private name beside it (mode 0600
        from the start), then rename it into place. `undo` stops the listener when the path
        turns out to be taken meanwhile; SocketUnavailable is raised then, as when it was
        taken before."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_not_served(path, self.what)
        # A name of our own in the same directory (a rename does not cross filesystems),
        # which the binder may unlink on bind and on stop without touching anyone's socket.
        private = path.with_name(f".{os.getpid():x}.{next(_PRIVATE)}")
        if not self.through_directory and len(os.fsencode(private)) >= SUN_PATH_MAX:
            raise SocketUnavailable(f"{self.what}: no room in a unix socket path for the "
                                    f"name {private.name!r} it is bound at before it is "
                                    "moved into place; use a shorter directory")
        # The socket is made with the umask's mode: make it private from the start.
        old = os.umask(0o177)
        try:
            with reachable(private) as address:
                bind(address)
        finally:
            os.umask(old)
        try:
            os.chmod(private, 0o600)
            st = os.lstat(private)
            check_not_served(path, self.what)  # again: another process may have bound it
            os.rename(private, path)
        except BaseException:
            undo()
            private.unlink(missing_ok=True)
            raise
        self._bound = (st.st_dev, st.st_ino)

    def release(self) -> bool:
        """Unlink the path if it is still the socket we bound; False when it was left."""
        if self._bound is None:
            return True
        bound, self._bound = self._bound, None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if (st.st_dev, st.st_ino) != bound:
            return False
        self.path.unlink(missing_ok=True)
        return True

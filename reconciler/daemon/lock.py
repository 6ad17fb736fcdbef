"""One daemon per root_path: an exclusive flock on <root_path>/reconciler.lock holding our pid.

The lock file is opened by root in a directory that may not be root's alone, so it is never
followed: a symbolic link (or a hard link, or anything but a plain file) planted at its path
would have had root truncate and write whatever it points to. It is created 0600, and the
root_path we create, 0700; an operator's existing root_path keeps its mode, and is refused
when others may write to it or to a parent (they could plant links there: issue 23), as the
config's check refuses it; checked again here, where the first file is made.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from time import sleep

import structlog

from reconciler.config.paths import check_ours_alone
from reconciler.config.settings import ConfigError

log = structlog.get_logger(__name__)

LOCK_NAME = "reconciler.lock"


class LockError(RuntimeError):
    """The lock of this root_path cannot be taken; the message says why."""


class AlreadyRunning(LockError):
    """Another reconciler holds the lock of this root_path."""


class UnsafeLockFile(LockError):
    """Something other than a plain file of ours is at the lock's path (or root_path is not
    ours alone): not followed, nothing made."""


def make_root(root: Path) -> None:
    """Create root_path 0700 when it is missing; refuse (UnsafeLockFile) one that others may
    write to, or a parent they may (unless sticky), or one owned by another user."""
    try:
        check_ours_alone(root)
    except ConfigError as exc:
        raise UnsafeLockFile(exc.problem) from None
    root.mkdir(parents=True, mode=0o700, exist_ok=True)


class RootLock:
    """Held for the life of the process; released by the kernel if we die."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the holder (UnsafeLockFile when the
        path holds a link or anything but a plain file)."""
        make_root(self.path.parent)
        try:
            # O_NONBLOCK: a FIFO or a device at the path cannot hang the open.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK | os.O_NOCTTY, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeLockFile(f"{self.path} is a symbolic link: refusing to follow it "
                                     "(remove it; reconciler makes its own lock file)") from None
            raise
        try:
            _check_plain(self.path, fd)
            _lock_exclusive(fd)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another reconciler (pid {holder}) is running for {self.path.parent}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# `status --check` and the commands that hand requests over test the lock by taking it
# shared for a moment; a daemon starting in that moment tries again rather than exit.
LOCK_TRIES = 5
LOCK_RETRY_S = 0.02


def _lock_exclusive(fd: int) -> None:
    """flock(LOCK_EX) without waiting on a holder, but through a prober's brief shared lock:
    BlockingIOError when another holds it still after LOCK_TRIES."""
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == LOCK_TRIES - 1:
                raise
            sleep(LOCK_RETRY_S)


def _check_plain(path: Path, fd: int) -> None:
    """Refuse what is not a plain file with one name, and make a wider one private."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeLockFile(f"{path} is not a regular file: refusing to use it as the lock")
    if st.st_nlink != 1:
        # A hard link to another file would have us overwrite that file.
        raise UnsafeLockFile(f"{path} has {st.st_nlink} names (a hard link): refusing to "
                             "write to it (remove it; reconciler makes its own lock file)")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)  # earlier versions made it 0644


def _held(root: Path) -> tuple[bool, str]:
    """Whether a process holds the lock of root_path, and the pid text it wrote."""
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                     | os.O_NOCTTY)
    except FileNotFoundError:
        return False, ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False, ""  # not our lock: no daemon of ours holds a symbolic link
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, os.pread(fd, 32, 0).decode(errors="replace").strip()
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, ""
    finally:
        os.close(fd)


def holder_pid(root: Path) -> int | None:
    """The pid of the running daemon of root_path, if one holds the lock."""
    held, text = _held(root)
    return int(text) if held and text.isdigit() else None


def lock_held(root: Path) -> bool:
    """Whether a daemon of root_path runs: its lock is held. Tested on the lock itself, not
    on the pid written in it, which means nothing from another PID namespace (a daemon in a
    container, a probe on the host, or the other way round)."""
    return _held(root)[0]

"""Loopback pools: sparse files under root_path attached to loop devices by the daemon itself.

An existing attachment of the same file is reused, so restarting the daemon never stacks a
second loop device on a file. The files and their directory are never followed through a
link (issue 23): root hands their paths to losetup, so a link planted at one would have the
pool built on whatever it points to. Each is a plain file (a directory) of root's or ours.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler.dm.host import Host
from reconciler.tools.errors import ToolError, tool_failed


@dataclass(frozen=True)
class LoopbackFiles:
    """Where a loopback pool keeps its data and metadata files."""

    data: Path
    metadata: Path

    @classmethod
    def under(cls, root: Path) -> LoopbackFiles:
        """The standard places under a root_path."""
        return cls(data=root / "loopback" / "data", metadata=root / "loopback" / "metadata")


def _refused(path: Path, why: str) -> ToolError:
    return ToolError("loopback", detail=f"{path} {why}: refusing to use it (remove it; "
                     "reconciler makes its own loopback files)", errno_name="EPERM")


def _check_own(path: Path, directory: bool) -> None:
    """`path`, not followed, is a directory (or a plain file with one name) of root's or ours;
    one that others may write to is made writable by its owner only."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _refused(path, "is a symbolic link")
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        raise _refused(path, f"is not a {'directory' if directory else 'regular file'}")
    if not directory and st.st_nlink != 1:
        raise _refused(path, f"has {st.st_nlink} names (a hard link)")
    if st.st_uid not in (0, os.geteuid()):
        raise _refused(path, f"is owned by uid {st.st_uid}, neither root nor us")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Ours, made wider by an earlier version run under a loose umask: made private.
        # (Not followed: lstat showed no link, and root_path is writable by us alone.)
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def ensure_file(path: Path, size: int) -> bool:
    """Create a sparse file of `size` bytes unless it exists; True when it was created. The
    file and its directory are checked as `_check_own` says, never followed."""
    with contextlib.suppress(FileExistsError):  # a link there included: checked below
        path.parent.mkdir(parents=True, mode=0o700)
    _check_own(path.parent, directory=True)
    try:
        # O_EXCL: never through a link, nor onto an existing file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        _check_own(path, directory=False)
        return False
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def attached_loop(host: Host, path: Path) -> str | None:
    """The loop device already backed by `path`, if any."""
    completed = host.run(["losetup", "--noheadings", "--output", "NAME", "--associated",
                          str(path)])
    if not completed.ok:
        raise tool_failed(f"losetup --associated {path}", completed)
    return parse_losetup_name(completed.stdout)


def attach_loop(host: Host, path: Path) -> tuple[str, bool]:
    """Attach `path` to a loop device, reusing an existing attachment; (device, attached now)."""
    existing = attached_loop(host, path)
    if existing is not None:
        return existing, False
    completed = host.run(["losetup", "--find", "--show", str(path)])
    if not completed.ok:
        raise tool_failed(f"losetup --find {path}", completed)
    device = parse_losetup_name(completed.stdout)
    if device is None:
        raise tool_failed(f"losetup --find {path}", completed)
    return device, True


def parse_losetup_name(text: str) -> str | None:
    """`losetup --noheadings --output NAME --associated FILE`: the loop device, if attached."""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        return None
    for name in names:
        if not name.startswith("/dev/loop"):
            raise ToolError("parse", detail=f"field 'NAME' (loop device path): unexpected "
                            f"{name!r} in {text!r}")
    return names[0]

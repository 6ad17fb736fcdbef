"""Loopback pools: sparse files under root_path attached to loop devices by the daemon itself.

An existing attachment of the same file is reused, so restarting the daemon never stacks a
second loop device on a file.
"""

from __future__ import annotations

import os
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


def ensure_file(path: Path, size: int) -> bool:
    """Create a sparse file of `size` bytes unless it exists; True when it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
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

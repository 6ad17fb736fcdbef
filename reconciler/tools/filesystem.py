"""Filesystems on thin devices: make (mkfs), grow (e2fsck and resize2fs; xfs_growfs on a
temporary mount), discard, count inodes.

Run through the Host like every other program; a failure is a ToolError."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from reconciler.dm.host import Completed, Host
from reconciler.tools.errors import ToolError, tool_failed

log = structlog.get_logger(__name__)

# -F/-f: the device is a fresh thin volume of ours; mkfs would otherwise ask on a terminal
# when it finds an old signature in recycled pool blocks.
_MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}


# debugfs prints its banner on stderr even when all went well.
_DEBUGFS_BANNER = re.compile(r"^debugfs \S+ \(.*\)$")


def make_filesystem(host: Host, fs_type: str, device: str, options: Sequence[str] = ()) -> None:
    """Run mkfs for `fs_type` on `device` and leave its root directory empty, as containerd
    expects of a snapshot without a parent; raises a classified ToolError on failure."""
    argv = [*_MKFS[fs_type], *options, device]
    completed = host.run(argv)
    if not completed.ok:
        raise tool_failed(f"mkfs.{fs_type} {device}", _first_meaningful_line(completed))
    if fs_type == "ext4":
        remove_lost_and_found(host, device)


def remove_lost_and_found(host: Host, device: str) -> None:
    """mkfs.ext4 makes /lost+found; containerd's contract is an empty root (its devmapper
    removes it too). Done offline with debugfs, so no mount is needed; e2fsck makes the
    directory again should it ever need one. (mkfs.xfs makes none.)"""
    completed = host.run(["debugfs", "-w", "-R", "rmdir lost+found", device])
    # debugfs exits 0 whatever its command did: anything besides its banner is an error.
    said = [line for line in (completed.stderr + completed.stdout).splitlines()
            if line.strip() and not _DEBUGFS_BANNER.match(line.strip())]
    if not completed.ok or said:
        raise tool_failed(f"debugfs {device} (rmdir lost+found)",
                       dataclasses.replace(completed, stderr="\n".join(said) or
                                           completed.stderr))


def _first_meaningful_line(completed: Completed) -> Completed:
    """A failed mkfs's stderr cut to the line that says why: mkfs.xfs follows its reason
    with its whole usage text, and precedes it with notes ("... ignoring ...")."""
    lines = []
    for line in completed.stderr.splitlines():
        if line.startswith("Usage:"):
            break
        if line.strip():
            lines.append(line.strip())
    reasons = [line for line in lines if "ignoring" not in line] or lines
    if not reasons:
        return completed
    return dataclasses.replace(completed, stderr=reasons[0])


def grow_filesystem(host: Host, fs_type: str, device: str, mounts: Path) -> bool:
    """Grow a filesystem nobody has mounted to fill its device: ext4 offline (e2fsck, then
    resize2fs), xfs on a temporary mount of our own under `mounts` (xfs grows only while
    mounted; `undo_grow_mounts` looks there for one a crash left). False for a filesystem we
    cannot grow."""
    if fs_type == "xfs":
        _grow_xfs(host, device, mounts)
        return True
    if fs_type != "ext4":
        return False
    # resize2fs insists on a freshly checked filesystem when it is not mounted.
    checked = host.run(["e2fsck", "-f", "-p", device])
    # e2fsck: 0 clean, 1 errors corrected; anything else needs a person.
    if checked.rc not in (0, 1):
        raise tool_failed(f"e2fsck {device}", checked)
    grown = host.run(["resize2fs", device])
    if not grown.ok:
        raise tool_failed(f"resize2fs {device}", grown)
    return True


def _grow_xfs(host: Host, device: str, mounts: Path) -> None:
    """Mount the device on a directory only we use, xfs_growfs it, unmount it. `nouuid`:
    every snapshot of a parent carries its filesystem's UUID, and another may be mounted."""
    mounts.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdtemp: a new directory of mode 0700, so nothing else finds or uses the mount.
    point = tempfile.mkdtemp(prefix="reconciler-grow-", dir=mounts)
    mounted = host.run(["mount", "-t", "xfs", "-o", "nouuid", device, point])
    if not mounted.ok:
        os.rmdir(point)
        raise tool_failed(f"mount {device} (to grow its xfs)", mounted)
    # From here the directory goes only once unmounted: one left (a crash, a failed umount)
    # is how undo_grow_mounts finds the mount.
    try:
        grown = host.run(["xfs_growfs", point])
        if not grown.ok:
            raise tool_failed(f"xfs_growfs {device}", grown)
    finally:
        unmounted = host.run(["umount", point])
        if unmounted.ok:
            os.rmdir(point)
    if not unmounted.ok:
        raise tool_failed(f"umount {point} ({device}, mounted to grow its xfs)", unmounted)


def undo_grow_mounts(host: Host, mounts: Path) -> list[str]:
    """Unmount and remove what a crash left under `mounts` while it grew an xfs (the mount
    holds the device open, and an open device is never grown); the mount points undone.
    One that will not go is left, and the next start tries again."""
    undone = []
    for point in sorted(mounts.glob("reconciler-grow-*")) if mounts.is_dir() else []:
        unmounted = host.run(["umount", str(point)])
        # util-linux: "not mounted" is exit code 32 too; rmdir tells the two apart.
        with contextlib.suppress(OSError):
            point.rmdir()
            undone.append(str(point))
        if not unmounted.ok and str(point) not in undone:
            log.warning("filesystem.grow_mount_left", mount_point=str(point),
                        error=unmounted.stderr.strip(), next="tried again at the next start")
    return undone


def discard_blocks(host: Host, device: str) -> None:
    """Discard every block of a device: the thin-pool unmaps them, and passes the discards
    down so a loopback pool's data file shrinks (containerd's `discard_blocks`)."""
    completed = host.run(["blkdiscard", device])
    if not completed.ok:
        raise tool_failed(f"blkdiscard {device}", completed)


_EXT4_SUPERBLOCK = 1024
_EXT4_MAGIC = 0xEF53
_XFS_MAGIC = b"XFSB"


def inodes_used(host: Host, device: str) -> int | None:
    """Inodes in use on the ext4 or xfs filesystem of `device`, from its superblock (None when
    it holds neither). While mounted the on-disk counts lag the filesystem's own."""
    try:
        head = host.read(device, 0, 4096)
    except OSError as exc:
        raise ToolError(f"read superblock of {device}", detail=str(exc)) from exc
    if len(head) >= 2048 and struct.unpack_from("<H", head, _EXT4_SUPERBLOCK + 56)[0] \
            == _EXT4_MAGIC:
        total: int = struct.unpack_from("<I", head, _EXT4_SUPERBLOCK)[0]  # s_inodes_count
        free: int = struct.unpack_from("<I", head, _EXT4_SUPERBLOCK + 16)[0]  # s_free_inodes_count
        return max(0, total - free)
    if head[:4] == _XFS_MAGIC and len(head) >= 144:
        # sb_icount and sb_ifree, big-endian, after the fixed geometry fields
        icount: int
        ifree: int
        icount, ifree = struct.unpack_from(">QQ", head, 128)
        return max(0, icount - ifree)
    return None

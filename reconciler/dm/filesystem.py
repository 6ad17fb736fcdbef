"""Making filesystems on thin devices (mkfs), through the Host like every other tool."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.dm.errors import classify
from reconciler.dm.host import Host

# -F/-f: the device is a fresh thin volume of ours; mkfs would otherwise ask on a terminal
# when it finds an old signature in recycled pool blocks.
_MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}


def make_filesystem(host: Host, fs_type: str, device: str, options: Sequence[str] = ()) -> None:
    """Run mkfs for `fs_type` on `device`; raises a classified DmError on failure."""
    argv = [*_MKFS[fs_type], *options, device]
    completed = host.run(argv)
    if not completed.ok:
        raise classify(f"mkfs.{fs_type} {device}", completed)


def grow_filesystem(host: Host, fs_type: str, device: str) -> bool:
    """Grow an unmounted filesystem to fill its device; False when `fs_type` cannot be grown
    unmounted (xfs grows only while mounted, with xfs_growfs)."""
    if fs_type != "ext4":
        return False
    # resize2fs insists on a freshly checked filesystem when it is not mounted.
    checked = host.run(["e2fsck", "-f", "-p", device])
    # e2fsck: 0 clean, 1 errors corrected; anything else needs a person.
    if checked.rc not in (0, 1):
        raise classify(f"e2fsck {device}", checked)
    grown = host.run(["resize2fs", device])
    if not grown.ok:
        raise classify(f"resize2fs {device}", grown)
    return True

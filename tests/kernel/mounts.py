"""mount(8) and umount(8) of a snapshotter's Mount, for the kernel tests that mount what a
Prepare or View returned (as `ctr snapshots mounts ... | sh` does)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.snapshots import Mount


def mount(spec: Mount, target: Path) -> None:
    """Mount `spec` on `target` (made if missing); raises when mount(8) fails."""
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", spec.type, "-o", ",".join(spec.options), spec.source,
                    str(target)], check=True, capture_output=True)


def umount(target: Path) -> None:
    """Unmount `target`; raises when umount(8) fails."""
    subprocess.run(["umount", str(target)], check=True, capture_output=True)

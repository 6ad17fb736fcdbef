"""Data through real mounts: what a snapshot shows, and that it is independent of its parent."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.testing.world import World

pytestmark = pytest.mark.kernel


@contextmanager
def mounted(device: str, target: Path, readonly: bool = False) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    options = ["-o", "ro"] if readonly else []
    subprocess.run(["mount", *options, device, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_snapshot_sees_parent_data_and_keeps_its_own(real_world: World, tmp_path: Path) -> None:
    """A file in the parent shows in the snapshot; a file written in the snapshot reads back
    there and never appears in the parent."""
    world = real_world
    world.spec("web-base", 'size = "64MiB"\n')
    assert world.run_pass().ok
    base = f"/dev/mapper/{world.pool}-web-base"
    with mounted(base, tmp_path / "base") as mnt:
        (mnt / "from-base.txt").write_text("written in the parent\n")
        subprocess.run(["sync"], check=True)
    world.spec("web-1", 'parent = "web-base"\n')
    assert world.run_pass().ok
    snap = f"/dev/mapper/{world.pool}-web-1"
    payload = "written through the snapshot's mount\n" * 100
    with mounted(snap, tmp_path / "snap") as mnt:
        assert (mnt / "from-base.txt").read_text() == "written in the parent\n"
        (mnt / "from-snap.txt").write_text(payload)
    with mounted(snap, tmp_path / "snap", readonly=True) as mnt:
        assert (mnt / "from-snap.txt").read_text() == payload
    with mounted(base, tmp_path / "base", readonly=True) as mnt:
        assert not (mnt / "from-snap.txt").exists()

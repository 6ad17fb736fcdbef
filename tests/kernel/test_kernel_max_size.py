"""containerd's `containerd.io/snapshot/max-size` on the real kernel: a Prepare asking for 4x
base_image_size gives a mounted filesystem of that size (ext4 grown by resize2fs, xfs by
xfs_growfs on a temporary mount), holding more than the base could, and its data survives
Commit into a child. (The label's rules on the fake kernel: tests/unit/snapshots/
test_max_size.py.)"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.dm.host import SystemHost
from reconciler.snapshots import Snapshotter
from reconciler.snapshots.sizes import MAX_SIZE_LABEL
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from reconciler.tools.loopback import LoopbackFiles
from reconciler.units import Bytes
from tests.kernel.mounts import mount, umount

pytestmark = pytest.mark.kernel

MIB = 1 << 20
# (base_image_size, bytes written) per filesystem: xfs makes nothing under 300 MiB. The file
# is larger than the base, so only a grown filesystem can hold it; no more is written than
# that, as the pool's data file is sparse and the VM's memory holds what it is given.
CASES = {"ext4": (64 * MIB, 100 * MIB), "xfs": (320 * MIB, 400 * MIB)}
# How much of the device a filesystem may keep for itself and not count in statvfs's
# f_blocks: ext4's journal and inode tables, xfs's internal log (each a few percent at
# these sizes). A filesystem that was not grown is a quarter of the device: far outside.
OVERHEAD = 0.10


@pytest.fixture
def kworld(tmp_path: Path) -> Iterator[World]:
    if not KERNEL_AVAILABLE:
        pytest.skip("needs device-mapper and root")
    settings = make_settings(tmp_path, f"rm{secrets.token_hex(3)}", dm_driver="libdevmapper",
                             loopback_data_size="2GiB")
    created = World(host=SystemHost(), settings=settings, real=True)
    try:
        yield created
    finally:
        created.teardown()
        # The pool's data file holds what the test wrote in the VM's RAM: give it back to the
        # tests that follow.
        files = LoopbackFiles.under(settings.root_path)
        files.data.unlink(missing_ok=True)
        files.metadata.unlink(missing_ok=True)


def filesystem_bytes(target: Path) -> int:
    st = os.statvfs(target)
    return st.f_blocks * st.f_frsize


def write_file(path: Path, size: int) -> str:
    """Write `size` bytes (1 MiB of random data, again and again, each with its index), fsync
    it; its sha256."""
    chunk = os.urandom(MIB)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(size // MIB):
            block = index.to_bytes(8, "little") + chunk[8:]
            out.write(block)
            digest.update(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def snapshotter(world: World) -> Snapshotter:
    return snapshotter_over(world.reconciler(), sleep=time.sleep)


@pytest.mark.parametrize("fs_type", sorted(CASES))
def test_max_size_grows_the_filesystem_and_commit_keeps_it(kworld: World, tmp_path: Path,
                                                           fs_type: str) -> None:
    """max-size = 4x base_image_size: statvfs shows a filesystem of that size (less the
    filesystem's own overhead), a file larger than the base fits, Stat and Walk show the
    label, and a child of the committed snapshot has the file and the size."""
    base, written = CASES[fs_type]
    wanted = 4 * base
    kworld.settings = dataclasses.replace(kworld.settings, fs_type=fs_type,
                                          base_image_size=Bytes(base))
    snaps = snapshotter(kworld)
    labels = {MAX_SIZE_LABEL: str(wanted)}
    started = time.monotonic()
    (spec,) = snaps.prepare("big", labels=labels)
    prepared = time.monotonic() - started
    target = tmp_path / "big"
    mount(spec, target)
    try:
        grown = filesystem_bytes(target)
        print(f"\n{fs_type}: base {base} bytes, label {wanted}, statvfs {grown} "
              f"({grown / wanted:.3f} of the label), Prepare {prepared:.1f} s")
        assert wanted * (1 - OVERHEAD) <= grown <= wanted
        digest = write_file(target / "data", written)
    finally:
        umount(target)
    assert snaps.stat("big").labels == labels
    assert [info.labels for info in snaps.walk()] == [labels]
    assert snaps.usage("big").size >= written, "the snapshot's own blocks: the file"

    snaps.commit("layer", "big")
    assert snaps.usage("layer").size >= written
    (child,) = snaps.prepare("child", "layer")
    target = tmp_path / "child"
    mount(child, target)
    try:
        assert filesystem_bytes(target) == grown, "a child is its parent's size"
        assert (target / "data").stat().st_size == written
        assert sha256(target / "data") == digest
    finally:
        umount(target)
    snaps.remove("child")
    snaps.remove("layer")
    assert snaps.walk() == []

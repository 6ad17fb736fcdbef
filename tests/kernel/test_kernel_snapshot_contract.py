"""The snapshotter's contract on the real kernel, through the Python API with each driver:
empty new filesystems (ext4 and xfs; roots are snapshots of one base), Commit while mounted
(flush and deferred remove), a child of a parent still mounted, Remove refused while open, and
a deferred removal in flight across a crash. (Over gRPC, as containerd calls it:
tests/kernel/test_kernel_conformance.py.)"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from reconciler.dm.host import Completed, SystemHost
from reconciler.dm.libdm import LibdmClient
from reconciler.snapshots import FailedPrecondition, Snapshotter
from reconciler.states import DeviceState
from reconciler.store import Store
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from tests.kernel.mounts import mount, umount

pytestmark = pytest.mark.kernel


@pytest.fixture(params=["libdevmapper", "dmsetup"])
def kworld(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if not KERNEL_AVAILABLE:
        pytest.skip("needs device-mapper and root")
    settings = make_settings(tmp_path, f"rc{secrets.token_hex(3)}", dm_driver=request.param,
                             base_image_size="300MiB", loopback_data_size="1GiB")
    created = World(host=SystemHost(), settings=settings, real=True)
    try:
        yield created
    finally:
        created.teardown()


class CountingHost(SystemHost):
    """The real machine, keeping the name of each program it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.programs: list[str] = []

    def run(self, argv: Sequence[str]) -> Completed:
        self.programs.append(argv[0])
        return super().run(argv)


def snapshotter(world: World) -> Snapshotter:
    # Real sleeps between retries: a remove right after a create can meet udev's EBUSY once.
    return snapshotter_over(world.reconciler(), sleep=time.sleep)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
def test_a_fresh_snapshot_is_empty(kworld: World, tmp_path: Path, fs_type: str) -> None:
    """No lost+found, root 0755 owned by root: the empty directory containerd expects."""
    kworld.settings = dataclasses.replace(kworld.settings, fs_type=fs_type)
    snaps = snapshotter(kworld)
    (spec,) = snaps.prepare("fresh")
    assert spec.type == fs_type and spec.options[0] == "rw"
    target = tmp_path / "m"
    mount(spec, target)
    try:
        assert os.listdir(target) == []
        st = os.stat(target)
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o755", 0, 0)
    finally:
        umount(target)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
def test_root_snapshots_of_one_base_are_apart(kworld: World, tmp_path: Path,
                                              fs_type: str) -> None:
    """Two roots are snapshots of one inactive base: both mount at once (xfs: one UUID, so
    nouuid), each empty and 0755 root:root, and a file written in one is not in the other."""
    kworld.settings = dataclasses.replace(kworld.settings, fs_type=fs_type)
    snaps = snapshotter(kworld)
    (one,) = snaps.prepare("one")
    (two,) = snaps.prepare("two")
    assert kworld.store is not None
    (base,) = kworld.store.bases()
    device = kworld.store.device(base.name)
    assert device is not None and device.state == DeviceState.DEACTIVATED
    first, second = tmp_path / "one", tmp_path / "two"
    mount(one, first)
    try:
        mount(two, second)
        try:
            (first / "file").write_text("one")
            for target in (first, second):
                st = os.stat(target)
                assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o755", 0, 0)
            assert os.listdir(second) == []
        finally:
            umount(second)
    finally:
        umount(first)


def test_commit_while_mounted_then_a_child_then_remove(kworld: World, tmp_path: Path) -> None:
    """Commit with the mount still open: Deactivated with a deferred remove, not Faulty;
    a child made meanwhile sees the data; Remove is refused while open; the unmount takes the
    device away; then Remove deletes it."""
    snaps = snapshotter(kworld)
    (spec,) = snaps.prepare("extract")
    target = tmp_path / "layer"
    mount(spec, target)
    unmounted = False
    try:
        (target / "file").write_bytes(b"written before commit")
        snaps.commit("layer", "extract")
        assert kworld.store is not None
        record = kworld.store.snapshot_by_key("layer")
        assert record is not None
        device = kworld.store.device(record.name)
        assert device is not None
        assert (device.state, device.error) == (DeviceState.DEACTIVATED, None)
        kname = spec.source.removeprefix("/dev/mapper/")
        info = LibdmClient().info(kname)
        assert info is not None and info.open_count >= 1 and info.deferred_remove
        report = {d["name"]: d for d in kworld.report()["devices"]}[record.name]
        assert report["deferred_removal"] is True

        (child,) = snaps.prepare("work", "layer")
        child_target = tmp_path / "child"
        mount(child, child_target)
        try:
            assert (child_target / "file").read_bytes() == b"written before commit"
        finally:
            umount(child_target)
        snaps.remove("work")

        with pytest.raises(FailedPrecondition, match="in use"):
            snaps.remove("layer")
        assert snaps.stat("layer").name == "layer"

        # A crash after the deferred remove, before Deactivated was written: the step runs
        # again and ends the same, still waiting for the mount.
        device.state = DeviceState.DEACTIVATING
        kworld.store.save_device(device)
        kworld.store.close()
        kworld.store = Store(kworld.settings.database_path, kworld.clock)
        result = kworld.run_pass()
        assert result.ok and not result.faulty
        again = kworld.store.device(record.name)
        assert again is not None and again.state == DeviceState.DEACTIVATED
        info = LibdmClient().info(kname)
        assert info is not None and info.deferred_remove

        umount(target)
        unmounted = True
        for _ in range(50):  # the kernel removes it from a work queue after the last close
            if LibdmClient().info(kname) is None:
                break
            time.sleep(0.1)
        assert LibdmClient().info(kname) is None
        snaps = snapshotter(kworld)
        snaps.remove("layer")
        assert snaps.walk() == []
    finally:
        if not unmounted:
            subprocess.run(["umount", str(target)], capture_output=True)


def test_commit_runs_no_thin_ls_and_usage_says_what_the_layer_wrote(kworld: World,
                                                                     tmp_path: Path) -> None:
    """Three layers, each N MiB of random data written into an active snapshot: their Commits
    run no thin_ls; a child's Prepare measures all three in one thin_ls (before its snapshot
    shares the parent's blocks); each layer's Usage then says at least its N MiB, from the
    store."""
    counting = CountingHost()
    kworld.host = counting
    snaps = snapshotter(kworld)
    written = {"a": 4, "b": 2, "c": 3}
    for key, mib in written.items():
        (spec,) = snaps.prepare(key)
        target = tmp_path / key
        mount(spec, target)
        try:
            with (target / "random").open("wb") as out:
                out.write(os.urandom(mib << 20))
                out.flush()
                os.fsync(out.fileno())
        finally:
            umount(target)
    before = counting.programs.count("thin_ls")
    for key in written:
        snaps.commit(f"layer-{key}", key)
    assert counting.programs.count("thin_ls") == before, "a Commit ran thin_ls"
    snaps.prepare("child", "layer-c")
    assert counting.programs.count("thin_ls") == before + 1
    for key, mib in written.items():
        usage = snaps.usage(f"layer-{key}")
        assert usage.size >= mib << 20, (key, usage)
    assert counting.programs.count("thin_ls") == before + 1, "measured once, then stored"
    assert snaps.usage("child").size < 1 << 20, "the child wrote nothing of its own"

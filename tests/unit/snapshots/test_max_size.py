"""containerd's `containerd.io/snapshot/max-size` label: a Prepare that asks for a larger
device gets its thin device and filesystem grown to that size (ext4 and xfs), the size is kept
by Commit and inherited by children, and a value that cannot be honoured is InvalidArgument
naming the label, before anything is stored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.daemon.once import run_until_settled
from reconciler.dm.crash import CrashingHost, CrashPoint
from reconciler.reconcile.reconciler import Reconciler
from reconciler.snapshots import InvalidArgument, Kind, Snapshotter, Unavailable
from reconciler.snapshots.sizes import MAX_SIZE_LABEL, max_size
from reconciler.store import Store
from reconciler.testing.crashing import SimulatedCrash, simulated_crash
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import FakeClock, World, make_settings
from reconciler.units import MAX_SIZE, Bytes

MIB = 1 << 20
PARENT = 64 * MIB


@pytest.fixture
def world(fake_world: World) -> World:
    """The fake kernel only: these tests read what it keeps of filesystems and mounts."""
    return fake_world


def snapshotter(world: World) -> Snapshotter:
    return snapshotter_over(world.reconciler(), sleep=world.clock.sleep)


def fake(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    return world.host


def sizes(world: World, key: str) -> tuple[int, int, int, int | None]:
    """(record size, record filesystem size, table length in bytes, the filesystem's own
    size as its superblock says) of a snapshot's device."""
    assert world.store is not None
    snap = world.store.snapshot_by_key(key)
    assert snap is not None
    device = world.store.device(snap.name)
    assert device is not None
    kernel_name = f"{world.pool}-{snap.name}"
    live = fake(world).devices[kernel_name].live
    assert live is not None
    return (device.size_bytes, device.fs_size_bytes, live.length * 512,
            fake(world).filesystem_size(kernel_name))


@pytest.mark.parametrize(("value", "wanted"), [
    (None, PARENT),                                  # no label: the parent's size
    (str(PARENT), PARENT),                           # equal: nothing to grow
    (str(256 * MIB), 256 * MIB),
    ("0000268435456", 256 * MIB),                    # leading zeros are still decimal
    (str(256 * MIB + 100), 256 * MIB),               # rounded down to a whole sector
    (str(PARENT + 511), PARENT),                     # rounds down to the parent's: equal
    (str(MAX_SIZE), MAX_SIZE),                       # the largest any size may be
])
def test_the_label_gives_the_size(value: str | None, wanted: int) -> None:
    """A decimal number of bytes at least the parent's is the device's size, in whole
    512-byte sectors (never more than asked: it is a maximum)."""
    labels = {} if value is None else {MAX_SIZE_LABEL: value}
    assert max_size(labels, Bytes(PARENT)) == wanted


@pytest.mark.parametrize("value", [
    "", " 268435456", "268435456 ", "+268435456", "-1", "0", "256MiB", "1e9", "0x10000000",
    "2.5e8", "\uff12\uff15\uff16", str(PARENT - 512), str(PARENT - 1), str(MAX_SIZE + 512),
    "9" * 30,
])
def test_a_value_that_cannot_be_honoured_is_refused(value: str) -> None:
    """Not a plain decimal, zero, below the parent's size or beyond 1 EiB: InvalidArgument,
    and the message names the label and the value."""
    with pytest.raises(InvalidArgument, match=MAX_SIZE_LABEL) as caught:
        max_size({MAX_SIZE_LABEL: value}, Bytes(PARENT))
    assert repr(value[:20]) in str(caught.value) or value[:20] in str(caught.value)


def test_a_root_prepare_grows_device_and_ext4(world: World) -> None:
    """max-size of 4x base_image_size: the thin device and its ext4 are that size, and Stat
    shows the label as containerd stored it."""
    snaps = snapshotter(world)
    labels = {MAX_SIZE_LABEL: str(4 * PARENT), "containerd.io/snapshot/x": "y"}
    (mount,) = snaps.prepare("big", labels=labels)
    assert mount.options == ("rw",)
    assert sizes(world, "big") == (4 * PARENT, 4 * PARENT, 4 * PARENT, 4 * PARENT)
    assert snaps.stat("big").labels == labels
    assert [info.labels for info in snaps.walk()] == [labels]
    shown = {d["snapshot"]["key"]: d["size_bytes"] for d in world.report()["devices"]
             if d["snapshot"] is not None}
    assert shown["big"] == 4 * PARENT, "status shows the size as for any device"
    assert world.store is not None
    (base,) = world.store.bases()
    assert base.size_bytes == PARENT, "the base keeps the config's size"


def test_a_root_prepare_grows_xfs_on_a_private_mount(world: World) -> None:
    """xfs grows only mounted: xfs_growfs on a temporary mount (nouuid) that is gone after,
    and the device is left closed; no notice asks anyone to grow it."""
    world.settings = replace(world.settings, fs_type="xfs", base_image_size=Bytes(300 * MIB))
    snaps = snapshotter(world)
    start = len(fake(world).calls)
    snaps.prepare("big", labels={MAX_SIZE_LABEL: str(1200 * MIB)})
    assert sizes(world, "big") == (1200 * MIB, 1200 * MIB, 1200 * MIB, 1200 * MIB)
    programs = [c[0] for c in fake(world).calls[start:] if c[0] in ("mount", "xfs_growfs",
                                                                      "umount")]
    assert programs == ["mount", "xfs_growfs", "umount"]
    mount = next(c for c in fake(world).calls[start:] if c[0] == "mount")
    assert "nouuid" in ",".join(mount)
    assert world.store is not None
    snap = world.store.snapshot_by_key("big")
    assert snap is not None
    device = world.store.device(snap.name)
    assert device is not None and device.notice is None
    kernel = fake(world)
    assert kernel.model.open_count(kernel.devices[f"{world.pool}-{snap.name}"]) == 0
    assert fake(world).mounted() == {}


def test_commit_keeps_the_size_and_a_child_inherits_it(world: World) -> None:
    """The committed snapshot is the larger size; a child prepared of it without the label is
    that size too, with no second grow; a child with an equal label is no different."""
    snaps = snapshotter(world)
    snaps.prepare("big", labels={MAX_SIZE_LABEL: str(4 * PARENT)})
    snaps.commit("layer", "big")
    assert world.store is not None
    committed = world.store.snapshot_by_key("layer")
    assert committed is not None and committed.kind == Kind.COMMITTED
    assert committed.size_bytes == 4 * PARENT
    start = len(fake(world).calls)
    snaps.prepare("child", "layer")
    snaps.prepare("same", "layer", labels={MAX_SIZE_LABEL: str(4 * PARENT)})
    assert sizes(world, "child") == (4 * PARENT,) * 4
    assert sizes(world, "same") == (4 * PARENT,) * 4
    assert not [c for c in fake(world).calls[start:] if c[0] in ("resize2fs", "e2fsck")]
    grown = snaps.prepare("bigger", "layer", labels={MAX_SIZE_LABEL: str(8 * PARENT)})
    assert grown and sizes(world, "bigger") == (8 * PARENT,) * 4


def test_a_child_below_its_parent_is_refused_and_nothing_stored(world: World) -> None:
    """A value below the parent's (larger) size: InvalidArgument naming the label; no row,
    no device, no sequence number taken."""
    snaps = snapshotter(world)
    snaps.prepare("big", labels={MAX_SIZE_LABEL: str(4 * PARENT)})
    snaps.commit("layer", "big")
    assert world.store is not None
    rows = [(r.key, r.kind) for r in world.store.live_snapshots()]
    devices = {d.name for d in world.store.devices()}
    for value in (str(2 * PARENT), "big", "0"):
        with pytest.raises(InvalidArgument, match=MAX_SIZE_LABEL):
            snaps.prepare("small", "layer", labels={MAX_SIZE_LABEL: value})
    assert [(r.key, r.kind) for r in world.store.live_snapshots()] == rows
    assert {d.name for d in world.store.devices()} == devices


def test_an_invalid_root_label_stores_not_even_the_base(world: World) -> None:
    """A root Prepare refused for its label leaves the store empty: the label is checked
    against base_image_size before the base is wanted."""
    snaps = snapshotter(world)
    with pytest.raises(InvalidArgument, match=MAX_SIZE_LABEL):
        snaps.prepare("root", labels={MAX_SIZE_LABEL: "-5"})
    assert world.store is not None
    assert world.store.bases() == [] and world.store.devices() == []


def test_a_view_ignores_the_label(world: World) -> None:
    """A view is read-only (containerd's label is for active snapshots): its device is its
    parent's size whatever the label says, and the label is kept."""
    snaps = snapshotter(world)
    snaps.prepare("base")
    snaps.commit("layer", "base")
    labels = {MAX_SIZE_LABEL: str(4 * PARENT)}
    snaps.view("look", "layer", labels=labels)
    assert world.store is not None
    snap = world.store.snapshot_by_key("look")
    assert snap is not None and snap.size_bytes == PARENT
    assert snaps.stat("look").labels == labels


@pytest.mark.parametrize("point", [CrashPoint("after", "mount", 1),
                                   CrashPoint("after", "xfs_growfs", 1),
                                   CrashPoint("before", "umount", 1)],
                         ids=["after-mount", "after-xfs_growfs", "before-umount"])
def test_a_crash_while_xfs_is_mounted_to_grow_is_undone(tmp_path: Path,
                                                        point: CrashPoint) -> None:
    """A crash with the temporary mount still there: the restart unmounts it (before it
    observes the kernel), the device is closed, and the grow is finished."""
    settings = make_settings(tmp_path, "cx", fs_type="xfs", base_image_size="300MiB",
                             loopback_data_size="2GiB")
    world = World(host=FakeKernel(), settings=settings, real=False, clock=FakeClock())
    try:
        assert world.store is not None
        world.store.close()
        crashing = CrashingHost(world.host, point, crash=simulated_crash)
        doomed = Reconciler(world.settings, crashing,
                            Store(world.settings.database_path, world.clock), clock=world.clock)
        with pytest.raises(SimulatedCrash):
            snapshotter_over(doomed, sleep=world.clock.sleep).prepare(
                "big", labels={MAX_SIZE_LABEL: str(1200 * MIB)})
        assert fake(world).mounted() != {} or point.kind == "xfs_growfs"

        world.store = Store(world.settings.database_path, world.clock)  # the restart
        engine = world.reconciler()
        assert run_until_settled(engine, world.clock, world.clock.sleep).ok
        assert fake(world).mounted() == {}
        assert sizes(world, "big") == (1200 * MIB,) * 4
        assert list((tmp_path / "state" / "grow").iterdir()) == []
    finally:
        world.teardown()


def test_a_grow_that_fails_answers_unavailable_and_leaves_nothing(world: World) -> None:
    """resize2fs refusing (say the pool cannot hold the new metadata): Prepare answers
    Unavailable with the tool's reason, and the half-made snapshot is removed again."""
    snaps = snapshotter(world)
    snaps.prepare("base")
    snaps.commit("layer", "base")
    fake(world).fail_next(("resize2fs",), 1, "resize2fs: No space left on device while "
                          "trying to resize\n", times=10)
    with pytest.raises(Unavailable, match="resize2fs"):
        snaps.prepare("big", "layer", labels={MAX_SIZE_LABEL: str(4 * PARENT)})
    assert [info.name for info in snaps.walk()] == ["layer"]
    assert world.kernel_names() == set()

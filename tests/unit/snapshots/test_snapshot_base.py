"""Root snapshots come from a base: a formatted, empty filesystem made once, so a Prepare or
View without a parent runs no mkfs (issue 15). On the fake kernel; the real kernel's empty
root and mode are checked by tests/kernel/test_kernel_conformance.py and the snapshot contract."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.daemon.service import Daemon
from reconciler.daemon.waiters import Parked, Waiters
from reconciler.daemon.wakeups import Wakeups
from reconciler.snapshots import (
    AlreadyExists,
    Kind,
    NotFound,
    Snapshotter,
    Unavailable,
)
from reconciler.snapshots.base import base_key, base_ready
from reconciler.specs import Defaults, SpecError, is_snapshot_device, parse_spec
from reconciler.store import DeviceRecord, SnapshotRecord, Store
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World, make_settings
from reconciler.units import Bytes
from reconciler.vocabulary import DeviceState, Filesystem, ThinId


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """The fake kernel driven through dmsetup, so every kernel call is an argv to count."""
    created = World(host=FakeKernel(), settings=make_settings(tmp_path, "bp"), real=False)
    try:
        yield created
    finally:
        created.teardown()


def snapshotter(world: World) -> Snapshotter:
    return snapshotter_over(world.reconciler(), sleep=world.clock.sleep)


def calls_of(world: World, start: int, *prefix: str) -> list[tuple[str, ...]]:
    fake = world.host
    assert isinstance(fake, FakeKernel)
    return [c for c in fake.calls[start:] if c[:len(prefix)] == prefix]


def mark(world: World) -> int:
    fake = world.host
    assert isinstance(fake, FakeKernel)
    return len(fake.calls)


def test_root_prepare_runs_no_mkfs_once_the_base_is_made(world: World) -> None:
    """The first root Prepare makes the base (one mkfs, one rmdir of lost+found); every later
    root Prepare or View is a snapshot of it: no mkfs, no debugfs, no suspend."""
    snaps = snapshotter(world)
    first = mark(world)
    snaps.prepare("one")
    assert len(calls_of(world, first, "mkfs.ext4")) == 1
    assert len(calls_of(world, first, "debugfs")) == 1
    later = mark(world)
    mounts = snaps.prepare("two") + snaps.view("three")
    assert calls_of(world, later, "mkfs.ext4") == []
    assert calls_of(world, later, "debugfs") == []
    # The base rests inactive: no origin to suspend around create_snap.
    assert calls_of(world, later, "dmsetup", "suspend") == []
    fake = world.host
    assert isinstance(fake, FakeKernel)
    for mount in mounts:
        name = mount.source.removeprefix("/dev/mapper/")
        assert fake.filesystem(name) == "ext4"
    assert [m.options for m in mounts] == [("rw",), ("ro",)]


def test_root_snapshot_is_a_snapshot_of_the_base_and_stays_a_root(world: World) -> None:
    """Its device's parent is the base; containerd still sees no parent, and Walk, Stat and
    keys never show the base."""
    snaps = snapshotter(world)
    snaps.prepare("root")
    assert world.store is not None
    (base,) = world.store.bases()
    assert base.name == "snap-base-1" and base.kind == Kind.BASE
    root = world.store.snapshot_by_key("root")
    assert root is not None and root.name == "snap-1"
    assert root.parent == base.name and root.parent_key is None
    assert snaps.stat("root").parent == ""
    assert [i.name for i in snaps.walk()] == ["root"]
    with pytest.raises(NotFound):
        snaps.stat(base.key)
    device = world.store.device(base.name)
    assert device is not None and device.state == "Deactivated" and device.formatted
    assert world.kernel_names() == {"bp-snap-1"}


def test_status_shows_the_base_as_the_snapshotters(world: World) -> None:
    """`status` lists the base with kind "base" and the filesystem it holds as its key."""
    snapshotter(world).prepare("root")
    devices = {d["name"]: d for d in world.report()["devices"]}
    base = devices["snap-base-1"]
    assert base["snapshot"]["kind"] == "base"
    assert base["snapshot"]["key"] == "ext4 64MiB"
    assert base["state"] == "Deactivated" and base["error"] is None
    assert devices["snap-1"]["parent"] == "snap-base-1"
    assert devices["snap-1"]["snapshot"]["parent"] is None


def test_a_full_pass_keeps_the_base_and_finds_no_orphan(world: World) -> None:
    """The base is a managed device with a stored spec: a full pass leaves it be, it is no
    orphan, and no removal guard counts it."""
    world.spec("web", 'size = "64MiB"\n')
    snapshotter(world).prepare("root")
    result = world.run_pass()
    assert result.ok and not result.held, result
    report = world.report()
    assert report["orphans"] == {"thin_ids": [], "devices": []}
    assert world.store is not None
    device = world.store.device("snap-base-1")
    assert device is not None and device.state == "Deactivated"


def test_removing_every_root_keeps_the_base(world: World) -> None:
    """Removing root snapshots deletes their devices only; the next root needs no mkfs."""
    snaps = snapshotter(world)
    snaps.prepare("a")
    snaps.remove("a")
    start = mark(world)
    snaps.prepare("b")
    assert calls_of(world, start, "mkfs.ext4") == []
    assert world.store is not None
    device = world.store.device("snap-base-1")
    assert device is not None and device.provisioned


def test_a_new_fs_type_makes_a_new_base_and_retires_the_old(world: World) -> None:
    """Another fs_type (or base_image_size, or fs_options) gets a base of its own; the old
    one is deleted by the next full pass, and roots taken from it stay usable."""
    snapshotter(world).prepare("old")
    world.settings = replace(world.settings, fs_type="xfs", base_image_size=Bytes(300 << 20))
    snaps = snapshotter(world)
    mounts = snaps.prepare("new")
    assert mounts[0].type == "xfs" and "nouuid" in mounts[0].options
    assert world.store is not None
    assert [b.key for b in world.store.bases()] == ["xfs 300MiB"]
    assert world.run_pass().ok
    old_base = world.store.device("snap-base-1")
    assert old_base is not None and old_base.state == "Removed"
    assert {i.name for i in snaps.walk()} == {"old", "new"}
    assert snaps.mounts("old")[0].type == "ext4"
    later = mark(world)
    snaps.prepare("newer")
    assert calls_of(world, later, "mkfs.xfs") == []


def test_a_retired_base_leaves_its_roots_usage_as_written(world: World) -> None:
    """A root committed and not measured yet, then its base retired: the root is measured
    before the base is deleted (after, the blocks mkfs wrote would be the root's alone), so
    its Usage is what it wrote."""
    snaps = snapshotter(world)
    source = snaps.prepare("old")[0].source
    world.host.write(source, 16 << 20, b"\x5a" * (1 << 20))
    snaps.commit("old-layer", "old")
    world.settings = replace(world.settings, fs_type="xfs", base_image_size=Bytes(300 << 20))
    snaps = snapshotter(world)
    snaps.prepare("new")
    assert world.run_pass().ok
    assert world.store is not None
    old_base = world.store.device("snap-base-1")
    assert old_base is not None and old_base.state == "Removed"
    assert snaps.usage("old-layer").size == 1 << 20


def test_a_base_that_cannot_be_made_answers_unavailable(world: World) -> None:
    """A base whose mkfs fails answers the root Prepare Unavailable with the error, stores no
    snapshot; once the base is Faulty it is retired and the next root Prepare makes a new
    one."""
    fake = world.host
    assert isinstance(fake, FakeKernel)
    fake.fail_next(("mkfs.ext4",), 1, "mkfs.ext4: Invalid argument passed to ext2 library\n")
    snaps = snapshotter(world)
    with pytest.raises(Unavailable, match=r"base filesystem.*mkfs\.ext4"):
        snaps.prepare("root")
    assert snaps.walk() == []
    assert world.store is not None
    failed = world.store.device("snap-base-1")
    assert failed is not None and failed.state == "Faulty"
    snaps.prepare("root")
    assert [b.name for b in world.store.bases()] == ["snap-base-2"]
    assert world.run_pass().ok
    gone = world.store.device("snap-base-1")
    assert gone is not None and gone.state == "Removed"


def test_a_full_pool_answers_unavailable_from_the_base(world: World) -> None:
    """The pool refusing the base's thin id is the root Prepare's Unavailable, as it was when
    each root had its own."""
    fake = world.host
    assert isinstance(fake, FakeKernel)
    fake.faults.fail(Op.MESSAGE, world.pool, errno=errno.ENOSPC, verb="create_thin")
    with pytest.raises(Unavailable, match="No space left"):
        snapshotter(world).prepare("root")
    assert snapshotter(world).walk() == []


def test_a_key_taken_while_waiting_for_the_base_is_already_exists(world: World) -> None:
    """Two root Prepares of one key both wait for the base (its create_thin busy once): the
    first gets the snapshot, the second AlreadyExists, never a second row with that key."""
    fake = world.host
    assert isinstance(fake, FakeKernel)
    fake.faults.fail(Op.MESSAGE, world.pool, errno=errno.EBUSY, verb="create_thin")
    waiters = Waiters(Wakeups(), world.clock, lambda: False)
    snaps = snapshotter_over(world.reconciler(), runner=waiters.run)
    with pytest.raises(Parked) as first:
        snaps.prepare("k")
    with pytest.raises(Parked) as second:
        snaps.prepare("k")
    world.clock.now = max(first.value.at, second.value.at)
    assert first.value.call.advance() is None
    assert first.value.call.outcome()[0].source == f"/dev/mapper/{world.pool}-snap-1"
    assert second.value.call.advance() is None
    with pytest.raises(AlreadyExists):
        second.value.call.outcome()
    assert [i.name for i in snaps.walk()] == ["k"]


def test_spec_file_devices_still_get_their_own_mkfs(world: World) -> None:
    """Only snapshotter roots use the base: a spec file without a parent is formatted."""
    start = mark(world)
    world.spec("web", "")
    assert world.run_pass().ok
    assert len(calls_of(world, start, "mkfs.ext4")) == 1
    assert world.store is not None
    assert world.store.bases() == []


def test_the_daemon_makes_the_base_before_serving(tmp_path: Path) -> None:
    """With the snapshotter served, the daemon's first pass makes the base, so containerd's
    first root Prepare is fast too."""
    settings = make_settings(tmp_path, "bp", grpc_socket=str(tmp_path / "s.sock"))
    world = World(host=FakeKernel(), settings=settings, real=False)
    assert world.store is not None
    world.store.close()
    daemon = Daemon(settings, world.host, clock=world.clock, wakeups=Wakeups(settle=0.02))
    try:
        daemon.start()
        world.store = Store(settings.database_path, world.clock)
        assert base_ready(world.store.device("snap-base-1"))
        start = mark(world)
        daemon.snapshotter.prepare("root")
        assert calls_of(world, start, "mkfs.ext4") == []
    finally:
        daemon.close()
        world.teardown()


@pytest.mark.parametrize(("fs_type", "size", "options", "key"), [
    ("ext4", 64 << 20, (), "ext4 64MiB"),
    ("xfs", 1 << 30, (), "xfs 1GiB"),
    ("ext4", (1 << 30) + (512 << 20), (), "ext4 1610612736B"),
    ("ext4", 10 << 30, ("-E", "lazy_itable_init=1"), "ext4 10GiB -E lazy_itable_init=1"),
])
def test_base_key_names_exactly_the_filesystem(fs_type: str, size: int,
                                               options: tuple[str, ...], key: str) -> None:
    """Two configs share a base only if type, exact size and mkfs options all match."""
    assert base_key(fs_type, size, options) == key


@pytest.mark.parametrize(("device", "ready"), [
    (None, False),
    (DeviceRecord("b", state=DeviceState.CREATING, device_id=ThinId(1)), False),
    (DeviceRecord("b", state=DeviceState.ACTIVATED, device_id=ThinId(1), provisioned=True), False),
    (DeviceRecord("b", state=DeviceState.ACTIVATED, device_id=ThinId(1), provisioned=True,
                  formatted=True), True),
    (DeviceRecord("b", state=DeviceState.DEACTIVATED, device_id=ThinId(1), provisioned=True,
                  formatted=True), True),
    (DeviceRecord("b", state=DeviceState.DEACTIVATING, device_id=ThinId(1), provisioned=True,
                  formatted=True), False),
    (DeviceRecord("b", state=DeviceState.FAULTY, device_id=ThinId(1), provisioned=True,
                  formatted=True), False),
])
def test_base_ready_only_when_formatted_and_resting(device: DeviceRecord | None,
                                                    ready: bool) -> None:
    """A base is snapshotted only with its thin id made, formatted and no step in flight."""
    assert base_ready(device) is ready


def test_base_names_are_reserved_and_never_containerds(tmp_path: Path) -> None:
    """snap-base-<n> is the snapshotter's (spec files may not take it), and the store never
    answers a containerd key with a base, nor hands containerd's sequence a base's number."""
    assert is_snapshot_device("snap-base-3")
    with pytest.raises(SpecError, match="snapshotter"):
        parse_spec("snap-base-3", "", Defaults(size=Bytes(1 << 20), filesystem=Filesystem.EXT4))
    store = Store(tmp_path / "db", lambda: 0.0)
    try:
        seq = store.next_base_seq()
        store.save_snapshot(SnapshotRecord(name=f"snap-base-{-seq}", seq=seq, key="k",
                                           kind=Kind.BASE))
        assert seq == -1 and store.next_base_seq() == -2
        assert store.next_snapshot_seq() == 1
        assert store.snapshot_by_key("k") is None
        assert store.live_snapshots() == []
        assert [b.name for b in store.bases()] == ["snap-base-1"]
    finally:
        store.close()

"""containerd's snapshotter contract where our first versions broke it (issue 14), on the fake
kernel through both drivers: Commit while the snapshot is still mounted (flush, deferred
remove, never a fault), Remove of a device still open (refused, as containerd's devmapper),
Info times, empty new filesystems, and xfs's smallest size. The same behaviours run on the
real kernel over gRPC in tests/kernel/test_kernel_conformance.py."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import ConfigError, settings_from_mapping
from reconciler.dm.types import DeviceInfo
from reconciler.reconcile.decide import next_step
from reconciler.reconcile.observe import KernelDevice
from reconciler.snapshots import FailedPrecondition, Kind, Snapshotter, Unavailable
from reconciler.specs import Defaults, SpecError, parse_spec
from reconciler.states import LIVE, DeviceState, Step
from reconciler.store import DeviceRecord
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World, make_settings
from reconciler.tools.errors import ToolError
from reconciler.tools.filesystem import make_filesystem, remove_lost_and_found
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem, ThinId


def kernel_of(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    return world.host


def device_of(world: World, key: str) -> DeviceRecord:
    assert world.store is not None
    snap = world.store.snapshot_by_key(key)
    assert snap is not None
    device = world.store.device(snap.name)
    assert device is not None
    return device


def kname(world: World, device: DeviceRecord) -> str:
    return f"{world.pool}-{device.name}"


def committed_while_mounted(world: World) -> tuple[Snapshotter, str]:
    """A layer written, then committed while its mount is still open; the dm name."""
    snaps = snapshotter_over(world.reconciler(), sleep=world.clock.sleep)
    source = snaps.prepare("extract-1")[0].source
    name = source.removeprefix("/dev/mapper/")
    kernel = kernel_of(world)
    kernel.hold_open(name)  # the caller's mount, left open across the Commit
    world.host.write(source, 4 << 20, b"layer one")
    snaps.commit("layer-1", "extract-1")
    return snaps, name


def test_commit_while_mounted_defers_the_deactivation(fake_world: World) -> None:
    """The device is flushed and left to the kernel's deferred remove: Deactivated, never
    Faulty; status shows it as deactivating (deferred) until the mount closes, then it is
    gone without another pass."""
    snaps, name = committed_while_mounted(fake_world)
    device = device_of(fake_world, "layer-1")
    assert (device.state, device.error) == (DeviceState.DEACTIVATED, None)
    kernel = kernel_of(fake_world)
    assert kernel.devices[name].deferred_remove
    report = {d["name"]: d for d in fake_world.report()["devices"]}[device.name]
    assert report["deferred_removal"] is True

    # More passes leave it as it is: no reactivation, no second remove, nothing pending.
    result = fake_world.run_pass()
    assert result.ok and not result.pending
    assert device_of(fake_world, "layer-1").state == DeviceState.DEACTIVATED
    assert kernel.devices[name].deferred_remove

    kernel.release(name)
    assert name not in kernel.devices, "the kernel removes it at the last close"
    assert fake_world.run_pass().ok
    assert device_of(fake_world, "layer-1").state == DeviceState.DEACTIVATED
    assert snaps.stat("layer-1").kind == Kind.COMMITTED


def test_a_child_of_a_parent_still_mounted_is_made_with_the_origin_suspended(
        fake_world: World) -> None:
    """Prepare and View of the committed parent work while its old mount is open; the
    parent's device is suspended around create_snap (its user could still write) and runs
    again afterwards."""
    snaps, name = committed_while_mounted(fake_world)
    kernel = kernel_of(fake_world)
    child = snaps.prepare("work", "layer-1")[0].source
    view = snaps.view("look", "layer-1")[0].source
    assert fake_world.host.read(child, 4 << 20, 9) == b"layer one"
    assert fake_world.host.read(view, 4 << 20, 9) == b"layer one"
    assert kernel.unsafe_snapshots == []
    assert not kernel.devices[name].suspended
    assert kernel.devices[name].deferred_remove, "still going at its last close"


def test_remove_of_an_open_snapshot_is_refused_and_it_stays(fake_world: World) -> None:
    """As containerd's devmapper: FailedPrecondition while the device is open; the snapshot and
    its device stay. Once closed, Remove deletes it."""
    snaps, name = committed_while_mounted(fake_world)
    with pytest.raises(FailedPrecondition, match=r"in use \(open count 1\); unmount it first"):
        snaps.remove("layer-1")
    assert snaps.stat("layer-1").kind == Kind.COMMITTED
    assert device_of(fake_world, "layer-1").state == DeviceState.DEACTIVATED

    active = snaps.prepare("active-1")[0].source.removeprefix("/dev/mapper/")
    kernel = kernel_of(fake_world)
    kernel.hold_open(active)
    with pytest.raises(FailedPrecondition, match="in use"):
        snaps.remove("active-1")
    kernel.release(active)
    snaps.remove("active-1")

    kernel.release(name)
    snaps.remove("layer-1")
    assert [i.name for i in snaps.walk()] == []
    assert fake_world.kernel_names() == set()


def test_mounts_of_a_committed_snapshot_cancel_a_pending_deferred_remove(
        fake_world: World) -> None:
    """Wanted again (Mounts of the committed snapshot) while its deferred remove waits: the
    removal is cancelled and the device made read-only, so the last close no longer takes it
    away."""
    snaps, name = committed_while_mounted(fake_world)
    mounts = snaps.mounts("layer-1")
    assert mounts[0].options == ("ro",)
    kernel = kernel_of(fake_world)
    assert not kernel.devices[name].deferred_remove
    kernel.release(name)
    assert name in kernel.devices, "still mapped for the read-only mount asked for"
    assert fake_world.host.read(mounts[0].source, 4 << 20, 9) == b"layer one"
    device = device_of(fake_world, "layer-1")
    assert DeviceState(device.state) in LIVE and device.readonly
    live = kernel.devices[name].live
    assert live is not None and live.readonly


def test_a_deferred_removal_in_flight_is_recovered(fake_world: World) -> None:
    """A crash after the deferred remove, before Deactivated was written: the next pass runs
    the step again (the kernel takes a second deferred remove) and ends Deactivated; a reboot
    instead (the device gone) ends the same way."""
    _, name = committed_while_mounted(fake_world)
    assert fake_world.store is not None
    device = device_of(fake_world, "layer-1")
    device.state = DeviceState.DEACTIVATING
    fake_world.store.save_device(device)

    result = fake_world.run_pass()
    assert result.ok and not result.faulty
    assert device_of(fake_world, "layer-1").state == DeviceState.DEACTIVATED
    assert kernel_of(fake_world).devices[name].deferred_remove

    device = device_of(fake_world, "layer-1")
    device.state = DeviceState.DEACTIVATING
    fake_world.store.save_device(device)
    kernel_of(fake_world).reboot()
    assert fake_world.run_pass().ok
    assert device_of(fake_world, "layer-1").state == DeviceState.DEACTIVATED


def test_an_inactive_spec_device_still_mounted_is_not_a_fault(fake_world: World) -> None:
    """The same for spec files: `active = false` on a mounted device defers its removal."""
    fake_world.spec("vol", 'filesystem = "ext4"\n')
    assert fake_world.run_pass().ok
    kernel = kernel_of(fake_world)
    kernel.hold_open(f"{fake_world.pool}-vol")
    fake_world.spec("vol", 'filesystem = "ext4"\nactive = false\n')
    result = fake_world.run_pass()
    assert result.ok and not result.faulty
    assert kernel.devices[f"{fake_world.pool}-vol"].deferred_remove
    kernel.release(f"{fake_world.pool}-vol")
    assert fake_world.kernel_names() == set()


def info(open_count: int, deferred: bool = False) -> KernelDevice:
    return KernelDevice(info=DeviceInfo(
        name="p-a", uuid="RECONCILER-v1-p-1", major=254, minor=1, live_table=True,
        inactive_table=False, suspended=False, readonly=False, open_count=open_count,
        segments=1, events=0, deferred_remove=deferred))


@pytest.mark.parametrize(("kernel", "active", "expected"), [
    (None, False, None),
    (info(0), False, Step.ACTIVATE),  # mapped behind our back: taken back, then deactivated
    (info(1), False, None),  # a deferred remove waiting for its holder (dmsetup can't tell)
    (info(0, deferred=True), False, None),  # libdevmapper reports the flag
    (info(1, deferred=True), True, Step.ACTIVATE),  # wanted again: activation cancels it
])
def test_decide_leaves_a_deferred_removal_to_the_kernel(
        kernel: KernelDevice | None, active: bool, expected: Step | None) -> None:
    record = DeviceRecord(name="a", state=DeviceState.DEACTIVATED, device_id=ThinId(1),
                          provisioned=True, formatted=True, filesystem=Filesystem.EXT4,
                          size_bytes=64 << 20, active=active)
    spec = parse_spec("a", f"active = {str(active).lower()}\n",
                      Defaults(size=Bytes(64 << 20), filesystem=Filesystem.EXT4))
    assert next_step(record, spec, kernel, None) == expected


def test_timestamps_are_containerds(fake_world: World) -> None:
    """Prepare sets both times to one instant; Commit makes a new snapshot whose times are
    both the commit's; Update moves only the updated time."""
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    snaps.prepare("extract-1")
    prepared = snaps.stat("extract-1")
    assert prepared.created_at == prepared.updated_at
    fake_world.clock.now += 30
    snaps.commit("layer-1", "extract-1")
    committed = snaps.stat("layer-1")
    assert committed.created_at == committed.updated_at == fake_world.clock.now
    assert committed.created_at > prepared.created_at
    fake_world.clock.now += 30
    updated = snaps.update(dataclasses.replace(committed, labels={"a": "b"}))
    assert updated.created_at == committed.created_at
    assert updated.updated_at == fake_world.clock.now


def test_a_new_ext4_filesystem_has_its_lost_and_found_removed(fake_world: World) -> None:
    """mkfs.ext4 is followed by debugfs's rmdir of /lost+found (offline, no mount), on the
    device just formatted (the base every root snapshot is taken from); xfs has none."""
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    snaps.prepare("extract-1")
    source = f"/dev/mapper/{fake_world.pool}-snap-base-1"
    calls = kernel_of(fake_world).calls
    made = [i for i, c in enumerate(calls) if c[0] == "mkfs.ext4" and c[-1] == source]
    assert len(made) == 1
    assert calls[made[0] + 1] == ("debugfs", "-w", "-R", "rmdir lost+found", source)


def test_debugfs_trouble_is_an_error_though_it_exits_zero(fake_world: World) -> None:
    """debugfs exits 0 whatever its command did; anything besides its banner is the error."""
    kernel = kernel_of(fake_world)
    fake_world.spec("raw", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    path = f"/dev/mapper/{fake_world.pool}-raw"
    kernel.run(["mkfs.xfs", "-q", "-f", path])
    with pytest.raises(ToolError, match=r"rmdir lost\+found.*Bad magic number"):
        remove_lost_and_found(kernel, path)


def test_a_failed_mkfs_says_why_in_one_line(fake_world: World) -> None:
    """mkfs.xfs's reason, without its usage text (what an undersized device used to show)."""
    fake_world.spec("raw", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    path = f"/dev/mapper/{fake_world.pool}-raw"
    with pytest.raises(ToolError) as caught:
        make_filesystem(fake_world.host, "xfs", path)
    assert str(caught.value) == f"mkfs.xfs {path}: Filesystem must be larger than 300MB."


def test_xfs_smaller_than_mkfs_makes_is_refused_up_front(tmp_path: Path) -> None:
    """fs_type = "xfs" with a base_image_size under 300MiB: a config error naming both keys
    (exit 2 at start-up), not a failed mkfs at every Prepare; a spec file likewise."""
    raw = {"root_path": str(tmp_path), "fs_type": "xfs", "base_image_size": "128MiB"}
    with pytest.raises(ConfigError, match=r'base_image_size.*fs_type = "xfs"') as caught:
        settings_from_mapping(raw)
    assert caught.value.key == "base_image_size"
    assert settings_from_mapping({**raw, "base_image_size": "300MiB"}).fs_type == "xfs"
    defaults = Defaults(size=Bytes(64 << 20), filesystem=Filesystem.EXT4)
    with pytest.raises(SpecError, match="too small for filesystem \"xfs\""):
        parse_spec("v", 'filesystem = "xfs"\n', defaults)
    assert parse_spec("v", 'filesystem = "xfs"\nsize = "300MiB"\n', defaults).size == 300 << 20


def test_the_daemon_refuses_such_a_config_at_start_up(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 before anything is made, with both keys named."""
    config = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                          fs_type="xfs", base_image_size="128MiB")
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 2
    err = capsys.readouterr().err
    assert "config key 'base_image_size'" in err and 'fs_type = "xfs"' in err
    assert not (tmp_path / "state").exists()


def test_remove_when_the_kernel_cannot_say_whether_it_is_open(fake_world: World) -> None:
    """An INFO the kernel refuses is Unavailable, and nothing is removed on a guess."""
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    name = snaps.prepare("work")[0].source.removeprefix("/dev/mapper/")
    kernel_of(fake_world).faults.fail(Op.INFO, name, errno=errno.EIO)
    with pytest.raises(Unavailable, match="cannot tell whether its device is in use"):
        snaps.remove("work")
    kernel_of(fake_world).faults.clear()
    assert snaps.stat("work").kind == Kind.ACTIVE
    snaps.remove("work")
    assert snaps.walk() == []


def test_xfs_mount_options(tmp_path: Path) -> None:
    """xfs: nouuid always (a snapshot shares its parent's filesystem UUID); read-only mounts
    also norecovery (a log left by a commit while mounted cannot be replayed read-only)."""
    settings = make_settings(tmp_path, "rtpool", fs_type="xfs", base_image_size="300MiB",
                             loopback_data_size="1GiB")
    world = World(host=FakeKernel(), settings=settings, real=False)
    try:
        snaps = snapshotter_over(world.reconciler(), sleep=world.clock.sleep)
        assert snaps.prepare("base")[0].options == ("rw", "nouuid")
        snaps.commit("layer", "base")
        assert snaps.view("look", "layer")[0].options == ("ro", "nouuid", "norecovery")
        assert snaps.mounts("layer")[0].options == ("ro", "nouuid", "norecovery")
        assert snaps.prepare("work", "layer")[0].options == ("rw", "nouuid")
    finally:
        world.teardown()

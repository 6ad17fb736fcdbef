"""The snapshotter's devices answer with their node in place and udev leaves that node alone
(NodeWait.NODE: no cookie, udev's rules off; not even a removed device's stale events, run
late for a minor a new device has taken, touch it: see reconcile.decide.node_wait); a device
wanted again while its deferred remove waits gets its node back; spec-file devices' passes
end with their by-label link; and the snapshotter's base is made without lazy init. On the
real kernel with udevd running (started here if it is not). The rules on the fake kernel:
tests/unit/snapshots/test_snapshot_node_wait.py and tests/unit/dm/test_node_wait.py."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from reconciler.dm.client import DmClient
from reconciler.dm.host import SystemHost
from reconciler.dm.thin import ThinDevice
from reconciler.dm.udev_sync import NodeWait
from reconciler.snapshots import Snapshotter
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from reconciler.units import Sectors
from reconciler.vocabulary import DeviceState, Kind, ThinId
from tests.kernel.udevd import udevd_running

pytestmark = pytest.mark.kernel

DRIVERS = ("libdevmapper", "dmsetup")


def _world(tmp_path: Path, driver: str, **extra: object) -> Iterator[World]:
    if not KERNEL_AVAILABLE:
        pytest.skip("needs device-mapper and root")
    settings = make_settings(tmp_path, f"nw{secrets.token_hex(3)}", dm_driver=driver, **extra)
    with udevd_running():
        created = World(host=SystemHost(), settings=settings, real=True)
        try:
            yield created
        finally:
            settle()
            created.teardown()


@pytest.fixture(params=DRIVERS)
def kworld(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A world on the real kernel with udevd running, through each driver."""
    yield from _world(tmp_path, request.param)


@pytest.fixture
def lworld(tmp_path: Path) -> Iterator[World]:
    """The same through libdevmapper (the default) alone."""
    yield from _world(tmp_path, "libdevmapper")


LABEL = f"nw{secrets.token_hex(3)}"


@pytest.fixture
def labelled(tmp_path: Path) -> Iterator[World]:
    """libdevmapper, every mkfs labelling its filesystem LABEL."""
    yield from _world(tmp_path, "libdevmapper", fs_options=["-L", LABEL])


def settle() -> None:
    SystemHost().run(["udevadm", "settle", "--timeout=60"])


def snapshotter(world: World) -> Snapshotter:
    return snapshotter_over(world.reconciler(), sleep=time.sleep)


def device_number(kernel_name: str) -> int:
    """The dm device's number, from the kernel (not from any node)."""
    info = DmClient(SystemHost()).info(kernel_name)
    assert info is not None, f"{kernel_name} is not mapped"
    return os.makedev(info.major, info.minor)


def blkid(node: str, tag: str) -> str:
    return subprocess.run(["blkid", "-o", "value", "-s", tag, node], check=True,
                          capture_output=True, text=True).stdout.strip()


def udev_properties(node: str) -> dict[str, str]:
    """udev's database entry for a device: its properties (`udevadm info`'s E: lines)."""
    text = subprocess.run(["udevadm", "info", "--query=property", node], check=True,
                          capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_prepare_answers_with_its_node_and_udev_leaves_it_alone(kworld: World) -> None:
    """When Prepare answers, /dev/mapper/NAME is the device's block node; after `udevadm
    settle` it is the same inode (udev replaced or unlinked nothing), udev recorded the
    rules-off flags from our uevent, and made no /dev/mapper link for it. Through
    libdevmapper, udev's disk rules are off too: no by-id link, no probe."""
    snaps = snapshotter(kworld)
    snaps.prepare("maker")
    snaps.commit("layer", "maker")
    for key, parent in (("root", ""), ("child", "layer")):
        [mount] = snaps.prepare(key, parent)
        kernel_name = mount.source.removeprefix("/dev/mapper/")
        found = os.lstat(mount.source)  # no wait of the test's own: there at the answer
        assert stat.S_ISBLK(found.st_mode) and found.st_rdev == device_number(kernel_name)
        settle()
        after = os.lstat(mount.source)
        assert stat.S_ISBLK(after.st_mode), "udev replaced our node with its link"
        assert (after.st_ino, after.st_rdev) == (found.st_ino, found.st_rdev)
        properties = udev_properties(mount.source)
        assert properties.get("DM_UDEV_DISABLE_DM_RULES_FLAG") == "1", properties
        assert f"/dev/mapper/{kernel_name}" not in properties.get("DEVLINKS", "")
        if kworld.settings.dm_driver == "libdevmapper":
            assert properties.get("DM_UDEV_DISABLE_DISK_RULES_FLAG") == "1", properties
            assert not Path(f"/dev/disk/by-id/dm-name-{kernel_name}").exists()
        snaps.remove(key)
        assert not Path(mount.source).exists(), "the removal unlinked the node"


def test_a_removed_devices_late_events_leave_the_next_devices_node_alone(
        kworld: World) -> None:
    """udev's queue held (`udevadm control --stop-exec-queue`) while a snapshot is made and
    removed and another made in its place, on the minor it freed: when udev then runs the
    first device's events late, reading the second's name from sysfs, the second's node
    stays the one libdevmapper made (with udev's rules on, unwaited for, udev's link took
    its place and the stale remove unlinked it: the all-at-once conformance failures)."""
    snaps = snapshotter(kworld)
    snaps.prepare("maker")
    snaps.commit("layer", "maker")
    host = SystemHost()
    host.run(["udevadm", "control", "--stop-exec-queue"])
    try:
        [first] = snaps.prepare("first", "layer")
        first_number = os.stat(first.source).st_rdev
        snaps.remove("first")
        [second] = snaps.prepare("second", "layer")
        made = os.lstat(second.source)
        assert made.st_rdev == first_number, "the kernel gave the freed minor to another"
    finally:
        host.run(["udevadm", "control", "--start-exec-queue"])
    settle()
    after = os.lstat(second.source)
    assert stat.S_ISBLK(after.st_mode), "udev replaced the node with its link"
    assert (after.st_ino, after.st_rdev) == (made.st_ino, made.st_rdev)
    with open(second.source, "rb") as device:  # the node still leads to the device
        assert len(device.read(4096)) == 4096
    snaps.remove("second")


def test_a_device_wanted_again_while_its_removal_waits_gets_its_node_back(
        kworld: World) -> None:
    """A snapshot device held open and deactivated (a deferred remove; libdevmapper unlinks
    a NODE device's node at once), then activated again: the remove is cancelled, the node
    is back, and the device outlives its holder's close."""
    world = kworld
    pool = world.reconciler().ensure_pool()
    pool.create_thin(ThinId(90), pool.status().transaction_id)
    thin = ThinDevice(pool, "snap-90", ThinId(90), NodeWait.NODE)
    number = pool_number(pool.name)
    thin.activate(Sectors(8192), readonly=False, pool_number=number)
    node = f"/dev/mapper/{thin.kernel_name}"
    holder = os.open(node, os.O_RDONLY)
    try:
        thin.remove(deferred=True)
        assert not os.path.exists(node), "libdevmapper kept the node of a deferred remove"
        thin.activate(Sectors(8192), readonly=False, pool_number=number)
        found = os.lstat(node)
        assert stat.S_ISBLK(found.st_mode) and found.st_rdev == device_number(thin.kernel_name)
    finally:
        os.close(holder)
    settle()
    assert device_number(thin.kernel_name) == found.st_rdev, "the cancel did not hold"
    thin.remove()
    pool.delete(ThinId(90), pool.status().transaction_id)


def test_a_restarted_daemon_makes_a_running_snapshots_lost_node(kworld: World) -> None:
    """A running snapshot whose node is gone (as when the daemon died between the
    activation and libdevmapper making the node; udev makes none for it): the first pass of
    a new Reconciler makes it again, a block node of the device's number."""
    snaps = snapshotter(kworld)
    [mount] = snaps.prepare("running")
    kernel_name = mount.source.removeprefix("/dev/mapper/")
    os.unlink(mount.source)
    settle()
    assert not os.path.exists(mount.source)
    kworld.reconciler().run_pass()
    settle()
    found = os.lstat(mount.source)
    assert stat.S_ISBLK(found.st_mode) and found.st_rdev == device_number(kernel_name)
    snaps.remove("running")


def pool_number(name: str) -> str:
    """The pool's major:minor, as a thin table names it."""
    info = DmClient(SystemHost()).info(name)
    assert info is not None
    return f"{info.major}:{info.minor}"


def test_prepare_then_commit_or_remove_at_once_ends_right(lworld: World) -> None:
    """Commit or Remove right after Prepare, while udev may still probe the new device (EBUSY
    for a moment): each ends as asked, no device Faulty, and after `udevadm settle` no node
    or udev link of a deactivated or removed device is left."""
    snaps = snapshotter(lworld)
    snaps.prepare("maker")
    gone: list[str] = []
    with capture_logs() as logs:
        for round_ in range(3):
            [removed] = snaps.prepare(f"removed{round_}")
            snaps.remove(f"removed{round_}")
            [committed] = snaps.prepare(f"committed{round_}")
            snaps.commit(f"layer{round_}", f"committed{round_}")
            gone += [m.source.removeprefix("/dev/mapper/") for m in (removed, committed)]
    busy = [e for e in logs if e.get("event") == "device.step_failed" and e.get("errno") ==
            "EBUSY"]
    print(f"EBUSY retries met: {len(busy)}")  # what the race did, for the run's log
    assert lworld.store is not None
    states = {r.name: r.state for r in lworld.store.devices()}
    assert DeviceState.FAULTY not in states.values(), states
    settle()
    client = DmClient(SystemHost())
    for kernel_name in gone:
        # A commit's deferred remove ends as soon as udev closes the device.
        for _ in range(100):
            if client.info(kernel_name) is None:
                break
            time.sleep(0.1)
        assert client.info(kernel_name) is None, f"{kernel_name} still mapped"
        assert not Path(f"/dev/mapper/{kernel_name}").exists()
        assert not Path(f"/dev/disk/by-id/dm-name-{kernel_name}").exists()
    assert [i.kind for i in snaps.walk() if i.name.startswith("layer")] == [Kind.COMMITTED] * 3


def test_a_spec_file_device_still_waits_for_udev(labelled: World) -> None:
    """A spec-file device activated again: by the end of the pass udev has made its
    /dev/disk/by-label link (what `run --once && mount LABEL=...` needs)."""
    world, link = labelled, Path(f"/dev/disk/by-label/{LABEL}")
    world.spec("vol", 'size = "32MiB"\n')
    assert world.run_pass().ok
    world.spec("vol", 'size = "32MiB"\nactive = false\n')
    assert world.run_pass().ok
    settle()
    assert not link.exists()
    world.spec("vol", 'size = "32MiB"\n')
    assert world.run_pass().ok
    # No settle here: the pass itself waited for udev.
    assert link.exists(), "the pass ended before udev made the by-label link"
    assert link.stat().st_rdev == device_number(f"{world.pool}-vol")


GROUP = re.compile(r"^Group \d+: .*$", re.MULTILINE)


def zeroed_groups(node: str) -> tuple[int, int]:
    """(groups whose inode table ext4 marks zeroed, groups), from dumpe2fs."""
    text = subprocess.run(["dumpe2fs", node], check=True, capture_output=True,
                          text=True).stdout
    groups = GROUP.findall(text)
    assert groups, text[:2000]
    return sum("ITABLE_ZEROED" in g for g in groups), len(groups)


def test_the_base_is_made_without_lazy_init_and_a_volume_with(lworld: World) -> None:
    """dumpe2fs of a root snapshot (the base's filesystem as mkfs left it): every group's
    inode table is marked zeroed; a spec-file volume keeps mke2fs's lazy init (not all)."""
    snaps = snapshotter(lworld)
    [mount] = snaps.prepare("root")
    zeroed, groups = zeroed_groups(mount.source)
    assert zeroed == groups, (zeroed, groups)
    lworld.spec("vol", 'size = "64MiB"\n')
    assert lworld.run_pass().ok
    zeroed, groups = zeroed_groups(f"/dev/mapper/{lworld.pool}-vol")
    assert zeroed < groups, (zeroed, groups)

"""The snapshotter's devices answer with their node in place (udev waited for, as for spec-file
devices: NodeWait.NODE lost nodes to udev's stale events, see reconcile.decide.node_wait);
spec-file devices' passes end with their by-label link; and the snapshotter's base is made
without lazy init. On the real kernel with udevd running (started here if it is not). The
rules on the fake kernel: tests/unit/snapshots/test_snapshot_node_wait.py and
tests/unit/dm/test_node_wait.py."""

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
from reconciler.snapshots import Snapshotter
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from reconciler.vocabulary import DeviceState, Kind
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


def test_a_prepare_answers_with_its_node_and_udevs_links_follow(kworld: World) -> None:
    """When Prepare answers, /dev/mapper/NAME leads to the device's block node; after
    `udevadm settle` udev has run every rule for it:
    its by-id link and its filesystem's by-uuid link lead to it."""
    snaps = snapshotter(kworld)
    snaps.prepare("maker")
    snaps.commit("layer", "maker")
    for key, parent in (("root", ""), ("child", "layer")):
        [mount] = snaps.prepare(key, parent)
        kernel_name = mount.source.removeprefix("/dev/mapper/")
        found = os.stat(mount.source)  # no wait of the test's own: there at the answer
        assert stat.S_ISBLK(found.st_mode) and found.st_rdev == device_number(kernel_name)
        settle()
        by_id = Path(f"/dev/disk/by-id/dm-name-{kernel_name}")
        assert by_id.exists() and by_id.stat().st_rdev == found.st_rdev, by_id
        by_uuid = Path(f"/dev/disk/by-uuid/{blkid(mount.source, 'UUID')}")
        # Every active snapshot of one base holds its filesystem's uuid: the link leads to
        # one of them, udev's choice, and this one is active.
        assert by_uuid.exists() and stat.S_ISBLK(by_uuid.stat().st_mode), by_uuid
        snaps.remove(key)


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

"""A burst is made breadth-first: every device of a pass is provisioned and activated before
any step opens a device node (mkfs, resize2fs), so the pass waits for udev once, not once per
device; and a snapshot of a device still waiting for its filesystem is made in the same pass."""

from __future__ import annotations

import pytest

from reconciler.dm.driver import make_client
from reconciler.dm.libdm import LibdmClient
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.libdm import FakeLibdm
from reconciler.testing.world import World

NAMES = ("a", "b", "c")


def fake(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    return world.host


@pytest.mark.parametrize("fake_world", ["dmsetup"], indirect=True)
def test_every_activation_comes_before_the_first_mkfs(fake_world: World) -> None:
    """dmsetup's argv in order: the three devices' creates, then the three mkfs."""
    world = fake_world
    assert world.run_pass().ok  # the pool
    for name in NAMES:
        world.spec(name, 'size = "32MiB"\n')
    start = len(fake(world).calls)
    result = world.run_pass()
    assert result.ok and sorted(result.converged) == list(NAMES), result
    calls = fake(world).calls[start:]
    creates = [i for i, c in enumerate(calls) if c[:2] == ("dmsetup", "create")]
    mkfs = [i for i, c in enumerate(calls) if c[0] == "mkfs.ext4"]
    assert len(creates) == 3 and len(mkfs) == 3, calls
    assert max(creates) < min(mkfs), calls


@pytest.mark.parametrize("fake_world", ["libdevmapper"], indirect=True)
def test_a_burst_of_filesystems_waits_for_udev_once(fake_world: World) -> None:
    """Through libdevmapper with udev running: one cookie for the pass's three creates, waited
    for once, before the first mkfs (dmsetup waits inside each of its processes)."""
    library = fake(fake_world).dm_library()
    assert isinstance(library, FakeLibdm)
    client = make_client(fake_world.host, "libdevmapper")
    assert isinstance(client, LibdmClient)
    fake(fake_world).udev.alive = True  # in our IPC namespace: it confirms our cookies
    assert fake_world.run_pass().ok  # the pool (its own wait)
    library.waited.clear()
    for name in NAMES:
        fake_world.spec(name, 'size = "32MiB"\n')
    assert fake_world.run_pass().ok
    assert [events for _, events in library.waited] == [3]


def test_a_snapshot_of_a_device_waiting_for_mkfs_is_made_in_the_same_pass(
        world: World) -> None:
    """The parent's mkfs is held to the second sweep; its snapshot follows it there."""
    world.spec("base", 'size = "32MiB"\n')
    world.spec("child", 'parent = "base"\n')
    world.spec("other", 'size = "32MiB"\n')
    result = world.run_pass()
    assert result.ok and sorted(result.converged) == ["base", "child", "other"], result
    assert result.pending == {}
    shown = {d["name"]: d for d in world.report()["devices"]}
    assert shown["child"]["state"] == "Activated" and shown["child"]["error"] is None

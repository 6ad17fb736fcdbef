"""The snapshotter's devices wait for udev as spec-file devices do (issue 26: answering once
their node existed lost the node to udev's stale events for a reused minor). And only the
snapshotter's base is made without lazy init. On the fake kernel with udev running in our IPC
namespace, through both drivers; the real kernel's side: tests/kernel/test_kernel_node_wait.py."""

from __future__ import annotations

from reconciler.reconcile.decide import BASE_EXT4_OPTIONS
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.libdm import FakeLibdm
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World


def _fake(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    world.host.udev.alive = True  # in our IPC namespace: it confirms our cookies
    return world.host


def _synced(world: World, start: int, cookies: int) -> list[str]:
    """The devices whose create, since `start`, waited for udev (dmsetup: not told
    --noudevsync; libdevmapper: a cookie made, counted by the caller in `cookies`)."""
    fake = _fake(world)
    creates = [c for c in fake.calls[start:] if c[:2] == ("dmsetup", "create")]
    if world.settings.dm_driver == "dmsetup":
        return [c[2] for c in creates if "--noudevsync" not in c]
    library = fake.dm_library()
    assert isinstance(library, FakeLibdm)
    return ["a cookie"] * (len(library.cookies) - cookies)


def _cookies(world: World) -> int:
    library = _fake(world).dm_library()
    assert isinstance(library, FakeLibdm)
    return len(library.cookies)


def test_prepares_wait_for_udev_as_a_spec_files_device_does(fake_world: World) -> None:
    """Root and child Prepares activate their snapshots waiting for udev, as a spec-file
    device made afterwards does, and no cookie is left behind."""
    fake = _fake(fake_world)
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    snaps.prepare("base-maker")  # the pool and the base first (the pool's own waits)
    snaps.commit("layer", "base-maker")
    start, cookies = len(fake.calls), _cookies(fake_world)
    mounts = snaps.prepare("root") + snaps.prepare("child", "layer")
    assert [m.source.startswith("/dev/mapper/") for m in mounts] == [True, True]
    assert len(_synced(fake_world, start, cookies)) == 2
    start, cookies = len(fake.calls), _cookies(fake_world)
    fake_world.spec("vol", 'size = "32MiB"\n')
    assert fake_world.run_pass().ok
    assert len(_synced(fake_world, start, cookies)) == 1
    library = fake.dm_library()
    assert isinstance(library, FakeLibdm)
    assert library.cookie_events == {}, "every cookie waited for and destroyed"


def test_only_the_base_is_made_without_lazy_init(fake_world: World) -> None:
    """The base's mkfs.ext4 carries -E nodiscard,lazy_itable_init=0,lazy_journal_init=0; a
    spec-file volume's keeps mke2fs's defaults."""
    fake = _fake(fake_world)
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    snaps.prepare("one")
    fake_world.spec("vol", 'size = "32MiB"\n')
    assert fake_world.run_pass().ok
    prefix = f"/dev/mapper/{fake_world.settings.pool_name}-"
    mkfs = {c[-1].removeprefix(prefix): c[1:-1] for c in fake.calls if c[0] == "mkfs.ext4"}
    assert mkfs == {"snap-base-1": ("-q", "-F", *BASE_EXT4_OPTIONS), "vol": ("-q", "-F")}

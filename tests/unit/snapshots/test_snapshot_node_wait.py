"""The snapshotter's devices answer once their node exists, udev left out of them (no cookie,
udev's rules off: issue 26), while spec-file devices still wait for udev. And only the
snapshotter's base is made without lazy init. On the fake kernel with udev running in our IPC
namespace, through both drivers; the real kernel's side: tests/kernel/test_kernel_node_wait.py."""

from __future__ import annotations

from reconciler.dm.libdm_bindings import DM_DEVICE_REMOVE, DM_DEVICE_RESUME
from reconciler.dm.udev_sync import RULES_OFF
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


def test_prepares_leave_udev_out_and_a_spec_files_device_waits(fake_world: World) -> None:
    """Root and child Prepares activate their snapshots without waiting for udev (dmsetup:
    told --noudevsync --noudevrules; libdevmapper: no cookie, the rules off), a spec-file
    device made afterwards waits for it, and no cookie is left behind."""
    fake = _fake(fake_world)
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    snaps.prepare("base-maker")  # the pool and the base first (the pool's own waits)
    snaps.commit("layer", "base-maker")
    start, cookies = len(fake.calls), _cookies(fake_world)
    mounts = snaps.prepare("root") + snaps.prepare("child", "layer")
    assert [m.source.startswith("/dev/mapper/") for m in mounts] == [True, True]
    assert _synced(fake_world, start, cookies) == []
    if fake_world.settings.dm_driver == "dmsetup":
        creates = [c for c in fake.calls[start:] if c[:2] == ("dmsetup", "create")]
        assert len(creates) == 2 and all("--noudevrules" in c for c in creates), creates
    else:
        library = fake.dm_library()
        assert isinstance(library, FakeLibdm)
        flags = [f for kind, name, f in library.udev_flags
                 if kind == DM_DEVICE_RESUME and name in {m.source.removeprefix(
                     "/dev/mapper/") for m in mounts}]
        assert flags == [RULES_OFF, RULES_OFF], library.udev_flags
        snaps.remove("root")
        assert library.udev_flags[-1] == (DM_DEVICE_REMOVE, mounts[0].source.removeprefix(
            "/dev/mapper/"), RULES_OFF), "its removal leaves udev out too"
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


def test_a_restarted_daemon_makes_its_running_snapshots_nodes_once(fake_world: World) -> None:
    """The first pass of a new Reconciler (a restart: a crash may have come between a
    snapshot's activation and libdevmapper making its node, which nobody else makes) resumes
    each running snapshot device, udev's rules off, so its node is made; a spec-file device
    (udev makes its node) is not touched, and later passes touch nothing."""
    fake = _fake(fake_world)
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    [mount] = snaps.prepare("running")
    fake_world.spec("vol", 'size = "32MiB"\n')
    assert fake_world.run_pass().ok
    running = mount.source.removeprefix("/dev/mapper/")
    restarted = fake_world.reconciler()
    for expected in (1, 0):
        start = len(fake.calls)
        flags_start = _flags_seen(fake_world)
        restarted.run_pass()
        resumed = [c[2] for c in fake.calls[start:] if c[:2] == ("dmsetup", "resume")]
        if fake_world.settings.dm_driver == "libdevmapper":
            library = fake.dm_library()
            assert isinstance(library, FakeLibdm)
            resumed = [name or "" for kind, name, flags in library.udev_flags[flags_start:]
                       if kind == DM_DEVICE_RESUME and flags == RULES_OFF]
        assert resumed == [running] * expected, resumed


def _flags_seen(world: World) -> int:
    library = _fake(world).dm_library()
    assert isinstance(library, FakeLibdm)
    return len(library.udev_flags)

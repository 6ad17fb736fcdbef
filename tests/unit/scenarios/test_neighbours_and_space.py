"""What we never made we never touch, and a filling pool holds new work, never old devices.

A neighbour's dm device under a name that looks like ours (another pool `rtpool-a` owning
`rtpool-a-b`, beside our spec `a-b`) survives removal, `gc --faulty` and `retry`; a device of
ours is known by its dm uuid whatever its state. Below the pool's reserve, new devices and
snapshots wait with the reason in `status`; what exists is never affected, and what waited is
made once space is freed.
"""

from __future__ import annotations

import errno

import pytest
from structlog.testing import capture_logs

from reconciler.dm.client import DmClient
from reconciler.reconcile.retry import RetryPolicy
from reconciler.snapshots import Unavailable
from reconciler.store import RequestKind
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World, make_settings

NONE = 'filesystem = "none"\nsize = "4MiB"\n'
POLICY = RetryPolicy(initial=1.0, maximum=2.0, max_attempts=2, jitter=0.0)
NEIGHBOUR_UUID = "OTHER-TOOL-rtpool-a-7"


def _neighbour(world: World) -> str:
    """Another tool's device named as our `a-b` would be (another pool `rtpool-a`)."""
    name = f"{world.pool}-a-b"
    DmClient(world.host).create(name, "0 8192 zero", NEIGHBOUR_UUID)
    return name


def _still_there(world: World, name: str) -> None:
    info = DmClient(world.host).info(name)
    assert info is not None and info.uuid == NEIGHBOUR_UUID and not info.suspended


def test_a_neighbours_device_survives_our_spec_removal_gc_and_retry(fake_world: World) -> None:
    """Our spec `a-b` cannot have the name (conflict shown); deleting the spec, `gc
    --faulty` and `retry` never remove, reload, suspend or resume the neighbour's device."""
    assert fake_world.run_pass().ok  # the pool
    neighbour = _neighbour(fake_world)
    fake_world.spec("a-b", NONE)
    result = fake_world.run_pass(POLICY)
    assert "a-b" in result.faulty and "not ours" in result.faulty["a-b"]
    _still_there(fake_world, neighbour)

    assert fake_world.store is not None
    fake_world.store.add_request(RequestKind.RETRY, "a-b")
    fake_world.run_pass(POLICY)
    _still_there(fake_world, neighbour)
    fake_world.store.add_request(RequestKind.GC_FAULTY, "*")
    fake_world.run_pass(POLICY)  # released, then made afresh (its spec is still there)
    _still_there(fake_world, neighbour)
    history = [t.trigger.value for t in fake_world.store.history("a-b")]
    assert "removed" in history and history.count("create") == 2

    fake_world.unspec("a-b")
    assert "a-b" in fake_world.run_pass(POLICY).removed
    _still_there(fake_world, neighbour)
    fake_world.run_pass(POLICY)
    assert [o.name for o in fake_world.store.orphans()] == [neighbour], "reported, untouched"
    _still_there(fake_world, neighbour)


def test_a_live_device_replaced_by_a_neighbours_is_not_reloaded(fake_world: World) -> None:
    """Our device vanished and a foreign one took its name: growing or deactivating ours
    touches nothing of theirs."""
    fake_world.spec("a-b", NONE)
    assert fake_world.run_pass().ok
    kname = f"{fake_world.pool}-a-b"
    DmClient(fake_world.host).remove(kname)
    _neighbour(fake_world)
    fake_world.spec("a-b", NONE.replace("4MiB", "8MiB"))
    fake_world.run_pass(POLICY)
    _still_there(fake_world, kname)
    fake_world.spec("a-b", NONE.replace("4MiB", "8MiB") + "active = false\n")
    fake_world.run_pass(POLICY)
    _still_there(fake_world, kname)


def test_our_own_suspended_device_is_taken_back_not_refused(fake_world: World) -> None:
    """A device of ours left suspended with an old length (a grow whose resume failed, then
    a restart) is recognised by its uuid, resumed, and grown."""
    fake_world.spec("a", NONE)
    assert fake_world.run_pass().ok
    kernel = fake_world.host
    assert isinstance(kernel, FakeKernel)
    kname = f"{fake_world.pool}-a"
    kernel.faults.fail(Op.RESUME, kname, errno=errno.EIO, times=2)
    fake_world.spec("a", NONE.replace("4MiB", "8MiB"))
    fake_world.reconciler(POLICY).run_pass()
    info = DmClient(fake_world.host).info(kname)
    assert info is not None and info.suspended, "the kernel refused both resumes"
    kernel.faults.clear()
    fake_world.clock.now += 3600
    fake_world.run_pass(POLICY)  # a restart: the next pass resumes what it finds suspended
    info = DmClient(fake_world.host).info(kname)
    assert info is not None and not info.suspended
    assert fake_world.store is not None
    fake_world.store.add_request(RequestKind.RETRY, "a")
    result = fake_world.run_pass(POLICY)
    assert result.ok, result.faulty
    info = DmClient(fake_world.host).info(kname)
    assert info is not None and not info.suspended
    table = DmClient(fake_world.host).table(kname)
    assert table[0].length == (8 << 20) // 512


@pytest.fixture
def small_reserve_world(fake_world: World) -> World:
    """The fake world with a data reserve of 250MiB of its 256MiB pool: a few MiB written
    put it below the reserve."""
    fake_world.settings = make_settings(fake_world.settings.root_path.parent,
                                        fake_world.pool, pool_reserve="248MiB",
                                        dm_driver=fake_world.settings.dm_driver)
    return fake_world


def _fill(world: World, name: str, mib: int) -> None:
    device = f"/dev/mapper/{world.pool}-{name}"
    for offset in range(mib):
        world.host.write(device, offset << 20, b"\xa5" * (1 << 20))


def test_below_the_reserve_new_devices_wait_and_existing_ones_are_untouched(
    small_reserve_world: World,
) -> None:
    """New specs wait with the reason in status; the full device keeps working; deleting it
    frees the space and the waiting device is made."""
    world = small_reserve_world
    world.spec("big", 'filesystem = "none"\nsize = "32MiB"\n')
    assert world.run_pass().ok
    with capture_logs() as logs:
        _fill(world, "big", 16)
        world.spec("new", NONE)
        result = world.run_pass()
    assert "reserve" in result.pending["new"] and not result.ok
    assert any(e["event"] == "pool.usage_rising" for e in logs) is False, "6% used: no alarm"
    pool = world.report()["pool"]
    assert pool["new_devices_held"] is not None and "248MiB" in pool["new_devices_held"]
    assert world.kernel_names() == {f"{world.pool}-big"}
    device = f"/dev/mapper/{world.pool}-big"
    world.host.write(device, 20 << 20, b"still writable")
    assert world.host.read(device, 20 << 20, 14) == b"still writable"

    world.unspec("big")
    world.run_pass()  # removes big; the space it frees is seen by the next pass
    assert world.run_pass().ok
    assert world.kernel_names() == {f"{world.pool}-new"}
    assert world.report()["pool"]["new_devices_held"] is None


def test_a_prepare_below_the_reserve_is_refused_cleanly(small_reserve_world: World) -> None:
    """containerd's Prepare gets a clear Unavailable naming the reserve, and no half-made
    device is left behind."""
    world = small_reserve_world
    world.spec("big", 'filesystem = "none"\nsize = "32MiB"\n')
    assert world.run_pass().ok
    _fill(world, "big", 16)
    snaps = snapshotter_over(world.reconciler(), sleep=world.clock.sleep)
    with pytest.raises(Unavailable, match="reserve"):
        snaps.prepare("default/1/k")
    assert world.kernel_names() == {f"{world.pool}-big"}
    assert snaps.walk() == []


def test_rising_usage_is_announced_once_per_threshold(fake_world: World) -> None:
    """pool.usage_rising is logged when data usage crosses 50% (and not again at 51%)."""
    fake_world.spec("big", 'filesystem = "none"\nsize = "200MiB"\n')
    assert fake_world.run_pass().ok
    with capture_logs() as logs:
        _fill(fake_world, "big", 130)
        engine = fake_world.reconciler()
        engine.run_pass()
        _fill(fake_world, "big", 132)
        engine.run_pass()
    rising = [e for e in logs if e["event"] == "pool.usage_rising"]
    assert [e["threshold"] for e in rising] == [50]

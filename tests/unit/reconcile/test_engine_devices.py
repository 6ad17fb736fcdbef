"""The devices seam (reconcile.devices) as the Reconciler provides it (reconcile.engine_devices),
on the fake kernel: settle's three outcomes, open counts, usage and the device's node."""

from __future__ import annotations

import errno

from reconciler.reconcile.devices import Failed, Ready, RetryAt, usable
from reconciler.reconcile.retry import RetryPolicy
from reconciler.states import DeviceState
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import World
from reconciler.vocabulary import Filesystem

SPEC = 'size = "32MiB"\n'


def _fake(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    return world.host


def test_settle_makes_a_wanted_device_and_says_ready(fake_world: World) -> None:
    """A device with a spec is made by the settle's pass and judged ready: mapped, running,
    formatted."""
    fake_world.spec("a", SPEC)
    engine = fake_world.reconciler()
    assert engine.devices.settle(["a"]) == Ready()
    assert fake_world.kernel_names() == {f"{fake_world.pool}-a"}
    record = engine.records["a"]
    assert record.state == DeviceState.ACTIVATED and record.formatted


def test_settle_says_retry_at_while_a_step_waits_then_ready_after_it(fake_world: World) -> None:
    """An activation refused once (EBUSY) is RetryAt its retry, not ready meanwhile; the
    settle at that time makes it and says Ready."""
    fake_world.spec("a", SPEC)
    _fake(fake_world).faults.fail(Op.CREATE, f"{fake_world.pool}-a", errno=errno.EBUSY)
    engine = fake_world.reconciler()
    waiting = engine.devices.settle(["a"])
    assert isinstance(waiting, RetryAt)
    assert waiting.at == engine.records["a"].retry_at
    assert isinstance(waiting.current, Failed) and waiting.current.error
    assert fake_world.kernel_names() == set()
    fake_world.clock.now = waiting.at
    assert engine.devices.settle(["a"]) == Ready()
    assert fake_world.kernel_names() == {f"{fake_world.pool}-a"}


def test_settle_says_failed_with_the_error_of_a_device_out_of_retries(
        fake_world: World) -> None:
    """A device whose activation fails past its budget is Faulty: Failed with its error."""
    fake_world.spec("a", SPEC)
    _fake(fake_world).faults.fail(Op.CREATE, f"{fake_world.pool}-a", errno=errno.EBUSY,
                                  times=5)
    engine = fake_world.reconciler(RetryPolicy(max_attempts=1))
    settled = engine.devices.settle(["a"])
    assert isinstance(settled, Failed)
    assert settled.error == engine.records["a"].error and settled.error
    assert engine.records["a"].state == DeviceState.FAULTY


def test_settle_of_a_name_nobody_wants_is_failed_without_an_error(fake_world: World) -> None:
    """No spec, no record: nothing was made, and there is no error of its own to tell."""
    engine = fake_world.reconciler()
    assert engine.devices.settle(["nobody"]) == Failed(None)


def test_open_count_follows_the_kernels_openers(fake_world: World) -> None:
    """0 for a device nobody holds and for one that is not mapped; 1 while one holds it."""
    fake_world.spec("a", SPEC)
    engine = fake_world.reconciler()
    assert engine.devices.settle(["a"]) == Ready()
    assert engine.devices.open_count("a") == 0
    _fake(fake_world).hold_open(f"{fake_world.pool}-a")
    assert engine.devices.open_count("a") == 1
    assert engine.devices.open_count("nobody") == 0


def test_usage_counts_what_a_device_wrote(fake_world: World) -> None:
    """Bytes a device wrote are its own (exclusive) in the pool; its inodes are read from its
    filesystem; a device never made has no usage to tell."""
    fake_world.spec("a", SPEC)
    engine = fake_world.reconciler()
    assert engine.devices.settle(["a"]) == Ready()
    before = engine.devices.exclusive_bytes(["a"])["a"]
    _fake(fake_world).write_blocks(f"{fake_world.pool}-a", 8 << 20, 1 << 20)
    after = engine.devices.exclusive_bytes(["a", "nobody"])
    assert after.keys() == {"a"}, "a device never made is left out"
    assert after["a"] > before
    assert after["a"] >= 1 << 20, "the megabyte written is the device's own"
    inodes = engine.devices.inodes("a")
    assert inodes is not None and inodes > 0
    assert engine.devices.inodes("nobody") is None


def _thin_ls_runs(world: World) -> int:
    return sum(1 for call in _fake(world).calls if call[0] == "thin_ls")


def test_exclusive_bytes_of_many_devices_run_one_thin_ls(fake_world: World) -> None:
    """However many devices are asked about, one thin_ls answers them all; none runs when
    no device asked about has a thin id, and none to read a filesystem's inodes."""
    for name in ("a", "b", "c"):
        fake_world.spec(name, SPEC)
    engine = fake_world.reconciler()
    assert engine.devices.settle(["a", "b", "c"]) == Ready()
    before = _thin_ls_runs(fake_world)  # a pass may read the pool's thin ids itself
    measured = engine.devices.exclusive_bytes(["a", "b", "c"])
    assert measured.keys() == {"a", "b", "c"}
    assert _thin_ls_runs(fake_world) == before + 1
    assert engine.devices.exclusive_bytes(["nobody"]) == {}
    assert _thin_ls_runs(fake_world) == before + 1
    calls = _fake(fake_world).calls
    start = len(calls)
    assert engine.devices.inodes("a") is not None
    # The superblock is read in-process; only the dmsetup driver's own `info` is a program.
    assert {call[0] for call in calls[start:]} <= {"dmsetup"}


def test_mount_source_is_the_devices_mapper_node(fake_world: World) -> None:
    """The node is /dev/mapper/<pool>-<name>, as the kernel names the device."""
    engine = fake_world.reconciler()
    assert engine.devices.mount_source("a") == f"/dev/mapper/{fake_world.pool}-a"


def test_usable_judges_active_devices_by_is_ready_and_inactive_ones_as_origins() -> None:
    """An active device must be mapped and not suspended; an inactive one needs its thin id
    and filesystem made and no step in flight."""
    def judge(state: DeviceState, active: bool, mapped: bool = True, suspended: bool = False,
              formatted: bool = True) -> bool:
        return usable(state, active, provisioned=True, formatted=formatted,
                      filesystem=Filesystem.EXT4, mapped=mapped, suspended=suspended)

    assert judge(DeviceState.ACTIVATED, active=True)
    assert not judge(DeviceState.ACTIVATED, active=True, suspended=True)
    assert not judge(DeviceState.ACTIVATED, active=True, mapped=False)
    assert judge(DeviceState.CREATED, active=False, mapped=False)
    assert not judge(DeviceState.CREATING, active=False, mapped=False)
    assert not judge(DeviceState.CREATED, active=False, mapped=False, formatted=False)

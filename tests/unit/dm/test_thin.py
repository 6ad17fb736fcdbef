"""dm.thin's ThinDevice: activate, reload, remove, flush, cancel a deferred remove, observe,
open its node, tell ours from someone else's; on the fake kernel through both drivers
(tests/conftest.py's fake_world), results read from the kernel."""

from __future__ import annotations

import pytest

from reconciler.dm.errors import DeviceBusy
from reconciler.dm.libdm import LibdmClient
from reconciler.dm.libdm_bindings import DM_DEVICE_RESUME
from reconciler.dm.pool import ThinPool, thin_uuid
from reconciler.dm.thin import NotOurs, ThinDevice
from reconciler.dm.udev_sync import NodeWait
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.libdm import FakeLibdm
from reconciler.testing.fakekernel.model import DmDevice
from reconciler.testing.world import World
from reconciler.units import Sectors
from reconciler.vocabulary import ThinId

SMALL = Sectors(8192)
LARGER = Sectors(16384)


def _kernel(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    return world.host


def _pool(world: World) -> ThinPool:
    """The world's pool, up, on the world's driver."""
    return world.reconciler().ensure_pool()


def _pool_number(world: World, pool: ThinPool) -> str:
    major, minor = _kernel(world).devices[pool.name].number
    return f"{major}:{minor}"


def _provisioned(world: World, thin_id: int = 1) -> ThinDevice:
    """Thin id `thin_id` made in the pool, not mapped yet, as the device "a"."""
    pool = _pool(world)
    pool.create_thin(ThinId(thin_id), pool.status().transaction_id)
    return ThinDevice(pool, "a", ThinId(thin_id))


def _active(world: World, length: Sectors = SMALL) -> tuple[ThinDevice, DmDevice]:
    """Device "a" activated: the thin device and the fake kernel's dm device."""
    thin = _provisioned(world)
    thin.activate(length, readonly=False, pool_number=_pool_number(world, thin.pool))
    return thin, _kernel(world).devices[thin.kernel_name]


def test_activate_maps_the_thin_id_with_its_table_and_our_uuid(fake_world: World) -> None:
    """activate creates `<pool>-<name>` running a thin table of the id and length asked for,
    over the pool, with the uuid that says it is ours."""
    thin, device = _active(fake_world)
    pool_device = _kernel(fake_world).devices[fake_world.pool]
    assert device.name == "rtpool-a"
    assert device.uuid == thin_uuid("rtpool", ThinId(1)) == thin.uuid
    assert device.live is not None and device.live.target == "thin"
    assert (device.live.length, device.live.args, device.live.devices) == (
        SMALL, ("1",), (pool_device.number,))
    assert not device.live.readonly and not device.suspended and device.inactive is None


def test_activate_of_a_device_already_active_with_that_table_changes_nothing(
        fake_world: World) -> None:
    """A second activate finds the device ours with the same table: the same device runs on,
    with the same table, not suspended."""
    thin, device = _active(fake_world)
    before = (device.minor, device.live, device.events)
    thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
    after = _kernel(fake_world).devices[thin.kernel_name]
    assert after is device
    assert (after.minor, after.live, after.events) == before
    assert not after.suspended and after.inactive is None


def test_activate_takes_back_a_device_of_ours_left_suspended(fake_world: World) -> None:
    """A device of ours a crash left suspended is resumed by activate, not refused."""
    thin, device = _active(fake_world)
    thin.suspend()
    assert device.suspended
    thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
    assert not _kernel(fake_world).devices[thin.kernel_name].suspended


def test_activate_keeps_a_device_of_ours_whose_deferred_remove_is_pending(
        fake_world: World) -> None:
    """A device of ours wanted again while its deferred remove waits for the last close:
    activate cancels the remove, and the device outlives that close."""
    thin, device = _active(fake_world)
    kernel = _kernel(fake_world)
    kernel.hold_open(thin.kernel_name)
    thin.remove(deferred=True)
    thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
    assert not device.deferred_remove
    kernel.release(thin.kernel_name)
    assert kernel.devices[thin.kernel_name] is device and not device.suspended


def test_activate_over_a_device_with_another_uuid_is_not_ours_and_leaves_it(
        fake_world: World) -> None:
    """Someone else's device under our name: NotOurs, and its uuid and table are as they
    were."""
    thin = _provisioned(fake_world)
    thin.pool.client.create(thin.kernel_name, "0 8 zero", "someone-else")
    theirs = _kernel(fake_world).devices[thin.kernel_name]
    table = theirs.live
    with pytest.raises(NotOurs, match="not ours"):
        thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
    device = _kernel(fake_world).devices[thin.kernel_name]
    assert device is theirs and device.uuid == "someone-else" and device.live == table
    assert not device.suspended and device.inactive is None


def test_load_suspend_resume_swaps_in_a_larger_table(fake_world: World) -> None:
    """A table loaded while suspended waits as the inactive one; resume makes it live, with
    the larger length, and the device runs."""
    thin, device = _active(fake_world)
    thin.suspend()
    thin.load(LARGER, readonly=False)
    assert device.suspended
    assert device.live is not None and device.live.length == SMALL
    assert device.inactive is not None and device.inactive.length == LARGER
    thin.resume()
    assert device.live.length == LARGER and device.inactive is None
    assert not device.suspended


def test_remove_takes_the_dm_device_away_and_keeps_the_thin_id(fake_world: World) -> None:
    """remove: the dm device goes (a second remove is nothing); the thin id stays in the
    pool."""
    thin, _device = _active(fake_world)
    thin.remove()
    thin.remove()
    assert thin.kernel_name not in _kernel(fake_world).devices
    pool_target = _kernel(fake_world).devices[fake_world.pool].pool
    assert pool_target is not None and 1 in pool_target.metadata.thins


def test_remove_of_an_open_device_is_refused_unless_deferred(fake_world: World) -> None:
    """An open device is never forced: remove raises DeviceBusy and it stays; a deferred
    remove marks it, and it goes at its last close."""
    thin, device = _active(fake_world)
    kernel = _kernel(fake_world)
    kernel.hold_open(thin.kernel_name)
    with pytest.raises(DeviceBusy):
        thin.remove()
    assert thin.kernel_name in kernel.devices and not device.deferred_remove
    thin.remove(deferred=True)
    assert kernel.devices[thin.kernel_name].deferred_remove
    kernel.release(thin.kernel_name)
    assert thin.kernel_name not in kernel.devices


def test_cancel_deferred_remove_keeps_an_open_device(fake_world: World) -> None:
    """A deferred remove cancelled: the device outlives its last close; a cancel with none
    pending is harmless."""
    thin, device = _active(fake_world)
    kernel = _kernel(fake_world)
    thin.cancel_deferred_remove()
    kernel.hold_open(thin.kernel_name)
    thin.remove(deferred=True)
    thin.cancel_deferred_remove()
    assert not device.deferred_remove
    kernel.release(thin.kernel_name)
    assert kernel.devices[thin.kernel_name] is device and device.live is not None


@pytest.mark.parametrize("node_wait", list(NodeWait))
def test_a_node_device_wanted_again_while_its_removal_waits_is_resumed(
        fake_world: World, node_wait: NodeWait) -> None:
    """activate of a device whose deferred remove is pending cancels it; a NODE device is
    also resumed, because its deferred remove unlinked its /dev/mapper node at once (udev's
    rules are off for it) and the resume makes it again; a UDEV device's node stayed."""
    thin, device = _active(fake_world)
    thin = ThinDevice(thin.pool, thin.name, thin.thin_id, node_wait)
    kernel = _kernel(fake_world)
    kernel.hold_open(thin.kernel_name)
    thin.remove(deferred=True)
    start = len(kernel.calls)
    thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
    kernel.release(thin.kernel_name)
    assert kernel.devices[thin.kernel_name] is device and not device.deferred_remove
    if fake_world.settings.dm_driver == "dmsetup":
        resumed = sum(c[:3] == ("dmsetup", "resume", thin.kernel_name)
                      for c in kernel.calls[start:])
    else:
        library = kernel.dm_library()
        assert isinstance(library, FakeLibdm)
        resumed = sum(kind == DM_DEVICE_RESUME and name == thin.kernel_name
                      for kind, name, _ in library.udev_flags[-1:])
    assert resumed == (1 if node_wait is NodeWait.NODE else 0), kernel.calls[start:]


def test_flush_leaves_the_device_running_with_its_table(fake_world: World) -> None:
    """flush suspends and resumes: afterwards the device runs, with the same table."""
    thin, device = _active(fake_world)
    table = device.live
    thin.flush()
    assert not device.suspended and device.live == table and device.inactive is None


def test_observe_gives_info_and_table_or_none_when_not_mapped(fake_world: World) -> None:
    """observe: None before activation and after removal; in between our uuid, the live
    table's id, length and pool."""
    thin = _provisioned(fake_world)
    assert thin.observe() is None
    thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
    seen = thin.observe()
    assert seen is not None
    info, table = seen
    assert info.name == thin.kernel_name and info.uuid == thin.uuid
    assert info.live_table and not info.suspended
    assert table is not None and (table.device_id, table.length) == (1, SMALL)
    assert table.pool == _pool_number(fake_world, thin.pool)
    thin.remove()
    assert thin.observe() is None


def test_open_node_gives_the_mapper_path(fake_world: World) -> None:
    """open_node: /dev/mapper/<pool>-<name>, the node of the device just made."""
    thin, _device = _active(fake_world)
    assert thin.open_node() == "/dev/mapper/rtpool-a" == thin.path


@pytest.mark.parametrize("fake_world", ["libdevmapper"], indirect=True)
def test_open_node_settles_udev_work_a_batch_deferred(fake_world: World) -> None:
    """Inside a batch that defers udev (libdevmapper), the create's udev wait is still
    pending; open_node waits for it before giving the path."""
    thin = _provisioned(fake_world)
    client = thin.pool.client
    assert isinstance(client, LibdmClient)
    library = _kernel(fake_world).dm_library()
    assert isinstance(library, FakeLibdm)
    with client.deferred_udev():
        thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
        waited = len(library.waited)
        path = thin.open_node()
        assert len(library.waited) == waited + 1, "the batch's cookie is waited for"
    assert len(library.waited) == waited + 1, "nothing left for the batch's end"
    assert path == thin.path


def test_check_ours_refuses_only_a_device_with_another_uuid(fake_world: World) -> None:
    """check_ours: nothing mapped and our own device pass; a device with another uuid under
    our name is NotOurs, naming both uuids."""
    thin = _provisioned(fake_world)
    thin.check_ours(None, "resize")
    thin.activate(SMALL, readonly=False, pool_number=_pool_number(fake_world, thin.pool))
    ours = thin.pool.client.info(thin.kernel_name)
    thin.check_ours(ours, "resize")
    thin.remove()
    thin.pool.client.create(thin.kernel_name, "0 8 zero", "someone-else")
    theirs = thin.pool.client.info(thin.kernel_name)
    with pytest.raises(NotOurs, match="someone-else"):
        thin.check_ours(theirs, "resize")
    assert _kernel(fake_world).devices[thin.kernel_name].uuid == "someone-else"

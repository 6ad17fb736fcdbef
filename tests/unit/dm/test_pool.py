"""dm.pool: the names and uuids of our devices, and ThinPool (make or adopt the pool, change its
metadata with the transaction id moving by one, check its metadata), on the fake kernel through
both drivers (tests/conftest.py's fake_world); results read from the kernel and its metadata."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.dm.driver import make_client
from reconciler.dm.errors import DeviceExists, InvalidArgument
from reconciler.dm.pool import (
    MetadataCheckFailed,
    PoolDevices,
    PoolMismatch,
    ThinPool,
    mapper_path,
    parse_thin_uuid,
    pool_uuid,
    table_matches,
    thin_device_name,
    thin_uuid,
)
from reconciler.dm.types import ThinTable
from reconciler.reconcile.pool_setup import pool_devices
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.metadata import PoolMetadata
from reconciler.testing.world import World
from reconciler.tools.loopback import LoopbackFiles
from reconciler.units import Sectors
from reconciler.vocabulary import MAX_THIN_ID, ThinId

# thin_check's words for a damaged superblock (as the fake prints them for one).
DAMAGED = "examining superblock\n  superblock is corrupt\n    bad checksum in superblock\n"


def _kernel(world: World) -> FakeKernel:
    assert isinstance(world.host, FakeKernel)
    return world.host


def _unloaded(world: World) -> tuple[ThinPool, PoolDevices]:
    """The world's pool object on its driver and its (attached) devices; no pool loaded."""
    pool = ThinPool(world.host, world.pool, make_client(world.host, world.settings.dm_driver))
    return pool, pool_devices(world.settings, world.host)


def _up(world: World) -> ThinPool:
    """The world's pool, created."""
    pool, devices = _unloaded(world)
    assert pool.ensure(devices, may_zero_metadata=True) == "created"
    return pool


def _metadata(world: World) -> PoolMetadata:
    return _kernel(world).pool_metadata(LoopbackFiles.under(world.settings.root_path).metadata)


def _transaction_id(world: World) -> int:
    return _metadata(world).transaction_id


# -- names and uuids ------------------------------------------------------------------------


def test_a_managed_devices_dm_name_is_pool_dash_name() -> None:
    """thin_device_name: exactly `<pool>-<name>`, and its node under /dev/mapper."""
    assert thin_device_name("rtpool", "web") == "rtpool-web"
    assert mapper_path(thin_device_name("rtpool", "web")) == "/dev/mapper/rtpool-web"
    assert mapper_path("rtpool") == "/dev/mapper/rtpool"


def test_a_thin_uuid_parses_back_to_its_id_and_others_to_none() -> None:
    """thin_uuid and parse_thin_uuid round trip, up to the last 24-bit id; another pool's
    uuid, the pool's own, a foreign one and an id past 24 bits are not ours (None)."""
    for thin_id in (0, 7, MAX_THIN_ID):
        assert parse_thin_uuid("rtpool", thin_uuid("rtpool", ThinId(thin_id))) == thin_id
    assert thin_uuid("rtpool", ThinId(7)) == "RECONCILER-v1-rtpool-7"
    assert parse_thin_uuid("rtpool", thin_uuid("other", ThinId(7))) is None
    assert parse_thin_uuid("rtpool", pool_uuid("rtpool")) is None
    assert parse_thin_uuid("rtpool", "LVM-abcdef") is None
    assert parse_thin_uuid("rtpool", "") is None
    assert parse_thin_uuid("rtpool", f"RECONCILER-v1-rtpool-{MAX_THIN_ID + 1}") is None


def test_table_matches_the_same_id_and_length_over_our_pool() -> None:
    """table_matches: the same id and length, the pool named by its path or its number;
    another id, length or pool does not match."""
    wanted = ThinTable(Sectors(8192), "/dev/mapper/rtpool", ThinId(3))
    by_number = ThinTable(Sectors(8192), "254:0", ThinId(3))
    assert table_matches(by_number, wanted, "254:0")
    assert table_matches(wanted, wanted, "254:0")
    assert not table_matches(ThinTable(Sectors(8192), "254:0", ThinId(4)), wanted, "254:0")
    assert not table_matches(ThinTable(Sectors(16384), "254:0", ThinId(3)), wanted, "254:0")
    assert not table_matches(ThinTable(Sectors(8192), "254:9", ThinId(3)), wanted, "254:0")


# -- ensure ---------------------------------------------------------------------------------


def test_ensure_creates_the_pool_then_adopts_it(fake_world: World) -> None:
    """The first ensure loads a thin-pool with our uuid over fresh metadata (transaction id
    0, no thin); the next adopts that same device."""
    pool, devices = _unloaded(fake_world)
    assert pool.ensure(devices, may_zero_metadata=True) == "created"
    device = _kernel(fake_world).devices[fake_world.pool]
    assert device.uuid == pool_uuid(fake_world.pool)
    assert device.live is not None and device.live.target == "thin-pool"
    assert not device.suspended
    assert (_transaction_id(fake_world), _metadata(fake_world).thins) == (0, {})
    assert pool.ensure(devices, may_zero_metadata=False) == "adopted"
    assert _kernel(fake_world).devices[fake_world.pool] is device
    assert device.live is not None and device.live.target == "thin-pool"


def test_ensure_refuses_a_pool_loaded_with_another_table_and_changes_nothing(
        fake_world: World) -> None:
    """A device of the pool's name with another geometry (twice the block size) is a
    PoolMismatch: its table, uuid and metadata stay as they were."""
    pool, devices = _unloaded(fake_world)
    wanted = pool.desired_table(devices)
    other = replace(wanted, data_block_sectors=wanted.data_block_sectors * 2)
    pool.client.create(pool.name, other.line(), "someone-elses-pool")
    device = _kernel(fake_world).devices[pool.name]
    table = device.live
    with pytest.raises(PoolMismatch, match="refusing to touch it"):
        pool.ensure(devices, may_zero_metadata=True)
    device = _kernel(fake_world).devices[pool.name]
    assert device.live == table and device.uuid == "someone-elses-pool"
    assert not device.suspended and device.inactive is None


def test_ensure_over_metadata_that_fails_thin_check_refuses_to_load_the_pool(
        fake_world: World) -> None:
    """Existing metadata is checked before a pool is loaded over it: when thin_check fails,
    MetadataCheckFailed (with thin_check's words and a repair hint), and no pool device."""
    pool = _up(fake_world)
    pool.create_thin(ThinId(1), 0)
    pool.client.remove(pool.name)
    _kernel(fake_world).faults.fail_command(("thin_check",), 1, DAMAGED)
    _again, devices = _unloaded(fake_world)
    with pytest.raises(MetadataCheckFailed, match="thin_repair") as raised:
        pool.ensure(devices, may_zero_metadata=False)
    assert "superblock is corrupt" in str(raised.value)
    assert fake_world.pool not in _kernel(fake_world).devices
    assert set(_metadata(fake_world).thins) == {1}, "the metadata is not wiped"


def test_check_metadata_fails_when_thin_check_fails(fake_world: World) -> None:
    """check_metadata passes on the pool's intact (unloaded) metadata and raises
    MetadataCheckFailed when thin_check fails on it."""
    pool = _up(fake_world)
    pool.client.remove(pool.name)
    _again, devices = _unloaded(fake_world)
    pool.check_metadata(devices.metadata_device)
    _kernel(fake_world).faults.fail_command(("thin_check",), 1, DAMAGED)
    with pytest.raises(MetadataCheckFailed, match=devices.metadata_device):
        pool.check_metadata(devices.metadata_device)


# -- metadata changes ------------------------------------------------------------------------


def test_create_thin_provisions_the_id_and_moves_the_transaction_id_by_one(
        fake_world: World) -> None:
    """create_thin: the pool has the id, and its transaction id is the one returned, one
    more than before (in the status as in the metadata)."""
    pool = _up(fake_world)
    assert pool.create_thin(ThinId(1), 0) == 1
    assert pool.create_thin(ThinId(MAX_THIN_ID), 1) == 2
    assert set(_metadata(fake_world).thins) == {1, MAX_THIN_ID}
    assert pool.status().transaction_id == _transaction_id(fake_world) == 2


def test_create_snap_provisions_a_snapshot_of_the_origin(fake_world: World) -> None:
    """create_snap: the new id maps its origin's blocks, the transaction id moved by one."""
    pool = _up(fake_world)
    pool.create_thin(ThinId(1), 0)
    pool.create_snap(ThinId(2), ThinId(1), 1)
    metadata = _metadata(fake_world)
    assert set(metadata.thins) == {1, 2}
    assert metadata.thins[2].mappings == metadata.thins[1].mappings
    assert pool.status().transaction_id == 2


def test_delete_releases_the_id_and_moves_the_transaction_id_by_one(fake_world: World) -> None:
    """delete: the id leaves the pool, the transaction id moved by one."""
    pool = _up(fake_world)
    pool.create_thin(ThinId(1), 0)
    pool.create_thin(ThinId(2), 1)
    assert pool.delete(ThinId(1), 2) == 3
    assert set(_metadata(fake_world).thins) == {2}
    assert pool.status().transaction_id == 3


def test_create_thin_of_an_existing_id_is_the_kernels_error(fake_world: World) -> None:
    """An id the pool has: the kernel refuses (EEXIST, DeviceExists), and the transaction id
    stays where it was."""
    pool = _up(fake_world)
    pool.create_thin(ThinId(1), 0)
    with pytest.raises(DeviceExists) as raised:
        pool.create_thin(ThinId(1), 1)
    assert raised.value.errno_name == "EEXIST"
    assert pool.status().transaction_id == 1
    assert set(_metadata(fake_world).thins) == {1}


def test_set_transaction_id_from_a_wrong_old_value_is_refused(fake_world: World) -> None:
    """The transaction id moves only from its current value: a stale `old` is EINVAL and
    nothing moves; the current one moves it."""
    pool = _up(fake_world)
    pool.create_thin(ThinId(1), 0)
    with pytest.raises(InvalidArgument):
        pool.set_transaction_id(0, 5)
    assert pool.status().transaction_id == 1
    pool.set_transaction_id(1, 5)
    assert pool.status().transaction_id == _transaction_id(fake_world) == 5

"""The fake kernel keeps the kernel's rules, seen through the production client and parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.dm.client import DmClient
from reconciler.dm.errors import DeviceBusy, DeviceExists, InvalidArgument, NoData
from reconciler.dm.fake import FakeKernel
from reconciler.dm.loopback import attach_loop, ensure_file
from reconciler.dm.metadata import list_thin_ids
from reconciler.dm.parse import parse_thin_status
from reconciler.dm.pool import PoolDevices, ThinPool
from reconciler.units import Sectors


@pytest.fixture
def pool(tmp_path: Path) -> ThinPool:
    kernel = FakeKernel()
    ensure_file(tmp_path / "meta", 8 << 20)
    ensure_file(tmp_path / "data", 4 << 20)  # 64 blocks
    meta, _ = attach_loop(kernel, tmp_path / "meta")
    data, _ = attach_loop(kernel, tmp_path / "data")
    thin_pool = ThinPool(kernel, "fp")
    thin_pool.ensure(PoolDevices(meta, data, 128), may_zero_metadata=True)
    return thin_pool


def kernel_of(pool: ThinPool) -> FakeKernel:
    assert isinstance(pool.host, FakeKernel)
    return pool.host


def test_create_thin_on_an_existing_id_is_device_exists(pool: ThinPool) -> None:
    """An id can be created once."""
    pool.create_thin(0, 0)
    with pytest.raises(DeviceExists):
        pool.create_thin(0, 1)


def test_transaction_id_moves_only_from_the_current_value(pool: ThinPool) -> None:
    """set_transaction_id with a stale old value is EINVAL and changes nothing."""
    assert pool.create_thin(0, 0) == 1
    with pytest.raises(InvalidArgument):
        pool.set_transaction_id(0, 5)
    assert pool.status().transaction_id == 1


def test_an_open_device_is_busy_and_an_active_id_cannot_be_deleted(pool: ThinPool) -> None:
    """remove of a held device and delete of an active id are both EBUSY."""
    pool.create_thin(0, 0)
    client = DmClient(pool.host)
    client.create("fp-a", pool.thin_table(0, Sectors(2048)).line(), "u-a")
    kernel_of(pool).hold_open("fp-a")
    with pytest.raises(DeviceBusy):
        client.remove("fp-a")
    with pytest.raises(DeviceBusy):
        pool.delete(0, 1)
    kernel_of(pool).release("fp-a")
    client.remove("fp-a")
    assert pool.delete(0, 1) == 2


def test_snapshot_shares_blocks_then_copies_on_write(pool: ThinPool) -> None:
    """A snapshot maps what its origin maps without new blocks; a write to it takes one."""
    client = DmClient(pool.host)
    pool.create_thin(0, 0)
    client.create("fp-o", pool.thin_table(0, Sectors(8192)).line(), "u-o")
    kernel_of(pool).write_blocks("fp-o", 0, 128 << 10)  # two 64 KiB blocks
    pool.create_snap(1, 0, 1)
    client.create("fp-s", pool.thin_table(1, Sectors(8192)).line(), "u-s")
    assert pool.status().used_data_blocks == 2
    kernel_of(pool).write_blocks("fp-s", 0, 1)
    assert pool.status().used_data_blocks == 3
    (origin,) = client.status("fp-o")
    assert parse_thin_status(origin).mapped_sectors == 256


def test_a_full_pool_refuses_writes(pool: ThinPool) -> None:
    """Writing past the pool's data blocks fails with ENOSPC and the pool says so."""
    client = DmClient(pool.host)
    pool.create_thin(0, 0)
    client.create("fp-big", pool.thin_table(0, Sectors(1 << 20)).line(), "u-big")
    with pytest.raises(OSError, match="No space left"):
        kernel_of(pool).write_blocks("fp-big", 0, 8 << 20)
    assert pool.status().mode.value == "out_of_data_space"


def test_pool_metadata_survives_a_reboot(pool: ThinPool, tmp_path: Path) -> None:
    """After a reboot the same metadata file brings back the ids and transaction id."""
    pool.create_thin(0, 0)
    pool.create_thin(5, 1)
    kernel = kernel_of(pool)
    kernel.reboot()
    meta, _ = attach_loop(kernel, tmp_path / "meta")
    data, _ = attach_loop(kernel, tmp_path / "data")
    pool.ensure(PoolDevices(meta, data, 128), may_zero_metadata=False)
    assert pool.status().transaction_id == 2
    assert list_thin_ids(kernel, "fp", meta) == {0, 5}


def test_activating_a_missing_id_fails_and_leaves_no_device(pool: ThinPool) -> None:
    """A thin table for an id the pool lacks is ENODATA; dmsetup removes the half-made device."""
    client = DmClient(pool.host)
    with pytest.raises(NoData):
        client.create("fp-ghost", pool.thin_table(77, Sectors(2048)).line(), "u-g")
    assert client.info("fp-ghost") is None


def test_pool_features_print_back_with_their_count(tmp_path: Path) -> None:
    """A pool loaded with `1 error_if_no_space` prints it back as the kernel does."""
    kernel = FakeKernel()
    ensure_file(tmp_path / "m", 8 << 20)
    ensure_file(tmp_path / "d", 2 << 20)
    meta, _ = attach_loop(kernel, tmp_path / "m")
    data, _ = attach_loop(kernel, tmp_path / "d")
    DmClient(kernel).create("fq", f"0 4096 thin-pool {meta} {data} 128 32768 1 error_if_no_space",
                            "u")
    assert kernel.run(["dmsetup", "table", "fq"]).stdout == \
        "0 4096 thin-pool 7:0 7:1 128 32768 1 error_if_no_space \n"


def test_a_pool_cannot_change_its_block_size(pool: ThinPool, tmp_path: Path) -> None:
    """Metadata made with 64 KiB blocks refuses a table with 128 KiB blocks (EINVAL)."""
    kernel = kernel_of(pool)
    DmClient(kernel).remove("fp")
    meta, data = "/dev/loop0", "/dev/loop1"
    with pytest.raises(InvalidArgument):
        DmClient(kernel).create("fp", f"0 8192 thin-pool {meta} {data} 256 32768", "u")
    assert DmClient(kernel).info("fp") is None

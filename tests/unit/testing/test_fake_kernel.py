"""The fake kernel keeps the kernel's rules, seen through the production client and parsers.

Each test drives FakeKernel with production's own calls (DmClient, ThinPool, loopback,
filesystem, metadata) and asserts on the state that results, read back the way production
reads it.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from reconciler.dm.client import DmClient
from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import (
    DeviceBusy,
    DeviceExists,
    InvalidArgument,
    NoData,
    NoSuchDevice,
    classify,
)
from reconciler.dm.parse import parse_pool_table, parse_thin_status, parse_thin_table
from reconciler.dm.pool import (
    MetadataCheckFailed,
    PoolDevices,
    ThinPool,
    device_number,
    device_sectors,
    has_thin_superblock,
)
from reconciler.dm.types import PoolMode
from reconciler.testing.fakekernel import FakeKernel
from reconciler.tools.errors import ToolError
from reconciler.tools.filesystem import grow_filesystem, make_filesystem
from reconciler.tools.loopback import attach_loop, attached_loop, ensure_file
from reconciler.tools.thin_ls import list_thin_ids
from reconciler.units import Sectors
from reconciler.vocabulary import ThinId

BLOCK = 64 << 10  # the pools' data block: 128 sectors


def make_pool(kernel: FakeKernel, root: Path, data_bytes: int = 4 << 20,
              features: str = "") -> ThinPool:
    """A pool named fp over fresh loop files: 8 MiB of metadata, 64 blocks of data."""
    ensure_file(root / "meta", 8 << 20)
    ensure_file(root / "data", data_bytes)
    meta, _ = attach_loop(kernel, root / "meta")
    data, _ = attach_loop(kernel, root / "data")
    pool = ThinPool(kernel, "fp")
    if features:
        pool.host.write(meta, 0, bytes(4096))
        table = f"0 {data_bytes // 512} thin-pool {meta} {data} 128 32768 {features}"
        DmClient(kernel).create("fp", table, "u-fp")
    else:
        pool.ensure(PoolDevices(meta, data, 128), may_zero_metadata=True)
    return pool


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def pool(kernel: FakeKernel, tmp_path: Path) -> ThinPool:
    return make_pool(kernel, tmp_path)


@pytest.fixture
def client(kernel: FakeKernel) -> DmClient:
    return DmClient(kernel)


def activate(pool: ThinPool, name: str, thin_id: int, sectors: int = 8192,
             readonly: bool = False) -> str:
    """Activate a thin id as fp-NAME; its device path."""
    pool.client.create(f"fp-{name}", pool.thin_table(ThinId(thin_id), Sectors(sectors)).line(),
                       f"u-{name}", readonly=readonly)
    return f"/dev/mapper/fp-{name}"


def mapped_sectors(client: DmDriver, name: str) -> int:
    (line,) = client.status(name)
    return int(parse_thin_status(line).mapped_sectors)


# -- thin ids and the transaction id -------------------------------------------------------


def test_create_thin_on_existing_id_is_device_exists(pool: ThinPool) -> None:
    """An id can be created once; the second create changes nothing."""
    pool.create_thin(ThinId(0), 0)
    with pytest.raises(DeviceExists):
        pool.client.message("fp", ["create_thin", "0"])
    assert pool.status().transaction_id == 1


def test_thin_ids_beyond_24_bits_are_invalid(pool: ThinPool, kernel: FakeKernel,
                                             tmp_path: Path) -> None:
    """2**24 - 1 is the last id the pool takes."""
    pool.client.message("fp", ["create_thin", str((1 << 24) - 1)])
    with pytest.raises(InvalidArgument):
        pool.client.message("fp", ["create_thin", str(1 << 24)])
    assert set(kernel.pool_metadata(tmp_path / "meta").thins) == {(1 << 24) - 1}


def test_transaction_id_moves_only_from_current(pool: ThinPool) -> None:
    """set_transaction_id with a stale old value is EINVAL and changes nothing."""
    assert pool.create_thin(ThinId(0), 0) == 1
    with pytest.raises(InvalidArgument):
        pool.set_transaction_id(0, 5)
    assert pool.status().transaction_id == 1


def test_delete_refuses_an_active_thin_and_a_missing_one(pool: ThinPool) -> None:
    """delete of an active id is EBUSY, of a gone one ENODATA; deactivated it goes."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "a", 0)
    with pytest.raises(DeviceBusy):
        pool.delete(ThinId(0), 1)
    pool.client.remove("fp-a")
    assert pool.delete(ThinId(0), 1) == 2
    with pytest.raises(NoData):
        pool.delete(ThinId(0), 2)
    assert pool.status().transaction_id == 2


# -- devices -------------------------------------------------------------------------------


def test_remove_of_open_device_is_busy(pool: ThinPool, kernel: FakeKernel,
                                       client: DmClient) -> None:
    """A held device stays (EBUSY) until it is released."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "a", 0)
    kernel.hold_open("fp-a")
    with pytest.raises(DeviceBusy):
        client.remove("fp-a")
    info = client.info("fp-a")
    assert info is not None and info.open_count == 1
    kernel.release("fp-a")
    client.remove("fp-a")
    assert client.info("fp-a") is None


def test_deferred_remove_keeps_the_kernels_rules(pool: ThinPool, kernel: FakeKernel,
                                                client: DmClient) -> None:
    """As dev_remove with DM_DEFERRED_REMOVE (captured in tests/kernel/test_kernel_driver.py): an
    open device is marked and the ioctl succeeds; it still suspends and resumes; the cancel message
    (answered by dm-ioctl itself, for any target) unmarks it; the last close removes a marked
    device; a closed device goes at once; other "@" messages are EINVAL."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "a", 0)
    kernel.hold_open("fp-a")
    client.remove("fp-a", deferred=True)
    assert kernel.devices["fp-a"].deferred_remove
    assert "(DEFERRED REMOVE)" in kernel.run(["dmsetup", "info", "fp-a"]).stdout
    client.suspend("fp-a")
    client.resume("fp-a")
    client.message("fp-a", ["@cancel_deferred_remove"])
    assert not kernel.devices["fp-a"].deferred_remove
    with pytest.raises(InvalidArgument):
        client.message("fp-a", ["@frobnicate"])
    kernel.release("fp-a")
    assert client.info("fp-a") is not None, "cancelled: the last close keeps it"
    kernel.hold_open("fp-a")
    client.remove("fp-a", deferred=True)
    kernel.release("fp-a")
    assert client.info("fp-a") is None
    pool.create_thin(1, 1)
    activate(pool, "b", 1)
    client.remove("fp-b", deferred=True)
    assert client.info("fp-b") is None


def test_a_pool_with_an_active_thin_is_busy(pool: ThinPool, client: DmClient) -> None:
    """Each active thin holds its pool open; the pool goes only after them."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "a", 0)
    pool_info = client.info("fp")
    assert pool_info is not None and pool_info.open_count == 1
    with pytest.raises(DeviceBusy):
        client.remove("fp")
    client.remove("fp-a")
    client.remove("fp")
    assert client.list_devices() == []


def test_create_on_a_taken_name_is_busy_not_exists(pool: ThinPool, client: DmClient) -> None:
    """The kernel answers EBUSY for a taken name (captured), and the device is untouched."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "a", 0)
    with pytest.raises(DeviceBusy):
        client.create("fp-a", "0 8 zero", "another-uuid")
    (table,) = client.table("fp-a")
    assert parse_thin_table(table).device_id == 0


def test_a_missing_device_is_no_such_device(client: DmClient) -> None:
    """Every operation on a missing name is ENXIO (or dmsetup's "does not exist")."""
    assert client.info("nosuch") is None
    for call in (lambda: client.remove("nosuch"), lambda: client.table("nosuch"),
                 lambda: client.status("nosuch"), lambda: client.suspend("nosuch"),
                 lambda: client.resume("nosuch"), lambda: client.load("nosuch", "0 8 zero"),
                 lambda: client.message("nosuch", ["create_thin", "0"])):
        with pytest.raises(NoSuchDevice):
            call()
    assert client.list_devices() == [] and client.status_all() == {}


def test_activating_a_missing_id_fails_and_leaves_no_device(pool: ThinPool,
                                                            client: DmClient) -> None:
    """A thin table for an id the pool lacks is ENODATA; dmsetup removes the half-made device."""
    with pytest.raises(NoData):
        activate(pool, "ghost", 77)
    assert client.info("fp-ghost") is None
    assert [d.name for d in client.list_devices()] == ["fp"]


def test_info_shows_suspended_read_only_and_inactive_tables(pool: ThinPool,
                                                            client: DmClient) -> None:
    """The attr flags follow suspend, load and resume; a resume swaps the table in."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "a", 0)
    client.suspend("fp-a")
    client.load("fp-a", pool.thin_table(ThinId(0), Sectors(16384)).line(), readonly=True)
    info = client.info("fp-a")
    assert info is not None
    assert (info.live_table, info.inactive_table, info.suspended, info.readonly) == (
        True, True, True, False)
    client.resume("fp-a")
    info = client.info("fp-a")
    assert info is not None
    assert (info.inactive_table, info.suspended, info.readonly) == (False, False, True)
    (table,) = client.table("fp-a")
    assert parse_thin_table(table).length == 16384


def test_growing_a_thin_keeps_its_blocks(pool: ThinPool, kernel: FakeKernel,
                                         client: DmClient) -> None:
    """A longer table on the same id sees the same mappings and data."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "a", 0)
    kernel.write(path, BLOCK, b"kept")
    client.suspend("fp-a")
    client.load("fp-a", pool.thin_table(ThinId(0), Sectors(32768)).line())
    client.resume("fp-a")
    assert mapped_sectors(client, "fp-a") == 128
    assert kernel.read(path, BLOCK, 4) == b"kept"
    assert device_sectors(kernel, path) == 32768


def test_tables_name_devices_by_major_and_minor(pool: ThinPool, kernel: FakeKernel,
                                                client: DmClient) -> None:
    """Loop devices are 7:N and dm devices 254:N, in tables and for stat."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "a", 0)
    (pool_line,) = client.table("fp")
    loaded = parse_pool_table(pool_line)
    assert (loaded.metadata_device, loaded.data_device) == ("7:0", "7:1")
    (thin_line,) = client.table("fp-a")
    assert parse_thin_table(thin_line).pool == "254:0"
    assert device_number(kernel, "/dev/mapper/fp-a") == "254:1"
    assert kernel.run(["stat", "-L", "-c", "%t:%T", "/dev/mapper/fp"]).stdout == "fe:0\n"
    assert sorted(client.table_all()) == ["fp", "fp-a"]


# -- pool metadata -------------------------------------------------------------------------


def test_zeroed_metadata_is_formatted_with_the_thin_magic(kernel: FakeKernel,
                                                          tmp_path: Path) -> None:
    """A new pool writes the dm-thin superblock magic into its metadata file."""
    ensure_file(tmp_path / "meta", 8 << 20)
    meta, _ = attach_loop(kernel, tmp_path / "meta")
    assert not has_thin_superblock(kernel, meta)
    make_pool(kernel, tmp_path)
    assert has_thin_superblock(kernel, meta)
    assert (tmp_path / "meta").read_bytes()[32:40] == (27022010).to_bytes(8, "little")


def test_pool_metadata_survives_reboot(pool: ThinPool, kernel: FakeKernel,
                                       tmp_path: Path) -> None:
    """After a reboot the same metadata file brings back ids, transaction id and data."""
    pool.create_thin(ThinId(0), 0)
    pool.create_thin(ThinId(5), 1)
    kernel.write(activate(pool, "a", 5), 0, b"survives")
    kernel.reboot()
    assert DmClient(kernel).list_devices() == [] and attached_loop(kernel, tmp_path / "meta") \
        is None
    meta, _ = attach_loop(kernel, tmp_path / "meta")
    data, _ = attach_loop(kernel, tmp_path / "data")
    assert pool.ensure(PoolDevices(meta, data, 128), may_zero_metadata=False) == "created"
    assert pool.status().transaction_id == 2
    assert list_thin_ids(kernel, "fp", meta) == {0, 5}
    assert kernel.read(activate(pool, "b", 5), 0, 8) == b"survives"


def test_a_pool_cannot_change_its_block_size(pool: ThinPool, client: DmClient) -> None:
    """Metadata made with 64 KiB blocks refuses a table with 128 KiB blocks (EINVAL)."""
    client.remove("fp")
    with pytest.raises(InvalidArgument):
        client.create("fp", "0 8192 thin-pool /dev/loop0 /dev/loop1 256 32768", "u")
    assert client.info("fp") is None


def test_pool_features_print_back_with_their_count(kernel: FakeKernel,
                                                   tmp_path: Path) -> None:
    """A pool loaded with `1 error_if_no_space` prints it back as the kernel does."""
    make_pool(kernel, tmp_path, 2 << 20, features="1 error_if_no_space")
    assert kernel.run(["dmsetup", "table", "fp"]).stdout == \
        "0 4096 thin-pool 7:0 7:1 128 32768 1 error_if_no_space \n"


def test_thin_ls_needs_a_metadata_snapshot_on_a_live_pool(pool: ThinPool,
                                                          kernel: FakeKernel) -> None:
    """list_thin_ids reads through a held snapshot and releases it; without one it is busy."""
    pool.create_thin(ThinId(3), 0)
    assert list_thin_ids(kernel, "fp", "/dev/loop0") == {3}
    assert pool.status().held_metadata_root is None
    bare = kernel.run(["thin_ls", "--no-headers", "-o", "DEV", "/dev/loop0"])
    assert isinstance(classify("thin_ls", bare), DeviceBusy)


def test_a_held_metadata_snapshot_survives_reboot(pool: ThinPool, kernel: FakeKernel,
                                                  tmp_path: Path) -> None:
    """A snapshot a crash left held is still held after reboot; list_thin_ids replaces it."""
    pool.create_thin(ThinId(1), 0)
    pool.client.message("fp", ["reserve_metadata_snap"])
    pool.create_thin(ThinId(2), 1)
    kernel.reboot()
    meta, _ = attach_loop(kernel, tmp_path / "meta")
    data, _ = attach_loop(kernel, tmp_path / "data")
    pool.ensure(PoolDevices(meta, data, 128), may_zero_metadata=False)
    assert pool.status().held_metadata_root is not None
    stale = kernel.run(["thin_ls", "--metadata-snap", "--no-headers", "-o", "DEV", meta])
    assert stale.stdout == "1 \n"  # the snapshot's view, taken before id 2
    assert list_thin_ids(kernel, "fp", meta) == {1, 2}
    assert pool.status().held_metadata_root is None


def test_thin_check_refuses_live_and_zeroed_metadata(pool: ThinPool, kernel: FakeKernel,
                                                     client: DmClient) -> None:
    """Live metadata is busy; removed it checks clean; a zeroed superblock fails the check."""
    with pytest.raises(MetadataCheckFailed, match="busy"):
        pool.check_metadata("/dev/loop0")
    client.remove("fp")
    pool.check_metadata("/dev/loop0")
    kernel.write("/dev/loop0", 0, bytes(4096))
    with pytest.raises(MetadataCheckFailed, match="superblock is corrupt"):
        pool.check_metadata("/dev/loop0")


# -- data ----------------------------------------------------------------------------------


def test_reads_return_written_bytes_and_zeros_elsewhere(pool: ThinPool,
                                                        kernel: FakeKernel) -> None:
    """Written bytes come back; the rest of a new block and unmapped blocks read as zeros."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "a", 0)
    kernel.write(path, 100, b"hello")
    assert kernel.read(path, 98, 9) == b"\0\0hello\0\0"
    assert kernel.read(path, 5 * BLOCK, 4) == bytes(4)
    assert pool.status().used_data_blocks == 1


def test_snapshot_shares_blocks_then_copies_on_write(pool: ThinPool, kernel: FakeKernel,
                                                     client: DmClient) -> None:
    """A snapshot maps its origin's blocks without new ones; a write to it takes one."""
    pool.create_thin(ThinId(0), 0)
    origin = activate(pool, "o", 0)
    kernel.write(origin, 0, b"A" * (2 * BLOCK))
    client.suspend("fp-o")
    pool.create_snap(ThinId(1), ThinId(0), 1)
    client.resume("fp-o")
    snap = activate(pool, "s", 1)
    assert pool.status().used_data_blocks == 2
    assert kernel.read(snap, BLOCK, 2) == b"AA"
    kernel.write(snap, 10, b"B")
    assert pool.status().used_data_blocks == 3
    assert kernel.read(snap, 9, 3) == b"ABA" and kernel.read(origin, 9, 3) == b"AAA"
    assert mapped_sectors(client, "fp-o") == mapped_sectors(client, "fp-s") == 256
    assert kernel.unsafe_snapshots == []


def test_an_unsuspended_active_origin_is_snapshotted_but_recorded(pool: ThinPool,
                                                                  kernel: FakeKernel) -> None:
    """The kernel does not refuse it (captured); the fake records it as unsafe."""
    pool.create_thin(ThinId(0), 0)
    activate(pool, "o", 0)
    pool.create_snap(ThinId(1), ThinId(0), 1)
    assert kernel.unsafe_snapshots == [(1, 0)]
    with pytest.raises(NoData):
        pool.create_snap(ThinId(2), ThinId(99), 2)


def test_full_pool_refuses_writes(kernel: FakeKernel, tmp_path: Path) -> None:
    """error_if_no_space: the write past the last block is ENOSPC and the pool says so."""
    pool = make_pool(kernel, tmp_path, 2 << 20, features="1 error_if_no_space")
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "big", 0, 131072)
    with pytest.raises(OSError, match="No space left") as raised:
        kernel.write(path, 0, bytes(4 << 20))
    assert raised.value.errno == errno.ENOSPC
    status = pool.status()
    assert (status.mode, status.used_data_blocks, status.error_if_no_space) == (
        PoolMode.OUT_OF_DATA_SPACE, 32, True)
    assert mapped_sectors(pool.client, "fp-big") == 32 * 128
    info = pool.client.info("fp")
    assert info is not None and info.events == 2  # low water, then out of space (captured)


def test_a_full_queueing_pool_fails_writes_once_its_timeout_is_over(
        kernel: FakeKernel, tmp_path: Path) -> None:
    """queue_if_no_space: exactly full is still rw; the next write fails and the policy flips."""
    pool = make_pool(kernel, tmp_path, 2 << 20)
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "big", 0, 131072)
    kernel.write(path, 0, bytes(2 << 20))
    assert pool.status().mode == PoolMode.READ_WRITE
    with pytest.raises(OSError, match="No space left"):
        kernel.write_blocks("fp-big", 2 << 20, 1 << 20)
    status = pool.status()
    assert (status.mode, status.error_if_no_space) == (PoolMode.OUT_OF_DATA_SPACE, True)


def test_freeing_blocks_returns_a_full_pool_to_read_write(kernel: FakeKernel,
                                                          tmp_path: Path) -> None:
    """Deleting the thin that filled the pool frees its blocks and restores the policy."""
    pool = make_pool(kernel, tmp_path, 2 << 20)
    pool.create_thin(ThinId(0), 0)
    activate(pool, "big", 0, 131072)
    with pytest.raises(OSError, match="No space left"):
        kernel.write_blocks("fp-big", 0, 3 << 20)
    pool.client.remove("fp-big")
    pool.delete(ThinId(0), 1)
    status = pool.status()
    assert (status.mode, status.used_data_blocks, status.error_if_no_space) == (
        PoolMode.READ_WRITE, 0, False)


def test_a_read_only_device_refuses_writes(pool: ThinPool, kernel: FakeKernel) -> None:
    """Writes to a device activated --readonly are EROFS and map nothing."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "ro", 0, readonly=True)
    with pytest.raises(OSError, match="Read-only file system") as raised:
        kernel.write(path, 0, b"x")
    assert raised.value.errno == errno.EROFS
    assert pool.status().used_data_blocks == 0


# -- loop devices --------------------------------------------------------------------------


def test_loop_devices_take_the_lowest_free_number_and_are_reused(kernel: FakeKernel,
                                                                 tmp_path: Path) -> None:
    """attach_loop reuses an attachment; a detached number is taken again first."""
    for name in ("a", "b", "c"):
        ensure_file(tmp_path / name, 1 << 20)
    assert attach_loop(kernel, tmp_path / "a") == ("/dev/loop0", True)
    assert attach_loop(kernel, tmp_path / "b") == ("/dev/loop1", True)
    assert attach_loop(kernel, tmp_path / "a") == ("/dev/loop0", False)
    assert kernel.run(["losetup", "--detach", "/dev/loop0"]).ok
    assert attach_loop(kernel, tmp_path / "c") == ("/dev/loop0", True)
    assert device_sectors(kernel, "/dev/loop1") == 2048


def test_a_loop_detached_while_in_use_goes_with_its_last_user(pool: ThinPool,
                                                              kernel: FakeKernel,
                                                              tmp_path: Path) -> None:
    """The kernel detaches a busy loop device lazily: it stays until the pool is removed."""
    assert kernel.run(["losetup", "--detach", "/dev/loop0"]).ok
    assert attached_loop(kernel, tmp_path / "meta") == "/dev/loop0"
    pool.client.remove("fp")
    assert attached_loop(kernel, tmp_path / "meta") is None


# -- filesystems ---------------------------------------------------------------------------


def test_mkfs_formats_a_device_with_a_few_blocks(pool: ThinPool, kernel: FakeKernel,
                                                 tmp_path: Path) -> None:
    """mkfs maps a handful of blocks, and e2fsck and resize2fs find the filesystem."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "fs", 0, 65536)
    make_filesystem(kernel, "ext4", path)
    assert kernel.filesystem("fp-fs") == "ext4"
    assert 0 < pool.status().used_data_blocks <= 8
    pool.client.suspend("fp-fs")
    pool.client.load("fp-fs", pool.thin_table(ThinId(0), Sectors(131072)).line())
    pool.client.resume("fp-fs")
    assert grow_filesystem(kernel, "ext4", path, tmp_path)
    resized = kernel.run(["resize2fs", path])
    assert "already 65536 (1k) blocks long" in resized.stderr


def test_xfs_is_grown_on_a_temporary_mount(pool: ThinPool, kernel: FakeKernel,
                                           tmp_path: Path) -> None:
    """xfs grows only mounted: mount (nouuid), xfs_growfs, umount; the superblock says the
    new size, the device is closed again and the mount point is gone."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "fs", 0, 614400)
    make_filesystem(kernel, "xfs", path)
    assert kernel.filesystem_size("fp-fs") == 300 << 20
    pool.client.suspend("fp-fs")
    pool.client.load("fp-fs", pool.thin_table(ThinId(0), Sectors(2 * 614400)).line())
    pool.client.resume("fp-fs")
    assert grow_filesystem(kernel, "xfs", path, tmp_path)
    assert kernel.filesystem_size("fp-fs") == 600 << 20
    (mount,) = [c for c in kernel.calls if c[0] == "mount"]
    assert mount[:5] == ("mount", "-t", "xfs", "-o", "nouuid") and mount[5] == path
    assert [c[0] for c in kernel.calls[-3:]] == ["mount", "xfs_growfs", "umount"]
    assert kernel.mounted() == {} and not Path(mount[6]).exists()
    assert kernel.model.open_count(kernel.devices["fp-fs"]) == 0


def test_a_failed_xfs_grow_unmounts_and_says_why(pool: ThinPool, kernel: FakeKernel,
                                                 tmp_path: Path) -> None:
    """xfs_growfs failing is a ToolError naming it, and the temporary mount is undone; a mount
    that fails (not xfs) is a ToolError too, with no mount left."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "fs", 0, 614400)
    make_filesystem(kernel, "xfs", path)
    kernel.fail_next(("xfs_growfs",), 1, "xfs_growfs: XFS_IOC_FSGROWFSDATA xfsctl failed\n")
    with pytest.raises(ToolError, match="xfs_growfs"):
        grow_filesystem(kernel, "xfs", path, tmp_path)
    assert kernel.calls[-1][0] == "umount" and kernel.mounted() == {}
    make_filesystem(kernel, "ext4", path)
    with pytest.raises(ToolError, match="wrong fs type"):
        grow_filesystem(kernel, "xfs", path, tmp_path)
    assert kernel.mounted() == {}
    assert kernel.model.open_count(kernel.devices["fp-fs"]) == 0


def test_mkfs_discards_what_the_device_held_before(pool: ThinPool, kernel: FakeKernel) -> None:
    """Like the real tools, mkfs first discards the device: old blocks go back to the pool."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "fs", 0, 614400)  # mkfs.xfs makes nothing under 300 MiB
    kernel.write_blocks("fp-fs", 0, 20 * BLOCK)
    make_filesystem(kernel, "xfs", path)
    assert kernel.filesystem("fp-fs") == "xfs"
    assert pool.status().used_data_blocks <= 8
    assert kernel.read(path, 10 * BLOCK, 4) == bytes(4)


def test_mkfs_of_a_missing_device_fails_as_the_tool_does(kernel: FakeKernel) -> None:
    """mkfs.ext4 names the missing file; e2fsck on an unformatted device fails too."""
    with pytest.raises(ToolError, match="does not exist and no size was specified") as failed:
        make_filesystem(kernel, "ext4", "/dev/mapper/x")
    assert (failed.value.errno_name, failed.value.temporary) == ("EIO", False)
    missing = kernel.run(["mkfs.ext4", "-q", "-F", "/dev/mapper/x"])
    assert (missing.rc, missing.stderr) == (
        1, "The file /dev/mapper/x does not exist and no size was specified.\n")


def test_fsck_of_an_unformatted_device_finds_no_filesystem(pool: ThinPool,
                                                           kernel: FakeKernel) -> None:
    """e2fsck says bad magic (exit 8) where nothing was formatted."""
    pool.create_thin(ThinId(0), 0)
    path = activate(pool, "raw", 0)
    checked = kernel.run(["e2fsck", "-f", "-p", path])
    assert checked.rc == 8 and "Bad magic number" in checked.stderr


# -- the fake's own tools ------------------------------------------------------------------


def test_unknown_commands_and_forms_are_assertion_errors(kernel: FakeKernel) -> None:
    """Anything production should not send fails the test, naming it."""
    for argv in (["dmsetup", "remove", "--force", "x"], ["losetup", "-a"], ["rm", "-rf", "/"],
                 ["thin_ls", "--bogus", "/dev/loop0"]):
        with pytest.raises(AssertionError, match="FakeKernel"):
            kernel.run(argv)


def test_fail_next_fails_matching_commands_the_given_number_of_times(
        kernel: FakeKernel) -> None:
    """Injected failures hit only matching commands, `times` times, and are still recorded."""
    busy = "device-mapper: remove ioctl on x  failed: Device or resource busy\nCommand failed.\n"
    kernel.fail_next(("dmsetup", "remove"), 1, busy, times=2)
    assert kernel.run(["dmsetup", "ls"]).ok
    for _ in range(2):
        assert kernel.run(["dmsetup", "remove", "x"]).stderr == busy
    assert "No such device or address" in kernel.run(["dmsetup", "remove", "x"]).stderr
    assert kernel.calls.count(("dmsetup", "remove", "x")) == 3


def test_deferred_udev_shares_one_cookie_and_waits_once(pool: ThinPool,
                                                       kernel: FakeKernel) -> None:
    """Inside deferred_udev, creates, resumes and removes share one udev cookie (each counted
    on it, as libdevmapper counts them) and nothing waits until the batch settles; outside,
    each call waits for its own."""
    from reconciler.dm.libdm import LibdmClient
    from reconciler.testing.fakekernel.libdm import FakeLibdm

    library = kernel.dm_library()
    assert isinstance(library, FakeLibdm)
    kernel.udev.alive = True  # in our IPC namespace: it confirms our cookies
    client = LibdmClient(lib=library, udev_facts=kernel.udev_facts())
    for thin_id in (0, 1, 2):
        pool.create_thin(ThinId(thin_id), thin_id)
    table = pool.thin_table
    with client.deferred_udev():
        client.create("fp-a", table(ThinId(0), Sectors(8192)).line(), "u-a")
        client.create("fp-b", table(ThinId(1), Sectors(8192)).line(), "u-b")
        client.suspend("fp-a")
        client.resume("fp-a")
        assert library.waited == []
        client.remove("fp-b")
        client.settle_udev()  # what a step does before it opens a node
        ((cookie, events),) = library.waited
        assert events == 4, "two creates, a resume and a remove; not the suspend"
        client.create("fp-c", table(ThinId(2), Sectors(8192)).line(), "u-c")
    assert len(library.waited) == 2 and library.waited[1][0] != cookie
    client.remove("fp-c")
    assert len(library.waited) == 3, "outside a batch each call waits for itself"

"""The kernel boundary's two drivers on a real kernel: DmClient (dmsetup) and LibdmClient.

Every contract test runs on both drivers against the same small thin-pool over two loop
devices; a differential test sets up a mix of devices and requires both drivers to report them
identically; the last test stops udevd and checks that /dev/mapper nodes still come and go.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.dm.client import DmClient
from reconciler.dm.errors import (
    DeviceBusy,
    DeviceExists,
    DmError,
    InvalidArgument,
    NoSuchDevice,
)
from reconciler.dm.host import SystemHost
from reconciler.dm.libdm import LibdmClient
from reconciler.dm.parse import parse_pool_status, parse_thin_status
from reconciler.dm.types import TargetLine
from reconciler.dm.udev import UDEV_CONTROL, udev_running
from reconciler.units import Sectors
from tests.kernel.udevd import find_udevd, start_udevd, wait_gone

pytestmark = pytest.mark.kernel

Client = DmClient | LibdmClient

DATA_BYTES = 64 << 20
METADATA_BYTES = 4 << 20
THIN_SECTORS = 2048


def _run(argv: list[str]) -> str:
    completed = SystemHost().run(argv)
    assert completed.ok, f"{argv}: {completed.stderr}"
    return completed.stdout.strip()


@dataclass
class Pool:
    """A thin-pool over two loop devices; every device a test makes starts with `prefix`."""

    prefix: str
    name: str
    sectors: int
    loops: tuple[str, str]

    def thin(self, suffix: str) -> str:
        """A device name of this test."""
        return f"{self.prefix}-{suffix}"

    def thin_table(self, device_id: int, length: int = THIN_SECTORS) -> str:
        """`0 <length> thin /dev/mapper/<pool> <id>`."""
        return f"0 {length} thin /dev/mapper/{self.name} {device_id}"

    def make_thin(self, client: Client, suffix: str, device_id: int) -> str:
        """create_thin in the pool and a device for it; its name."""
        client.message(self.name, ["create_thin", str(device_id)])
        name = self.thin(suffix)
        client.create(name, self.thin_table(device_id), uuid=f"{name}-uuid")
        return name


def _remove_everything(prefix: str) -> None:
    reference = DmClient(SystemHost())
    names = [i.name for i in reference.info_all() if i.name.startswith(prefix)]
    # Thins (longer names) before their pool.
    for name in sorted(names, key=len, reverse=True):
        for _ in range(25):
            if reference.info(name) is None:
                break
            if SystemHost().run(["dmsetup", "remove", name]).ok:
                break
            time.sleep(0.2)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    """A fresh thin-pool made with dmsetup (the reference), torn down with everything on it."""
    prefix = f"kt{secrets.token_hex(3)}"
    loops: list[str] = []
    try:
        for label, size in (("meta", METADATA_BYTES), ("data", DATA_BYTES)):
            path = tmp_path / label
            path.touch()
            os.truncate(path, size)
            loops.append(_run(["losetup", "-f", "--show", str(path)]))
        meta, data = loops
        sectors = DATA_BYTES // 512
        name = f"{prefix}-pool"
        DmClient(SystemHost()).create(
            name, f"0 {sectors} thin-pool {meta} {data} 128 32768 1 skip_block_zeroing",
            uuid=f"{name}-uuid",
        )
        yield Pool(prefix, name, sectors, (meta, data))
    finally:
        _remove_everything(prefix)
        for loop in loops:
            SystemHost().run(["losetup", "-d", loop])


@pytest.fixture(params=["dmsetup", "libdm"])
def client(request: pytest.FixtureRequest) -> Client:
    """Each driver of the kernel boundary."""
    if request.param == "dmsetup":
        return DmClient(SystemHost())
    return LibdmClient()


def _node(name: str) -> Path:
    return Path("/dev/mapper") / name


def test_create_info_status_table_remove(pool: Pool, client: Client) -> None:
    """A created thin device is listed, has info, status and table, a node, and goes away."""
    name = pool.make_thin(client, "a", 1)
    assert _node(name).exists()

    info = client.info(name)
    assert info is not None
    assert (info.name, info.uuid) == (name, f"{name}-uuid")
    assert (info.live_table, info.inactive_table, info.suspended, info.readonly) == (
        True, False, False, False
    )
    assert (info.open_count, info.segments) == (0, 1)
    assert os.stat(_node(name)).st_rdev == os.makedev(info.major, info.minor)

    listing = {d.name: (d.major, d.minor) for d in client.list_devices()}
    assert listing[name] == (info.major, info.minor)
    pool_info = client.info(pool.name)
    assert pool_info is not None

    status = client.status(name)
    assert len(status) == 1
    thin = parse_thin_status(status[0])
    assert (thin.length, thin.failed, thin.mapped_sectors, thin.highest_mapped_sector) == (
        THIN_SECTORS, False, 0, None
    )
    assert client.table(name) == [TargetLine(
        Sectors(0), Sectors(THIN_SECTORS), "thin", f"{pool_info.major}:{pool_info.minor} 1"
    )]
    assert client.status_all()[name] == status
    assert client.table_all()[name] == client.table(name)
    assert name in {i.name for i in client.info_all()}

    client.remove(name)
    assert not _node(name).exists()
    assert client.info(name) is None
    assert name not in {d.name for d in client.list_devices()}


def test_create_readonly(pool: Pool, client: Client) -> None:
    """create(readonly=True) makes a read-only device."""
    client.message(pool.name, ["create_thin", "1"])
    name = pool.thin("ro")
    client.create(name, pool.thin_table(1), uuid=f"{name}-uuid", readonly=True)
    info = client.info(name)
    assert info is not None and info.readonly


def test_load_suspend_resume(pool: Pool, client: Client) -> None:
    """load fills the inactive slot; suspend, then resume swaps it in (length and mode)."""
    name = pool.make_thin(client, "grow", 1)
    client.load(name, pool.thin_table(1, length=2 * THIN_SECTORS), readonly=True)
    info = client.info(name)
    assert info is not None and (info.live_table, info.inactive_table) == (True, True)
    assert client.table(name)[0].length == THIN_SECTORS  # still the live one

    client.suspend(name)
    info = client.info(name)
    assert info is not None and info.suspended

    client.resume(name)
    info = client.info(name)
    assert info is not None
    assert (info.inactive_table, info.suspended, info.readonly) == (False, False, True)
    assert client.table(name)[0].length == 2 * THIN_SECTORS
    assert _node(name).exists()


def test_message_set_transaction_id(pool: Pool, client: Client) -> None:
    """set_transaction_id moves the pool's id; a wrong old id is InvalidArgument (EINVAL)."""
    client.message(pool.name, ["set_transaction_id", "0", "7"])
    assert parse_pool_status(client.status(pool.name)[0]).transaction_id == 7
    with pytest.raises(InvalidArgument) as caught:
        client.message(pool.name, ["set_transaction_id", "0", "8"])
    assert os.strerror(22) in str(caught.value)
    assert parse_pool_status(client.status(pool.name)[0]).transaction_id == 7


def test_create_thin_of_an_existing_id(pool: Pool, client: Client) -> None:
    """create_thin of an id the pool has is DeviceExists (EEXIST)."""
    client.message(pool.name, ["create_thin", "3"])
    with pytest.raises(DeviceExists) as caught:
        client.message(pool.name, ["create_thin", "3"])
    assert "File exists" in str(caught.value)
    assert caught.value.what == f"message {pool.name} create_thin 3"


def test_missing_device(pool: Pool, client: Client) -> None:
    """No such device: info is None; status, table, remove, message are NoSuchDevice."""
    name = pool.thin("missing")
    assert client.info(name) is None
    with pytest.raises(NoSuchDevice):
        client.status(name)
    with pytest.raises(NoSuchDevice):
        client.table(name)
    with pytest.raises(NoSuchDevice) as caught:
        client.remove(name)
    assert caught.value.what == f"remove {name}"
    with pytest.raises(NoSuchDevice):
        client.message(name, ["create_thin", "1"])
    with pytest.raises(NoSuchDevice):
        client.suspend(name)


def test_create_of_a_taken_name(pool: Pool, client: Client) -> None:
    """create with a name in use is DeviceBusy (EBUSY) and leaves the device alone."""
    name = pool.make_thin(client, "taken", 1)
    before = client.info(name)
    client.message(pool.name, ["create_thin", "2"])
    with pytest.raises(DeviceBusy) as caught:
        client.create(name, pool.thin_table(2), uuid=f"{name}-other")
    assert "Device or resource busy" in str(caught.value)
    assert caught.value.temporary
    assert client.info(name) == before
    assert client.table(name)[0].params.endswith(" 1")
    assert _node(name).exists()


def test_create_with_a_bad_table(pool: Pool, client: Client) -> None:
    """A table the kernel refuses is InvalidArgument, and no device is left behind."""
    name = pool.thin("bad")
    with pytest.raises(InvalidArgument):
        client.create(name, f"0 {THIN_SECTORS} thin /dev/mapper/{pool.name}", uuid=name)
    assert client.info(name) is None
    assert not _node(name).exists()


def test_remove_of_an_open_device(pool: Pool, client: Client) -> None:
    """remove of a device held open is DeviceBusy and never forced; after close it goes."""
    name = pool.make_thin(client, "open", 1)
    fd = os.open(_node(name), os.O_RDONLY)
    try:
        info = client.info(name)
        assert info is not None and info.open_count == 1
        with pytest.raises(DeviceBusy):
            client.remove(name)
        assert client.info(name) is not None
        assert _node(name).exists()
    finally:
        os.close(fd)
    for _ in range(25):  # udev's own probe of the node may still hold it for a moment
        try:
            client.remove(name)
            break
        except DeviceBusy:
            time.sleep(0.2)
    assert client.info(name) is None
    assert not _node(name).exists()


def test_deferred_remove_of_an_open_device(pool: Pool, client: Client) -> None:
    """A deferred remove of an open device succeeds and leaves it mapped (libdevmapper reports
    the flag; dmsetup's columns cannot); the cancel message keeps it; a second deferred remove
    makes the last close take it away, nodes included."""
    name = pool.make_thin(client, "deferred", 1)
    fd = os.open(_node(name), os.O_RDONLY)
    try:
        client.remove(name, deferred=True)
        info = client.info(name)
        assert info is not None and info.open_count == 1
        assert info.deferred_remove == isinstance(client, LibdmClient)
        client.message(name, ["@cancel_deferred_remove"])
        cancelled = client.info(name)
        assert cancelled is not None and not cancelled.deferred_remove
        client.remove(name, deferred=True)
        client.suspend(name)  # a device waiting for its last close still suspends and resumes
        client.resume(name)
    finally:
        os.close(fd)
    for _ in range(25):  # the kernel removes it from a work queue after the close
        if client.info(name) is None:
            break
        time.sleep(0.2)
    assert client.info(name) is None
    if udev_running():
        # No task of ours removed it, so no cookie to wait on: udev deletes the node when it
        # gets to the kernel's remove event (seconds, in a busy emulated guest).
        for _ in range(100):
            if not _node(name).exists():
                break
            time.sleep(0.2)
        assert not _node(name).exists()


def test_both_drivers_report_the_same(pool: Pool) -> None:
    """dmsetup and libdevmapper give identical list, info, status and table of every device."""
    dmsetup, libdm = DmClient(SystemHost()), LibdmClient()
    pool.make_thin(dmsetup, "one", 1)
    pool.make_thin(libdm, "two", 2)
    suspended = pool.make_thin(dmsetup, "three", 3)
    dmsetup.load(suspended, pool.thin_table(3, length=4 * THIN_SECTORS))
    dmsetup.suspend(suspended)
    readonly = pool.thin("four")
    dmsetup.message(pool.name, ["create_thin", "4"])
    libdm.create(readonly, pool.thin_table(4), uuid="", readonly=True)
    # A device with no table at all: dmsetup prints "name: " for it.
    _run(["dmsetup", "create", pool.thin("empty"), "--notable"])
    try:
        dmsetup.status_all()  # the pool commits its metadata once, before the comparison
        assert libdm.list_devices() == dmsetup.list_devices()
        assert libdm.info_all() == dmsetup.info_all()
        assert libdm.status_all() == dmsetup.status_all()
        assert libdm.table_all() == dmsetup.table_all()
        assert libdm.status_all()[pool.thin("empty")] == []
        for name in (pool.name, suspended, readonly):
            assert libdm.info(name) == dmsetup.info(name)
            assert libdm.status(name) == dmsetup.status(name)
            assert libdm.table(name) == dmsetup.table(name)
    finally:
        dmsetup.resume(suspended)


def test_errors_carry_the_errno_text(pool: Pool) -> None:
    """LibdmClient's errors read like dmsetup's: the ioctl, the device and strerror."""
    with pytest.raises(DmError) as caught:
        LibdmClient().remove(pool.thin("nothing"))
    assert str(caught.value) == (
        f"remove {pool.thin('nothing')}: device-mapper: remove ioctl on "
        f"{pool.thin('nothing')} failed: No such device or address"
    )


def test_nodes_without_udev(pool: Pool) -> None:
    """With udevd stopped, create and remove still make and delete /dev/mapper nodes.

    libdevmapper decided at its first use in this process that udev runs; LibdmClient asks
    again before each call, so it makes the node itself instead of waiting for udev forever.
    """
    libdm = LibdmClient(udev_timeout=20)
    libdm.info(pool.name)  # libdevmapper's first use, while udev (if any) runs
    found = find_udevd()
    if found is not None:
        os.kill(found[0], signal.SIGTERM)
        wait_gone(found[0])
    try:
        clients: list[Client] = [libdm]
        # dmsetup decides by the control socket's file: a udevd killed without cleanup
        # would leave it behind and dmsetup would wait for it forever.
        if not Path(UDEV_CONTROL).exists():
            clients.append(DmClient(SystemHost()))
        for number, client in enumerate(clients, start=1):
            started = time.monotonic()
            name = pool.make_thin(client, f"noudev{number}", number)
            assert _node(name).exists()
            assert os.stat(_node(name)).st_rdev == os.makedev(
                *next((d.major, d.minor) for d in client.list_devices() if d.name == name)
            )
            client.remove(name)
            assert not _node(name).exists()
            assert time.monotonic() - started < 10, "waited for a udev that is not there"
    finally:
        if found is not None:
            start_udevd(found[1])
    if found is not None:
        # And with udevd back, the library synchronises with it again.
        name = pool.make_thin(libdm, "udevback", 9)
        assert _node(name).is_symlink()
        libdm.remove(name)
        assert not _node(name).exists()


def test_a_batch_udev_never_confirms_is_released(pool: Pool) -> None:
    """udevd alive but not answering (stopped with SIGSTOP: its socket still listens, so udev
    counts as running): a batch of two creates sharing one cookie costs udev_timeout, then
    every call's share is released and the nodes are made; nothing waits forever."""
    found = find_udevd()
    if found is None:
        pytest.skip("no udevd in this machine")
    libdm = LibdmClient(udev_timeout=3)
    for device_id in (1, 2):
        libdm.message(pool.name, ["create_thin", str(device_id)])
    names = [pool.thin(f"mute{n}") for n in (1, 2)]
    os.kill(found[0], signal.SIGSTOP)
    try:
        started = time.monotonic()
        with libdm.deferred_udev():
            for device_id, name in enumerate(names, start=1):
                libdm.create(name, pool.thin_table(device_id), uuid=f"{name}-uuid")
        waited = time.monotonic() - started
    finally:
        os.kill(found[0], signal.SIGCONT)
    assert waited < 60, "a wait for the batch that the timeout did not end"
    for name in names:
        assert _node(name).exists()
    SystemHost().run(["udevadm", "settle", "--timeout=20"])
    for name in names:
        libdm.remove(name)
        assert not _node(name).exists()

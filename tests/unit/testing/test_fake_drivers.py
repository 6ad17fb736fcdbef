"""Both drivers on the fake kernel: DmClient through the fake dmsetup's text and LibdmClient
through the fake libdevmapper's errno reach the same kernel model, so they must agree.

An errno injected at an ioctl (`FakeKernel.faults`) raises the same `reconciler.dm.errors`
class, with the same retry decision, whichever driver met it; and the same kernel state reads
the same through either (list, info, status, table).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.dm.client import LISTING_ATTEMPTS, DmClient
from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import (
    CommandFailed,
    DeviceBusy,
    DeviceExists,
    DmError,
    InvalidArgument,
    NoData,
    NoSpace,
    NoSuchDevice,
)
from reconciler.dm.libdm import LibdmClient
from reconciler.dm.pool import PoolDevices, ThinPool
from reconciler.dm.types import DeviceInfo
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.tools.loopback import attach_loop, ensure_file
from reconciler.units import Sectors
from reconciler.vocabulary import ThinId

DRIVERS = ("dmsetup", "libdevmapper")
ERRNOS = {
    errno.EBUSY: DeviceBusy, errno.EEXIST: DeviceExists, errno.ENODATA: NoData,
    errno.ENOSPC: NoSpace, errno.EINVAL: InvalidArgument, errno.ENXIO: NoSuchDevice,
    errno.EPERM: CommandFailed,
}
THIN = "fp-a"
TABLE = "0 8192 thin /dev/mapper/fp 0"


def client_for(kernel: FakeKernel, driver: str) -> DmDriver:
    """DmClient over the fake's dmsetup, or LibdmClient over its libdevmapper."""
    if driver == "dmsetup":
        return DmClient(kernel)
    return LibdmClient(lib=kernel.dm_library())


def make_pool(kernel: FakeKernel, root: Path) -> ThinPool:
    """A pool `fp` with thin id 0 created and, as fp-a, active."""
    ensure_file(root / "meta", 8 << 20)
    ensure_file(root / "data", 4 << 20)
    meta, _ = attach_loop(kernel, root / "meta")
    data, _ = attach_loop(kernel, root / "data")
    pool = ThinPool(kernel, "fp")
    pool.ensure(PoolDevices(meta, data, 128), may_zero_metadata=True)
    pool.create_thin(ThinId(0), 0)
    pool.client.create(THIN, pool.thin_table(ThinId(0), Sectors(8192)).line(), "u-a")
    return pool


def names_in(listing: object) -> set[str]:
    """The device names an info_all (DeviceInfo list) or status/table_all (dict) shows."""
    if isinstance(listing, list):
        return {info.name for info in listing if isinstance(info, DeviceInfo)}
    assert isinstance(listing, dict)
    return {name for name in listing if isinstance(name, str)}


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    """A fake kernel with pool fp and its active thin fp-a."""
    created = FakeKernel()
    make_pool(created, tmp_path)
    return created


# Each operation of the kernel boundary, the ioctl it meets first, and the device it names.
CALLS: dict[str, tuple[Op, str, Callable[[DmDriver], object]]] = {
    "list_devices": (Op.LIST, "", lambda c: c.list_devices()),
    "info_all": (Op.LIST, "", lambda c: c.info_all()),
    "status": (Op.STATUS, THIN, lambda c: c.status(THIN)),
    "status_all": (Op.STATUS, THIN, lambda c: c.status_all()),
    "table": (Op.TABLE, THIN, lambda c: c.table(THIN)),
    "table_all": (Op.TABLE, "fp", lambda c: c.table_all()),
    "info": (Op.INFO, THIN, lambda c: c.info(THIN)),
    "create": (Op.CREATE, "fp-b", lambda c: c.create("fp-b", TABLE, "u-b")),
    "create's reload": (Op.LOAD, "fp-b", lambda c: c.create("fp-b", TABLE, "u-b")),
    "create's resume": (Op.RESUME, "fp-b", lambda c: c.create("fp-b", TABLE, "u-b")),
    "load": (Op.LOAD, THIN, lambda c: c.load(THIN, TABLE)),
    "suspend": (Op.SUSPEND, THIN, lambda c: c.suspend(THIN)),
    "resume": (Op.RESUME, THIN, lambda c: c.resume(THIN)),
    "remove": (Op.REMOVE, THIN, lambda c: c.remove(THIN)),
    "message": (Op.MESSAGE, "fp", lambda c: c.message("fp", ["create_thin", "1"])),
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("number", sorted(ERRNOS))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_an_injected_errno_is_the_same_error_through_both_drivers(
        kernel: FakeKernel, driver: str, number: int, call: str) -> None:
    """The errno's class and `temporary`, naming the errno's text, from either driver."""
    op, name, run = CALLS[call]
    kernel.faults.fail(op, name or None, errno=number)
    client = client_for(kernel, driver)
    if number == errno.ENXIO and op is Op.INFO:
        # "No such device" is what info answers with None, through both drivers.
        assert run(client) is None
        return
    if number == errno.ENXIO and call.endswith("_all") and (op is not Op.LIST
                                                           or driver == "dmsetup"):
        # One device's ENXIO inside a listing means it went away since LIST: LibdmClient
        # leaves it out; dmsetup's listing fails (the fake dmsetup's module doc) and DmClient
        # reads it again (whichever ioctl said so: dmsetup's text does not tell), where the
        # device (still there: the fault was a single ioctl's) is.
        shown = names_in(run(client))
        assert (name or THIN) in shown if driver == "dmsetup" else name not in shown
        return
    with pytest.raises(DmError) as caught:
        run(client)
    expected = ERRNOS[number]
    if number == errno.ENXIO and op is Op.STATUS:
        # libdevmapper hides STATUS's ENXIO (exists = 0) and dmsetup says "Device does not
        # exist": no strerror to see, the same class.
        assert type(caught.value) is NoSuchDevice
    else:
        assert type(caught.value) is expected
        assert caught.value.temporary is expected.temporary
        assert os.strerror(number) in str(caught.value)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_fault_is_used_up_after_its_times(kernel: FakeKernel, driver: str) -> None:
    """A busy remove twice, then the remove goes through: the device is gone."""
    client = client_for(kernel, driver)
    kernel.faults.fail(Op.REMOVE, THIN, errno=errno.EBUSY, times=2)
    for _ in range(2):
        with pytest.raises(DeviceBusy):
            client.remove(THIN)
    client.remove(THIN)
    assert THIN not in kernel.devices


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_create_whose_table_fails_leaves_no_device(kernel: FakeKernel, driver: str) -> None:
    """A refused reload inside create removes the half-made device again (both drivers)."""
    kernel.faults.fail(Op.LOAD, "fp-b", errno=errno.EINVAL)
    with pytest.raises(InvalidArgument):
        client_for(kernel, driver).create("fp-b", TABLE, "u-b")
    assert "fp-b" not in kernel.devices


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_message_fault_hits_only_its_verb(kernel: FakeKernel, driver: str) -> None:
    """A fault for create_thin leaves set_transaction_id alone."""
    client = client_for(kernel, driver)
    kernel.faults.fail(Op.MESSAGE, "fp", errno=errno.ENOSPC, verb="create_thin")
    client.message("fp", ["set_transaction_id", "1", "2"])
    with pytest.raises(NoSpace):
        client.message("fp", ["create_thin", "1"])
    client.message("fp", ["create_thin", "1"])
    assert set(kernel.pool_metadata(Path(kernel.loops[0].path)).thins) == {0, 1}


def test_both_drivers_observe_the_same_kernel(kernel: FakeKernel) -> None:
    """list, info, status and table of every device, and of one, read alike through the fake
    dmsetup and the fake libdevmapper: pool, active, suspended, read-only and held open, with
    an inactive table waiting, and a device without a table."""
    dmsetup = DmClient(kernel)
    pool = ThinPool(kernel, "fp")
    for thin_id in (1, 2):
        pool.create_thin(ThinId(thin_id), thin_id)
    dmsetup.create("fp-s", "0 8192 thin /dev/mapper/fp 1", "u-s")
    dmsetup.suspend("fp-s")
    dmsetup.create("fp-r", "0 4096 thin /dev/mapper/fp 2", "u-r", readonly=True)
    dmsetup.load(THIN, "0 16384 thin /dev/mapper/fp 0")
    kernel.write_blocks(THIN, 1 << 16, 3 << 16)
    kernel.hold_open("fp-r")
    kernel.model.create("fp-z", "u-z")  # created, no table loaded yet
    libdm = LibdmClient(lib=kernel.dm_library())
    assert libdm.list_devices() == dmsetup.list_devices()
    assert libdm.info_all() == dmsetup.info_all()
    assert libdm.status_all() == dmsetup.status_all()
    assert libdm.table_all() == dmsetup.table_all()
    for name in sorted(kernel.devices):
        assert libdm.info(name) == dmsetup.info(name), name
        assert libdm.status(name) == dmsetup.status(name), name
        assert libdm.table(name) == dmsetup.table(name), name
    assert libdm.info("fp-missing") is None and dmsetup.info("fp-missing") is None
    reads: list[Callable[[DmDriver], object]] = [lambda c: c.status("fp-missing"),
                                                 lambda c: c.table("fp-missing")]
    for read in reads:
        for client in (libdm, dmsetup):
            with pytest.raises(NoSuchDevice):
                read(client)


def test_no_devices_read_alike(tmp_path: Path) -> None:
    """An empty kernel lists nothing through both drivers."""
    kernel = FakeKernel()
    libdm, dmsetup = LibdmClient(lib=kernel.dm_library()), DmClient(kernel)
    assert libdm.list_devices() == dmsetup.list_devices() == []
    assert libdm.info_all() == dmsetup.info_all() == []
    assert libdm.status_all() == dmsetup.status_all() == {}


# Each listing of every device, and the per-device ioctl it makes after LIST.
LISTING_OPS = {"info_all": Op.INFO, "status_all": Op.STATUS, "table_all": Op.TABLE}


@pytest.mark.parametrize("call", sorted(LISTING_OPS))
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_device_gone_while_listed_leaves_the_listing_whole(
        kernel: FakeKernel, driver: str, call: str) -> None:
    """Another tool's device removed between LIST and its own ioctl (seen on the real kernel:
    dmsetup's `info -c` failed a test's teardown with "Device does not exist." while another
    session removed its devices): the listing still answers, through both drivers, up to
    LISTING_ATTEMPTS - 1 such removals in a row."""
    op = LISTING_OPS[call]
    kernel.faults.fail(op, "fp", errno=errno.ENXIO, times=LISTING_ATTEMPTS - 1)
    assert THIN in names_in(getattr(client_for(kernel, driver), call)())
    # Only dmsetup's listings are read again; libdevmapper's skip the device at once.
    assert kernel.faults.pending is (driver == "libdevmapper")


@pytest.mark.parametrize("call", sorted(LISTING_OPS))
def test_a_kernel_removing_devices_without_pause_still_fails_dmsetups_listing(
        kernel: FakeKernel, call: str) -> None:
    """LISTING_ATTEMPTS listings in a row each meeting a vanished device: the error, not a
    loop."""
    op = LISTING_OPS[call]
    kernel.faults.fail(op, "fp", errno=errno.ENXIO, times=LISTING_ATTEMPTS)
    with pytest.raises(NoSuchDevice):
        getattr(client_for(kernel, "dmsetup"), call)()
    assert not kernel.faults.pending

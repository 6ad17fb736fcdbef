"""The probe cookie (dm.libdm_udev.probe_cookie) on the fake kernel's libdevmapper: a device
made, resumed with a cookie and removed; whether udev confirmed that cookie in time. The same
on the real kernel: tests/kernel/test_kernel_udev_namespaces.py."""

from __future__ import annotations

import errno

import pytest

from reconciler.dm.libdm_udev import PROBE_PREFIX, probe_cookie
from reconciler.dm.udev_sync import CookieProbe
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.fakekernel.libdm import FakeLibdm


def _kernel(alive: bool, same_ipc: bool) -> tuple[FakeKernel, FakeLibdm]:
    kernel = FakeKernel()
    kernel.udev.alive, kernel.udev.same_ipc, kernel.udev.visible = alive, same_ipc, False
    library = kernel.dm_library()
    assert isinstance(library, FakeLibdm)
    return kernel, library


def _probe_devices(kernel: FakeKernel) -> list[str]:
    return [name for name in kernel.devices if name.startswith(PROBE_PREFIX)]


def test_a_udev_in_our_ipc_namespace_confirms_the_probe_cookie() -> None:
    """udevd unseen but sharing our IPC namespace (hostIPC without hostPID): its one cookie
    is confirmed, and the probe device is gone again."""
    kernel, library = _kernel(alive=True, same_ipc=True)
    assert probe_cookie(library, timeout=5.0) is CookieProbe.CONFIRMED
    assert len(library.cookies) == 1 and library.unconfirmed == []
    assert _probe_devices(kernel) == []


def test_a_udev_elsewhere_leaves_the_probe_cookie_unconfirmed_within_the_bound() -> None:
    """udevd in another IPC namespace never finds the cookie: after the bound it is released
    by us (no wait beyond it), and the probe device is gone again."""
    kernel, library = _kernel(alive=True, same_ipc=False)
    assert probe_cookie(library, timeout=0.05) is CookieProbe.UNCONFIRMED
    assert library.unconfirmed == library.cookies and len(library.cookies) == 1
    assert library.cookie_events == {}, "the cookie is destroyed, not left behind"
    assert _probe_devices(kernel) == []


def test_without_udev_no_probe_cookie_is_made() -> None:
    """libdevmapper synchronises only with a running udev: no cookie, no device."""
    kernel, library = _kernel(alive=False, same_ipc=True)
    assert probe_cookie(library, timeout=5.0) is CookieProbe.NOT_RUN
    assert library.cookies == [] and kernel.devices == {}


@pytest.mark.parametrize("op", [Op.CREATE, Op.LOAD, Op.RESUME])
def test_a_refused_ioctl_makes_no_answer_and_leaves_no_device(op: Op) -> None:
    """A probe that could not resume its device proves nothing (NOT_RUN), and what it made
    is removed."""
    kernel, library = _kernel(alive=True, same_ipc=True)
    kernel.faults.fail(op, errno=errno.ENOMEM)
    assert probe_cookie(library, timeout=5.0) is CookieProbe.NOT_RUN
    assert _probe_devices(kernel) == []
    assert library.cookie_events == {}


def test_a_probe_device_busy_for_a_moment_is_removed_all_the_same() -> None:
    """udev still holding the new device (EBUSY) delays its removal, never leaves it."""
    kernel, library = _kernel(alive=True, same_ipc=True)
    kernel.faults.fail(Op.REMOVE, errno=errno.EBUSY, times=2)
    assert probe_cookie(library, timeout=5.0) is CookieProbe.CONFIRMED
    assert _probe_devices(kernel) == []

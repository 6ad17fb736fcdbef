"""The fake kernel's udev (testing.fakekernel.udev): what a udevd in or out of the daemon's IPC
namespace does with its cookies, through the fake dmsetup and the fake libdevmapper, as the
real ones were seen to behave (tests/kernel/test_kernel_udev_namespaces.py)."""

from __future__ import annotations

import ctypes

import pytest

from reconciler.dm.host import TIMED_OUT_RC
from reconciler.dm.udev_sync import UdevNamespaces
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.libdm import FakeLibdm
from reconciler.testing.fakekernel.udev import FakeUdev

CREATE = ["dmsetup", "create", "z", "--uuid", "z-uuid", "--table", "0 8 zero"]


@pytest.mark.parametrize(("udev", "hangs"), [
    (FakeUdev(alive=False), False),
    (FakeUdev(alive=True, same_ipc=True), False),
    (FakeUdev(alive=True, same_ipc=False), True),
])
def test_a_dmsetup_synchronising_with_a_udev_elsewhere_is_killed_for_time(
        udev: FakeUdev, hangs: bool) -> None:
    """dmsetup waits for any udev whose control socket it finds: one in another IPC namespace
    never confirms, so the command (its ioctls done) runs until the Host kills it."""
    kernel = FakeKernel()
    kernel.udev.alive, kernel.udev.same_ipc = udev.alive, udev.same_ipc
    completed = kernel.run(CREATE)
    assert completed.timed_out is hangs and (completed.rc == TIMED_OUT_RC) is hangs
    assert "z" in kernel.devices, "the ioctls were made either way"


def test_noudevsync_never_waits_and_is_accepted_anywhere() -> None:
    """`--noudevsync` (a global option, at the end of our argv): no wait, same answers."""
    kernel = FakeKernel()
    kernel.udev.alive, kernel.udev.same_ipc = True, False
    assert kernel.run([*CREATE, "--noudevsync"]).ok
    assert kernel.run(["dmsetup", "remove", "z", "--noudevsync"]).ok
    assert kernel.devices == {}


def _cookie(library: FakeLibdm, events: int) -> int:
    """A cookie with `events` calls counted on it, as dm_task_set_cookie makes one."""
    value = ctypes.c_uint32(0)
    for _ in range(events):
        handle = library.dm_task_create(5)
        assert handle is not None
        library.dm_task_set_cookie(handle, ctypes.byref(value), 0)
        library.dm_task_destroy(handle)
    return value.value


def _ready(library: FakeLibdm, cookie: int) -> bool:
    ready = ctypes.c_int(0)
    assert library.dm_udev_wait_immediate(cookie, ctypes.byref(ready))
    return bool(ready.value)


def test_a_udev_elsewhere_confirms_nothing_until_each_event_is_released() -> None:
    """libdevmapper's cookie in our namespace: udev elsewhere never finds it; it is ready
    once the caller released each event, and a blocking wait before that would never end."""
    kernel = FakeKernel()
    kernel.udev.alive, kernel.udev.same_ipc = True, False
    library = kernel.dm_library()
    assert isinstance(library, FakeLibdm)
    library.dm_udev_set_sync_support(1)
    cookie = _cookie(library, events=2)
    assert not _ready(library, cookie)
    with pytest.raises(AssertionError, match="would block forever"):
        library.dm_udev_wait(cookie)
    assert library.dm_udev_complete(cookie) == 1
    assert not _ready(library, cookie)
    assert library.dm_udev_complete(cookie) == 1
    assert library.dm_udev_complete(cookie) == 0, "nothing left to release"
    assert _ready(library, cookie)
    assert library.unconfirmed == [cookie]


def test_a_udev_in_our_namespace_confirms_at_once_and_none_means_no_cookie() -> None:
    """A udev that shares our IPC namespace confirms every cookie at once; without a running
    udev libdevmapper will not synchronise, so no cookie is made."""
    kernel = FakeKernel()
    library = kernel.dm_library()
    assert isinstance(library, FakeLibdm)
    library.dm_udev_set_sync_support(1)
    assert library.dm_udev_get_sync_support() == 0
    assert _cookie(library, events=1) == 0
    kernel.udev.alive = True
    assert library.dm_udev_get_sync_support() == 1
    cookie = _cookie(library, events=3)
    assert cookie and _ready(library, cookie) and library.waited[-1] == (cookie, 3)


@pytest.mark.parametrize(("alive", "same_ipc", "visible", "expected"), [
    (True, True, True, UdevNamespaces.SAME),
    (True, False, True, UdevNamespaces.OTHER),
    (True, True, False, UdevNamespaces.UNKNOWN),
    (True, False, False, UdevNamespaces.UNKNOWN),
    (False, True, True, UdevNamespaces.UNKNOWN),
])
def test_what_proc_shows_of_the_fake_udevd(alive: bool, same_ipc: bool, visible: bool,
                                           expected: UdevNamespaces) -> None:
    """The facts the daemon reads: a udevd it cannot see (or none) is no answer."""
    udev = FakeUdev(alive=alive, same_ipc=same_ipc, visible=visible)
    assert udev.running() is alive and udev.namespaces() is expected

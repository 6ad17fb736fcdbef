"""NodeWait on both drivers, over the fake kernel with udev running in our IPC namespace: an
activation or removal told NODE carries no udev cookie and turns udev's rules off for its
event (libdevmapper makes or unlinks the node; no late event of the device touches it), one
told UDEV waits as before with the rules on, and a batch of both waits for its cookie alone
(its events counted right, nothing left behind). The real kernel's side (the node there when
Prepare answers, udev's links after a settle): tests/kernel/test_kernel_node_wait.py."""

from __future__ import annotations

from reconciler.dm.client import DmClient
from reconciler.dm.libdm import LibdmClient
from reconciler.dm.libdm_bindings import DM_DEVICE_REMOVE, DM_DEVICE_RESUME
from reconciler.dm.udev import UdevGate
from reconciler.dm.udev_sync import RULES_OFF, NodeWait
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.libdm import FakeLibdm

TABLE = "0 8 zero"


def _kernel() -> tuple[FakeKernel, FakeLibdm, LibdmClient]:
    kernel = FakeKernel()
    kernel.udev.alive = True  # in our IPC namespace: it confirms our cookies
    library = kernel.dm_library()
    assert isinstance(library, FakeLibdm)
    return kernel, library, LibdmClient(lib=library, udev_facts=kernel.udev)


def test_a_node_activation_makes_no_cookie_and_a_udev_one_waits() -> None:
    """libdevmapper: NODE's create, resume and remove carry no cookie and udev's rules off
    (RULES_OFF); UDEV's create and remove wait for a cookie each, with the rules on."""
    kernel, library, client = _kernel()
    client.create("n", TABLE, "U-n", node_wait=NodeWait.NODE)
    client.resume("n", NodeWait.NODE)
    client.remove("n", node_wait=NodeWait.NODE)
    assert library.cookies == []
    assert library.dm_udev_get_sync_support() == 1, "synchronisation is back on after"
    client.create("u", TABLE, "U-u")
    assert len(library.cookies) == 1 and library.waited[-1] == (library.cookies[0], 1)
    client.remove("u")
    assert len(library.cookies) == 2 and library.waited[-1] == (library.cookies[1], 1)
    assert library.cookie_events == {}
    assert library.udev_flags == [
        (DM_DEVICE_RESUME, "n", RULES_OFF), (DM_DEVICE_RESUME, "n", RULES_OFF),
        (DM_DEVICE_REMOVE, "n", RULES_OFF), (DM_DEVICE_RESUME, "u", 0),
        (DM_DEVICE_REMOVE, "u", 0)]
    assert "n" not in kernel.devices


def test_a_node_device_keeps_the_rules_off_where_udev_is_not_waited_for() -> None:
    """udev running elsewhere (a pod without hostIPC): no cookie for anyone, and a NODE
    device's events still tell that udev to leave it alone."""
    kernel, library, client = _kernel()
    kernel.udev.same_ipc = False
    client.create("n", TABLE, "U-n", node_wait=NodeWait.NODE)
    client.create("u", TABLE, "U-u")
    assert library.cookies == []
    assert [flags for _, _, flags in library.udev_flags] == [RULES_OFF, 0]


def test_a_batch_of_both_waits_for_its_cookie_with_the_udev_calls_alone() -> None:
    """Inside deferred_udev, NODE calls between UDEV ones neither take the batch's cookie nor
    drop it: one cookie, two events, waited for once, none left behind."""
    _, library, client = _kernel()
    with client.deferred_udev():
        client.create("u1", TABLE, "U-u1")
        client.create("n1", TABLE, "U-n1", node_wait=NodeWait.NODE)
        client.create("u2", TABLE, "U-u2")
        client.create("n2", TABLE, "U-n2", node_wait=NodeWait.NODE)
    assert len(library.cookies) == 1
    assert library.waited == [(library.cookies[0], 2)]
    assert library.cookie_events == {}


def test_a_batch_of_node_calls_alone_waits_for_nothing() -> None:
    """A pass of the snapshotter's devices only: no cookie made or waited for; its node
    operations run as the batch settles (a wait on cookie 0)."""
    _, library, client = _kernel()
    with client.deferred_udev():
        client.create("n1", TABLE, "U-n1", node_wait=NodeWait.NODE)
        client.create("n2", TABLE, "U-n2", node_wait=NodeWait.NODE)
    assert library.cookies == []
    assert library.waited == [(0, 0)]


def test_dmsetup_is_told_noudevsync_and_noudevrules_for_a_node_device() -> None:
    """dmsetup: NODE's create, resume and remove end in --noudevsync --noudevrules
    --verifyudev (udev's dm rules off; its libdevmapper makes or unlinks the node before it
    exits, not udev after), where udev is waited for and where it is not; UDEV's wait for
    udev where it can."""
    expected = [("create", "n", True), ("resume", "n", True), ("remove", "n", True),
                ("create", "u", False), ("resume", "u", False), ("remove", "u", False)]
    for same_ipc in (True, False):
        kernel = FakeKernel()
        kernel.udev.alive, kernel.udev.same_ipc = True, same_ipc
        client = DmClient(kernel, UdevGate(kernel.udev))
        client.create("n", TABLE, "U-n", node_wait=NodeWait.NODE)
        client.resume("n", NodeWait.NODE)
        client.remove("n", node_wait=NodeWait.NODE)
        client.create("u", TABLE, "U-u")
        client.resume("u")
        client.remove("u")
        synced = [call for call in kernel.calls if call[0] == "dmsetup"
                  and call[1] in ("create", "resume", "remove")]
        assert [(call[1], call[2], call[-3:] == ("--noudevsync", "--noudevrules",
                                                  "--verifyudev")) for call in synced] == expected
        assert all("--noudevsync" not in call for call in synced[3:]) is same_ipc

"""NodeWait on both drivers, over the fake kernel with udev running in our IPC namespace: an
activation told NODE carries no udev cookie (libdevmapper makes the node, udev's rules run
unwaited for), one told UDEV waits as before, and a batch of both waits for its cookie alone
(its events counted right, nothing left behind). The real kernel's side (the node there when
Prepare answers, udev's links after a settle): tests/kernel/test_kernel_node_wait.py."""

from __future__ import annotations

from reconciler.dm.client import DmClient
from reconciler.dm.libdm import LibdmClient
from reconciler.dm.udev import UdevGate
from reconciler.dm.udev_sync import NodeWait
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
    """libdevmapper: NODE's create and resume carry no cookie; UDEV's create waits for one."""
    kernel, library, client = _kernel()
    client.create("n", TABLE, "U-n", node_wait=NodeWait.NODE)
    client.resume("n", NodeWait.NODE)
    assert library.cookies == []
    assert library.dm_udev_get_sync_support() == 1, "synchronisation is back on after"
    client.create("u", TABLE, "U-u")
    assert len(library.cookies) == 1 and library.waited[-1] == (library.cookies[0], 1)
    assert library.cookie_events == {}
    assert {"n", "u"} <= set(kernel.devices)


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


def test_dmsetup_is_told_noudevsync_for_a_node_activation_alone() -> None:
    """dmsetup: NODE's create and resume end in --noudevsync --verifyudev (its libdevmapper
    makes the node before it exits, not udev after); UDEV's wait for udev as before."""
    kernel = FakeKernel()
    kernel.udev.alive = True
    client = DmClient(kernel, UdevGate(kernel.udev))
    client.create("n", TABLE, "U-n", node_wait=NodeWait.NODE)
    client.resume("n", NodeWait.NODE)
    client.create("u", TABLE, "U-u")
    client.resume("u")
    synced = [call for call in kernel.calls if call[:2] in (("dmsetup", "create"),
                                                             ("dmsetup", "resume"))]
    assert [(call[2], call[-2:] == ("--noudevsync", "--verifyudev")) for call in synced] == [
        ("n", True), ("n", True), ("u", False), ("u", False)]
    assert all("--noudevsync" not in call for call in synced[2:])

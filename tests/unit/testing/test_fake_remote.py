"""The fake kernel in a process of its own (fakekernel.remote), as benchmarks/scale.py runs
it to measure the daemon's memory alone: the daemon's side sees the same kernel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.dm.client import DmClient
from reconciler.dm.driver import make_client
from reconciler.reconcile.reconciler import Reconciler
from reconciler.testing.fakekernel.remote import RemoteKernel
from reconciler.testing.world import World, make_settings


@pytest.fixture
def remote() -> Iterator[RemoteKernel]:
    """A FakeKernel served from a forked process."""
    kernel = RemoteKernel.start()
    try:
        yield kernel
    finally:
        kernel.stop()


def test_a_pass_through_the_kernel_process_makes_the_devices(remote: RemoteKernel,
                                                              tmp_path: Path) -> None:
    """Two spec files, one pass over the remote host: both devices exist in the server's
    kernel, read back through the pipe as dmsetup's text."""
    world = World(host=remote, settings=make_settings(tmp_path, "rk",
                                                      dm_driver="libdevmapper"), real=False)
    try:
        world.spec("a", 'filesystem = "none"\nsize = "1MiB"\n')
        world.spec("b", 'filesystem = "none"\nsize = "1MiB"\n')
        assert world.store is not None
        engine = Reconciler(world.settings, remote, world.store, clock=world.clock)
        assert isinstance(engine.client, DmClient), "no libdevmapper crosses a pipe"
        assert engine.run_pass().ok
        assert world.kernel_names() == {"rk-a", "rk-b"}
        remote.call("hold_open", "rk-a")
        info = DmClient(remote).info("rk-a")
        assert info is not None and info.open_count == 1
    finally:
        world.teardown()


def test_a_kernel_method_that_fails_raises_on_the_callers_side(remote: RemoteKernel) -> None:
    """An exception in the server (here the fake's refusal to open a missing device) is
    raised to the caller, and the server goes on answering."""
    with pytest.raises(AssertionError, match="no dm device"):
        remote.call("hold_open", "missing")
    assert isinstance(make_client(remote), DmClient)
    assert DmClient(remote).info_all() == []

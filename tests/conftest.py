"""Shared fixtures: a World is a config, a spec directory, a store and a kernel (fake or real).

Tests that take `world` run twice: on the in-memory FakeKernel (unit tier) and, marked
`kernel`, on the real kernel (the VM tier, `scripts/test`). Tests that take `fake_world` run on
the FakeKernel once per driver: dmsetup's argv and libdevmapper (LibdmClient over the fake's
libdevmapper). The real world uses its own pool
name and loop files under the test's tmp dir, and tears everything down afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.dm.host import Host, SystemHost
from reconciler.store import Store
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings

REQUIRE_KERNEL = os.environ.get("RECONCILER_REQUIRE_KERNEL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Kernel tests skip where there is no device-mapper, and fail when it is required."""
    del config
    if KERNEL_AVAILABLE:
        return
    for item in items:
        if "kernel" in item.keywords:
            if REQUIRE_KERNEL:
                item.add_marker(pytest.mark.xfail(reason="no device-mapper here", strict=True,
                                                  run=False))
            else:
                item.add_marker(pytest.mark.skip(reason="needs device-mapper and root"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With RECONCILER_REQUIRE_KERNEL=1, a run without device-mapper is a failure."""
    if REQUIRE_KERNEL and not KERNEL_AVAILABLE:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nRECONCILER_REQUIRE_KERNEL=1 but this machine has no device-mapper")
    del exitstatus


def fake_kernel() -> Host:
    """A fresh FakeKernel (imported here so that tests without one load without it)."""
    from reconciler.testing.fakekernel import FakeKernel

    return FakeKernel()


# The fake kernel answers both drivers (its dmsetup and its libdevmapper reach one model).
DRIVERS = ("dmsetup", "libdevmapper")




@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.kernel)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A world on the fake kernel, and (kernel tier) the same on the real one."""
    real = request.param == "real"
    pool = f"rt{secrets.token_hex(3)}" if real else "rtpool"
    host: Host = SystemHost() if real else fake_kernel()
    created = World(host=host, settings=make_settings(tmp_path, pool), real=real)
    try:
        yield created
    finally:
        created.teardown()


@pytest.fixture(params=DRIVERS)
def fake_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A world on the fake kernel only, for rules the real kernel cannot be made to show; once
    driven through dmsetup's argv, once through libdevmapper (LibdmClient)."""
    settings = make_settings(tmp_path, "rtpool", dm_driver=request.param)
    created = World(host=fake_kernel(), settings=settings, real=False)
    try:
        yield created
    finally:
        created.teardown()


@pytest.fixture
def real_world(tmp_path: Path) -> Iterator[World]:
    """A world on the real kernel only (tests using it carry the `kernel` mark)."""
    if not KERNEL_AVAILABLE:
        pytest.skip("needs device-mapper and root")
    settings = make_settings(tmp_path, f"rt{secrets.token_hex(3)}")
    created = World(host=SystemHost(), settings=settings, real=True)
    try:
        yield created
    finally:
        created.teardown()


@pytest.fixture
def daemon(fake_world: World) -> Iterator[Daemon]:
    """A started daemon (first full pass done) over the fake world, on its fake clock; the
    world's own store is opened again beside it, as `status` would open one."""
    assert fake_world.store is not None
    fake_world.store.close()
    running = Daemon(fake_world.settings, fake_world.host, clock=fake_world.clock,
                     wakeups=Wakeups(settle=0.02))
    running.start()
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    yield running
    running.close()

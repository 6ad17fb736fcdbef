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
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.config import Settings, settings_from_mapping
from reconciler.daemon.once import run_until_settled
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.dm.client import DmClient
from reconciler.dm.host import Host, SystemHost
from reconciler.reconcile.pass_context import PassResult
from reconciler.reconcile.reconciler import Reconciler
from reconciler.reconcile.retry import RetryPolicy
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.tools.loopback import LoopbackFiles, attached_loop


def _device_mapper_in_kernel() -> bool:
    # /dev/mapper/control may exist without the driver (libdevmapper creates the node);
    # the kernel lists its misc devices in /proc/misc.
    try:
        with open("/proc/misc", encoding="ascii") as misc:
            return any(line.split()[-1:] == ["device-mapper"] for line in misc)
    except OSError:
        return False


KERNEL_AVAILABLE = _device_mapper_in_kernel() and os.geteuid() == 0
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


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll `check` until it holds (real processes and kernels take their time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def fake_kernel() -> Host:
    """A fresh FakeKernel (imported here so that tests without one load without it)."""
    from reconciler.testing.fakekernel import FakeKernel

    return FakeKernel()


# The fake kernel answers both drivers (its dmsetup and its libdevmapper reach one model).
DRIVERS = ("dmsetup", "libdevmapper")


class FakeClock:
    """A clock tests move by hand; sleeping advances it instead of waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class World:
    """Everything one scenario needs, on one kernel."""

    host: Host
    settings: Settings
    real: bool
    clock: FakeClock = field(default_factory=FakeClock)
    store: Store | None = None

    def __post_init__(self) -> None:
        self.settings.specs_path.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.settings.database_path, self.clock)

    @property
    def pool(self) -> str:
        return self.settings.pool_name

    def spec(self, name: str, text: str = "") -> Path:
        """Write (or rewrite) a spec file."""
        path = self.settings.specs_path / f"{name}.toml"
        path.write_text(text)
        return path

    def unspec(self, name: str) -> None:
        """Delete a spec file: asks for the device's removal."""
        (self.settings.specs_path / f"{name}.toml").unlink()

    def reconciler(self, policy: RetryPolicy | None = None) -> Reconciler:
        assert self.store is not None
        return Reconciler(self.settings, self.host, self.store, clock=self.clock, policy=policy)

    def run_pass(self, policy: RetryPolicy | None = None) -> PassResult:
        """What `run --once` does: passes until settled, sleeping on the fake clock."""
        return run_until_settled(self.reconciler(policy), self.clock, self.clock.sleep)

    def report(self) -> dict[str, Any]:
        """`status --json` as a dict."""
        assert self.store is not None
        return build_report(self.settings, self.store, self.host)

    def kernel_names(self) -> set[str]:
        """Names of this world's dm devices (pool excluded)."""
        prefix = f"{self.pool}-"
        return {i.name for i in DmClient(self.host).info_all() if i.name.startswith(prefix)}

    def teardown(self) -> None:
        """Remove every dm device and loop device this world made (real kernel only)."""
        if self.store is not None:
            self.store.close()
        if not self.real:
            return
        client = DmClient(self.host)
        for name in [*sorted(self.kernel_names()), self.pool]:
            for _ in range(20):
                if client.info(name) is None:
                    break
                if self.host.run(["dmsetup", "remove", name]).ok:
                    break
                time.sleep(0.2)
        files = LoopbackFiles.under(self.settings.root_path)
        for path in (files.data, files.metadata):
            loop = attached_loop(self.host, path) if path.exists() else None
            if loop is not None:
                self.host.run(["losetup", "--detach", loop])


def run_in_process(argv: list[str], host: Host) -> int:
    """`reconciler ARGV` in this process (`main`), giving back afterwards the signal handlers
    `run` installs (SIGTERM, SIGINT, SIGHUP, SIGUSR1), so later tests keep pytest's."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT,
                                                  signal.SIGHUP, signal.SIGUSR1)}
    try:
        return main(argv, host=host)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def make_settings(root: Path, pool: str, **extra: object) -> Settings:
    """Small pools for tests: 256MiB of data, 8MiB of metadata, 64MiB devices; the dmsetup
    driver unless `dm_driver` says otherwise, because tests that count kernel calls or crash
    at one count dmsetup's argv (a libdevmapper call is no argv)."""
    raw: dict[str, object] = {
        "root_path": str(root / "state"),
        "pool_name": pool,
        "loopback_data_size": "256MiB",
        "loopback_metadata_size": "8MiB",
        "base_image_size": "64MiB",
        "dm_driver": "dmsetup",
        **extra,
    }
    return settings_from_mapping(raw)


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

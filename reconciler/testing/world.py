"""The World: one config, one spec directory, one store and one kernel (fake or real).

Test support (never imported by the product): the unit tier's `world` fixtures and the
scenario tests build every pass they run on one of these, so that a test says what it puts in
(spec files) and asserts what comes out (the store, `status --json`, the kernel's devices).
Beside it: whether this machine has a real device-mapper (`KERNEL_AVAILABLE`), `wait_for`
(polling a real process or kernel) and `run_in_process` (`reconciler ARGV` in this process).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.cli import main
from reconciler.config import Settings, settings_from_mapping
from reconciler.daemon.once import run_until_settled
from reconciler.dm.client import DmClient
from reconciler.dm.host import Host
from reconciler.reconcile.pass_context import PassResult
from reconciler.reconcile.reconciler import Reconciler
from reconciler.reconcile.retry import RetryPolicy
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.tools.loopback import LoopbackFiles, attached_loop


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


def _device_mapper_in_kernel() -> bool:
    # /dev/mapper/control may exist without the driver (libdevmapper creates the node);
    # the kernel lists its misc devices in /proc/misc.
    try:
        with open("/proc/misc", encoding="ascii") as misc:
            return any(line.split()[-1:] == ["device-mapper"] for line in misc)
    except OSError:
        return False


KERNEL_AVAILABLE = _device_mapper_in_kernel() and os.geteuid() == 0


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll `check` until it holds (real processes and kernels take their time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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

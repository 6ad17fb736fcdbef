"""Which kernel driver a Host gets: libdevmapper by default wherever the Host offers one (the real
machine; the fake kernel its fake), dmsetup when asked, for hosts that watch or wrap run(), or
(with a warning) when the library cannot be loaded."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from structlog.testing import capture_logs

from reconciler.config import ConfigError, settings_from_mapping
from reconciler.dm import driver as driver_module
from reconciler.dm import libdm
from reconciler.dm.client import DmClient
from reconciler.dm.crash import CrashingHost, CrashPoint
from reconciler.dm.driver import make_client
from reconciler.dm.host import Completed, SystemHost
from reconciler.dm.libdm_bindings import DEFAULT_UDEV_TIMEOUT
from reconciler.dm.udev_sync import UdevSync
from reconciler.testing.fakekernel import FakeKernel


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    driver_module._libdm_client.cache_clear()
    driver_module._warn_fallback.cache_clear()
    yield
    driver_module._libdm_client.cache_clear()
    driver_module._warn_fallback.cache_clear()


def test_default_is_libdevmapper_on_the_real_machine() -> None:
    """The config's default, and what a SystemHost gets when the library loads."""
    assert settings_from_mapping({}).dm_driver == "libdevmapper"
    assert isinstance(make_client(SystemHost()), libdm.LibdmClient)
    assert make_client(SystemHost()) is make_client(SystemHost()), "one per process"


def test_dmsetup_when_asked_or_when_run_is_watched() -> None:
    """dm_driver = "dmsetup", and hosts that watch or wrap run() (they want every argv)."""
    assert type(make_client(SystemHost(), "dmsetup")) is DmClient
    assert type(make_client(FakeKernel(), "dmsetup")) is DmClient

    class Counting(SystemHost):
        """A real host that watches its commands (as the kernel crash tests do)."""

        def run(self, argv: Sequence[str]) -> Completed:
            return super().run(argv)

    assert type(make_client(Counting())) is DmClient
    crashing = CrashingHost(FakeKernel(), CrashPoint("after", "dmsetup remove", 1))
    assert type(make_client(crashing)) is DmClient


def test_the_fake_kernel_offers_its_own_libdevmapper() -> None:
    """With libdevmapper the fake kernel is driven by LibdmClient over its fake library."""
    kernel = FakeKernel()
    client = make_client(kernel, "libdevmapper")
    assert isinstance(client, libdm.LibdmClient)
    assert client.lib is kernel.dm_library()


def test_falls_back_to_dmsetup_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that cannot be loaded: dmsetup, and one warning saying so."""
    def missing(*args: object) -> object:
        raise libdm.LibdmUnavailable("libdevmapper.so.1.02.1: cannot open shared object file")

    monkeypatch.setattr(libdm, "load_libdm", missing)
    with capture_logs() as events:
        first = make_client(SystemHost())
        second = make_client(SystemHost())
    assert type(first) is DmClient and type(second) is DmClient
    warnings = [e for e in events if e["event"] == "dm.driver_fallback"]
    assert len(warnings) == 1 and warnings[0]["using"] == "dmsetup"


def test_unknown_driver_is_a_config_error() -> None:
    """The key is checked where the config is read."""
    with pytest.raises(ConfigError, match="dm_driver"):
        settings_from_mapping({"dm_driver": "ioctl"})


def test_the_udev_bound_is_the_configs_and_reaches_the_library_client() -> None:
    """make_client's default bound is the config's default; a config's bound is the one the
    process's libdevmapper client waits with."""
    assert settings_from_mapping({}).udev_timeout == DEFAULT_UDEV_TIMEOUT
    kernel = FakeKernel()
    client = make_client(kernel, "libdevmapper", udev_timeout=7.0)
    assert isinstance(client, libdm.LibdmClient) and client.udev.timeout == 7.0


@pytest.mark.parametrize("same_ipc", [True, False])
def test_dmsetups_gate_proves_an_unseen_udev_with_the_librarys_probe(same_ipc: bool) -> None:
    """A udevd /proc does not show (our own PID namespace): dmsetup's client waits for it
    only if libdevmapper's probe cookie was confirmed; a host that wraps run() offers no
    library, so the same udev is unproven there and not waited for."""
    kernel = FakeKernel()
    kernel.udev.alive, kernel.udev.same_ipc, kernel.udev.visible = True, same_ipc, False
    expected = UdevSync.USED if same_ipc else UdevSync.UNCONFIRMED
    assert make_client(kernel, "dmsetup", udev_timeout=0.1).udev_sync() is expected
    crashing = CrashingHost(kernel, CrashPoint("after", "dmsetup remove", 1))
    assert make_client(crashing, "dmsetup").udev_sync() is UdevSync.UNPROVEN

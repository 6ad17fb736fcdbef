"""Which kernel driver a Host gets: libdevmapper on the real machine by default, dmsetup when
asked, under the fake kernel, or (with a warning) when the library cannot be loaded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from reconciler.config import ConfigError, settings_from_mapping
from reconciler.dm import driver as driver_module
from reconciler.dm import libdm
from reconciler.dm.client import DmClient
from reconciler.dm.driver import make_client
from reconciler.dm.fake import FakeKernel
from reconciler.dm.host import SystemHost


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    driver_module._libdm_client.cache_clear()
    yield
    driver_module._libdm_client.cache_clear()


def test_default_is_libdevmapper_on_the_real_machine() -> None:
    """The config's default, and what a SystemHost gets when the library loads."""
    assert settings_from_mapping({}).dm_driver == "libdevmapper"
    assert isinstance(make_client(SystemHost()), libdm.LibdmClient)
    assert make_client(SystemHost()) is make_client(SystemHost()), "one per process"


def test_dmsetup_when_asked_or_under_the_fake() -> None:
    """dm_driver = "dmsetup", and every non-real Host (the fake speaks dmsetup's argv)."""
    assert type(make_client(SystemHost(), "dmsetup")) is DmClient
    assert type(make_client(FakeKernel(), "libdevmapper")) is DmClient

    class Counting(SystemHost):
        """A real host that watches its commands (as the kernel crash tests do)."""

    assert type(make_client(Counting())) is DmClient


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

"""A SIGHUP's reload (daemon.signals.reloaded_settings): what belongs to the process's kernel
client (dm_driver, udev_timeout) is kept until a restart, and said so; the rest is taken."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from reconciler.config import load_settings
from reconciler.daemon.signals import reloaded_settings
from reconciler.testing.config_file import write_config


def test_a_new_udev_timeout_waits_for_a_restart_and_the_rest_is_taken(tmp_path: Path) -> None:
    """The kernel client (and its bound on udev's waits) is made once per process: a reload
    keeps the running bound, logs config.reload_partial naming the key, and takes the rest."""
    config = write_config(tmp_path / "config.toml", root_path=str(tmp_path / "state"),
                          udev_timeout="1m", retry_max="30s")
    current = load_settings(config)
    write_config(config, root_path=str(tmp_path / "state"), udev_timeout="5s", retry_max="1m")
    with capture_logs() as events:
        fresh = reloaded_settings(config, current)
    assert fresh is not None
    assert (fresh.udev_timeout, fresh.retry_max) == (60.0, 60.0)
    assert [(e["event"], e["keys"]) for e in events] == [
        ("config.reload_partial", ["udev_timeout"])]


def test_an_unchanged_udev_timeout_is_no_partial_reload(tmp_path: Path) -> None:
    """Nothing of the client changed: nothing logged about it."""
    config = write_config(tmp_path / "config.toml", root_path=str(tmp_path / "state"),
                          udev_timeout="20s")
    with capture_logs() as events:
        fresh = reloaded_settings(config, load_settings(config))
    assert fresh is not None and fresh.udev_timeout == 20.0
    assert events == []

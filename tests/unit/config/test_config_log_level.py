"""The log level: --log-level, else $RECONCILER_LOG_LEVEL, else the config's `log_level`,
else info; a hostile variable refused in one line; a reload takes a new `log_level`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import LOG_LEVEL_ENV, ConfigError, effective_log_level, load_settings
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import wait_for

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("flag", "env", "configured", "expected"), [
    (None, None, "info", "info"),
    (None, None, "error", "error"),
    (None, "debug", "error", "debug"),
    (None, "", "warning", "warning"),  # set empty: unset
    ("warning", "debug", "error", "warning"),
    ("info", "not a level", "error", "info"),  # a flag given: the variable is not read
])
def test_the_flag_comes_before_the_variable_before_the_config(
        flag: str | None, env: str | None, configured: str, expected: str,
        tmp_path: Path) -> None:
    """effective_log_level: --log-level, else $RECONCILER_LOG_LEVEL, else log_level."""
    settings = load_settings(write_config(tmp_path / "config.toml", log_level=configured,
                                          root_path=tmp_path / "state"))
    environ = {} if env is None else {LOG_LEVEL_ENV: env}
    assert effective_log_level(flag, settings, environ) == expected


def test_before_the_config_is_read_the_default_is_info() -> None:
    """Without settings (the config not read yet) and nothing set, info."""
    assert effective_log_level(None, None, {}) == "info"


HOSTILE = ["loud", "INFO", " info", "info\n", "debug; rm -rf /", "x" * 100_000, "caf\udce9",
           "\x1b[31merror"]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:20])
def test_a_variable_that_is_no_level_is_refused_naming_it(value: str) -> None:
    """Anything but debug, info, warning or error: a ConfigError on log_level that names
    the variable and the levels, in one short line."""
    with pytest.raises(ConfigError) as caught:
        effective_log_level(None, None, {LOG_LEVEL_ENV: value})
    message = str(caught.value)
    assert caught.value.key == "log_level"
    assert f"${LOG_LEVEL_ENV}" in message and "debug, info, warning, error" in message
    assert "\n" not in message and len(message) < 200


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose log_level is error, over a small loopback pool with one spec."""
    path = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                        spec_dir=tmp_path / "specs", pool_name="lvpool",
                        loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                        log_level="error")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.toml").write_text('filesystem = "none"\n')
    return path


def _events(err: str) -> list[dict[str, object]]:
    """The JSON log lines of a command's stderr."""
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.parametrize(("argv", "env", "shown"), [
    ([], None, set()),
    ([], "info", {"info"}),
    ([], "debug", {"debug", "info"}),
    (["--log-level", "warning"], "debug", set()),
    (["--log-level", "info"], None, {"info"}),
], ids=["config", "variable", "variable debug", "flag over variable", "flag over config"])
def test_run_once_logs_at_the_level_that_comes_first(
        config: Path, argv: list[str], env: str | None, shown: set[str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`run --once` (its info line run.finished; at debug, peewee's queries as lines of
    their own, logger and level named) with log_level = "error" in the config, the
    variable and the flag: the levels of the lines written are those the first one set
    allows."""
    if env is None:
        monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    else:
        monkeypatch.setenv(LOG_LEVEL_ENV, env)
    assert main(["-c", str(config), "run", "--once", *argv], host=FakeKernel()) == 0
    events = _events(capsys.readouterr().err)
    assert {str(e["level"]) for e in events} == shown
    if "info" in shown:
        assert "run.finished" in [e["event"] for e in events]
    if "debug" in shown:
        assert any(e.get("logger") == "peewee" and e["level"] == "debug" for e in events)


@pytest.mark.parametrize("value", HOSTILE[:3], ids=repr)
def test_every_command_refuses_a_hostile_variable_with_exit_two(
        config: Path, value: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`run --once` and `status` with $RECONCILER_LOG_LEVEL set to no level: exit 2, one
    line naming the variable, nothing done (no state made)."""
    monkeypatch.setenv(LOG_LEVEL_ENV, value)
    for argv in (["run", "--once"], ["status"]):
        assert main(["-c", str(config), *argv], host=FakeKernel()) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("reconciler: config key 'log_level': "
                                                   f"from ${LOG_LEVEL_ENV}: ")
    assert not (config.parent / "state" / "reconciler.db").exists()


def test_a_reload_takes_a_new_log_level(tmp_path: Path) -> None:
    """A daemon process started with log_level = "warning" writes no info line; after the
    config says "debug" and SIGHUP, its config.reloaded line (info) is written."""
    root = Path(tempfile.mkdtemp(prefix="lv", dir="/tmp"))  # a short control socket path
    keys = {"root_path": root, "spec_dir": tmp_path / "specs", "pool_name": "lvpool",
            "loopback_data_size": "256MiB", "loopback_metadata_size": "8MiB",
            "dm_driver": "dmsetup"}
    config = write_config(tmp_path / "config.toml", **keys, log_level="warning")
    (tmp_path / "specs").mkdir()
    env = {k: v for k, v in os.environ.items() if k != LOG_LEVEL_ENV}
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, fake_kernel=True, cwd=REPO, env=env, log=log).start()
    try:
        wait_for("the control socket", (root / "control.sock").is_socket, timeout=60)
        assert {e["level"] for e in _events(daemon.log_text())} <= {"warning", "error"}
        write_config(config, **keys, log_level="debug")
        daemon.signal(signal.SIGHUP)
        wait_for("config.reloaded", lambda: "config.reloaded" in daemon.log_text(),
                 timeout=60)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        shutil.rmtree(root, ignore_errors=True)
    reloaded = [e for e in _events(daemon.log_text()) if e["event"] == "config.reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["level"] == "info"

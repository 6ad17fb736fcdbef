"""DaemonProcess: `reconciler run` over a fake kernel as a process, started and stopped."""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import wait_for

REPO = Path(__file__).resolve().parents[3]


def test_a_daemon_process_serves_until_stopped_and_exits_zero(tmp_path: Path) -> None:
    """Started: its first pass is logged and its control socket is there; stopped (SIGTERM
    and a wait): exit 0 and the socket gone."""
    root = tmp_path / "state"
    config = write_config(tmp_path / "config.toml", root_path=root,
                          spec_dir=tmp_path / "specs", pool_name="procpool",
                          loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                          dm_driver="dmsetup")
    (tmp_path / "specs").mkdir()
    daemon = DaemonProcess(config, fake_kernel=True, log=tmp_path / "daemon.log", cwd=REPO)
    with daemon:
        wait_for("the first pass", lambda: "daemon.ready" in daemon.log_text(), 60)
        assert (root / "control.sock").is_socket()
        assert daemon.poll() is None
    assert daemon.poll() == 0
    assert not (root / "control.sock").exists()


def test_the_real_cli_runs_behind_its_wrapper(tmp_path: Path) -> None:
    """Without the fake kernel the process is `python -m reconciler.cli -c CONFIG run`, after
    any wrapper argv (a PID namespace's unshare)."""
    config = tmp_path / "config.toml"
    daemon = DaemonProcess(config, fake_kernel=False, wrapper=["unshare", "--pid"])
    assert daemon.argv == ["unshare", "--pid", sys.executable, "-m", "reconciler.cli", "-c",
                           str(config), "run"]

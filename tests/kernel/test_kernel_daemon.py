"""The daemon as a real process on a real kernel: specs dropped, edited and deleted while it
runs; a mounted device whose spec is deleted; a conflicting device cleared and retried."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World
from reconciler.testing.world import wait_for as shared_wait_for

pytestmark = pytest.mark.kernel
TIMEOUT = 120.0


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """conftest's wait_for with this module's patience."""
    shared_wait_for(what, check, timeout)


def device(world: World, name: str) -> dict[str, Any] | None:
    """The device as `status --json` shows it, read the way status reads (a second store)."""
    store = Store(world.settings.database_path, time.time)
    try:
        report = build_report(world.settings, store, SystemHost(), name)
    finally:
        store.close()
    found: list[dict[str, Any]] = report["devices"]
    return found[0] if found else None


def in_state(world: World, name: str, state: str) -> Callable[[], bool]:
    def check() -> bool:
        found = device(world, name)
        return found is not None and found["state"] == state
    return check


@pytest.fixture
def running(real_world: World, tmp_path: Path) -> Iterator[tuple[World, Path]]:
    """`reconciler run` started as a process on a fresh pool; SIGTERM at the end must exit 0."""
    world = real_world
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, loopback_data_size="256MiB",
                          loopback_metadata_size="8MiB", base_image_size="32MiB",
                          resync_interval="3s", retry_initial="200ms", retry_max="1s",
                          max_attempts=3)
    assert world.store is not None
    world.store.close()
    process = DaemonProcess(config, fake_kernel=False, log=tmp_path / "daemon.log").start()
    try:
        wait_for("the daemon's first pass", lambda: world.settings.database_path.exists()
                 and b"daemon.ready" in (tmp_path / "daemon.log").read_bytes())
        yield world, config
    finally:
        code = process.stop()
        text = (tmp_path / "daemon.log").read_text()
        assert code == 0, text[-3000:]
        assert "daemon.stopped" in text


def test_daemon_follows_specs_as_they_are_dropped_edited_and_deleted(
    running: tuple[World, Path]
) -> None:
    """Drop: Activated. active=false: Deactivated and gone from dm. Back: Activated. Delete:
    Removed, and the kernel agrees at every step."""
    world, _ = running
    kname = f"{world.pool}-web"
    world.spec("web", 'filesystem = "none"\n')
    wait_for("web Activated", in_state(world, "web", "Activated"))
    assert kname in world.kernel_names()
    world.spec("web", 'filesystem = "none"\nactive = false\n')
    wait_for("web Deactivated", in_state(world, "web", "Deactivated"))
    assert kname not in world.kernel_names()
    world.spec("web", 'filesystem = "none"\nactive = true\nreadonly = true\n')
    wait_for("web read-only", lambda: (device(world, "web") or {}).get("kernel") is not None
             and (device(world, "web") or {})["kernel"]["readonly"])
    world.unspec("web")
    wait_for("web Removed", in_state(world, "web", "Removed"))
    assert world.kernel_names() == set()


def test_a_mounted_device_is_removed_once_unmounted_never_forced(
    running: tuple[World, Path], tmp_path: Path
) -> None:
    """Spec deleted while mounted: "busy: held open", still there; unmounted: Removed."""
    world, _ = running
    world.spec("data")
    # Activated comes before mkfs: mount only once status says the device is ready.
    wait_for("data ready", lambda: (device(world, "data") or {}).get("ready") is True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", f"/dev/mapper/{world.pool}-data", str(mountpoint)], check=True)
    try:
        world.unspec("data")
        wait_for("busy: held open", lambda: "busy: held open" in
                 ((device(world, "data") or {}).get("error") or ""))
        time.sleep(3)  # several retries later it is still there, and not Faulty
        found = device(world, "data")
        assert found is not None
        assert found["state"] != "Faulty"
        assert f"{world.pool}-data" in world.kernel_names()
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    wait_for("data Removed", in_state(world, "data", "Removed"))


def test_a_conflicting_device_goes_faulty_then_retry_activates_it(
    running: tuple[World, Path]
) -> None:
    """Someone else's dm device under our name: retries, Faulty with the error; cleared and
    `reconciler retry`: Activated."""
    world, config = running
    kname = f"{world.pool}-clash"
    subprocess.run(["dmsetup", "create", kname, "--table", "0 8 zero"], check=True)
    world.spec("clash", 'filesystem = "none"\n')
    wait_for("clash Faulty", in_state(world, "clash", "Faulty"))
    found = device(world, "clash")
    assert found is not None
    assert "already exists" in found["error"]
    for _ in range(10):
        if subprocess.run(["dmsetup", "remove", kname]).returncode == 0:
            break
        time.sleep(0.5)
    assert main(["-c", str(config), "retry", "clash"]) == 0
    wait_for("clash Activated", in_state(world, "clash", "Activated"))
    assert os.path.exists(f"/dev/mapper/{kname}")

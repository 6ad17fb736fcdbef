"""`reconciler status --check` as a probe runs it, on a real kernel beside a running daemon:
healthy, then degraded by a device gone Faulty for real, then down once the daemon stops and
once the pool is gone from the kernel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon.lock import lock_held
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World, wait_for

pytestmark = pytest.mark.kernel
TIMEOUT = 120.0


def probe(config: Path, *extra: str) -> tuple[int, str]:
    """`reconciler status --check` in a process of its own: exit code and output, printed
    for the record (`pytest -rP` shows them)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "-c", str(config),
                           "status", "--check", *extra],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stderr == ""
    took = time.monotonic() - started
    print(" ".join(["status --check", *extra]),
          f"-> exit {done.returncode} ({took:.1f}s): {done.stdout.strip()}")
    return done.returncode, done.stdout


@pytest.fixture
def daemon(real_world: World, tmp_path: Path) -> Iterator[tuple[World, Path,
                                                                 subprocess.Popen[bytes]]]:
    """`reconciler run` as a process on a fresh pool (Faulty after 3 quick attempts);
    stopped with SIGTERM (exit 0) unless the test stopped it."""
    world = real_world
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, loopback_data_size="256MiB",
                          loopback_metadata_size="8MiB", base_image_size="32MiB",
                          resync_interval="3s", retry_initial="200ms", retry_max="1s",
                          max_attempts=3)
    assert world.store is not None
    world.store.close()
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, fake_kernel=False, log=log_path).start()
    try:
        wait_for("the daemon's first pass",
                 lambda: b"daemon.ready" in log_path.read_bytes(), TIMEOUT)
        yield world, config, daemon.process
    finally:
        assert daemon.stop() == 0, log_path.read_text()[-3000:]


def test_the_probe_follows_the_daemon_a_faulty_device_and_the_pool(
        daemon: tuple[World, Path, subprocess.Popen[bytes]]) -> None:
    """Healthy (0) beside a converged daemon; someone else's dm device under our name makes
    `clash` Faulty: degraded (1) naming it, also in JSON; the daemon stopped: down (2); the
    pool removed from the kernel: down, saying so."""
    world, config, process = daemon
    world.spec("web", 'filesystem = "none"\n')
    wait_for("web Activated", lambda: _state(world, "web") == "Activated", TIMEOUT)
    assert probe(config) == (0, "healthy\n")

    kname = f"{world.pool}-clash"
    subprocess.run(["dmsetup", "create", kname, "--table", "0 8 zero"], check=True)
    world.spec("clash", 'filesystem = "none"\n')
    wait_for("clash Faulty", lambda: _state(world, "clash") == "Faulty", TIMEOUT)
    assert probe(config) == (1, "degraded: 1 faulty device (clash)\n")
    document = json.loads(probe(config, "--json")[1])
    assert (document["health"], document["code"]) == ("degraded", 1)
    assert [(r["kind"], r["names"]) for r in document["reasons"]] == [
        ("faulty_devices", ["clash"])]

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not lock_held(world.settings.root_path)
    assert probe(config) == (2, "down: no daemon (the root lock is not held); "
                                "1 faulty device (clash)\n")

    for name in (kname, f"{world.pool}-web", world.pool):
        subprocess.run(["dmsetup", "remove", name], check=True)
    assert probe(config) == (2, "down: no daemon (the root lock is not held); pool not "
                                "loaded (pool is not loaded in the kernel); 1 faulty device "
                                "(clash)\n")


def _state(world: World, name: str) -> str | None:
    """The device's state in the store (read beside the daemon, as `status` reads it)."""
    store = Store(world.settings.database_path, time.time)
    try:
        record = store.device(name)
    finally:
        store.close()
    return None if record is None else record.state

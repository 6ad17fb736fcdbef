"""`reconciler status --check` as a probe runs it, on a real kernel beside a running daemon:
ready, then degraded by a device gone Faulty for real, then down once the daemon stops and
once the pool is gone from the kernel; and a pool whose metadata device fails under the
daemon (a dm-linear switched to dm-error) is down alike for `status --check` and /readyz."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.daemon.lock import lock_held
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World, wait_for
from tests.kernel.web import free_port, get

pytestmark = pytest.mark.kernel
TIMEOUT = 120.0


def probe(config: Path, *extra: str) -> tuple[int, str]:
    """`reconciler status --check` in a process of its own: exit code and output, printed
    for the record (`pytest -rP` shows them)."""
    started = time.monotonic()
    # A bound for a hung command only: in a VM whose CPUs are shared with others, one took
    # 20-40 s to start and answer.
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "-c", str(config),
                           "status", "--check", *extra],
                          capture_output=True, text=True, timeout=180, check=False)
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
    """Ready (0) beside a converged daemon; someone else's dm device under our name makes
    `clash` Faulty: degraded (1) naming it, also in JSON; the daemon stopped: down (2); the
    pool removed from the kernel: down, saying so."""
    world, config, process = daemon
    world.spec("web", 'filesystem = "none"\n')
    wait_for("web Activated", lambda: _state(world, "web") == "Activated", TIMEOUT)
    assert probe(config) == (0, "ready\n")

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


METADATA_BYTES = 8 << 20
DATA_BYTES = 256 << 20


@dataclass
class FailingPool:
    """A daemon whose pool's metadata sits on a dm-linear device of its own, `switch` to
    dm-error when the test says so."""

    world: World
    config: Path
    metrics: str
    metadata: str  # the dm-linear device's name
    metadata_loop: str

    def fail_metadata(self) -> None:
        """Every read and write of the metadata fails from now on: the table reloaded with
        the error target and resumed (a resume of a loaded table swaps it in)."""
        sectors = METADATA_BYTES // 512
        subprocess.run(["dmsetup", "load", self.metadata, "--table", f"0 {sectors} error"],
                       check=True)
        subprocess.run(["dmsetup", "resume", self.metadata], check=True)


def _loop(path: Path, size: int) -> str:
    with open(path, "wb") as file:
        file.truncate(size)
    return subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


def _remove(name: str) -> None:
    """`dmsetup remove`, again while a udev rule or the kernel still holds it (EBUSY)."""
    for _ in range(50):
        if subprocess.run(["dmsetup", "remove", name], check=False,
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"could not remove {name}")


@pytest.fixture
def failing_pool(real_world: World, tmp_path: Path) -> Iterator[FailingPool]:
    """`reconciler run` with metrics, over a pool of two loop devices, the metadata's behind
    `<pool>meta` (dm-linear); everything removed afterwards, the pool first."""
    world = real_world
    data_loop = _loop(tmp_path / "data.img", DATA_BYTES)
    metadata_loop = _loop(tmp_path / "metadata.img", METADATA_BYTES)
    metadata = f"{world.pool}meta"  # not <pool>-...: no device of the pool's own
    subprocess.run(["dmsetup", "create", metadata, "--table",
                    f"0 {METADATA_BYTES // 512} linear {metadata_loop} 0"], check=True)
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, data_device=data_loop,
                          metadata_device=f"/dev/mapper/{metadata}", base_image_size="32MiB",
                          resync_interval="2s", retry_initial="200ms", retry_max="1s",
                          max_attempts=2, metrics_address=metrics)
    assert world.store is not None
    world.store.close()
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, fake_kernel=False, log=log_path)
    try:
        daemon.start()
        wait_for("the daemon's first pass",
                 lambda: b"daemon.ready" in log_path.read_bytes(), TIMEOUT)
        yield FailingPool(world, config, f"http://{metrics}", metadata, metadata_loop)
        assert daemon.stop() == 0, log_path.read_text()[-3000:]
    finally:
        if daemon.process.poll() is None:
            daemon.stop()
        world.teardown()  # the thin devices and the pool, before what is under them
        _remove(metadata)
        for loop in (data_loop, metadata_loop):
            subprocess.run(["losetup", "--detach", loop], check=False)
        os.sync()


def test_a_pool_whose_metadata_fails_is_down_for_readyz_and_the_check_alike(
        failing_pool: FailingPool) -> None:
    """Ready (0, 200) beside a converged daemon; the metadata device switched to dm-error and
    a new spec makes the pool commit: the kernel takes the pool out of read-write (read-only
    or Fail, with needs_check), and `status --check` exits 2 with the line /readyz answers
    with its 503, naming the pool's mode first; /healthz stays 200 (a restart mends no pool)
    and /startupz too (the first pass had ended)."""
    pool, metrics = failing_pool, failing_pool.metrics
    world = pool.world
    world.spec("web", 'filesystem = "none"\nsize = "16MiB"\n')
    wait_for("web Activated", lambda: _state(world, "web") == "Activated", TIMEOUT)
    wait_for("the daemon's snapshot after it", lambda: get(f"{metrics}/readyz")[0] == 200,
             TIMEOUT)
    assert probe(pool.config) == (0, "ready\n")
    assert get(f"{metrics}/readyz") == (200, "ready\n")

    pool.fail_metadata()
    world.spec("more", 'filesystem = "none"\nsize = "16MiB"\n')  # create_thin: a commit
    seen: list[tuple[tuple[int, str], tuple[int, str]]] = []

    def agreed_down() -> bool:
        answer, check = get(f"{metrics}/readyz"), probe(pool.config)
        seen.append((answer, check))
        return answer[0] == 503 and check == (2, answer[1])

    wait_for("/readyz and status --check to say down alike", agreed_down, 3 * TIMEOUT)
    line = seen[-1][1][1]
    status = subprocess.run(["dmsetup", "status", world.pool], check=True,
                            capture_output=True, text=True).stdout.strip()
    print(f"dmsetup status {world.pool}: {status}")
    print(f"/readyz 503 and status --check exit 2: {line.strip()}")
    assert line.startswith(("down: pool failed (mode Fail)", "down: pool read only (mode ro)"))
    assert "pool needs check" in line
    document = json.loads(probe(pool.config, "--json")[1])
    assert (document["health"], document["code"]) == ("down", 2)
    assert document["reasons"][0]["kind"] in ("pool_failed", "pool_read_only")
    assert get(f"{metrics}/healthz")[0] == 200
    assert get(f"{metrics}/startupz")[0] == 200

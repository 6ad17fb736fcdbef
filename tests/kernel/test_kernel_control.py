"""The control socket on a real kernel, with the daemon in a PID namespace of its own (as in a
pod, where it is pid 1): a device made Faulty for real, its cause removed, `reconciler retry`
from outside the namespace reaches the daemon and is answered with the device converged; and
udev detection sees the guest's udevd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon.lock import holder_pid
from reconciler.dm.udev import UDEV_CONTROL, udev_running
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import World, wait_for

pytestmark = pytest.mark.kernel
TIMEOUT = 120.0


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(word) for word in text.split()]


@pytest.fixture
def namespaced(real_world: World, tmp_path: Path) -> Iterator[tuple[World, Path]]:
    """`reconciler run` in its own PID and mount namespaces (`unshare --pid --fork
    --mount-proc`); stopped with SIGTERM at the end, which must exit 0 and remove its
    control socket."""
    world = real_world
    config = tmp_path / "config.toml"
    write_config(config, root_path=world.settings.root_path, pool_name=world.pool,
                 loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                 base_image_size="32MiB", resync_interval="60s", retry_initial="100ms",
                 retry_max="200ms", max_attempts=2)
    assert world.store is not None
    world.store.close()
    log_path = tmp_path / "daemon.log"
    unshare = DaemonProcess(config, fake_kernel=False, log=log_path,
                            wrapper=["unshare", "--pid", "--fork", "--mount-proc"]).start()
    try:
        started = time.monotonic()
        wait_for("the daemon's first pass", lambda: b"daemon.ready" in log_path.read_bytes(),
                 TIMEOUT)
        print(f"daemon ready in its namespace after {time.monotonic() - started:.1f}s")
        yield world, config
    finally:
        # The daemon is unshare's child (pid 1 inside): signalled by its pid out here.
        for child in _children(unshare.pid):
            os.kill(child, signal.SIGTERM)
        code = unshare.wait(timeout=60)
        text = log_path.read_text()
        assert code == 0, text[-3000:]
        assert "daemon.stopped" in text
        assert not world.settings.control_socket.exists()


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it on the host, outside the daemon's namespaces."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "--log-level", "warning",
                           "-c", str(config), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    # Printed for the record (pytest -s, or -v on failure): what the operator saw.
    print(f"$ reconciler {' '.join(args)}  -> exit {done.returncode} "
          f"({time.monotonic() - started:.1f}s)\n{done.stdout}{done.stderr}")
    return done


def _state(world: World, name: str) -> str | None:
    """A device's state as `status` reads it (a second store; no process started)."""
    store = Store(world.settings.database_path, time.time)
    try:
        record = store.device(name)
    finally:
        store.close()
    return None if record is None else str(record.state)


def test_retry_from_outside_the_daemons_pid_namespace_is_answered_converged(
        namespaced: tuple[World, Path]) -> None:
    """Someone else's dm device under our name makes `clash` Faulty; removed, `reconciler
    retry clash` from the host reaches the daemon (pid 1 in its namespace: never signalled)
    over the control socket and is answered with the device Activated."""
    world, config = namespaced
    pid = holder_pid(world.settings.root_path)
    assert pid == 1, "the lock names the daemon's pid in its own namespace"
    kname = f"{world.pool}-clash"
    subprocess.run(["dmsetup", "create", kname, "--table", "0 8 zero"], check=True)
    world.spec("clash", 'filesystem = "none"\n')
    wait_for("clash Faulty", lambda: _state(world, "clash") == "Faulty", TIMEOUT)
    for _ in range(25):
        if subprocess.run(["dmsetup", "remove", kname], check=False).returncode == 0:
            break
        time.sleep(0.2)
    retry = _cli(config, "retry", "clash")
    assert retry.returncode == 0, retry.stderr
    lines = retry.stdout.splitlines()
    assert lines[0] == "retry clash: clash taken out of Faulty (it had failed at activate)"
    assert lines[1].split() == ["clash", "Activated"]
    assert os.path.exists(f"/dev/mapper/{kname}")
    resync = _cli(config, "resync")
    assert (resync.returncode, resync.stdout) == (
        0, "resync: full pass: 1 converged, 0 waiting, 0 Faulty\n")


def test_udev_is_detected_in_the_guest() -> None:
    """udevd runs in the VM: its control socket is there and accepts a connect."""
    assert Path(UDEV_CONTROL).is_socket()
    assert udev_running()

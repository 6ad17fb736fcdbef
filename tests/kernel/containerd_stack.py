"""A real containerd (Debian's 1.6) with our daemon as its proxy snapshotter "reconciler",
each in a process of its own on a real kernel: what tests/kernel/test_kernel_containerd.py (ctr)
and tests/kernel/test_kernel_cri.py (Kubernetes' CRI) both stand on."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from reconciler.testing.world import wait_for as shared_wait_for

TIMEOUT = 180.0
SNAPSHOTTER = "reconciler"


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """conftest's wait_for with the patience a containerd under emulation needs."""
    shared_wait_for(what, check, timeout)


@dataclass
class Stack:
    """containerd and our daemon, each a process, and the paths they use."""

    work: Path
    world: World
    config: Path
    containerd_socket: Path
    reconciler_socket: Path
    namespace: str = "default"
    daemon: DaemonProcess | None = None
    containerd: subprocess.Popen[bytes] | None = None

    def start_daemon(self) -> None:
        self.daemon = DaemonProcess(self.config, fake_kernel=False,
                                    log=self.work / "reconciler.log").start()
        wait_for("our gRPC socket", self.reconciler_socket.is_socket)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr` against our containerd, in the stack's namespace; checked unless told
        otherwise."""
        done = subprocess.run(["ctr", "-a", str(self.containerd_socket), "-n", self.namespace,
                               *args], capture_output=True, text=True, timeout=TIMEOUT)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: rc {done.returncode}\n{done.stderr}"
                                 f"\n{self.logs()}")
        return done

    def snapshots(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr snapshots --snapshotter reconciler ...`."""
        return self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, *args, check=check)

    def collect_until(self, what: str, left: Callable[[], list[str]]) -> None:
        """Run containerd's garbage collector until `left()` is empty.

        `ctr snapshots rm` only forgets a snapshot in containerd's own database; our Remove
        is called later by its collector. containerd 1.6 drops the wake-ups of removals
        made while a collection is still waiting on a snapshotter's cleanup, so those wait
        for the next deletion anyone makes. Deleting a lease with --sync starts a
        collection that sees them, without waiting for that."""
        deadline = time.monotonic() + TIMEOUT
        while (remaining := left()) and time.monotonic() < deadline:
            lease = self.ctr("leases", "create").stdout.split()[0]
            self.ctr("leases", "rm", "--sync", lease)
            time.sleep(0.5)
        if remaining:
            raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}: "
                                 f"{remaining} left\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("reconciler.log", "containerd.log"):
            path = self.work / name
            if path.exists():
                parts.append(f"--- {name} (tail)\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def report(self) -> dict[str, object]:
        store = Store(self.world.settings.database_path, time.time)
        try:
            return build_report(self.world.settings, store, SystemHost())
        finally:
            store.close()


@contextmanager
def containerd_stack(work: Path, *, disabled_plugins: Sequence[str] = (),
                     plugins_toml: str = "", namespace: str = "default") -> Iterator[Stack]:
    """Our daemon serving a socket, and containerd (config version 2) with it as the proxy
    snapshotter; `plugins_toml` is appended to containerd's config. Skips the test where
    there is no device-mapper, root or containerd; stops both and tears the pool down."""
    if not KERNEL_AVAILABLE or shutil.which("containerd") is None:
        pytest.skip("needs device-mapper, root and Debian's containerd")
    pool = f"rc{secrets.token_hex(3)}"
    rec_socket = work / "rec.sock"
    settings = make_settings(work, pool, base_image_size="128MiB",
                             loopback_data_size="1GiB", grpc_socket=str(rec_socket))
    world = World(host=SystemHost(), settings=settings, real=True)
    assert world.store is not None
    world.store.close()
    config = write_config(work / "reconciler.toml", root_path=settings.root_path,
                          pool_name=pool, loopback_data_size="1GiB",
                          loopback_metadata_size="16MiB", base_image_size="128MiB",
                          grpc_socket=rec_socket, resync_interval="5s",
                          retry_initial="200ms", retry_max="2s")
    ctd_socket = work / "containerd.sock"
    disabled = ", ".join(f'"{name}"' for name in disabled_plugins)
    (work / "containerd.toml").write_text(
        f'version = 2\nroot = "{work}/ctd-root"\nstate = "{work}/ctd-state"\n'
        f'disabled_plugins = [{disabled}]\n'
        f'[grpc]\n  address = "{ctd_socket}"\n'
        f'[proxy_plugins]\n  [proxy_plugins.{SNAPSHOTTER}]\n    type = "snapshot"\n'
        f'    address = "{rec_socket}"\n' + plugins_toml)
    stack = Stack(work, world, config, ctd_socket, rec_socket, namespace)
    try:
        stack.start_daemon()
        log = (work / "containerd.log").open("ab")
        stack.containerd = subprocess.Popen(
            ["containerd", "--config", str(work / "containerd.toml")],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for("containerd's socket", ctd_socket.is_socket)
        yield stack
    finally:
        for process in (stack.containerd, stack.daemon.process if stack.daemon else None):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
        subprocess.run(["umount", "-R", str(work / "ctd-state")], capture_output=True)
        world.teardown()


def mount_command(stack: Stack, key: str, target: Path) -> list[str]:
    """The mount(8) argv `ctr snapshots mounts` prints for a snapshot."""
    line = stack.snapshots("mounts", str(target), key).stdout.strip()
    words = line.split()
    assert words[:2] == ["mount", "-t"], line
    if words[-1] == "-o":  # no options
        words = words[:-1]
    return words

"""A real containerd (Debian's 1.6) using our daemon as its proxy snapshotter, on a real
kernel: `ctr snapshots` verbs, data through mounts, kill -9 of our daemon, and a container
run by runc on our devices."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from tests.conftest import KERNEL_AVAILABLE, World, make_settings
from tests.conftest import wait_for as shared_wait_for
from tests.oci_image import build_image

pytestmark = pytest.mark.kernel
TIMEOUT = 180.0
SNAPSHOTTER = "reconciler"


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """conftest's wait_for with this module's patience."""
    shared_wait_for(what, check, timeout)


@dataclass
class Stack:
    """containerd and our daemon, each a process, and the paths they use."""

    work: Path
    world: World
    config: Path
    containerd_socket: Path
    reconciler_socket: Path
    daemon: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None

    def start_daemon(self) -> None:
        log = (self.work / "reconciler.log").open("ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "-c", str(self.config), "run"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for("our gRPC socket", self.reconciler_socket.is_socket)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr` against our containerd; checked unless told otherwise."""
        done = subprocess.run(["ctr", "-a", str(self.containerd_socket), *args],
                              capture_output=True, text=True, timeout=TIMEOUT)
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """containerd with our proxy plugin, and `reconciler run` serving its socket."""
    if not KERNEL_AVAILABLE or shutil.which("containerd") is None:
        pytest.skip("needs device-mapper, root and Debian's containerd")
    work = tmp_path_factory.mktemp("ctd")
    pool = f"rc{secrets.token_hex(3)}"
    rec_socket = work / "rec.sock"
    settings = make_settings(work, pool, base_image_size="128MiB",
                             loopback_data_size="1GiB", grpc_socket=str(rec_socket))
    world = World(host=SystemHost(), settings=settings, real=True)
    assert world.store is not None
    world.store.close()
    config = work / "reconciler.toml"
    config.write_text(
        f'root_path = "{settings.root_path}"\npool_name = "{pool}"\n'
        'loopback_data_size = "1GiB"\nloopback_metadata_size = "16MiB"\n'
        f'base_image_size = "128MiB"\ngrpc_socket = "{rec_socket}"\n'
        'resync_interval = "5s"\nretry_initial = "200ms"\nretry_max = "2s"\n')
    ctd_socket = work / "containerd.sock"
    (work / "containerd.toml").write_text(
        f'version = 2\nroot = "{work}/ctd-root"\nstate = "{work}/ctd-state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{ctd_socket}"\n'
        f'[proxy_plugins]\n  [proxy_plugins.{SNAPSHOTTER}]\n    type = "snapshot"\n'
        f'    address = "{rec_socket}"\n')
    stack = Stack(work, world, config, ctd_socket, rec_socket)
    stack.start_daemon()
    log = (work / "containerd.log").open("ab")
    stack.containerd = subprocess.Popen(
        ["containerd", "--config", str(work / "containerd.toml")],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_for("containerd's socket", ctd_socket.is_socket)
        yield stack
    finally:
        for process in (stack.containerd, stack.daemon):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
        subprocess.run(["umount", "-R", str(work / "ctd-state")], capture_output=True)
        world.teardown()


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    target = tmp_path / "mnt"
    target.mkdir()
    return target


def mount_command(stack: Stack, key: str, target: Path) -> list[str]:
    """The mount(8) argv `ctr snapshots mounts` prints for a snapshot."""
    line = stack.snapshots("mounts", str(target), key).stdout.strip()
    words = line.split()
    assert words[:2] == ["mount", "-t"], line
    if words[-1] == "-o":  # no options
        words = words[:-1]
    return words


def test_ctr_snapshot_verbs_and_data(stack: Stack, mnt: Path) -> None:
    """prepare / mounts / commit / view / ls / info / label / usage / rm through containerd:
    a file written in an active snapshot and committed is in a child and a view; the
    child's writes do not reach the parent; a parent with children cannot be removed."""
    stack.snapshots("prepare", "base")
    argv = mount_command(stack, "base", mnt)
    assert argv[2] == "ext4" and argv[3].startswith(f"/dev/mapper/{stack.world.pool}-snap-")
    subprocess.run(argv, check=True)
    (mnt / "hello.txt").write_text("from the parent\n")
    subprocess.run(["umount", str(mnt)], check=True)
    stack.snapshots("commit", "layer", "base")

    stack.snapshots("prepare", "child", "layer")
    subprocess.run(mount_command(stack, "child", mnt), check=True)
    try:
        assert (mnt / "hello.txt").read_text() == "from the parent\n"
        (mnt / "hello.txt").write_text("changed in the child\n")
        (mnt / "new.txt").write_text("only in the child\n")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

    stack.snapshots("view", "look", "layer")
    view_argv = mount_command(stack, "look", mnt)
    assert view_argv[-1] == "ro", view_argv
    subprocess.run(view_argv, check=True)
    try:
        assert (mnt / "hello.txt").read_text() == "from the parent\n"
        assert not (mnt / "new.txt").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

    listing = stack.snapshots("ls").stdout.split("\n")
    rows = {line.split()[0]: line.split()[1:] for line in listing[1:] if line.strip()}
    assert rows["layer"] == ["Committed"]
    assert rows["child"] == ["layer", "Active"]
    assert rows["look"] == ["layer", "View"]
    info = json.loads(stack.snapshots("info", "layer").stdout)
    assert info["Kind"] == "Committed" and info["Name"] == "layer"
    labelled = stack.snapshots("label", "layer", "tier=gold").stdout
    assert "tier=gold" in labelled
    assert json.loads(stack.snapshots("info", "layer").stdout)["Labels"]["tier"] == "gold"
    usage = stack.snapshots("usage", "child").stdout.split("\n")[1].split()
    assert usage[0] == "child" and usage[-1] != "0", f"the child's new inode counts: {usage}"

    refused = stack.snapshots("rm", "layer", check=False)
    assert refused.returncode != 0 and "failed precondition" in refused.stderr
    report = stack.report()
    kinds = {d["snapshot"]["kind"] for d in report["devices"]  # type: ignore[attr-defined]
             if d["snapshot"] and d["state"] != "Removed"}
    assert kinds == {"committed", "active", "view"}
    stack.snapshots("rm", "look", "child", "layer")
    assert stack.snapshots("ls").stdout.split("\n")[1:] == [""]
    stack.collect_until("our devices removed", lambda: [
        d["name"] for d in stack.report()["devices"]  # type: ignore[attr-defined]
        if d["snapshot"] and d["snapshot"]["removal"] is None])


def test_containerd_calls_succeed_after_kill_9_of_the_daemon(stack: Stack) -> None:
    """Killed with SIGKILL and started again, our daemon answers containerd's next calls,
    and what was prepared before is still there."""
    stack.snapshots("prepare", "survivor")
    assert stack.daemon is not None
    os.kill(stack.daemon.pid, signal.SIGKILL)
    stack.daemon.wait(timeout=30)
    refused = stack.snapshots("ls", check=False)
    assert refused.returncode != 0, "nobody serves the socket while we are down"
    stack.start_daemon()
    wait_for("containerd reaches us again",
             lambda: stack.snapshots("ls", check=False).returncode == 0)
    assert "survivor" in stack.snapshots("ls").stdout
    stack.snapshots("commit", "survivor-c", "survivor")
    stack.snapshots("prepare", "after", "survivor-c")
    stack.snapshots("rm", "after", "survivor-c")
    assert stack.snapshots("ls").stdout.split("\n")[1:] == [""]


def test_a_container_runs_on_our_snapshots(stack: Stack) -> None:
    """An OCI image (static busybox) imported with our snapshotter, run by runc."""
    if shutil.which("runc") is None:
        pytest.skip("needs Debian's runc")
    image = build_image(stack.work / "image.tar")
    stack.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(stack.work / "image.tar"))
    committed = stack.snapshots("ls").stdout
    assert "Committed" in committed, committed
    ran = stack.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, "t1", "/bin/echo",
                    "ok")
    assert ran.stdout.strip() == "ok"
    ran = stack.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, "t2", "/bin/sh", "-c",
                    "echo data > /tmp/f && cat /tmp/f && ls /bin")
    assert ran.stdout.split()[0] == "data" and "busybox" in ran.stdout.split()

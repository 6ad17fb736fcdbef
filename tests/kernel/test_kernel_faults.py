"""Faults and neighbours on a real kernel: a grow whose resume fails leaves no device
suspended (a mounted filesystem keeps answering), a pool filled to its reserve holds new
devices and keeps the old ones, another tool's dm device survives every command, and listings
survive another tool making and removing its devices."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from reconciler.config import settings_from_mapping
from reconciler.dm.client import DmClient
from reconciler.dm.host import Completed, SystemHost
from reconciler.reconcile.reconciler import Reconciler
from reconciler.reconcile.retry import RetryPolicy
from reconciler.store import RequestKind
from reconciler.testing.world import World

pytestmark = pytest.mark.kernel
POLICY = RetryPolicy(initial=0.2, maximum=0.5, max_attempts=2, jitter=0.0)


class ResumeFails(SystemHost):
    """The machine, except that the next `times` `dmsetup resume NAME` answer EBUSY (as a
    kernel busy with I/O can); overriding run() makes the reconciler speak dmsetup."""

    def __init__(self, name: str, times: int) -> None:
        super().__init__()
        self.name = name
        self.left = times

    def run(self, argv: Sequence[str]) -> Completed:
        if list(argv[:3]) == ["dmsetup", "resume", self.name] and self.left > 0:
            self.left -= 1
            return Completed(tuple(argv), 1, "", f"device-mapper: resume ioctl on {self.name}"
                             "  failed: Device or resource busy\nCommand failed.\n")
        return super().run(argv)


def _mount(world: World, name: str, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for _ in range(50):
        if subprocess.run(["mount", f"/dev/mapper/{world.pool}-{name}", str(target)],
                          check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("could not mount")


def _umount(target: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(target)], check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("could not unmount")


def _answers(path: Path, seconds: float = 30.0) -> bool:
    """Whether a write and fsync through the mount finish (a suspended device hangs them)."""
    done = threading.Event()

    def write() -> None:
        with open(path, "wb") as out:
            out.write(os.urandom(4096))
            out.flush()
            os.fsync(out.fileno())
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done.wait(seconds)


def _suspended(world: World, name: str) -> bool:
    info = DmClient(world.host).info(f"{world.pool}-{name}")
    assert info is not None
    return info.suspended


@pytest.mark.parametrize("failures", [1, 2])
def test_a_grow_whose_resume_fails_leaves_the_mounted_device_running(
    real_world: World, tmp_path: Path, failures: int
) -> None:
    """The resume after the grow's load fails: the step resumes the device itself (one
    failure), or the next pass finds it suspended and resumes it (two); the mounted
    filesystem answers I/O and the device ends grown."""
    world = real_world
    world.spec("web", 'size = "32MiB"\nfilesystem = "ext4"\n')
    assert world.run_pass().ok
    mnt = tmp_path / "mnt"
    _mount(world, "web", mnt)
    try:
        world.spec("web", 'size = "48MiB"\nfilesystem = "ext4"\n')
        kname = f"{world.pool}-web"
        assert world.store is not None
        engine = Reconciler(world.settings, ResumeFails(kname, failures), world.store,
                            clock=time.time, policy=POLICY)
        result = engine.run_pass()
        assert "Device or resource busy" in result.pending.get("web", "")
        if failures == 1:
            assert not _suspended(world, "web")
        else:
            assert _suspended(world, "web"), "the kernel refused both resumes"
            engine.run_pass()  # the next pass finds it suspended and resumes it
            assert not _suspended(world, "web")
        assert _answers(mnt / "after-the-fault")
        time.sleep(POLICY.maximum)
        for _ in range(5):
            if engine.run_pass().ok:
                break
            time.sleep(POLICY.maximum)
        table = DmClient(world.host).table(kname)
        assert table[0].length == (48 << 20) // 512
        assert _answers(mnt / "after-the-grow")
    finally:
        _umount(mnt)


def test_a_pool_at_its_reserve_holds_new_devices_and_keeps_the_old(real_world: World,
                                                                   tmp_path: Path) -> None:
    """Data written until the pool's free space is under its reserve: a new spec waits with
    the reason in status; the existing device's data reads back; once it is removed, the
    waiting device is made."""
    world = real_world
    raw = {"root_path": str(world.settings.root_path), "pool_name": world.pool,
           "loopback_data_size": "256MiB", "loopback_metadata_size": "8MiB",
           "base_image_size": "64MiB", "pool_reserve": "200MiB"}
    world.settings = settings_from_mapping(raw)
    world.spec("big", 'size = "96MiB"\nfilesystem = "none"\n')
    assert world.run_pass().ok
    subprocess.run(["dd", "if=/dev/urandom", f"of=/dev/mapper/{world.pool}-big", "bs=1M",
                    "count=72", "oflag=direct", "status=none"], check=True)
    sample = world.host.read(f"/dev/mapper/{world.pool}-big", 10 << 20, 4096)
    world.spec("new", 'size = "16MiB"\nfilesystem = "none"\n')
    result = world.run_pass()
    assert "reserve" in result.pending["new"]
    assert "200MiB" in world.report()["pool"]["new_devices_held"]
    assert world.kernel_names() == {f"{world.pool}-big"}
    assert world.host.read(f"/dev/mapper/{world.pool}-big", 10 << 20, 4096) == sample

    world.unspec("big")
    world.run_pass()
    assert world.run_pass().ok
    assert world.kernel_names() == {f"{world.pool}-new"}
    assert world.report()["pool"]["new_devices_held"] is None


def test_a_neighbours_dm_device_survives_every_command(real_world: World) -> None:
    """Another tool's device (`dmsetup create`, its own uuid) named as our `a-b` would be:
    our spec conflicts and shows it; removal, gc --faulty and retry leave it as it was."""
    world = real_world
    assert world.run_pass().ok  # the pool
    neighbour = f"{world.pool}-a-b"
    subprocess.run(["dmsetup", "create", neighbour, "--table", "0 8192 zero",
                    "-u", "OTHER-TOOL-a-b"], check=True)

    def intact() -> None:
        info = DmClient(world.host).info(neighbour)
        assert info is not None and info.uuid == "OTHER-TOOL-a-b" and not info.suspended
        table = DmClient(world.host).table(neighbour)
        assert [t.target for t in table] == ["zero"]

    world.spec("a-b", 'size = "4MiB"\nfilesystem = "none"\n')
    assert "not ours" in world.run_pass(POLICY).faulty["a-b"]
    intact()
    assert world.store is not None
    world.store.add_request(RequestKind.RETRY, "a-b")
    world.run_pass(POLICY)
    intact()
    world.store.add_request(RequestKind.GC_FAULTY, "*")
    world.run_pass(POLICY)
    intact()
    world.unspec("a-b")
    assert "a-b" in world.run_pass(POLICY).removed
    intact()


class CountingHost(SystemHost):
    """The machine, counting the listings dmsetup failed: overriding run() makes the
    client speak dmsetup, whose listing of all devices fails when one goes away midway."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[str] = []

    def run(self, argv: Sequence[str]) -> Completed:
        done = super().run(argv)
        if not done.ok:
            self.failed.append(done.stderr)
        return done


def test_listings_survive_a_neighbour_making_and_removing_its_devices(
        real_world: World) -> None:
    """Another tool creating and removing its devices without pause while our dmsetup
    driver lists every device (the daemon's observation, status, a teardown): each listing
    answers, read again when a device went away between dmsetup's LIST and its own ioctl;
    the neighbour's devices are left to it."""
    world = real_world
    host = CountingHost()
    client = DmClient(host)
    names = [f"nb-{world.pool}-{i}" for i in range(12)]  # outside our pool's prefix
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for name in names:
                subprocess.run(["dmsetup", "create", name, "--table", "0 8 zero",
                                "--noudevsync"], capture_output=True, check=False)
            for name in names:
                subprocess.run(["dmsetup", "remove", name, "--noudevsync"],
                               capture_output=True, check=False)

    neighbour = threading.Thread(target=churn, daemon=True)
    neighbour.start()
    try:
        listings = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            client.info_all()
            client.status_all()
            client.table_all()
            listings += 3
    finally:
        stop.set()
        neighbour.join(timeout=60)
    for name in names:  # the neighbour's to remove, not ours: it is gone
        subprocess.run(["dmsetup", "remove", name], capture_output=True, check=False)
    print(f"{listings} listings beside the churn; read again {len(host.failed)} times")
    assert listings >= 30
    assert all("Device does not exist" in text or "No such device" in text
               for text in host.failed), host.failed

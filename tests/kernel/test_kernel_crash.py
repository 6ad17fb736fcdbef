"""Crash safety on a real kernel: a real process SIGKILLed at every mutating kernel call of
create, snapshot and remove, of one device and of three in one pass (inside a batch); and a
reboot. After each: converged, data intact, and the pool's
thin ids (thin_ls) equal the store's."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.daemon.once import run_until_settled
from reconciler.dm.client import DmClient
from reconciler.dm.crash import CRASH_ENV, CrashingHost, CrashPoint
from reconciler.dm.host import Completed, SystemHost
from reconciler.reconcile.reconciler import Reconciler
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.crashing import (
    OPERATIONS,
    RAW,
    Operation,
    assert_store_and_pool_agree,
    call_counts,
    removes,
    specs,
)
from reconciler.testing.world import World
from reconciler.tools.loopback import LoopbackFiles, attached_loop

pytestmark = pytest.mark.kernel
MUTATING = ("dmsetup message", "dmsetup create", "dmsetup remove", "dmsetup suspend",
            "dmsetup load", "dmsetup resume", "mkfs.ext4")


# The operations crashed in on the real kernel, and how each is undone. A single device's
# snapshot and removal are not among them: the first device of snapshot3's and remove3's
# batches has every crash point they had (the fake kernel's matrix runs them all), and each
# point costs a fork, a restart and an undo under emulation. create stays for its mkfs.
REVERT: dict[str, Callable[[World], None]] = {
    "create": removes("a"),
    # Three devices in one pass: crash points inside a batch (group commit).
    "create3": removes("a", "b", "c"),
    "snapshot3": removes("s1", "s2", "s3"),
    "remove3": specs(a=RAW, b=RAW, c=RAW),
}
DATA_OFFSET = 5 << 20


class CountingHost(SystemHost):
    """The real machine, remembering every argv (to find the crash points)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str]) -> Completed:
        self.calls.append(tuple(argv))
        return super().run(argv)


def converge(world: World) -> None:
    """A restart: a new store and a new reconciler, run until settled.

    The restart calls the kernel in-process (libdevmapper), not through dmsetup as the
    crashed pass did (the crash points are dmsetup's argv): recovery must not depend on the
    driver that left the state behind, and under emulation the restarts and undos of the
    crash matrix are most of its time, a process per call each."""
    if world.store is not None:
        world.store.close()  # not left to the garbage collector: see crash_in_child
    world.store = Store(world.settings.database_path, world.clock)
    world.host = SystemHost()
    settings = replace(world.settings, dm_driver="libdevmapper")
    reconciler = Reconciler(settings, world.host, world.store, clock=world.clock)
    result = run_until_settled(reconciler, time.time, time.sleep)
    assert result.ok, result


def write_data(world: World, payload: bytes) -> None:
    """Write and sync a block of data into the raw device "data"."""
    fd = os.open(f"/dev/mapper/{world.pool}-data", os.O_WRONLY)
    try:
        os.pwrite(fd, payload, DATA_OFFSET)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_data(world: World, length: int) -> bytes:
    fd = os.open(f"/dev/mapper/{world.pool}-data", os.O_RDONLY)
    try:
        return os.pread(fd, length, DATA_OFFSET)
    finally:
        os.close(fd)


def open_database_files(database: Path) -> list[str]:
    """The files of the SQLite database (and its -wal, -shm) this process has open."""
    real = os.path.realpath(database)
    names = {real, *(f"{real}{suffix}" for suffix in ("-wal", "-shm", "-journal"))}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target in names:
            found.append(target)
    return sorted(found)


def crash_in_child(world: World, point: CrashPoint) -> None:
    """Run the pass in a forked process that SIGKILLs itself at `point`."""
    assert world.store is not None
    world.store.close()
    # SQLite forbids carrying an open connection across fork (its locks are per process, its
    # in-memory lock bookkeeping is copied): a store left open here once lost the child's
    # committed rows. Every database file must be closed at this point, not merely unused.
    gc.collect()
    assert open_database_files(world.settings.database_path) == [], "an open store at fork"
    pid = os.fork()
    if pid == 0:  # the child: dies by SIGKILL at the crash point
        try:
            store = Store(world.settings.database_path, time.time)
            doomed = Reconciler(world.settings, CrashingHost(SystemHost(), point), store)
            run_until_settled(doomed, time.time, time.sleep)
        finally:
            os._exit(3)  # only reached when the crash point never came
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), f"{point}: the child exited {os.waitstatus_to_exitcode(status)}"
    assert os.WTERMSIG(status) == signal.SIGKILL


def points_of(world: World, operation: Operation) -> list[CrashPoint]:
    """The mutating calls one clean run of the operation makes (then undone)."""
    counting = CountingHost()
    world.host = counting
    assert world.store is not None
    world.store.close()
    world.store = Store(world.settings.database_path, world.clock)
    operation.action(world)
    assert run_until_settled(world.reconciler(), time.time, time.sleep).ok
    REVERT[operation.name](world)
    converge(world)
    counts = call_counts(counting.calls)
    return [CrashPoint(when, kind, n) for kind in MUTATING for n in range(1, counts[kind] + 1)
            for when in ("before", "after")]


@pytest.mark.parametrize("name", list(REVERT))
def test_sigkill_at_every_mutating_call_recovers(real_world: World, name: str) -> None:
    """For each crash point: SIGKILL, restart, converged; data written before it intact."""
    operation = next(o for o in OPERATIONS if o.name == name)
    world = real_world
    # Every crash point removes (reverts) devices again: no guard against mass removal here.
    world.settings = replace(world.settings, max_removals=None)
    world.spec("data", 'filesystem = "none"\n')
    operation.setup(world)
    converge(world)
    points = points_of(world, operation)
    assert points
    outcomes = []
    for index, point in enumerate(points):
        payload = os.urandom(64 << 10)
        write_data(world, payload)
        operation.action(world)
        crash_in_child(world, point)
        converge(world)  # the restart
        expected = operation.expected_devices | {"data"}
        assert world.kernel_names() == {f"{world.pool}-{n}" for n in expected}, point
        assert_store_and_pool_agree(world)
        assert read_data(world, len(payload)) == payload, point
        REVERT[name](world)
        converge(world)
        outcomes.append(f"{index}:{point.when}:{point.kind}:{point.count}=ok")
    print(f"\ncrash scenarios on the real kernel for {name}: {len(outcomes)} passed: "
          + " ".join(outcomes))


def test_reboot_brings_every_device_back(real_world: World) -> None:
    """Every dm device gone and the loops detached, files kept: a start brings all back,
    active as specified, with their data and ids."""
    world = real_world
    world.spec("data", 'filesystem = "none"\n')
    world.spec("base", 'size = "32MiB"\n')
    world.spec("snap", 'parent = "base"\n')
    world.spec("cold", 'filesystem = "none"\nactive = false\n')
    converge(world)
    payload = os.urandom(128 << 10)
    write_data(world, payload)
    client = DmClient(world.host)
    for name in [*sorted(world.kernel_names()), world.pool]:
        client.remove(name)
    files = LoopbackFiles.under(world.settings.root_path)
    for path in (files.data, files.metadata):
        loop = attached_loop(world.host, path)
        assert loop is not None
        world.host.run(["losetup", "--detach", loop])
    assert world.store is not None
    world.store.close()
    converge(world)
    assert world.kernel_names() == {f"{world.pool}-{n}" for n in ("data", "base", "snap")}
    assert read_data(world, len(payload)) == payload
    assert_store_and_pool_agree(world)


def test_the_crash_switch_kills_the_real_command(real_world: World, tmp_path: Path) -> None:
    """RECONCILER_CRASH_AT makes `reconciler run --once` die by SIGKILL at that call; the
    next run recovers."""
    world = real_world
    config = write_config(tmp_path / "config.toml", root_path=world.settings.root_path,
                          pool_name=world.pool, loopback_data_size="256MiB",
                          loopback_metadata_size="8MiB")
    world.spec("a", 'filesystem = "none"\n')
    assert world.store is not None
    world.store.close()
    command = [sys.executable, "-m", "reconciler.cli", "-c", str(config), "run", "--once"]
    # The third message of a first run is create_thin (after reserve/release of recovery).
    env = {**os.environ, CRASH_ENV: "after:dmsetup message:3"}
    killed = subprocess.run(command, env=env, capture_output=True, check=False)
    assert killed.returncode == -signal.SIGKILL
    converge(world)
    assert world.kernel_names() == {f"{world.pool}-a"}
    assert_store_and_pool_agree(world)

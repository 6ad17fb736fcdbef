"""The probes and `status --check` say one verdict: /healthz, /readyz and /startupz of a daemon
over the fake kernel agree with `status --check` beside it on starting, ready, degraded and
down, in the same words; and the rules of each probe, table-tested."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import ListenAddress, Reserve, settings_toml
from reconciler.daemon.health import (
    PoolRead,
    Snapshot,
    StoreRead,
    liveness,
    read_store,
    readiness,
    startup,
    take_snapshot,
)
from reconciler.daemon.lock import RootLock
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.dm.client import DmClient
from reconciler.dm.parse import parse_pool_status
from reconciler.dm.types import TargetLine
from reconciler.store import ConditionKind, ConditionRecord, Store, StoreError, UnknownKind
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.world import FakeClock, World
from reconciler.units import Sectors
from reconciler.verdict import Health
from tests.unit.daemon.http_client import get

LOOPBACK = ListenAddress("127.0.0.1", 0)  # port 0: the kernel picks a free one
STALL = 120.0


@dataclass(frozen=True)
class Surfaces:
    """What each surface said at one moment."""

    exit_code: int
    check_line: str
    check_errors: str
    healthz: int
    readyz: tuple[int, str]
    startupz: tuple[int, str]


@dataclass
class Served:
    """A daemon serving its probes, with the root lock held as `run` holds it, and the
    config file `status --check` reads."""

    world: World
    daemon: Daemon
    config: Path
    capsys: pytest.CaptureFixture[str]

    def surfaces(self) -> Surfaces:
        """`status --check` (the command, in this process, on the same fake kernel) and the
        three probes, one after the other."""
        self.capsys.readouterr()
        code = main(["-c", str(self.config), "status", "--check"], host=self.world.host)
        printed = self.capsys.readouterr()
        assert self.daemon.metrics_server is not None
        port = self.daemon.metrics_server.port
        return Surfaces(code, printed.out, printed.err, get(port, "/healthz")[0],
                        get(port, "/readyz"), get(port, "/startupz"))

    def full_pass(self) -> None:
        """A resync now, on the fake clock."""
        self.world.clock.now += self.world.settings.resync_interval + 1
        self.daemon.step(timeout=0)


@pytest.fixture
def served(fake_world: World, capsys: pytest.CaptureFixture[str],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, list[Surfaces]]]:
    """A daemon started with metrics on a loopback port; what the surfaces said while its
    first pass ran (taken from inside that pass)."""
    assert fake_world.store is not None
    fake_world.store.close()
    settings = replace(fake_world.settings, metrics_address=LOOPBACK, stall_after=STALL)
    config = fake_world.settings.root_path.parent / "config.toml"
    # What `status --check` reads: the daemon's config as `config check` prints it.
    config.write_text(settings_toml(fake_world.settings))
    lock = RootLock(settings.root_path)
    lock.acquire()
    daemon = Daemon(settings, fake_world.host, clock=fake_world.clock,
                    wakeups=Wakeups(settle=0.02))
    serving = Served(fake_world, daemon, config, capsys)
    during: list[Surfaces] = []
    first_pass = daemon.reconciler.run_pass

    def observed(only: set[str] | None = None) -> object:
        if not during:
            during.append(serving.surfaces())
        return first_pass(only)

    monkeypatch.setattr(daemon.reconciler, "run_pass", observed)
    try:
        daemon.start()
        fake_world.store = Store(settings.database_path, fake_world.clock)
        yield serving, during
    finally:
        daemon.close()
        lock.release()


def assert_one_verdict(seen: Surfaces, health: Health) -> None:
    """Every surface says `health`, and /readyz's words are `status --check`'s line."""
    assert seen.check_errors == "", seen
    assert seen.exit_code == health.exit_code, seen
    assert seen.readyz[1] == seen.check_line, seen
    assert seen.check_line.startswith(health.value), seen
    assert seen.readyz[0] == (200 if health.ready else 503), seen
    assert seen.startupz == ((503 if health == Health.STARTING else 200), seen.check_line)
    assert seen.healthz == 200, "no verdict restarts the daemon: only a stalled loop does"


@pytest.mark.parametrize("mode", ["Fail", "ro"])
def test_every_verdict_is_said_alike_by_status_check_and_the_probes(
        served: tuple[Served, list[Surfaces]], mode: str) -> None:
    """Starting (during the first pass), ready (a device made), degraded (a Faulty device),
    down (the pool's metadata failed: Fail, where the kernel shows even the thin device's
    table as "Fail", or read-only and needs_check): exit 3, 0, 1, 2; /readyz 503, 200, 200,
    503; /startupz 503 only while starting; /healthz 200 throughout; /readyz's body is
    `status --check`'s line each time."""
    serving, during = served
    world = serving.world
    assert isinstance(world.host, FakeKernel)
    assert len(during) == 1
    assert_one_verdict(during[0], Health.STARTING)
    assert during[0].check_line == "starting: first pass running\n"

    world.spec("web", 'filesystem = "none"\nsize = "32MiB"\n')
    serving.full_pass()
    ready = serving.surfaces()
    assert_one_verdict(ready, Health.READY)
    assert ready.check_line == "ready\n"

    world.host.faults.fail(Op.CREATE, f"{world.pool}-broken", errno=errno.EINVAL)
    world.spec("broken", 'filesystem = "none"\nsize = "32MiB"\n')
    serving.full_pass()
    degraded = serving.surfaces()
    assert_one_verdict(degraded, Health.DEGRADED)
    assert degraded.check_line == "degraded: 1 faulty device (broken)\n"

    world.host.fail_metadata(world.pool, mode)
    serving.full_pass()
    down = serving.surfaces()
    assert_one_verdict(down, Health.DOWN)
    # Then what follows from it: new devices held, and the pass failed at the metadata
    # snapshot the pool now refuses.
    assert down.check_line.startswith(
        ("down: pool failed (mode Fail)" if mode == "Fail" else "down: pool read only (mode ro)")
        + "; pool needs check (thin_check/thin_repair must run before it is used); 1 faulty "
        "device (broken); new devices held (pool is "), down


def test_udev_that_cannot_confirm_our_cookies_is_a_note_every_surface_shows(
        served: tuple[Served, list[Surfaces]]) -> None:
    """udevd appears in another IPC namespace (a pod without hostIPC): the daemon makes the
    nodes itself and says so; the verdict stays ready, and /readyz and `status --check` give
    the same line naming hostIPC."""
    serving, _ = served
    world = serving.world
    assert isinstance(world.host, FakeKernel)
    world.host.udev.alive, world.host.udev.same_ipc = True, False
    world.spec("web", 'filesystem = "none"\nsize = "32MiB"\n')
    serving.full_pass()
    seen = serving.surfaces()
    assert_one_verdict(seen, Health.READY)
    assert seen.check_line.startswith("ready: udev unreachable (udevd runs in another IPC "
                                      "namespace"), seen
    assert "hostIPC: true" in seen.check_line, seen


def test_a_pool_gone_from_the_kernel_is_down_on_every_surface(
        served: tuple[Served, list[Surfaces]]) -> None:
    """The pool removed behind the daemon's back: down, the same words everywhere."""
    serving, _ = served
    DmClient(serving.world.host).remove(serving.world.pool)
    serving.full_pass()
    down = serving.surfaces()
    assert_one_verdict(down, Health.DOWN)
    assert down.check_line.startswith("down: pool not loaded (pool is not loaded in the "
                                      "kernel); pass failed ("), down
    assert serving.daemon.metrics_server is not None
    scrape = get(serving.daemon.metrics_server.port, "/metrics")[1]
    assert "\nreconciler_pool_up 0.0\n" in scrape


def test_the_starting_condition_is_gone_once_the_daemon_stops(fake_world: World) -> None:
    """A daemon stopped before its first pass (a stop during recovery) says `starting` in
    the store until it closes, and nothing after: the next `status --check` judges what is
    there."""
    assert fake_world.store is not None
    fake_world.store.close()
    daemon = Daemon(fake_world.settings, fake_world.host, clock=fake_world.clock)
    daemon.request_stop()  # the first step sees the stop and runs no pass
    store = Store(fake_world.settings.database_path, fake_world.clock)
    fake_world.store = store
    try:
        daemon.start()
        assert store.condition(ConditionKind.STARTING) is not None
    finally:
        daemon.close()
    assert store.condition(ConditionKind.STARTING) is None


def test_healthz_turns_503_when_the_loop_is_stuck_past_stall_after(fake_world: World) -> None:
    """/healthz is 200 while the loop waits, and 503 once a step has run longer than the
    config's stall_after on the injected monotonic clock; 200 again when it ends."""
    assert fake_world.store is not None
    fake_world.store.close()
    mono = FakeClock(start=1000.0)
    settings = replace(fake_world.settings, metrics_address=LOOPBACK, stall_after=STALL)
    daemon = Daemon(settings, fake_world.host, clock=fake_world.clock, monotonic=mono,
                    wakeups=Wakeups(settle=0.02))
    daemon.start()
    try:
        assert daemon.metrics_server is not None
        port = daemon.metrics_server.port
        assert get(port, "/healthz") == (200, "alive: the reconcile loop is waiting\n")
        during: list[tuple[int, str]] = []

        def stuck(stopping: bool) -> None:
            del stopping
            during.append(get(port, "/healthz"))
            mono.now += STALL + 1
            during.append(get(port, "/healthz"))

        daemon.wakeups.call(stuck)
        daemon.step(timeout=0)
        assert during == [
            (200, "alive: the reconcile loop is working\n"),
            (503, "stalled: the reconcile loop has been in one step for 121s (more than "
                  "stall_after, 120s)\n")]
        assert get(port, "/healthz")[0] == 200
    finally:
        daemon.close()


LIVENESS: list[tuple[float, float, float | None, float | None, bool, bool]] = [
    # now, last_turn, busy_since, wait_timeout, started -> alive
    (100.0, 100.0, None, None, True, True),  # waiting, for as long as it takes
    (1e9, 100.0, None, None, True, True),  # waiting without a deadline: a quiet daemon is alive
    (100.0 + 30 + STALL, 100.0, None, 30.0, True, True),  # at the end of its margin
    (100.0 + 30 + STALL + 1, 100.0, None, 30.0, True, False),  # a wait that never ended
    (100.0 + STALL, 0.0, 100.0, 30.0, True, True),  # a step as long as the bound
    (100.0 + STALL + 1, 0.0, 100.0, 30.0, True, False),  # a step stuck past it
    (1e9, 0.0, 100.0, None, False, True),  # the first pass: the startup probe bounds it
]


@pytest.mark.parametrize(("now", "last_turn", "busy_since", "wait_timeout", "started",
                          "alive"), LIVENESS)
def test_liveness_table(now: float, last_turn: float, busy_since: float | None,
                        wait_timeout: float | None, started: bool, alive: bool) -> None:
    """/healthz's rule: waiting is alive until the wait should have ended plus stall_after;
    a step is alive while younger than stall_after; the first pass, however long."""
    answer = liveness(now, last_turn, busy_since, wait_timeout, STALL, started)
    assert answer.ok is alive
    assert answer.code == (200 if alive else 503)


def pool_read(status: str) -> PoolRead:
    """The pool read as the kernel gives `status` (a 256MiB pool of 64KiB blocks)."""
    return PoolRead(parse_pool_status(TargetLine(Sectors(0), Sectors(524288), "thin-pool",
                                                 status)))


UP = pool_read("3 20/2048 100/4096 - rw discard_passdown queue_if_no_space - 512 ")


def snapshot(pool: PoolRead, *conditions: ConditionRecord, store_error: str | None = None,
             rejected: tuple[str, ...] = ()) -> Snapshot:
    """A snapshot of `pool` with these conditions and rejected specs (10% reserves)."""
    share = Reserve(percent=10.0)
    return take_snapshot(pool, (share, share), [], StoreRead(128, rejected, conditions,
                                                              store_error))


ANSWERS: list[tuple[Snapshot | None, int, int, str]] = [
    # snapshot -> /readyz, /startupz, their line
    (None, 503, 503, "starting: first pass running"),
    (snapshot(UP), 200, 200, "ready"),
    (snapshot(UP, ConditionRecord(ConditionKind.REMOVALS_HELD, "2 held", ("b", "a"))), 200,
     200, "degraded: 2 removals held (a, b)"),
    (snapshot(UP, rejected=("junk",)), 200, 200, "degraded: 1 rejected spec (junk)"),
    (snapshot(UP, ConditionRecord(ConditionKind.PASS_FAILED, "EIO: boom")), 200, 200,
     "degraded: pass failed (EIO: boom)"),
    (snapshot(pool_read("Fail")), 503, 200, "down: pool failed (mode Fail); pool needs check "
     "(thin_check/thin_repair must run before it is used)"),
    (snapshot(PoolRead(None, "pool is not loaded in the kernel")), 503, 200,
     "down: pool not loaded (pool is not loaded in the kernel)"),
    (snapshot(PoolRead(None, "info: dmsetup: not found", kernel_readable=False)), 503, 200,
     "down: kernel unreadable (info: dmsetup: not found)"),
    (snapshot(UP, store_error="cannot read the database /x/reconciler.db: disk I/O error"),
     503, 200, "down: store unusable (cannot read the database /x/reconciler.db: disk I/O "
     "error)"),
]


@pytest.mark.parametrize(("snap", "ready", "started", "line"), ANSWERS)
def test_readiness_and_startup_answer_the_verdict(snap: Snapshot | None, ready: int,
                                                  started: int, line: str) -> None:
    """/readyz: 200 for ready and degraded; /startupz: 200 once the first pass ended, down
    included (a restart mends no pool); both with the verdict's line."""
    assert (readiness(snap).code, readiness(snap).reason) == (ready, line)
    assert (startup(snap).code, startup(snap).reason) == (started, line)


def test_a_snapshot_keeps_the_conditions_it_knows_and_names_what_the_verdict_needs() -> None:
    """take_snapshot: held removals are the condition's names, the pass_failed message the
    verdict's, Faulty devices named from the records; a kind this version does not know
    (written by a newer one) is left out."""
    snap = snapshot(PoolRead(None, "pool is not loaded in the kernel"),
                    ConditionRecord(ConditionKind.REMOVALS_HELD, "2 held", ("a", "b")),
                    ConditionRecord(ConditionKind.PASS_FAILED, "EIO: boom"),
                    ConditionRecord(UnknownKind("from_the_future"), "?"),
                    rejected=("x", "y"))
    assert snap.removals_held == 2 and snap.rejected_specs == 2
    assert snap.conditions == {ConditionKind.REMOVALS_HELD, ConditionKind.PASS_FAILED}
    assert snap.devices == dict.fromkeys(snap.devices, 0)
    assert snap.verdict.line() == (
        "down: pool not loaded (pool is not loaded in the kernel); 2 rejected specs (x, y); "
        "2 removals held (a, b); pass failed (EIO: boom)")


def test_a_store_that_cannot_be_read_makes_the_snapshot_down(tmp_path: Path) -> None:
    """read_store: a store whose reads fail says why (the verdict is then down); one kept
    busy is raised for the loop to keep its last snapshot."""

    class Unreadable(Store):
        def conditions(self) -> list[ConditionRecord]:
            raise StoreError("cannot read the database: disk I/O error")

    store = Unreadable(tmp_path / "reconciler.db", FakeClock())
    try:
        stored = read_store(store, "pool")
    finally:
        store.close()
    assert stored.error == "cannot read the database: disk I/O error"
    assert snapshot(UP, store_error=stored.error).verdict.health == Health.DOWN

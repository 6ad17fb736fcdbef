"""Crash at every kernel call and after every store commit of every operation, restart, and
converge (fake kernel).

Each case makes the process "die" (SimulatedCrash, which nothing catches and after which the
fake kernel sees no call) right before or right after the Nth call of one kind, or right after
the Nth store commit (between two of a batch's commits: group commit), then starts a new
Reconciler on a new Store over the same kernel, as a restarted daemon would. The operations
that make or remove several devices in one pass put crash points inside a batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from reconciler.daemon.once import run_until_settled
from reconciler.dm.crash import CrashingHost, CrashPoint
from reconciler.reconcile.reconciler import Reconciler
from reconciler.store import Store
from reconciler.testing.crashing import (
    MIXED,
    OPERATIONS,
    CountingStore,
    Operation,
    SimulatedCrash,
    assert_store_and_pool_agree,
    call_counts,
    simulated_crash,
)
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.world import FakeClock, World, make_settings


def world_at(tmp_path: Path, operation: Operation) -> World:
    """A fake world converged on the operation's starting specs."""
    world = World(host=FakeKernel(), settings=make_settings(tmp_path, "cr"), real=False,
                  clock=FakeClock())
    operation.setup(world)
    assert world.run_pass().ok
    return world


def clean_run(operation: Operation) -> tuple[list[tuple[str, ...]], int]:
    """The kernel calls and the store commits of one clean run of the operation."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        world = world_at(Path(tmp), operation)
        fake = world.host
        assert isinstance(fake, FakeKernel) and world.store is not None
        world.store.close()
        world.store = store = CountingStore(world.settings.database_path, world.clock)
        start = len(fake.calls)
        operation.action(world)
        assert world.run_pass().ok
        calls = fake.calls[start:]
        world.teardown()
    return calls, store.commits


def crash_points() -> tuple[list[tuple[Operation, CrashPoint]], list[tuple[Operation, int]]]:
    """Every (operation, crash point) pair, and every (operation, commit) pair, from a clean
    run of each operation."""
    cases = []
    commits = []
    for operation in [*OPERATIONS, MIXED]:
        calls, count = clean_run(operation)
        for kind, calls_of_kind in sorted(call_counts(calls).items()):
            for n in range(1, calls_of_kind + 1):
                for when in ("before", "after"):
                    cases.append((operation, CrashPoint(when, kind, n)))
        commits += [(operation, n) for n in range(1, count + 1)]
    return cases, commits


CASES, COMMIT_CASES = crash_points()


def test_the_crash_matrix_covers_every_operation() -> None:
    """Each operation has crash points at its mutating calls (the matrix is not empty)."""
    names = {operation.name for operation, _ in CASES}
    assert names == {o.name for o in [*OPERATIONS, MIXED]}
    assert {o.name for o, _ in COMMIT_CASES} == names
    mutating = {p.kind for _, p in CASES}
    assert {"dmsetup message", "dmsetup create", "dmsetup remove", "dmsetup suspend",
            "dmsetup load", "dmsetup resume", "mkfs.ext4"} <= mutating
    assert len(CASES) > 100


@pytest.mark.parametrize(("operation", "point"), CASES,
                         ids=[f"{o.name}-{p.when}-{p.kind.replace(' ', '_')}-{p.count}"
                              for o, p in CASES])
def test_a_crash_at_any_call_recovers_to_the_specs(
    tmp_path: Path, operation: Operation, point: CrashPoint
) -> None:
    """After a crash at this call and a restart: converged, store and pool agree, no leaks."""
    world = world_at(tmp_path, operation)
    assert world.store is not None
    world.store.close()
    operation.action(world)
    crashing = CrashingHost(world.host, point, crash=simulated_crash)
    doomed = Reconciler(world.settings, crashing,
                        Store(world.settings.database_path, world.clock), clock=world.clock)
    with pytest.raises(SimulatedCrash):
        run_until_settled(doomed, world.clock, world.clock.sleep)
    restart_and_check(world, operation)


@pytest.mark.parametrize(("operation", "commit"), COMMIT_CASES,
                         ids=[f"{o.name}-after_commit-{n}" for o, n in COMMIT_CASES])
def test_a_crash_between_store_commits_recovers_to_the_specs(
    tmp_path: Path, operation: Operation, commit: int
) -> None:
    """A crash right after the Nth store commit of the operation's pass (between a batch's
    intents, its outcomes and the next batch): the restart converges with no leak."""
    world = world_at(tmp_path, operation)
    assert world.store is not None
    world.store.close()
    operation.action(world)
    crashing = CrashingHost(world.host, CrashPoint("before", "never", 1), crash=simulated_crash)
    store = CountingStore(world.settings.database_path, world.clock, commit, crashing)
    doomed = Reconciler(world.settings, crashing, store, clock=world.clock)
    with pytest.raises(SimulatedCrash):
        run_until_settled(doomed, world.clock, world.clock.sleep)
    restart_and_check(world, operation)


def restart_and_check(world: World, operation: Operation) -> None:
    """A new store and reconciler over the same kernel: one run converges, recovery having
    accounted for every change itself, with the operation's devices and no leak."""
    fake = world.host
    assert isinstance(fake, FakeKernel)
    fake.faults.clear()  # an injected fault the crash came before: its cause is gone
    world.store = Store(world.settings.database_path, world.clock)  # the restart
    with capture_logs() as events:
        result = world.run_pass()
    assert result.ok, result
    # Recovery accounts for every change itself: the store never lags the kernel after it.
    assert not [e for e in events if e["event"] == "pool.transaction_id_differs"]
    assert world.kernel_names() == {f"{world.pool}-{n}" for n in operation.expected_devices}
    assert_store_and_pool_agree(world)

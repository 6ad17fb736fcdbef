"""Crash at every kernel call of every operation, restart, and converge (fake kernel).

Each case makes the process "die" (SimulatedCrash, which nothing catches and after which the
fake kernel sees no call) right before or right after the Nth call of one kind, then starts a
new Reconciler on a new Store over the same kernel, as a restarted daemon would.
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
    OPERATIONS,
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


def crash_points() -> list[tuple[Operation, CrashPoint]]:
    """Every (operation, crash point) pair, from a clean run of each operation."""
    import tempfile

    cases = []
    for operation in OPERATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            world = world_at(Path(tmp), operation)
            fake = world.host
            assert isinstance(fake, FakeKernel)
            start = len(fake.calls)
            operation.action(world)
            assert world.run_pass().ok
            counts = call_counts(fake.calls[start:])
            world.teardown()
        for kind, count in sorted(counts.items()):
            for n in range(1, count + 1):
                for when in ("before", "after"):
                    cases.append((operation, CrashPoint(when, kind, n)))
    return cases


CASES = crash_points()


def test_the_crash_matrix_covers_every_operation() -> None:
    """Each operation has crash points at its mutating calls (the matrix is not empty)."""
    names = {operation.name for operation, _ in CASES}
    assert names == {o.name for o in OPERATIONS}
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

    world.store = Store(world.settings.database_path, world.clock)  # the restart
    with capture_logs() as events:
        result = world.run_pass()
    assert result.ok, result
    # Recovery accounts for every change itself: the store never lags the kernel after it.
    assert not [e for e in events if e["event"] == "pool.transaction_id_differs"]
    assert world.kernel_names() == {f"{world.pool}-{n}" for n in operation.expected_devices}
    assert_store_and_pool_agree(world)

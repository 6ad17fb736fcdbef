"""reconcile.batch (group commit): a pass's store commits do not grow with its devices, one
set_transaction_id covers a batch's messages, and a device that fails in a batch is handled
alone (its retry settles its intent); on the fake kernel, counted, not timed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from reconciler.reconcile import drive
from reconciler.reconcile.drive import drive_all
from reconciler.reconcile.pass_context import PassResult
from reconciler.reconcile.reconciler import Reconciler
from reconciler.states import DeviceState
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.stage import Stage
from reconciler.testing.world import World, make_settings
from reconciler.vocabulary import PoolOp

S = DeviceState
RAW = 'filesystem = "none"\nsize = "1MiB"\n'
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def commits(statements: list[str]) -> int:
    """SQLite commits among traced statements: each COMMIT, and each write run outside a
    transaction (autocommitted)."""
    depth = count = 0
    for statement in statements:
        word = statement.split(None, 1)[0].upper()
        if word == "BEGIN":
            depth += 1
        elif word in ("COMMIT", "ROLLBACK"):
            depth -= 1
            count += word == "COMMIT"
        elif depth == 0 and word in WRITES:
            count += 1
    return count


def pass_commits(tmp_path: Path, devices: int) -> tuple[int, int, int]:
    """Commits of a pass with nothing to do, of the pass that makes `devices` devices, and of
    the one that removes all but one of them."""
    kernel = FakeKernel()
    world = World(host=kernel, settings=make_settings(tmp_path, "gc", max_removals=10_000),
                  real=False)
    try:
        assert world.store is not None
        engine = Reconciler(world.settings, kernel, world.store, clock=world.clock)
        assert engine.run_pass().ok
        counted = []
        for change in ("nothing", "make", "remove"):
            for i in range(devices):
                if change == "make":
                    world.spec(f"d{i}", RAW)
                elif change == "remove" and i:
                    world.unspec(f"d{i}")
            statements: list[str] = []
            world.store.trace(statements.append)
            result = engine.run_pass()
            world.store.trace(None)
            assert result.ok, result
            counted.append(commits(statements))
        return counted[0], counted[1], counted[2]
    finally:
        world.teardown()


def test_a_pass_commits_per_phase_not_per_device(tmp_path: Path) -> None:
    """Making 4 or 40 devices costs the same number of store commits, and so does removing
    them: beyond what a pass with nothing to do commits, two per phase (create, activate;
    deactivate, delete), one for the new devices' rows and one for the removal guard's
    window, none per device."""
    small = pass_commits(tmp_path / "small", 4)
    idle, make, remove = pass_commits(tmp_path / "large", 40)
    assert small == (idle, make, remove)
    assert make - idle == 1 + 2 + 2, (idle, make)
    assert remove - idle == 1 + 2 + 2, (idle, remove)


def _messages(stage: Stage, verb: str) -> int:
    return sum(1 for call in stage.kernel.calls
               if call[1:2] == ("message",) and verb in call)


def _three(stage: Stage) -> PassResult:
    order = [(name, stage.spec(name, RAW)) for name in ("a", "b", "c")]
    result = PassResult()
    drive_all(stage.context(), order, result, lambda: None)
    return result


def test_a_refused_create_leaves_the_batch_and_its_retry_settles_it(stage: Stage) -> None:
    """The first create_thin of three is refused: the other two are made, under one
    set_transaction_id; the refused one keeps its intent (same range) and waits for its
    retry, which settles it (not made) and makes it."""
    before = stage.engine.ledger.transaction_id
    stage.kernel.faults.fail(Op.MESSAGE, stage.world.pool, errno=errno.EBUSY,
                             verb=PoolOp.CREATE_THIN.value)
    result = _three(stage)
    assert sorted(result.converged) == ["b", "c"] and list(result.pending) == ["a"]
    assert _messages(stage, "set_transaction_id") == 1
    ctx = stage.context()
    assert ctx.pool.status().transaction_id == before + 1
    intent = stage.store.intent("a")
    assert intent is not None and (intent.from_txn, intent.to_txn) == (before, before + 1)
    assert stage.stored("a").state == S.CREATING
    stage.world.clock.now += 60
    again = PassResult()
    drive_all(stage.context(), [("a", stage.spec("a", RAW))], again, lambda: None)
    assert again.converged == ["a"]
    assert stage.store.intents() == []
    assert stage.context().pool.status().transaction_id == before + 2


def test_a_batch_whose_every_message_is_refused_keeps_the_transaction_id(stage: Stage) -> None:
    """No message went through: no set_transaction_id is sent (it would claim a change the
    pool never took), and every device waits for its retry."""
    before = stage.engine.ledger.transaction_id
    stage.kernel.faults.fail(Op.MESSAGE, stage.world.pool, errno=errno.EBUSY, times=3,
                             verb=PoolOp.CREATE_THIN.value)
    result = _three(stage)
    assert sorted(result.pending) == ["a", "b", "c"]
    assert _messages(stage, "set_transaction_id") == 0
    assert stage.context().pool.status().transaction_id == before


def test_a_refused_set_transaction_id_is_finished_by_the_retry(stage: Stage) -> None:
    """The batch's messages went through and its set_transaction_id was refused: the devices
    keep their intents; the retry sees their ids in the pool, sends the set_transaction_id
    once, records them, and sends no create_thin again."""
    before = stage.engine.ledger.transaction_id
    stage.kernel.faults.fail(Op.MESSAGE, stage.world.pool, errno=errno.EBUSY,
                             verb="set_transaction_id")
    result = _three(stage)
    assert sorted(result.pending) == ["a", "b", "c"]
    assert len(stage.store.intents()) == 3
    stage.world.clock.now += 60
    again = PassResult()
    order = [(name, stage.spec(name, RAW)) for name in ("a", "b", "c")]
    drive_all(stage.context(), order, again, lambda: None)
    assert sorted(again.converged) == ["a", "b", "c"], again
    assert _messages(stage, PoolOp.CREATE_THIN.value) == 3
    assert stage.store.intents() == []
    assert stage.context().pool.status().transaction_id == before + 1


def test_a_snapshot_of_a_parent_made_in_the_same_pass_follows_it(stage: Stage) -> None:
    """Parent and snapshot in one pass: the snapshot waits a round for its parent's create,
    then is taken of the parent's thin id; both converge in the one pass."""
    order = [("base", stage.spec("base", RAW)),
             ("snap", stage.spec("snap", 'parent = "base"\n'))]
    result = PassResult()
    drive_all(stage.context(), order, result, lambda: None)
    assert sorted(result.converged) == ["base", "snap"], result
    assert stage.stored("snap").origin_id == stage.stored("base").device_id


def test_a_large_phase_is_cut_into_batches(stage: Stage,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """More devices than MAX_BATCH: batches of at most that many, each with its own
    set_transaction_id (a pass may stop, and pings the watchdog, between them)."""
    monkeypatch.setattr(drive, "MAX_BATCH", 4)
    before = stage.engine.ledger.transaction_id
    order = [(f"d{i}", stage.spec(f"d{i}", RAW)) for i in range(10)]
    result = PassResult()
    drive_all(stage.context(), order, result, lambda: None)
    assert len(result.converged) == 10
    assert _messages(stage, "set_transaction_id") == 3
    assert stage.context().pool.status().transaction_id == before + 3

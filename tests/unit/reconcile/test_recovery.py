"""reconcile.recovery and the crash protocol it settles (reconcile.intents): an intent a crash
left is rolled forward or back from what the pool shows, on the fake kernel."""

from __future__ import annotations

from structlog.testing import capture_logs

from reconciler.reconcile import recovery
from reconciler.reconcile.drive import drive, record_for
from reconciler.reconcile.intents import intend
from reconciler.reconcile.pass_context import PassResult
from reconciler.states import DeviceState, Trigger
from reconciler.testing.stage import Stage
from reconciler.vocabulary import PoolOp, ThinId

S = DeviceState


def _crash_mid_create(stage: Stage, thin_id: int, pool_took_it: bool) -> int:
    """Leave what a crash inside `create` leaves: the row Creating with its thin id, the
    intent written; with `pool_took_it`, the pool has the id but not the new transaction id
    (the crash fell between create_thin and set_transaction_id). Returns the intent's
    starting transaction id."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    record.device_id = ThinId(thin_id)
    with stage.store.transaction():
        ctx.machine("a").fire(Trigger.CREATE)
        intend(ctx, record, PoolOp.CREATE_THIN)
    if pool_took_it:
        ctx.pool.client.message(stage.world.pool, ["create_thin", str(thin_id)])
    stage.restart()
    return ctx.ledger.transaction_id


def test_a_create_the_pool_took_is_rolled_forward(stage: Stage) -> None:
    """The pool has the thin id: recovery sends the missing set_transaction_id and records
    the device Created; the intent is gone and store, ledger and kernel agree."""
    before = _crash_mid_create(stage, 7, pool_took_it=True)
    ctx = stage.context()
    row = stage.stored("a")
    assert (row.state, row.provisioned, row.device_id) == (S.CREATED, True, 7)
    assert stage.store.intent("a") is None
    kernel_txn = ctx.pool.status().transaction_id
    pool = stage.store.pool(stage.world.pool)
    assert pool is not None
    assert kernel_txn == before + 1 == ctx.ledger.transaction_id == pool.transaction_id
    assert 7 in ctx.read_pool_ids()


def test_a_create_the_pool_never_saw_is_rolled_back_then_redone(stage: Stage) -> None:
    """No thin id in the pool: the intent is forgotten, the row stays Creating, and the next
    drive makes the device (the step runs again)."""
    before = _crash_mid_create(stage, 7, pool_took_it=False)
    ctx = stage.context()
    assert stage.store.intent("a") is None
    assert stage.stored("a").state == S.CREATING
    assert ctx.ledger.transaction_id == before
    result = PassResult()
    drive(ctx, "a", stage.spec("a", 'filesystem = "none"\n'), result)
    assert result.converged == ["a"]
    assert stage.stored("a").state == S.ACTIVATED
    assert stage.kernel_name("a") in stage.kernel.devices


def test_a_transaction_id_moved_by_someone_else_is_taken_from_the_kernel(stage: Stage) -> None:
    """Later passes take the kernel's transaction id when the store's differs, and say so."""
    ctx = stage.context()
    now = ctx.pool.status().transaction_id
    ctx.pool.set_transaction_id(now, now + 5)
    with capture_logs() as events:
        ctx = stage.context()
    pool = stage.store.pool(stage.world.pool)
    assert pool is not None and pool.transaction_id == now + 5 == ctx.ledger.transaction_id
    assert [e["kernel"] for e in events
            if e["event"] == "pool.transaction_id_differs"] == [now + 5]


def test_recover_with_nothing_left_changes_nothing(stage: Stage) -> None:
    """A clean restart: no intent, the transaction id as stored, no device touched."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    result = PassResult()
    drive(stage.context(), "a", spec, result)
    stage.restart()
    ctx = stage.context()
    recovery.recover(ctx)
    assert stage.store.intents() == []
    assert stage.stored("a").state == S.ACTIVATED
    pool = stage.store.pool(stage.world.pool)
    assert pool is not None and pool.transaction_id == ctx.pool.status().transaction_id == 1
